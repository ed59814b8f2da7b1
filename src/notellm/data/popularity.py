"""Popularity data: targets (weighted log engagement), splits, and features that never look ahead.

Targets. A target is a weighted sum of natural logs, sum_c w_c * ln(count_c + 1), over Note-table count
columns (`likes`, `collects`, `comments`, `shares`, `impressions`). Presets:
- `wlaes` (default): 1.0 ln(likes+1) + 0.5 ln(collects+1) + 0.2 ln(comments+1), as the RedNoob README states;
- `wlaes_rednoob_code`: the same with 2.0 on comments, as RedNoob's training code has it;
- `weibo_wlaes`: 1.0 ln(likes+1) + 0.5 ln(shares+1) + 0.2 ln(comments+1), for Weibo, which has no
  collects (a forward is the closest thing to a save);
- `log_<column>` for each count column alone.
A missing or negative count in a weighted column is a DataError naming the row and field, never a zero.

Splits (a boolean test mask): `random`; `time` (sort by publish time, then note id; the last fraction is
test); `author` (authors hashed with SHA-1 into `folds` folds, fold `test_fold` is test; no author is on
both sides; the hash is stable across runs and machines).

Features (a pandas DataFrame, one row per note, NaN where a value does not exist):
- hand features of the text and publish time (lengths, hashtag / emoji / mention counts, local hour and
  weekday, video flag), known when the note is published;
- note age at crawl time (`note_age_days`, `log_note_age_days`): the crawl time comes from
  extra.crawled_at (MediaCrawler) or an explicit `as_of` time;
- author history: statistics of the targets of the same author's notes published strictly BEFORE the
  note (count, mean, mean of the last k, max, last value, days since the previous note), as the SMP
  challenge winners used. Notes without a known target are not history. The counts of those earlier notes
  are snapshots taken at crawl time, so they include engagement that arrived after the note itself was
  published: that is the information a platform has when it scores a new note, not a look at the future
  of the note being scored.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from notellm.errors import ConfigError, DataError

COUNT_COLUMNS = ("likes", "collects", "comments", "shares", "impressions")
TARGET_PRESETS: dict[str, dict[str, float]] = {
    "wlaes": {"likes": 1.0, "collects": 0.5, "comments": 0.2},
    "wlaes_rednoob_code": {"likes": 1.0, "collects": 0.5, "comments": 2.0},
    "weibo_wlaes": {"likes": 1.0, "shares": 0.5, "comments": 0.2},
    **{f"log_{c}": {c: 1.0} for c in COUNT_COLUMNS},
}
SPLIT_KINDS = ("random", "time", "author")


# ---------------------------------------------------------------------------------------------- targets
@dataclass
class TargetConfig:
    name: str = "wlaes"                         # a preset (see module doc) or any label when weights are given
    weights: dict[str, float] | None = None     # count column -> weight on ln(count + 1); overrides the preset

    def resolved(self) -> dict[str, float]:
        """The column weights in force, checked (known columns, finite numbers, not all zero)."""
        if self.weights is None:
            if self.name not in TARGET_PRESETS:
                raise ConfigError(f"target.name {self.name!r} is not a preset ({sorted(TARGET_PRESETS)}); "
                                  f"give target.weights")
            return dict(TARGET_PRESETS[self.name])
        out: dict[str, float] = {}
        for column, weight in self.weights.items():
            if column not in COUNT_COLUMNS:
                raise ConfigError(f"target.weights: unknown count column {column!r}; known: {list(COUNT_COLUMNS)}")
            try:
                out[column] = float(weight)
            except (TypeError, ValueError):
                raise ConfigError(f"target.weights.{column}: expected a number, got {weight!r}") from None
            if not math.isfinite(out[column]):
                raise ConfigError(f"target.weights.{column}: expected a finite number, got {weight!r}")
        if not any(out.values()):
            raise ConfigError("target.weights: at least one weight must be non-zero")
        return out


def describe_target(weights: dict[str, float]) -> str:
    """`1.0*ln(likes+1) + 0.5*ln(collects+1) + ...` (natural log)."""
    return " + ".join(f"{w:g}*ln({c}+1)" for c, w in weights.items() if w)


def target_values(table: pa.Table, weights: dict[str, float], source: str = "<notes>",
                  missing: str = "error") -> np.ndarray:
    """sum_c w_c ln(count_c + 1) per row. `missing`: "error" (DataError naming row and field) or "nan"."""
    total = np.zeros(table.num_rows)
    for column, weight in weights.items():
        if not weight:
            continue
        if column not in table.column_names:
            raise DataError(f"the target needs column {column!r}, which the table lacks", file=source, field=column)
        values = np.array(table.column(column).to_pylist(), dtype=object)
        bad = np.array([v is None or not isinstance(v, (int, float, np.integer, np.floating))
                        or (isinstance(v, float) and math.isnan(v)) or v < 0 for v in values], dtype=bool)
        if bad.any() and missing == "error":
            i = int(np.flatnonzero(bad)[0])
            what = "missing" if values[i] is None else f"{values[i]!r} is not a count"
            raise DataError(f"count {what} ({int(bad.sum())} row(s) like this); the target "
                            f"{describe_target(weights)} needs it", file=source, row=i + 1, field=column)
        counts = np.where(bad, np.nan, values).astype(float)
        total = total + weight * np.log1p(counts)
    return total


# ----------------------------------------------------------------------------------------------- splits
@dataclass
class SplitConfig:
    kind: str = "author"           # random | time | author
    test_fraction: float = 0.2     # random and time splits
    folds: int = 5                 # author split: authors hashed into this many folds
    test_fold: int = 0
    seed: int = 0                  # random split

    def check(self) -> None:
        if self.kind not in SPLIT_KINDS:
            raise ConfigError(f"split.kind must be one of {list(SPLIT_KINDS)}, not {self.kind!r}")
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"split.test_fraction must be in (0, 1), got {self.test_fraction}")
        if not 0 <= self.test_fold < self.folds:
            raise ConfigError(f"split.test_fold must be in 0..{self.folds - 1}, got {self.test_fold}")


def author_fold(author_id: str, folds: int) -> int:
    """A stable fold for an author (SHA-1 of the id; Python's hash() changes between processes)."""
    return int(hashlib.sha1(author_id.encode("utf-8")).hexdigest(), 16) % folds


def _required_column(table: pa.Table, name: str, source: str) -> list[Any]:
    values = table.column(name).to_pylist()
    for i, v in enumerate(values, start=1):
        if v is None or v == "":
            raise DataError(f"{name} is missing (needed by this split)", file=source, row=i, field=name)
    return values


def publish_seconds(table: pa.Table, source: str = "<notes>", required: bool = True) -> np.ndarray:
    """published_at as float unix seconds (NaN where missing, unless `required`)."""
    if required:
        _required_column(table, "published_at", source)
    col = table.column("published_at").cast(pa.timestamp("s", tz="UTC")).cast(pa.int64())
    return np.array([np.nan if v is None else float(v) for v in col.to_pylist()])


def split_mask(table: pa.Table, cfg: SplitConfig, source: str = "<notes>") -> np.ndarray:
    """Boolean mask: True for test rows."""
    cfg.check()
    n = table.num_rows
    if cfg.kind == "random":
        order = np.random.default_rng(cfg.seed).permutation(n)
        mask = np.zeros(n, dtype=bool)
        mask[order[: int(round(cfg.test_fraction * n))]] = True
        return mask
    if cfg.kind == "time":
        seconds = publish_seconds(table, source)
        ids = np.array(table.column("note_id").to_pylist(), dtype=object)
        order = np.lexsort((ids, seconds))  # ties broken by note id, so the split is reproducible
        mask = np.zeros(n, dtype=bool)
        mask[order[n - int(round(cfg.test_fraction * n)):]] = True
        return mask
    authors = _required_column(table, "author_id", source)
    return np.array([author_fold(str(a), cfg.folds) == cfg.test_fold for a in authors], dtype=bool)


def group_folds(groups: Sequence[Any] | None, n: int, folds: int, seed: int = 0) -> np.ndarray:
    """Fold number per row for cross-fitting: by hashed group (author) when given, else a random permutation."""
    if groups is not None:
        return np.array([author_fold(f"{seed}:{g}", folds) for g in groups], dtype=int)
    fold = np.empty(n, dtype=int)
    fold[np.random.default_rng(seed).permutation(n)] = np.arange(n) % folds
    return fold


# -------------------------------------------------------------------------------------------- text input
def note_text(title: str | None, content: str | None, hashtags: Sequence[str] | None, content_chars: int = 600) -> str:
    """The model's input: RedNoob's title/content layout with the hashtags between them (content is cut
    first, so a long body never pushes the tags out of the window)."""
    parts = [f"帖子标题：{title or ''}"]
    tags = [t for t in (hashtags or []) if t]
    if tags:
        parts.append("帖子话题：" + " ".join(f"#{t}" for t in tags))
    parts.append(f"帖子内容：{(content or '')[:content_chars]}")
    return "\n\n".join(parts)


def note_texts(table: pa.Table, content_chars: int = 600, source: str = "<notes>") -> list[str]:
    """note_text per row; a row with neither title nor content is a DataError naming it."""
    titles, contents = table.column("title").to_pylist(), table.column("content").to_pylist()
    tags = table.column("hashtags").to_pylist() if "hashtags" in table.column_names else [None] * table.num_rows
    out = []
    for i, (t, c, h) in enumerate(zip(titles, contents, tags), start=1):
        for name, value in (("title", t), ("content", c)):
            if value is not None and not isinstance(value, str):
                raise DataError(f"expected text, got {type(value).__name__} {value!r}", file=source, row=i, field=name)
        if not (t or "").strip() and not (c or "").strip():
            raise DataError("the note has no text: title and content are both empty", file=source, row=i,
                            field="content")
        out.append(note_text(t, c, h, content_chars))
    return out


# ------------------------------------------------------------------------------------------ hand features
_PLATFORM_EMOJI = re.compile(r"\[[^\[\]\s]{1,8}R\]")
_UNICODE_EMOJI = re.compile("[\U0001F000-\U0001FAFF\u2600-\u27BF\u2B00-\u2BFF\u3297\u3299]")
_MENTION = re.compile(r"@[\w\-]+")
_URL = re.compile(r"https?://\S+")
HAND_FEATURES = (
    "title_chars", "content_chars", "content_lines", "n_hashtags", "n_platform_emoji", "n_unicode_emoji",
    "n_mentions", "n_urls", "n_digits", "n_exclaims", "n_questions", "hour", "weekday", "is_video",
)
AGE_FEATURES = ("note_age_days", "log_note_age_days")
# ln(1 + author count) from the optional Note columns followers / author_notes / author_likes; used only
# where the table has the column with a value (`author_features_present`), NaN on rows without one
AUTHOR_FEATURES = {"log_followers": "followers", "log_author_notes": "author_notes",
                   "log_author_likes": "author_likes"}


def author_features_present(table: pa.Table) -> tuple[str, ...]:
    """The AUTHOR_FEATURES whose column the table has with at least one value."""
    return tuple(name for name, column in AUTHOR_FEATURES.items()
                 if column in table.column_names and table.column(column).null_count < table.num_rows)


def author_features(table: pa.Table) -> pd.DataFrame:
    out = {}
    for name, column in AUTHOR_FEATURES.items():
        values = table.column(column).to_numpy(zero_copy_only=False).astype("float64") \
            if column in table.column_names else np.full(table.num_rows, np.nan)
        out[name] = np.log1p(np.where(values >= 0, values, np.nan))
    return pd.DataFrame(out)


def _extra(value: str | None) -> dict[str, Any]:
    if not value:
        return {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def hand_features(table: pa.Table, timezone: str = "Asia/Shanghai", source: str = "<notes>") -> pd.DataFrame:
    """Features of the text and the publish time (local `timezone`); all known when the note goes out."""
    titles = [t or "" for t in table.column("title").to_pylist()]
    contents = [c or "" for c in table.column("content").to_pylist()]
    tags = table.column("hashtags").to_pylist() if "hashtags" in table.column_names else [None] * table.num_rows
    extras = [_extra(e) for e in table.column("extra").to_pylist()] if "extra" in table.column_names \
        else [{}] * table.num_rows
    whole = [f"{t}\n{c}" for t, c in zip(titles, contents)]
    seconds = publish_seconds(table, source, required=False)
    local = pd.to_datetime(pd.Series(seconds), unit="s", utc=True).dt.tz_convert(timezone)
    return pd.DataFrame({
        "title_chars": [len(t) for t in titles],
        "content_chars": [len(c) for c in contents],
        "content_lines": [c.count("\n") + 1 if c else 0 for c in contents],
        "n_hashtags": [len(h or []) for h in tags],
        "n_platform_emoji": [len(_PLATFORM_EMOJI.findall(w)) for w in whole],
        "n_unicode_emoji": [len(_UNICODE_EMOJI.findall(w)) for w in whole],
        "n_mentions": [len(_MENTION.findall(w)) for w in whole],
        "n_urls": [len(_URL.findall(w)) for w in whole],
        "n_digits": [sum(ch.isdigit() for ch in w) for w in whole],
        "n_exclaims": [w.count("!") + w.count("！") for w in whole],
        "n_questions": [w.count("?") + w.count("？") for w in whole],
        "hour": local.dt.hour.astype(float).to_numpy(),
        "weekday": local.dt.day_of_week.astype(float).to_numpy(),
        "is_video": [1.0 if e.get("type") == "video" else 0.0 for e in extras],
    })


def crawl_seconds(table: pa.Table, as_of: str | None = None, source: str = "<notes>") -> np.ndarray:
    """When each note's counts were observed: `as_of` for all rows, else extra.crawled_at per row."""
    if as_of is not None:
        try:
            moment = pd.Timestamp(as_of)
        except ValueError:
            raise DataError(f"as_of {as_of!r} is not a date-time", field="as_of") from None
        moment = moment.tz_localize("UTC") if moment.tzinfo is None else moment
        return np.full(table.num_rows, moment.timestamp())
    extras = table.column("extra").to_pylist() if "extra" in table.column_names else [None] * table.num_rows
    out = np.empty(table.num_rows)
    for i, e in enumerate(extras, start=1):
        raw = _extra(e).get("crawled_at")
        if raw is None:
            raise DataError("note age needs the crawl time: extra.crawled_at is missing (or give as_of)",
                            file=source, row=i, field="extra.crawled_at")
        try:
            out[i - 1] = pd.Timestamp(raw).timestamp()
        except ValueError:
            raise DataError(f"extra.crawled_at {raw!r} is not a date-time", file=source, row=i,
                            field="extra.crawled_at") from None
    return out


def age_features(table: pa.Table, as_of: str | None = None, source: str = "<notes>") -> pd.DataFrame:
    """Days between publication and crawl (clipped at 0: crawl dates are whole days), and its log."""
    days = np.clip((crawl_seconds(table, as_of, source) - publish_seconds(table, source)) / 86400.0, 0, None)
    return pd.DataFrame({"note_age_days": days, "log_note_age_days": np.log1p(days)})


# --------------------------------------------------------------------------------------- author history
@dataclass
class HistoryConfig:
    windows: list[int] = field(default_factory=lambda: [3, 10])   # means of the last k earlier notes


def history_feature_names(cfg: HistoryConfig | None = None) -> list[str]:
    cfg = cfg or HistoryConfig()
    return (["author_prev_count", "author_prev_mean"] + [f"author_prev_mean_last{k}" for k in cfg.windows]
            + ["author_prev_max", "author_prev_last", "author_days_since_prev"])


def author_history_features(author_ids: Sequence[Any], seconds: np.ndarray, targets: np.ndarray,
                            cfg: HistoryConfig | None = None) -> pd.DataFrame:
    """For each note, statistics of its author's notes published strictly before it (ties excluded).

    `targets` may hold NaN for notes whose engagement is unknown: they are never history. Notes without an
    author or a publish time get NaN features (count 0).
    """
    cfg = cfg or HistoryConfig()
    n = len(author_ids)
    names = history_feature_names(cfg)
    out = {name: np.full(n, np.nan) for name in names}
    out["author_prev_count"] = np.zeros(n)
    seconds = np.asarray(seconds, dtype=float)
    targets = np.asarray(targets, dtype=float)
    groups: dict[Any, list[int]] = {}
    for i, a in enumerate(author_ids):
        if a is not None and a != "" and not math.isnan(seconds[i]):
            groups.setdefault(a, []).append(i)
    for rows in groups.values():
        rows_arr = np.asarray(rows)
        known = rows_arr[~np.isnan(targets[rows_arr])]
        known = known[np.argsort(seconds[known], kind="stable")]
        if len(known) == 0:
            continue
        t_hist, y_hist = seconds[known], targets[known]
        prefix = np.concatenate([[0.0], np.cumsum(y_hist)])
        prefix_max = np.maximum.accumulate(y_hist)
        k = np.searchsorted(t_hist, seconds[rows_arr], side="left")  # earlier notes: time strictly smaller
        has = k > 0
        idx, kk = rows_arr[has], k[has]
        out["author_prev_count"][rows_arr] = k
        out["author_prev_mean"][idx] = prefix[kk] / kk
        for w in cfg.windows:
            lo = np.maximum(kk - w, 0)
            out[f"author_prev_mean_last{w}"][idx] = (prefix[kk] - prefix[lo]) / (kk - lo)
        out["author_prev_max"][idx] = prefix_max[kk - 1]
        out["author_prev_last"][idx] = y_hist[kk - 1]
        out["author_days_since_prev"][idx] = (seconds[idx] - t_hist[kk - 1]) / 86400.0
    return pd.DataFrame(out)


def author_history_prompts(author_ids: Sequence[Any], seconds: np.ndarray, titles: Sequence[str],
                           targets: np.ndarray, k: int, window_days: float = 0.0, title_chars: int = 30,
                           visible: np.ndarray | None = None) -> list[str]:
    """For each note, a text block of its author's `k` latest notes published strictly before it (within
    `window_days` when > 0), each with its known target: the history a model reads before the note itself
    (the MultiSmpLLM idea). Notes whose target is unknown (NaN) or not `visible` are never history; "" when a
    note has no such earlier note. The note's own target never appears in its block."""
    n = len(author_ids)
    seconds = np.asarray(seconds, dtype=float)
    targets = np.asarray(targets, dtype=float)
    usable = np.isfinite(targets) & np.isfinite(seconds)
    if visible is not None:
        usable &= np.asarray(visible, dtype=bool)
    out = [""] * n
    if k <= 0:
        return out
    groups: dict[Any, list[int]] = {}
    for i, a in enumerate(author_ids):
        if a is not None and a != "" and np.isfinite(seconds[i]):
            groups.setdefault(a, []).append(i)
    for rows in groups.values():
        known = np.asarray([i for i in rows if usable[i]], dtype=int)
        if len(known) == 0:
            continue
        known = known[np.argsort(seconds[known], kind="stable")]
        t_hist = seconds[known]
        for i in rows:
            end = int(np.searchsorted(t_hist, seconds[i], side="left"))  # strictly earlier
            start = max(0, end - k)
            if window_days > 0:
                start = max(start, int(np.searchsorted(t_hist, seconds[i] - window_days * 86400.0, side="left")))
            if end <= start:
                continue
            lines = [f"《{(titles[j] or '').strip()[:title_chars]}》热度 {targets[j]:.1f}" for j in known[start:end]]
            out[i] = "作者之前的笔记：\n" + "\n".join(lines) + "\n\n"
    return out


def history_prompted_texts(table: pa.Table, texts: Sequence[str], targets: np.ndarray, k: int,
                           window_days: float = 0.0, source: str = "<notes>",
                           test: np.ndarray | None = None) -> list[str]:
    """`texts` with each note's author-history block (`author_history_prompts`) in front. With a `test` mask,
    training notes read only training notes' targets (nothing of the test side leaks into training inputs);
    test notes read every earlier note, as the GBDT's author-history features do."""
    if k <= 0:
        return list(texts)
    seconds = publish_seconds(table, source, required=False)
    authors, titles = table.column("author_id").to_pylist(), table.column("title").to_pylist()
    full = author_history_prompts(authors, seconds, titles, targets, k, window_days)
    if test is None:
        return [h + t for h, t in zip(full, texts)]
    train_view = author_history_prompts(authors, seconds, titles, targets, k, window_days, visible=~test)
    return [(full[i] if test[i] else train_view[i]) + texts[i] for i in range(len(texts))]


# ------------------------------------------------------------------------------------------ all together
def feature_frame(table: pa.Table, names: Sequence[str], targets: np.ndarray | None = None, *,
                  timezone: str = "Asia/Shanghai", as_of: str | None = None, history: HistoryConfig | None = None,
                  source: str = "<notes>") -> pd.DataFrame:
    """The named features for every row (hand, age and author-history features may be mixed).

    `targets` (NaN where unknown) feed the author-history features; without them the targets are computed
    from the table's counts where present.
    """
    names = list(names)
    hist_names = history_feature_names(history)
    known = set(HAND_FEATURES) | set(AGE_FEATURES) | set(AUTHOR_FEATURES) | set(hist_names)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"unknown feature(s) {unknown}; known: {sorted(known)}")
    parts = []
    if any(n in HAND_FEATURES for n in names):
        parts.append(hand_features(table, timezone, source))
    if any(n in AGE_FEATURES for n in names):
        parts.append(age_features(table, as_of, source))
    if any(n in AUTHOR_FEATURES for n in names):
        parts.append(author_features(table))
    if any(n in hist_names for n in names):
        if targets is None:
            raise ConfigError("author-history features need the targets of earlier notes")
        seconds = publish_seconds(table, source, required=False)
        parts.append(author_history_features(table.column("author_id").to_pylist(), seconds, targets, history))
    if not parts:
        return pd.DataFrame(index=range(table.num_rows))
    return pd.concat(parts, axis=1)[names]


# ------------------------------------------------------------------------------------- a prepared split
POPULARITY_SOURCES = ("mediacrawler", "weibo", "notes", "demo")


@dataclass
class DataConfig:
    source: str = "mediacrawler"       # mediacrawler (xhs_note.csv) | weibo (folder of CSVs) | notes (parquet) |
                                       # demo (`notellm data demo` notes, generated)
    path: str = ""                     # the file or folder of the source (demo: unused)
    timezone: str = "Asia/Shanghai"    # local time for hour / weekday features
    as_of: str | None = None           # crawl time for note age when the table has no extra.crawled_at
    demo_notes: int = 2000             # demo: how many notes
    demo_seed: int = 0

    def __post_init__(self):
        if self.source not in POPULARITY_SOURCES:
            raise ConfigError(f"data.source must be one of {list(POPULARITY_SOURCES)}, not {self.source!r}")


def load_notes(cfg: DataConfig) -> tuple[pa.Table, str]:
    """The Note table of the configured source, and a name for messages."""
    if cfg.source == "demo":
        from notellm.data.demo import generate_demo

        return generate_demo(cfg.demo_notes, seed=cfg.demo_seed, n_users=0).notes, \
            f"<demo n={cfg.demo_notes} seed={cfg.demo_seed}>"
    if not cfg.path:
        raise ConfigError(f"data.path is empty (data.source={cfg.source} reads a file)")
    if cfg.source == "mediacrawler":
        from notellm.data.readers import read_mediacrawler

        return read_mediacrawler(cfg.path), str(cfg.path)
    if cfg.source == "weibo":
        from notellm.data.readers import read_weibo

        return read_weibo(cfg.path), str(cfg.path)
    from notellm.data.schema import read_notes

    return read_notes(cfg.path), str(cfg.path)


@dataclass
class PreparedData:
    """Everything the popularity models share: the table, target, test mask, inputs and feature blocks."""

    table: pa.Table
    source: str
    y: np.ndarray
    test: np.ndarray                   # bool mask
    texts: list[str]
    hand: pd.DataFrame
    age: pd.DataFrame | None           # None when the source has no crawl time
    history: pd.DataFrame
    authors: list[Any]
    note_ids: list[str]

    @property
    def train_idx(self) -> np.ndarray:
        return np.flatnonzero(~self.test)

    @property
    def test_idx(self) -> np.ndarray:
        return np.flatnonzero(self.test)


def prepare_data(data: DataConfig, target: TargetConfig, split: SplitConfig, history: HistoryConfig,
                 content_chars: int = 600, table: pa.Table | None = None, source: str = "<notes>") -> PreparedData:
    """Read the source (or take `table`), compute the target, the split and every feature block."""
    split.check()
    if table is None:
        table, source = load_notes(data)
    y = target_values(table, target.resolved(), source)
    test = split_mask(table, split, source)
    if test.all() or not test.any():
        raise DataError(f"the {split.kind} split leaves {int(test.sum())} of {len(test)} notes for test",
                        file=source)
    hand = feature_frame(table, HAND_FEATURES + author_features_present(table), timezone=data.timezone, source=source)
    try:
        age = feature_frame(table, AGE_FEATURES, as_of=data.as_of, source=source)
    except DataError:
        if data.as_of is not None:
            raise
        age = None  # no crawl time in the data: models that need note age say so when asked for it
    hist = feature_frame(table, history_feature_names(history), y, history=history, source=source)
    return PreparedData(table, source, y, test, note_texts(table, content_chars, source), hand, age, hist,
                        table.column("author_id").to_pylist(), table.column("note_id").to_pylist())
