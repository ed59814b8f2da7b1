"""notellm: LLM note embeddings, tag generation and popularity prediction for content platforms."""

__version__ = "0.1.0"
