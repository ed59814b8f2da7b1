"""Instruction data for cold-start popularity prediction from a user's past posts (MultiSmpLLM, section 2.3).

For a user with posts C_1..C_n in time order (authors with >= `min_posts` posts) and k in `shots`:
- train question: the k posts before C_{n-1} (C_{n-1-k}..C_{n-2}) with their scores, then C_{n-1}; the
  answer is S_{n-1}. It never shows C_n.
- test question: the k posts before C_n (C_{n-k}..C_{n-1}) with their scores, then C_n; the answer is S_n.
  As in the paper, the post asked about in training (C_{n-1}) becomes history at test time.
Each post is described by its title, category / subcategory, concept (hashtags), chosen `extra` fields
(e.g. the link's domain), release time (UTC, weekday month day hh:mm: digits cost one token each), an image
caption when the data has one (`extra[caption_key]`), and, for history posts, its popularity score.
The answer is the score as text with fixed decimals. Templates follow the paper's Table 2 (English) and a
faithful Chinese rendering.

The popularity score of a post is a weighted sum of log(count + 1) (ScoreConfig): Hacker News uses
log(points + 1) (points are the Note table's `likes`); the demo corpus the WLAES
log(likes+1) + 0.5 log(collects+1) + 0.2 log(comments+1).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import pyarrow as pa

from notellm.errors import DataError

INSTRUCTION_EN = (
    "Input a user's historical posts on social media along with the popularity of these posts, and provide "
    "the popularity score for this new post based on this information. Output a number."
)
INSTRUCTION_ZH = "输入用户在社交媒体上的历史帖子以及这些帖子的流行度，根据这些信息给出新帖子的流行度得分。输出一个数字。"
_WEEKDAYS_EN = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_WEEKDAYS_ZH = ("周一", "周二", "周三", "周四", "周五", "周六", "周日")


@dataclass
class ScoreConfig:
    """Weights of log(count + 1) per count column; the score is their weighted sum."""

    likes: float = 1.0
    collects: float = 0.0
    comments: float = 0.0


@dataclass
class InstructionConfig:
    language: str = "en"                    # en | zh
    shots: list[int] = field(default_factory=lambda: [1, 2, 3])
    min_posts: int = 5                      # users with fewer posts are left out (the paper: 5)
    title_chars: int = 60
    max_concepts: int = 5                   # hashtags shown per post
    category_levels: int = 2                # category, subcategory
    include_time: bool = True
    caption_key: str = "image_caption"      # key in the Note table's `extra` JSON, used when present
    extra_fields: dict[str, str] = field(default_factory=dict)  # more `extra` keys to show: key -> label
    include_user_id: bool = True
    decimals: int = 2
    score: ScoreConfig = field(default_factory=ScoreConfig)


@dataclass
class ColdStartExample:
    user_id: str
    shots: int
    split: str                  # train (asks about C_{n-1}) | test (asks about C_n)
    prompt: str
    answer: str                 # the target score as text
    target: float
    target_note_id: str
    target_row: int             # 0-based row of the asked post in the Note table
    history_rows: list[int]     # 0-based rows of the k history posts, oldest first
    history_scores: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class UserPosts:
    """A user's usable posts: Note-table rows in time order and their popularity scores."""

    user_id: str
    rows: list[int]
    scores: list[float]


@dataclass
class Skips:
    """Posts left out, counted by reason (reported, never silent)."""

    no_author: int = 0
    no_time: int = 0

    def describe(self) -> str:
        return f"{self.no_author} posts without author_id, {self.no_time} posts without published_at"


def popularity_scores(table: pa.Table, weights: ScoreConfig, source: str = "<notes>") -> list[float]:
    """Score of every row; a count that a non-zero weight needs but that is missing or negative is an error."""
    columns = {name: table.column(name).to_pylist() for name in ("likes", "collects", "comments")}
    scores = []
    for i in range(len(table)):
        total = 0.0
        for name, weight in asdict(weights).items():
            if weight == 0:
                continue
            count = columns[name][i]
            if count is None or count < 0:
                raise DataError(f"popularity needs a count >= 0, got {count!r}", file=source, row=i + 1, field=name)
            total += weight * math.log(count + 1)
        scores.append(total)
    return scores


def group_user_posts(
    table: pa.Table, cfg: InstructionConfig, source: str = "<notes>"
) -> tuple[list[UserPosts], Skips]:
    """Users with >= cfg.min_posts posts, each with posts sorted by (published_at, note_id)."""
    scores = popularity_scores(table, cfg.score, source)
    authors = table.column("author_id").to_pylist()
    times = table.column("published_at").to_pylist()
    note_ids = table.column("note_id").to_pylist()
    skips = Skips()
    by_user: dict[str, list[int]] = {}
    for i, (author, when) in enumerate(zip(authors, times)):
        if author is None or str(author).strip() == "":
            skips.no_author += 1
        elif when is None:
            skips.no_time += 1
        else:
            by_user.setdefault(str(author), []).append(i)
    users = []
    for user_id in sorted(by_user):
        rows = sorted(by_user[user_id], key=lambda r: (times[r], note_ids[r]))
        if len(rows) >= cfg.min_posts:
            users.append(UserPosts(user_id, rows, [scores[r] for r in rows]))
    return users, skips


def split_users(
    users: Sequence[UserPosts], n_main: int | None, n_preference: int | None, seed: int
) -> tuple[list[UserPosts], list[UserPosts]]:
    """Disjoint random user samples: `main` (SFT train + test questions) and `preference` (alignment data).

    The paper draws the preference data from a second sample of users of the same size (section 2.4.1).
    None means all remaining users.
    """
    order = list(users)
    random.Random(seed).shuffle(order)
    n_main = len(order) if n_main is None else min(n_main, len(order))
    main = order[:n_main]
    rest = order[n_main:]
    preference = rest if n_preference is None else rest[:n_preference]
    return main, preference


def _extra(raw: str | None, source: str, row: int) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataError(f"extra is not valid JSON: {exc}", file=source, row=row + 1, field="extra") from exc
    return value if isinstance(value, dict) else {}


class PromptWriter:
    """Renders the instruction for one (user, k, question post) in English or Chinese."""

    def __init__(self, table: pa.Table, cfg: InstructionConfig, source: str = "<notes>"):
        if cfg.language not in ("en", "zh"):
            raise DataError(f"language must be 'en' or 'zh', got {cfg.language!r}", field="language")
        self.cfg, self.source = cfg, source
        self.cols = {
            name: table.column(name).to_pylist()
            for name in ("title", "category", "hashtags", "published_at", "extra")
        }

    def score_text(self, score: float) -> str:
        return f"{score:.{self.cfg.decimals}f}"

    def _fields(self, row: int) -> dict[str, Any]:
        cfg = self.cfg
        title = (self.cols["title"][row] or "").replace("\n", " ").strip()[: cfg.title_chars]
        category = [c for c in (self.cols["category"][row] or []) if c][: cfg.category_levels]
        concepts = [t for t in (self.cols["hashtags"][row] or []) if t][: cfg.max_concepts]
        when = self.cols["published_at"][row] if cfg.include_time else None
        extra = _extra(self.cols["extra"][row], self.source, row)
        caption = extra.get(cfg.caption_key) if cfg.caption_key else None
        more = [(label, extra[key]) for key, label in cfg.extra_fields.items() if extra.get(key) not in (None, "")]
        return dict(title=title, category=category, concepts=concepts, when=when, caption=caption, more=more)

    def _describe_en(self, f: dict[str, Any], title_phrase: str) -> tuple[str, str]:
        parts = [f'{title_phrase} "{f["title"]}"']
        for name, value in zip(("category", "subcategory"), f["category"]):
            parts.append(f"the {name} is {value}")
        if f["concepts"]:
            parts.append("the concept is " + ", ".join(f["concepts"]))
        parts.extend(f"the {label} is {value}" for label, value in f["more"])
        if f["when"] is not None:
            parts.append(f"the release time is {_WEEKDAYS_EN[f['when'].weekday()]} {f['when']:%b} {f['when'].day} {f['when']:%H:%M}")
        photo = f" The photo in the post shows {f['caption']}." if f["caption"] else ""
        return ", ".join(parts), photo

    def _describe_zh(self, f: dict[str, Any], title_phrase: str) -> tuple[str, str]:
        parts = [f"{title_phrase}“{f['title']}”"]
        for name, value in zip(("类别", "子类别"), f["category"]):
            parts.append(f"{name}是{value}")
        if f["concepts"]:
            parts.append("话题是" + "、".join(f["concepts"]))
        parts.extend(f"{label}是{value}" for label, value in f["more"])
        if f["when"] is not None:
            parts.append(f"发布时间是{f['when'].month}月{f['when'].day}日{_WEEKDAYS_ZH[f['when'].weekday()]}{f['when']:%H:%M}")
        photo = f"帖子中的图片显示{f['caption']}。" if f["caption"] else ""
        return "，".join(parts), photo

    def prompt(self, user_id: str, history_rows: Sequence[int], history_scores: Sequence[float], target_row: int) -> str:
        en = self.cfg.language == "en"
        lines = []
        for i, (row, score) in enumerate(zip(history_rows, history_scores), start=1):
            s = self.score_text(score)
            if en:
                text, photo = self._describe_en(self._fields(row), f"The title of post {i} is")
                lines.append(f"{text}.{photo} The popularity score of post {i} is {s}.")
            else:
                text, photo = self._describe_zh(self._fields(row), f"帖子{i}的标题是")
                lines.append(f"{text}。{photo}帖子{i}的流行度得分是{s}。")
        new_id = len(history_rows) + 1
        if en:
            text, photo = self._describe_en(self._fields(target_row), "the title is")
        else:
            text, photo = self._describe_zh(self._fields(target_row), "标题是")
        if en:
            who = f"The target user ID is {user_id}. " if self.cfg.include_user_id else ""
            head = f"{who}The information and popularity of the posts published by this user are as follows:"
            tail = f"The target new post is post {new_id}, {text}.{photo} Provide the popularity score for this new post."
            return f"{INSTRUCTION_EN}\n{head} {' '.join(lines)} {tail}\nAnswer:"
        who = f"目标用户ID是{user_id}。" if self.cfg.include_user_id else ""
        head = f"{who}该用户发布的帖子信息和流行度如下："
        tail = f"目标新帖子是帖子{new_id}，{text}。{photo}请给出这条新帖子的流行度得分。"
        return f"{INSTRUCTION_ZH}\n{head}{''.join(lines)}{tail}\n答案："

    def answer(self, score: float) -> str:
        # English answers carry the leading space the prompt's "Answer:" expects (tokenised with it).
        return (" " if self.cfg.language == "en" else "") + self.score_text(score)


def build_instructions(
    table: pa.Table,
    users: Sequence[UserPosts],
    cfg: InstructionConfig,
    split: str,
    source: str = "<notes>",
) -> list[ColdStartExample]:
    """One example per (user, k in cfg.shots). split='train' asks about C_{n-1}, split='test' about C_n."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    writer = PromptWriter(table, cfg, source)
    note_ids = table.column("note_id").to_pylist()
    examples = []
    for user in users:
        target_pos = len(user.rows) - (2 if split == "train" else 1)
        for k in cfg.shots:
            if k < 1 or target_pos - k < 0:
                raise DataError(
                    f"user {user.user_id} has {len(user.rows)} posts, too few for a {k}-shot {split} question "
                    f"(min_posts must be >= max(shots) + 2)", file=source, field="author_id",
                )
            hist = list(range(target_pos - k, target_pos))
            rows = [user.rows[p] for p in hist]
            scores = [user.scores[p] for p in hist]
            target_row = user.rows[target_pos]
            target = user.scores[target_pos]
            examples.append(ColdStartExample(
                user_id=user.user_id, shots=k, split=split,
                prompt=writer.prompt(user.user_id, rows, scores, target_row),
                answer=writer.answer(target), target=target,
                target_note_id=note_ids[target_row], target_row=target_row,
                history_rows=rows, history_scores=scores,
            ))
    return examples


def examples_to_table(examples: Sequence[ColdStartExample]) -> pa.Table:
    return pa.Table.from_pylist([e.to_dict() for e in examples])


def examples_from_table(table: pa.Table) -> list[ColdStartExample]:
    return [ColdStartExample(**row) for row in table.to_pylist()]


# ---- the instruction set of a source --------------------------------------------------------------------
COLDSTART_SOURCES = ("hackernews", "demo", "notes")


@dataclass
class DataSourceConfig:
    source: str = "hackernews"          # hackernews | demo | notes (a Note-table parquet)
    path: str | None = None             # CSV for hackernews, parquet for notes
    demo_notes: int = 3000
    demo_seed: int = 0
    main_users: int | None = 120        # users giving SFT train (post n-1) and test (post n) questions
    preference_users: int | None = 80   # disjoint users giving the alignment prompts
    seed: int = 0
    instructions: InstructionConfig = field(default_factory=InstructionConfig)

    def __post_init__(self):
        from notellm.errors import ConfigError

        if isinstance(self.instructions, dict):
            self.instructions = InstructionConfig(**self.instructions)
        if self.source not in COLDSTART_SOURCES:
            raise ConfigError(f"data.source must be one of {list(COLDSTART_SOURCES)}, not {self.source!r}")


def load_notes(cfg: DataSourceConfig) -> tuple[pa.Table, str]:
    """The Note table and a name for error messages."""
    from notellm.errors import ConfigError

    if cfg.source == "hackernews":
        from notellm.data.readers import read_hackernews

        if not cfg.path:
            raise ConfigError("data.path must name the Hacker News CSV (hacker_news.csv)")
        return read_hackernews(cfg.path), str(cfg.path)
    if cfg.source == "demo":
        from notellm.data.demo import generate_demo

        corpus = generate_demo(cfg.demo_notes, seed=cfg.demo_seed, n_users=0)  # notes only, no click events
        return corpus.notes, f"<demo n={cfg.demo_notes} seed={cfg.demo_seed}>"
    from notellm.data.schema import read_notes

    if not cfg.path:
        raise ConfigError("data.path must name a Note-table parquet")
    return read_notes(cfg.path), str(cfg.path)


@dataclass
class InstructionSet:
    train: list[ColdStartExample]
    test: list[ColdStartExample]
    preference: list[ColdStartExample]
    notes: pa.Table
    summary: dict[str, Any]


def make_instruction_set(table: pa.Table, cfg: DataSourceConfig, source: str = "<notes>") -> InstructionSet:
    from notellm.errors import ConfigError

    icfg = cfg.instructions
    if icfg.min_posts < max(icfg.shots) + 2:
        raise ConfigError(f"min_posts ({icfg.min_posts}) must be >= max(shots) + 2 = {max(icfg.shots) + 2}")
    users, skips = group_user_posts(table, icfg, source)
    if not users:
        raise DataError(f"no user has >= {icfg.min_posts} posts", file=source, field="author_id")
    main, pref = split_users(users, cfg.main_users, cfg.preference_users, cfg.seed)
    train = build_instructions(table, main, icfg, "train", source)
    test = build_instructions(table, main, icfg, "test", source)
    preference = build_instructions(table, pref, icfg, "test", source)
    summary = dict(
        source=source, notes=len(table), eligible_users=len(users), main_users=len(main),
        preference_users=len(pref), skipped=skips.describe(), shots=icfg.shots,
        train_questions=len(train), test_questions=len(test), preference_prompts=len(preference),
    )
    return InstructionSet(train, test, preference, table, summary)


INSTRUCTIONS_FILE = "instructions.parquet"


def write_instruction_set(data: InstructionSet, out_dir) -> None:
    from pathlib import Path

    from notellm.io import write_json, write_parquet

    rows = data.train + data.test + data.preference
    kinds = ["main"] * (len(data.train) + len(data.test)) + ["preference"] * len(data.preference)
    write_json(data.summary, Path(out_dir) / "users.json")
    write_parquet(examples_to_table(rows).append_column("users", pa.array(kinds)), Path(out_dir) / INSTRUCTIONS_FILE)


def read_instruction_set(out_dir) -> tuple[list[ColdStartExample], list[ColdStartExample], list[ColdStartExample]]:
    """(train, test, preference) questions written by `write_instruction_set`."""
    from pathlib import Path

    from notellm.errors import NotellmError

    path = Path(out_dir) / INSTRUCTIONS_FILE
    if not path.exists():
        raise NotellmError(f"{path} does not exist: run `notellm coldstart sft` first")
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    users = table.column("users").to_pylist()
    examples = examples_from_table(table.drop_columns(["users"]))
    train = [e for e, u in zip(examples, users) if u == "main" and e.split == "train"]
    test = [e for e, u in zip(examples, users) if u == "main" and e.split == "test"]
    pref = [e for e, u in zip(examples, users) if u == "preference"]
    return train, test, pref


# ---- tokens ---------------------------------------------------------------------------------------------
IGNORE = -100


@dataclass
class Encoded:
    prompt_ids: list[int]
    answer_ids: list[int]
    truncated: bool = False


def encode(tokenizer, prompt: str, answer: str, max_length: int) -> Encoded:
    """Prompt tokens (with the tokenizer's BOS) and answer tokens + EOS; an over-long prompt keeps its first
    token (BOS) and its last tokens (the question is at the end)."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] if answer else []
    room = max_length - len(answer_ids)
    truncated = len(prompt_ids) > room
    if truncated:
        prompt_ids = prompt_ids[:1] + prompt_ids[len(prompt_ids) - (room - 1):]
    return Encoded(prompt_ids, answer_ids, truncated)


def collate(items: Sequence[Encoded], pad_id: int) -> dict[str, Any]:
    """Left-padded batch of prompt+answer. Labels are -100 except on answer tokens; every sequence ends at
    the last column, so logits for the last `n_keep` positions cover every answer."""
    import torch

    seqs = [e.prompt_ids + e.answer_ids for e in items]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    for i, (item, seq) in enumerate(zip(items, seqs)):
        start = width - len(seq)
        input_ids[i, start:] = torch.tensor(seq)
        attention[i, start:] = 1
        if item.answer_ids:
            labels[i, width - len(item.answer_ids):] = torch.tensor(item.answer_ids)
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    n_keep = max(len(e.answer_ids) for e in items) + 1
    return dict(input_ids=input_ids, attention_mask=attention, position_ids=position_ids, labels=labels, n_keep=n_keep)
