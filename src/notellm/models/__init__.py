"""Models: backbone loading, NoteLLM (text), NoteLLM-2 (image + text), popularity heads."""
