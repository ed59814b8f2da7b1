"""Request and response bodies of the HTTP API. Request models are built from the server's limits, so the
limits appear in the OpenAPI docs and a violation is a 422 naming the field (e.g. body.notes.3.title)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


@dataclass
class ServingLimits:
    max_k: int = 100                    # neighbours per query
    max_notes: int = 32                 # notes per /embed request
    max_title_chars: int = 200
    max_content_chars: int = 5000
    max_hashtags: int = 20
    max_hashtag_chars: int = 50
    max_body_bytes: int = 1 << 20       # bigger bodies get 413 before anything parses them
    model_batch: int = 32               # notes per forward pass
    model_wait_ms: float = 5.0          # how long the first request of a batch waits for company
    search_batch: int = 64              # queries per index search
    search_wait_ms: float = 0.0         # 0: search at once; requests that arrive meanwhile form the next batch


def lone_surrogate_at(text: str) -> int | None:
    """The position of the first lone UTF-16 surrogate (e.g. from JSON "\\ud800"): not a character, cannot be
    encoded as UTF-8, and would reach the tokenizer or a log line otherwise."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def check_text(text: str) -> str:
    at = lone_surrogate_at(text)
    if at is not None:
        raise ValueError(f"contains a lone UTF-16 surrogate (U+{ord(text[at]):04X}) at character {at}; "
                         f"send valid Unicode text")
    return text


class NoteBase(BaseModel):
    """A note written by a client. Only text: paths and other fields are refused (extra fields are 422)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("title", "content", mode="after", check_fields=False)
    @classmethod
    def valid_text(cls, text: str) -> str:
        return check_text(text)

    @field_validator("hashtags", mode="after", check_fields=False)
    @classmethod
    def clean_tags(cls, tags: list[str]) -> list[str]:
        cleaned = []
        for i, tag in enumerate(tags):
            check_text(tag)
            text = tag.replace("[话题]", "").strip().strip("#").strip()
            if not text:
                raise ValueError(f"hashtag {i} ({tag!r}) is empty once '#' and '[话题]' are removed")
            cleaned.append(text)
        return cleaned

    @model_validator(mode="after")
    def has_text(self):
        if not self.title.strip() and not self.content.strip():  # type: ignore[attr-defined]
            raise ValueError("a note needs a title or content (both are empty)")
        return self


def request_models(limits: ServingLimits) -> dict[str, type[BaseModel]]:
    """The request bodies, with this server's limits as field constraints."""
    Tag = Annotated[str, Field(min_length=1, max_length=limits.max_hashtag_chars)]

    class NoteIn(NoteBase):
        title: str = Field("", max_length=limits.max_title_chars, examples=["周末去哪儿｜杭州小众咖啡馆"])
        content: str = Field("", max_length=limits.max_content_chars,
                             examples=["藏在巷子里的一家咖啡馆，手冲很好喝，环境安静适合看书。"])
        hashtags: list[Tag] = Field(default_factory=list, max_length=limits.max_hashtags,
                                    examples=[["咖啡", "杭州探店"]])

    class SimilarRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        note: NoteIn
        k: int = Field(10, ge=1, le=limits.max_k)

    class EmbedRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        notes: list[NoteIn] = Field(min_length=1, max_length=limits.max_notes)

    class NoteRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        note: NoteIn

    class NoteWrite(NoteIn):
        """A note to store: its text (embedded on arrival), optionally its id and category."""
        note_id: str | None = Field(None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:/-]+$",
                                    description="omit to get a new id")
        category: list[Annotated[str, Field(min_length=1, max_length=50)]] = Field(
            default_factory=list, max_length=4, description="coarse to fine")

        @field_validator("category", mode="after")
        @classmethod
        def valid_category(cls, levels: list[str]) -> list[str]:
            return [check_text(level) for level in levels]

    class WriteRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        notes: list[NoteWrite] = Field(min_length=1, max_length=limits.max_notes)

    class UpdateRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        note: NoteIn
        category: list[Annotated[str, Field(min_length=1, max_length=50)]] = Field(default_factory=list, max_length=4)

    Category = list[Annotated[str, Field(min_length=1, max_length=50)]]

    class PastPost(NoteIn):
        category: Category = Field(default_factory=list, max_length=4)
        score: float = Field(ge=-1e6, le=1e6, allow_inf_nan=False, description="its popularity score")

    class ColdStartRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        note: NoteIn
        category: Category = Field(default_factory=list, max_length=4, description="the draft's category")
        past_posts: list[PastPost] = Field(default_factory=list, max_length=10,
                                           description="the author's past posts, oldest first")
        author_id: str | None = Field(None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@-]+$",
                                      description="resolve past posts from the served notes (when none given)")

        @model_validator(mode="after")
        def has_history(self):
            if not self.past_posts and not self.author_id:
                raise ValueError("give past_posts (the author's earlier posts with scores) or author_id")
            return self

    return {"ColdStartRequest": ColdStartRequest, "NoteIn": NoteIn, "SimilarRequest": SimilarRequest, "EmbedRequest": EmbedRequest,
            "NoteRequest": NoteRequest, "WriteRequest": WriteRequest, "UpdateRequest": UpdateRequest}


class SimilarNote(BaseModel):
    rank: int
    note_id: str
    score: float = Field(description="cosine similarity")
    title: str | None = None
    category: list[str] | None = None


class SimilarResponse(BaseModel):
    note_id: str | None = Field(None, description="the query note (None for a new note)")
    title: str | None = None
    k: int
    results: list[SimilarNote]


class EmbedResponse(BaseModel):
    model: str | None
    dim: int
    vectors: list[list[float]]


class TagsResponse(BaseModel):
    hashtags: list[str]
    category: list[str] = Field(description="coarse to fine")
    tagger: str


class WrittenNote(BaseModel):
    note_id: str
    created: bool = Field(description="false: an existing note was replaced")


class WriteResponse(BaseModel):
    written: list[WrittenNote]
    count: int = Field(description="notes in the store after the write")


class DeleteResponse(BaseModel):
    deleted: str
    count: int


class ColdStartResponse(BaseModel):
    score: float | None = Field(description="predicted popularity score; null when the model's answer was not a number")
    answer: str = Field(description="the model's answer as generated")
    past_posts: int = Field(description="how many past posts the prompt showed")
    model: str | None = None


class PopularityResponse(BaseModel):
    score: float
    target: dict[str, Any] | None = Field(None, description="what the score measures (from the model)")
    model: str | None = None
    category: list[str] | None = Field(None, description="the predicted category (when a tagger is loaded)")
    percentile: dict[str, Any] | None = Field(
        None, description="share of reference notes below the score, overall and in the predicted category")
    interval: dict[str, Any] | None = Field(
        None, description="80% interval from the model's held-out error; `margin`: differences up to it are "
                          "too close to call")
