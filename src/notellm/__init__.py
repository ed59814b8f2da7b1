"""notellm: LLM note embeddings, tag generation and popularity prediction for content platforms.

    from notellm import NoteLLM
    vectors = NoteLLM.from_pretrained("zero-shot:gemma-3-270m").encode(["周末去哪儿 城市周边露营地推荐"])

The names below load lazily (importing notellm stays instant; torch loads on first use).
"""

__version__ = "0.1.0"

__all__ = ["NoteLLM", "PopularityModel", "ColdStartModel", "note_text", "__version__"]


def __getattr__(name: str):
    if name in ("NoteLLM", "PopularityModel", "ColdStartModel", "note_text"):
        from notellm import api

        return getattr(api, name)
    raise AttributeError(f"module 'notellm' has no attribute {name!r}")
