"""Popularity prediction (RedNoob): LoRA regression on a causal LM, honest baselines, a stacked model.

    cfg = load_config(PopularityConfig, "configs/popularity_xhs.yaml", ["train.epochs=2"])
    model_dir = train(cfg)                       # LoRA + head on the train split -> output_dir/model
    report = evaluate(cfg, model_dir=model_dir)  # mean, median, TF-IDF, LightGBM, the model: same test rows

Training: notes become `note_text` (title, hashtags, content), tokenised once, cut to `max_length` (the
optional `suffix` is kept at the end); each epoch shuffles the notes, sorts chunks of `bucket_batches`
batches by length and pads each batch only to its own longest note (dynamic padding). Targets (and the
head's extra features) are standardised with training statistics, stored in the model folder. bf16
autocast is used on CPUs that support it (AMX / AVX512-BF16) when `train.bf16` is `auto`.

Baselines, all fitted on the same training rows: mean, median, TF-IDF (character n-grams) + ridge,
LightGBM on hand features, LightGBM on hand features + TF-IDF reduced by truncated SVD, and LightGBM on
everything without the LLM (adding a cross-fitted TF-IDF ridge score). Note age and author-history
features join the GBDT inputs where `eval.use_age` / `eval.use_history` allow.

Stack: the LLM is cross-fitted (`eval.stack_folds` models, each trained on the other folds of the
training rows, or of a random `eval.stack_max_notes` of them): each of those training notes gets a score
from a model that never saw it; a test note gets the mean of the fold models' scores (also reported alone
as the LLM row). Two level-2 models use it: LightGBM on all GBDT features + the LLM score ("stack"), and a
ridge over the out-of-fold LightGBM and LLM scores ("blend").
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from notellm.data.popularity import (
    AGE_FEATURES,
    HAND_FEATURES,
    HistoryConfig,
    SplitConfig,
    TargetConfig,
    describe_target,
    feature_frame,
    group_folds,
    history_feature_names,
    note_texts,
    split_mask,
    target_values,
)
from notellm.errors import ConfigError, DataError, NotellmError
from notellm.io import read_json, write_json, write_parquet
from notellm.models.regression import LoraSpec

Log = Callable[[str], None]
LOSSES = ("mse", "huber")
SOURCES = ("mediacrawler", "weibo", "notes")


def _quiet(_: str) -> None:
    pass


# ----------------------------------------------------------------------------------------------- config
@dataclass
class DataConfig:
    source: str = "mediacrawler"       # mediacrawler (xhs_note.csv) | weibo (folder of CSVs) | notes (parquet)
    path: str = ""
    timezone: str = "Asia/Shanghai"    # local time for hour / weekday features
    as_of: str | None = None           # crawl time for note age when the table has no extra.crawled_at


@dataclass
class ModelConfig:
    backbone: str = "gemma-3-270m"
    backbone_seed: int = 0             # only matters for random test backbones (tiny-qwen3)
    max_length: int = 128              # tokens per note, suffix included
    content_chars: int = 600           # content is cut to this many characters before tokenising
    suffix: str = ""                   # text always kept after the (cut) note; "" = RedNoob's input exactly
    features: list[str] = field(default_factory=list)  # numeric features concatenated to the head input
    lora: LoraSpec = field(default_factory=LoraSpec)


@dataclass
class TrainConfig:
    epochs: float = 1.0
    batch_size: int = 8
    lr: float = 3e-4                   # LoRA weights
    head_lr: float = 1e-4              # the regression head (its inputs are unit-scale)
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    loss: str = "huber"                # mse | huber (on standardised targets)
    huber_delta: float = 1.0
    max_grad_norm: float = 1.0
    bucket_batches: int = 16           # length-sorting window, in batches
    padding_side: str = "right"        # right | left (scores are the same either way)
    bf16: str = "auto"                 # auto | true | false: bf16 autocast
    device: str = "auto"               # auto (cuda if available) | cpu | cuda
    threads: int = 0                   # torch threads (0: leave torch's default)
    time_budget_min: float = 0.0       # stop after this many minutes, probe pass included (0: no limit); recorded
    head_init: str = "ridge"           # ridge: start the head from a ridge fit on the frozen states (LP-FT) | zeros
    eval_batch_size: int = 16
    seed: int = 0
    log_every: int = 10


@dataclass
class EvalConfig:
    bootstrap: int = 1000
    seed: int = 0
    use_age: bool = True               # note age at crawl time in the GBDT features (and the stack)
    use_history: bool = True           # author-history features in the GBDT features (and the stack)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    tfidf_ngram_min: int = 1
    tfidf_ngram_max: int = 3
    tfidf_max_features: int = 50000
    svd_components: int = 64
    ridge_alphas: list[float] = field(default_factory=lambda: [0.3, 1.0, 3.0, 10.0, 30.0])
    lgbm_rounds: int = 400
    lgbm_learning_rate: float = 0.03
    lgbm_leaves: int = 15
    lgbm_min_child_samples: int = 20
    lgbm_objective: str = "regression"  # regression (L2) | huber | l1
    inner_folds: int = 5               # cross-fitting of the TF-IDF ridge score fed to the GBDT
    stack_folds: int = 2               # LLM models cross-fitted for the stack (>= 2)
    stack_max_notes: int = 0           # cross-fit on at most this many training notes (0: all); the rest get no
                                       # LLM score and the stacks are fitted on the notes that have one
    stack_embedding_dims: int = 0      # PCA dims of the LLM's pooled states added to the stack (0: score only)


@dataclass
class PopularityConfig:
    data: DataConfig = field(default_factory=DataConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "runs/popularity"

    def check(self) -> None:
        if self.data.source not in SOURCES:
            raise ConfigError(f"data.source must be one of {list(SOURCES)}, not {self.data.source!r}")
        if self.train.loss not in LOSSES:
            raise ConfigError(f"train.loss must be one of {list(LOSSES)}, not {self.train.loss!r}")
        if self.train.head_init not in ("ridge", "zeros"):
            raise ConfigError(f"train.head_init must be ridge or zeros, not {self.train.head_init!r}")
        if self.train.padding_side not in ("left", "right"):
            raise ConfigError(f"train.padding_side must be left or right, not {self.train.padding_side!r}")
        if self.train.batch_size < 1 or self.train.epochs <= 0:
            raise ConfigError("train.batch_size must be >= 1 and train.epochs > 0")
        self.split.check()
        self.target.resolved()


# ------------------------------------------------------------------------------------------------- data
def load_notes(cfg: DataConfig) -> tuple[pa.Table, str]:
    """The Note table of the configured source, and a name for messages."""
    if not cfg.path:
        raise ConfigError("data.path is empty")
    path = Path(cfg.path)
    if cfg.source == "mediacrawler":
        from notellm.data.readers import read_mediacrawler

        return read_mediacrawler(path), str(path)
    if cfg.source == "weibo":
        from notellm.data.readers import read_weibo

        return read_weibo(path), str(path)
    if cfg.source == "notes":
        from notellm.data.schema import read_notes

        return read_notes(path), str(path)
    raise ConfigError(f"data.source must be one of {list(SOURCES)}, not {cfg.source!r}")


@dataclass
class PreparedData:
    """Everything the models share: the table, target, test mask, inputs and feature blocks."""

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


def prepare_data(cfg: PopularityConfig, table: pa.Table | None = None, source: str = "<notes>") -> PreparedData:
    cfg.check()
    if table is None:
        table, source = load_notes(cfg.data)
    y = target_values(table, cfg.target.resolved(), source)
    test = split_mask(table, cfg.split, source)
    if test.all() or not test.any():
        raise DataError(f"the {cfg.split.kind} split leaves {int(test.sum())} of {len(test)} notes for test",
                        file=source)
    hand = feature_frame(table, HAND_FEATURES, timezone=cfg.data.timezone, source=source)
    try:
        age = feature_frame(table, AGE_FEATURES, as_of=cfg.data.as_of, source=source)
    except DataError:
        if cfg.data.as_of is not None:
            raise
        age = None  # no crawl time in the data: models that need note age say so when asked for it
    history = feature_frame(table, history_feature_names(cfg.eval.history), y, history=cfg.eval.history, source=source)
    return PreparedData(table, source, y, test, note_texts(table, cfg.model.content_chars, source), hand, age, history,
                        table.column("author_id").to_pylist(), table.column("note_id").to_pylist())


def head_features(cfg: PopularityConfig, table: pa.Table, targets: np.ndarray | None, source: str) -> np.ndarray | None:
    """The head's extra features (raw, NaN where undefined) for every row, or None when it has none."""
    names = list(cfg.model.features)
    if not names:
        return None
    frame = feature_frame(table, names, targets, timezone=cfg.data.timezone, as_of=cfg.data.as_of,
                          history=cfg.eval.history, source=source)
    return frame.to_numpy(dtype=float)


@dataclass
class Standardizer:
    mean: list[float]
    std: list[float]

    @classmethod
    def fit(cls, x: np.ndarray) -> "Standardizer":
        x = np.asarray(x, dtype=float).reshape(len(x), -1)
        with np.errstate(invalid="ignore"):
            mean = np.nan_to_num(np.nanmean(x, axis=0)) if len(x) else np.zeros(x.shape[1])
            std = np.nan_to_num(np.nanstd(x, axis=0)) if len(x) else np.ones(x.shape[1])
        std = np.where(std > 0, std, 1.0)
        return cls(mean.tolist(), std.tolist())

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Standardise; NaN (a feature that does not exist for a note, e.g. no earlier post) -> 0, the mean."""
        z = (np.asarray(x, dtype=float).reshape(len(x), -1) - np.asarray(self.mean)) / np.asarray(self.std)
        return np.nan_to_num(z, nan=0.0)


# ------------------------------------------------------------------------------------------- tokenising
def encode_texts(tokenizer, texts: Sequence[str], max_length: int, suffix: str = "") -> tuple[list[list[int]], int]:
    """Token ids per text, cut to `max_length` with `suffix` always kept at the end; and how many were cut."""
    suffix_ids = tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else []
    room = max_length - len(suffix_ids)
    if room < 2:
        raise ConfigError(f"model.max_length {max_length} leaves no room beside the suffix ({len(suffix_ids)} tokens)")
    ids = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    truncated = sum(len(x) > room for x in ids)
    return [list(x[:room]) + suffix_ids for x in ids], truncated


def collate(ids: Sequence[Sequence[int]], pad_id: int, side: str = "right"):
    """(input_ids, attention_mask) padded to the longest row of this batch only."""
    import torch

    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        sl = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
        input_ids[i, sl] = torch.tensor(row, dtype=torch.long)
        mask[i, sl] = 1
    return input_ids, mask


def length_bucketed_batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator,
                            bucket_batches: int = 16) -> list[np.ndarray]:
    """Shuffle, sort windows of `bucket_batches` batches by length, cut into batches, shuffle the batches:
    random order, little padding."""
    lengths = np.asarray(lengths)
    order = rng.permutation(len(lengths))
    window = batch_size * max(1, bucket_batches)
    batches: list[np.ndarray] = []
    for start in range(0, len(order), window):
        part = order[start:start + window]
        part = part[np.argsort(-lengths[part], kind="stable")]
        batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def epoch_batches(lengths: Sequence[int], batch_size: int, epochs: float, seed: int, bucket_batches: int) -> list[np.ndarray]:
    """Batches for `epochs` passes (a fractional last epoch takes the first batches of its shuffle)."""
    per_epoch = math.ceil(len(lengths) / batch_size)
    total = max(1, round(per_epoch * epochs))
    out: list[np.ndarray] = []
    epoch = 0
    while len(out) < total:
        out.extend(length_bucketed_batches(lengths, batch_size, np.random.default_rng([seed, epoch]), bucket_batches))
        epoch += 1
    return out[:total]


# ------------------------------------------------------------------------------------------------ torch
def cpu_bf16_works() -> bool:
    """True when this CPU runs bf16 matmuls natively (oneDNN says so and a tiny autocast matmul runs)."""
    import torch

    try:
        if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            return False
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = torch.ones(8, 8) @ torch.ones(8, 8)
        return out.dtype == torch.bfloat16 and bool(out[0, 0] == 8)
    except (RuntimeError, AttributeError):
        return False


def resolve_device(setting: str) -> str:
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def resolve_bf16(setting: str | bool, device: str) -> bool:
    import torch

    if setting in (True, "true"):
        return True
    if setting in (False, "false"):
        return False
    if setting != "auto":
        raise ConfigError(f"train.bf16 must be auto, true or false, not {setting!r}")
    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    return cpu_bf16_works()


def _setup_torch(tcfg: TrainConfig) -> None:
    import torch

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # busy-waiting OpenMP threads slow a shared CPU
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)


def pooled_states(model, ids: Sequence[Sequence[int]], pad_id: int, *, batch_size: int = 16, device: str = "cpu",
                  bf16: bool = False, padding_side: str = "right", log: Log = _quiet) -> np.ndarray:
    """Last-real-token states (float32, N x hidden) without gradients, in batches of similar length."""
    import torch

    order = np.argsort([-len(x) for x in ids], kind="stable")
    out: np.ndarray | None = None
    with torch.no_grad():
        for b, start in enumerate(range(0, len(order), batch_size)):
            idx = order[start:start + batch_size]
            input_ids, mask = collate([ids[i] for i in idx], pad_id, padding_side)
            with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
                pooled = model.pooled(input_ids.to(device), mask.to(device))
            if out is None:
                out = np.empty((len(ids), pooled.shape[-1]), dtype=np.float32)
            out[idx] = pooled.float().cpu().numpy()
            if b % 20 == 0:
                log(f"encoded {min(start + batch_size, len(ids))}/{len(ids)}")
    return out


def head_scores(model, pooled: np.ndarray, features: np.ndarray | None) -> np.ndarray:
    import torch

    with torch.no_grad():
        feats = None if features is None else torch.tensor(features, dtype=torch.float32)
        return model.score(torch.tensor(pooled), feats).cpu().numpy().astype(float)


def ridge_head_init(model, pooled: np.ndarray, features: np.ndarray | None, y_std: np.ndarray) -> float:
    """Set the head to a ridge fit (alpha by GCV) on the frozen backbone's head inputs; return alpha."""
    import torch
    from sklearn.linear_model import RidgeCV

    with torch.no_grad():
        feats = None if features is None else torch.tensor(features, dtype=torch.float32)
        x = model.head_input(torch.tensor(pooled), feats).numpy()
    ridge = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(x, y_std)
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor(ridge.coef_, dtype=torch.float32)[None, :])
        model.head.bias.fill_(float(ridge.intercept_))
    return float(ridge.alpha_)


# --------------------------------------------------------------------------------------------- training
@dataclass
class FitResult:
    model: Any
    tokenizer: Any
    target_norm: Standardizer
    feature_norm: Standardizer | None
    info: dict[str, Any]


def regression_loss(pred, target, kind: str, delta: float):
    import torch.nn.functional as F

    if kind == "mse":
        return F.mse_loss(pred, target)
    return F.huber_loss(pred, target, delta=delta)


def fit_regressor(cfg: PopularityConfig, texts: Sequence[str], y: np.ndarray, features: np.ndarray | None = None,
                  log: Log = _quiet) -> FitResult:
    """Train LoRA + head on (texts, y[, features]); return the model in eval mode and what it needs to predict."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    from notellm.models.regression import build_regressor

    tcfg, mcfg = cfg.train, cfg.model
    _setup_torch(tcfg)
    device = resolve_device(tcfg.device)
    bf16 = resolve_bf16(tcfg.bf16, device)
    n_features = 0 if features is None else features.shape[1]
    if n_features != len(mcfg.features):
        raise ConfigError(f"model.features names {len(mcfg.features)} features but {n_features} were given")
    torch.manual_seed(tcfg.seed)
    model, tokenizer = build_regressor(mcfg.backbone, n_features, mcfg.lora, seed=mcfg.backbone_seed)
    model.to(device).train()
    ids, truncated = encode_texts(tokenizer, texts, mcfg.max_length, mcfg.suffix)
    y_norm = Standardizer.fit(np.asarray(y)[:, None])
    y_std = torch.tensor(y_norm.transform(np.asarray(y)[:, None])[:, 0], dtype=torch.float32)
    f_norm = Standardizer.fit(features) if features is not None else None
    f_std = torch.tensor(f_norm.transform(features), dtype=torch.float32) if f_norm is not None else None
    probe: dict[str, Any] = {}
    start = time.time()  # the time budget covers the probe pass too
    if tcfg.head_init == "ridge":  # linear probe first, then fine-tune (LP-FT): LoRA starts from a useful head
        t0 = time.time()
        model.eval()
        states = pooled_states(model, ids, tokenizer.pad_token_id, batch_size=tcfg.eval_batch_size, device=device,
                               bf16=bf16, padding_side=tcfg.padding_side)
        alpha = ridge_head_init(model, states, None if f_std is None else f_std.numpy(), y_std.numpy())
        probe = dict(alpha=alpha, seconds=round(time.time() - t0, 1))
        model.train()
        log(f"head initialised by ridge (alpha {alpha:g}) on frozen states in {probe['seconds']}s")
    batches = epoch_batches([len(x) for x in ids], tcfg.batch_size, tcfg.epochs, tcfg.seed, tcfg.bucket_batches)
    lora_params = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
    opt = torch.optim.AdamW([
        {"params": lora_params, "lr": tcfg.lr, "weight_decay": tcfg.weight_decay},
        {"params": list(model.head.parameters()), "lr": tcfg.head_lr, "weight_decay": 0.0},
    ])
    sched = get_linear_schedule_with_warmup(opt, int(tcfg.warmup_ratio * len(batches)), len(batches))
    params = lora_params + list(model.head.parameters())
    losses: list[float] = []
    tokens = padded = 0
    stopped_early = False
    log(f"training {mcfg.backbone} on {len(ids)} notes: {len(batches)} steps of {tcfg.batch_size}, bf16={bf16}, "
        f"{truncated} notes cut to {mcfg.max_length} tokens")
    for step, idx in enumerate(batches, start=1):
        input_ids, mask = collate([ids[i] for i in idx], tokenizer.pad_token_id, tcfg.padding_side)
        tokens += int(mask.sum())
        padded += mask.numel()
        feats = f_std[idx].to(device) if f_std is not None else None
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            pred = model(input_ids.to(device), mask.to(device), feats)
        loss = regression_loss(pred.float(), y_std[idx].to(device), tcfg.loss, tcfg.huber_delta)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, tcfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        elapsed = time.time() - start
        if step % tcfg.log_every == 0 or step == len(batches):
            recent = losses[-tcfg.log_every:]
            log(f"step {step}/{len(batches)} loss {sum(recent) / len(recent):.4f} ({elapsed:.0f}s)")
        if tcfg.time_budget_min and elapsed > 60 * tcfg.time_budget_min and step < len(batches):
            stopped_early = True
            log(f"time budget of {tcfg.time_budget_min} min reached after {step}/{len(batches)} steps")
            break
    model.eval()
    info = dict(notes=len(ids), head_init=tcfg.head_init, probe=probe, steps_planned=len(batches), steps=len(losses),
                stopped_early=stopped_early,
                seconds=round(time.time() - start, 1), bf16=bf16, device=device, truncated_notes=truncated,
                tokens=tokens, padding_share=round(1 - tokens / max(padded, 1), 4), losses=losses)
    return FitResult(model, tokenizer, y_norm, f_norm, info)


def predict_scores(model, tokenizer, texts: Sequence[str], features: np.ndarray | None, *, target_norm: Standardizer,
                   feature_norm: Standardizer | None, max_length: int, suffix: str = "", batch_size: int = 16,
                   bf16: str | bool = "auto", device: str = "auto", padding_side: str = "right",
                   return_pooled: bool = False, log: Log = _quiet):
    """Scores on the target's scale for `texts` (sorted by length into batches, returned in input order)."""
    device = resolve_device(device)
    model.to(device).eval()
    ids, _ = encode_texts(tokenizer, texts, max_length, suffix)
    pooled = pooled_states(model, ids, tokenizer.pad_token_id, batch_size=batch_size, device=device,
                           bf16=resolve_bf16(bf16, device), padding_side=padding_side, log=log)
    model.to("cpu")
    scores = head_scores(model, pooled, None if feature_norm is None else feature_norm.transform(features))
    scores = scores * target_norm.std[0] + target_norm.mean[0]
    return (scores, pooled) if return_pooled else scores


def predict_fit(fit: FitResult, cfg: PopularityConfig, texts: Sequence[str], features: np.ndarray | None,
                return_pooled: bool = False, log: Log = _quiet):
    return predict_scores(fit.model, fit.tokenizer, texts, features, target_norm=fit.target_norm,
                          feature_norm=fit.feature_norm, max_length=cfg.model.max_length, suffix=cfg.model.suffix,
                          batch_size=cfg.train.eval_batch_size, bf16=cfg.train.bf16, device=cfg.train.device,
                          padding_side=cfg.train.padding_side, return_pooled=return_pooled, log=log)


def model_metadata(cfg: PopularityConfig, fit: FitResult) -> dict[str, Any]:
    """Everything `load_regressor` and `predict` need to rebuild inputs exactly as in training."""
    weights = cfg.target.resolved()
    return {
        "format": 1,
        "backbone": cfg.model.backbone,
        "backbone_seed": cfg.model.backbone_seed,
        "lora": asdict(cfg.model.lora),
        "input": {"template": "帖子标题：<title>\\n\\n帖子话题：<#tags>\\n\\n帖子内容：<content>",
                  "content_chars": cfg.model.content_chars, "max_length": cfg.model.max_length,
                  "suffix": cfg.model.suffix, "pooling": "last non-padding token"},
        "target": {"name": cfg.target.name, "weights": weights, "formula": describe_target(weights), "log": "natural",
                   "mean": fit.target_norm.mean[0], "std": fit.target_norm.std[0]},
        "features": {"names": list(cfg.model.features),
                     "mean": fit.feature_norm.mean if fit.feature_norm else [],
                     "std": fit.feature_norm.std if fit.feature_norm else [],
                     "timezone": cfg.data.timezone, "history": asdict(cfg.eval.history),
                     "missing": "standardised, then NaN -> 0 (the training mean)"},
        "train": {k: v for k, v in fit.info.items() if k != "losses"},
        "config": asdict(cfg),
    }


def save_fit(fit: FitResult, cfg: PopularityConfig, out_dir: str | Path, train_note_ids: Sequence[str]) -> Path:
    from notellm.models.regression import save_regressor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json({"note_ids": list(train_note_ids)}, out / "train_note_ids.json")
    write_json({"losses": fit.info["losses"]}, out / "train_losses.json")
    return save_regressor(fit.model, out, model_metadata(cfg, fit))


def train(cfg: PopularityConfig, log: Log = _quiet, data: PreparedData | None = None) -> Path:
    """Train on the configured split's training rows; save output_dir/model; score the test rows."""
    from notellm.evaluation.regression import regression_metrics

    data = data or prepare_data(cfg)
    feats = head_features(cfg, data.table, data.y, data.source)
    tr, te = data.train_idx, data.test_idx
    fit = fit_regressor(cfg, [data.texts[i] for i in tr], data.y[tr], None if feats is None else feats[tr], log)
    out = save_fit(fit, cfg, Path(cfg.output_dir) / "model", [data.note_ids[i] for i in tr])
    pred = predict_fit(fit, cfg, [data.texts[i] for i in te], None if feats is None else feats[te])
    metrics = regression_metrics(data.y[te], pred)
    write_parquet(pa.table({"note_id": [data.note_ids[i] for i in te], "target": data.y[te], "prediction": pred}),
                  out / "test_predictions.parquet")
    write_json({"test": metrics, "test_notes": len(te), "split": asdict(cfg.split)}, out / "test_metrics.json")
    log(f"test MAE {metrics['mae']:.3f} RMSE {metrics['rmse']:.3f} R2 {metrics['r2']:.3f} "
        f"Spearman {metrics['spearman']:.3f} on {len(te)} notes")
    return out


# ------------------------------------------------------------------------------- predicting from a folder
@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    meta: dict[str, Any]

    @property
    def feature_names(self) -> list[str]:
        return list(self.meta["features"]["names"])


def load_model(model_dir: str | Path) -> LoadedModel:
    from notellm.models.regression import load_regressor

    model, tokenizer, meta = load_regressor(model_dir)
    return LoadedModel(model, tokenizer, meta)


def table_features(loaded: LoadedModel, table: pa.Table, source: str, as_of: str | None = None,
                   overrides: dict[str, float] | None = None) -> np.ndarray | None:
    """The head's features for a Note table: computed as in training; `overrides` set a feature for every
    row. A feature that cannot be computed for a row is a DataError naming the row and feature."""
    names = loaded.feature_names
    if not names:
        return None
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise DataError(f"the model has no feature(s) {unknown}; it uses {names}", field=unknown[0])
    f = loaded.meta["features"]
    needed = [n for n in names if n not in overrides]
    frame = pd.DataFrame(index=range(table.num_rows))
    if needed:
        targets = target_values(table, loaded.meta["target"]["weights"], source, missing="nan")
        frame = feature_frame(table, needed, targets, timezone=f["timezone"], as_of=as_of,
                              history=HistoryConfig(**f["history"]), source=source)
        history = set(history_feature_names(HistoryConfig(**f["history"])))
        for name in needed:
            if name in history:
                continue  # no earlier note is a valid state (count 0), standardised to the training mean
            bad = np.flatnonzero(frame[name].isna().to_numpy())
            if len(bad):
                cause = "published_at is missing" if table.column("published_at")[int(bad[0])].as_py() is None \
                    else "the value cannot be computed"
                raise DataError(f"feature {name!r} is undefined for this note ({cause})", file=source,
                                row=int(bad[0]) + 1, field=name)
    for name, value in overrides.items():
        frame[name] = float(value)
    return frame[names].to_numpy(dtype=float)


def predict_table(loaded: LoadedModel, table: pa.Table, source: str = "<notes>", as_of: str | None = None,
                  feature_overrides: dict[str, float] | None = None, bf16: str = "auto", batch_size: int = 16,
                  rows: Sequence[int] | None = None, log: Log = _quiet) -> np.ndarray:
    """Scores for the table's rows (or only `rows`; features such as author history still see all rows)."""
    meta = loaded.meta
    feats = table_features(loaded, table, source, as_of, feature_overrides)
    if rows is not None:
        rows = np.asarray(rows, dtype=int)
        feats = None if feats is None else feats[rows]
    texts = note_texts(table, meta["input"]["content_chars"], source)
    if rows is not None:
        texts = [texts[i] for i in rows]
    f = meta["features"]
    return predict_scores(
        loaded.model, loaded.tokenizer, texts, feats,
        target_norm=Standardizer([meta["target"]["mean"]], [meta["target"]["std"]]),
        feature_norm=Standardizer(f["mean"], f["std"]) if f["names"] else None,
        max_length=meta["input"]["max_length"], suffix=meta["input"]["suffix"], batch_size=batch_size, bf16=bf16,
        log=log)


# -------------------------------------------------------------------------------------------- baselines
def _lgbm(cfg: EvalConfig, x_train: pd.DataFrame, y_train: np.ndarray, x_test: pd.DataFrame, seed: int = 0) -> np.ndarray:
    import lightgbm as lgb

    model = lgb.LGBMRegressor(
        objective=cfg.lgbm_objective, n_estimators=cfg.lgbm_rounds, learning_rate=cfg.lgbm_learning_rate,
        num_leaves=cfg.lgbm_leaves, min_child_samples=cfg.lgbm_min_child_samples, subsample=0.8, subsample_freq=1,
        colsample_bytree=0.8, reg_lambda=1.0, random_state=seed, n_jobs=2, verbose=-1, deterministic=True,
        force_col_wise=True,
    )
    model.fit(x_train, y_train)
    return model.predict(x_test)


@dataclass
class TextFeatures:
    svd_train: np.ndarray
    svd_test: np.ndarray
    ridge_test: np.ndarray             # ridge on TF-IDF, fitted on all training rows
    ridge_oof: np.ndarray              # cross-fitted ridge score of each training row


def text_features(cfg: EvalConfig, train_texts: Sequence[str], test_texts: Sequence[str], y_train: np.ndarray,
                  folds: np.ndarray) -> TextFeatures:
    """TF-IDF of character n-grams fitted on training text only (no labels involved), its SVD, and ridge
    scores. The ridge alpha is the one with the lowest cross-fitted error over `folds`; those cross-fitted
    scores are the training rows' ridge feature (each from a ridge that never saw the row's target)."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import Ridge

    vec = TfidfVectorizer(analyzer="char", ngram_range=(cfg.tfidf_ngram_min, cfg.tfidf_ngram_max), min_df=2,
                          max_features=cfg.tfidf_max_features, sublinear_tf=True)
    x_train = vec.fit_transform(train_texts)
    x_test = vec.transform(test_texts)
    dims = max(1, min(cfg.svd_components, x_train.shape[1] - 1, x_train.shape[0] - 1))
    svd = TruncatedSVD(dims, random_state=0).fit(x_train)
    best_alpha, best_err, best_oof = None, math.inf, None
    for alpha in cfg.ridge_alphas:
        oof = np.empty(len(y_train))
        for k in np.unique(folds):
            fit_rows, hold = folds != k, folds == k
            oof[hold] = Ridge(alpha=alpha).fit(x_train[fit_rows], y_train[fit_rows]).predict(x_train[hold])
        err = float(np.mean((oof - y_train) ** 2))
        if err < best_err:
            best_alpha, best_err, best_oof = alpha, err, oof
    ridge = Ridge(alpha=best_alpha).fit(x_train, y_train)
    return TextFeatures(svd.transform(x_train), svd.transform(x_test), ridge.predict(x_test), best_oof)


@dataclass
class LLMScores:
    """Cross-fitted LLM outputs on one split: test scores (mean of fold models) and out-of-fold train scores."""

    test: np.ndarray
    oof: np.ndarray | None
    test_pooled: np.ndarray | None = None
    oof_pooled: np.ndarray | None = None
    info: list[dict[str, Any]] = field(default_factory=list)


def cross_fit_llm(cfg: PopularityConfig, data: PreparedData, folds: int | None = None, log: Log = _quiet) -> LLMScores:
    """`folds` >= 2: the training notes (or a random `eval.stack_max_notes` of them) are cut into folds
    (authors kept together in an author split); fold model k trains on the other folds and scores fold k
    and the test notes. `oof` is NaN for training notes outside the subset. `folds` = 1: one model on all
    (or the subset of) training notes, no `oof`."""
    folds = folds or cfg.eval.stack_folds
    feats = head_features(cfg, data.table, data.y, data.source)
    tr, te = data.train_idx, data.test_idx
    subset = np.arange(len(tr))
    if 0 < cfg.eval.stack_max_notes < len(tr):
        subset = np.sort(np.random.default_rng(cfg.eval.seed).permutation(len(tr))[: cfg.eval.stack_max_notes])

    def pick(rows):
        return [data.texts[i] for i in rows], None if feats is None else feats[rows]

    want_pooled = cfg.eval.stack_embedding_dims > 0
    if folds == 1:
        fit = fit_regressor(cfg, pick(tr[subset])[0], data.y[tr[subset]], pick(tr[subset])[1], log)
        out = predict_fit(fit, cfg, *pick(te), return_pooled=want_pooled, log=log)
        score, pooled = out if want_pooled else (out, None)
        return LLMScores(score, None, pooled, None, [{k: v for k, v in fit.info.items() if k != "losses"}])
    fold_of = np.full(len(tr), -1)
    fold_of[subset] = group_folds([data.authors[i] for i in tr[subset]] if cfg.split.kind == "author" else None,
                                  len(subset), folds, cfg.train.seed)
    oof = np.full(len(tr), np.nan)
    oof_pooled = None
    test_scores, test_pooled, infos = [], [], []
    for k in range(folds):
        fit_rows, hold_rows = tr[(fold_of >= 0) & (fold_of != k)], tr[fold_of == k]
        log(f"fold {k + 1}/{folds}: training on {len(fit_rows)} notes, scoring {len(hold_rows)} + {len(te)} test")
        fit = fit_regressor(cfg, pick(fit_rows)[0], data.y[fit_rows], pick(fit_rows)[1], log)
        rows = np.concatenate([hold_rows, te])
        out = predict_fit(fit, cfg, *pick(rows), return_pooled=want_pooled, log=log)
        score, pooled = out if want_pooled else (out, None)
        oof[fold_of == k] = score[: len(hold_rows)]
        test_scores.append(score[len(hold_rows):])
        if want_pooled:
            if oof_pooled is None:
                oof_pooled = np.full((len(tr), pooled.shape[1]), np.nan, dtype=np.float32)
            oof_pooled[fold_of == k] = pooled[: len(hold_rows)]
            test_pooled.append(pooled[len(hold_rows):])
        infos.append({k_: v for k_, v in fit.info.items() if k_ != "losses"})
        del fit
    return LLMScores(np.mean(test_scores, axis=0), oof, np.mean(test_pooled, axis=0) if want_pooled else None,
                     oof_pooled, infos)


def gbdt_blocks(cfg: PopularityConfig, data: PreparedData, use_age: bool, use_history: bool) -> pd.DataFrame:
    """Hand features (+ age) (+ author history) for all rows."""
    parts = [data.hand]
    if use_age:
        if data.age is None:
            raise DataError("note age needs a crawl time: this source has no extra.crawled_at (set data.as_of "
                            "or eval.use_age=false)", file=data.source, field="extra.crawled_at")
        parts.append(data.age[["log_note_age_days"]])
    if use_history:
        parts.append(data.history)
    return pd.concat(parts, axis=1)


def baseline_predictions(cfg: PopularityConfig, data: PreparedData, llm: LLMScores | None = None,
                         use_age: bool | None = None, use_history: bool | None = None,
                         log: Log = _quiet) -> dict[str, np.ndarray]:
    """Test predictions of every baseline (and of the LLM and the stack when `llm` is given)."""
    ecfg = cfg.eval
    use_age = ecfg.use_age if use_age is None else use_age
    use_history = ecfg.use_history if use_history is None else use_history
    tr, te = data.train_idx, data.test_idx
    y_tr = data.y[tr]
    preds: dict[str, np.ndarray] = {
        "mean": np.full(len(te), y_tr.mean()),
        "median": np.full(len(te), float(np.median(y_tr))),
    }
    folds = group_folds([data.authors[i] for i in tr] if cfg.split.kind == "author" else None, len(tr),
                        ecfg.inner_folds, ecfg.seed)
    if use_history:  # the naive history baseline: the author's recent average, else the training mean
        w = max(ecfg.history.windows) if ecfg.history.windows else None
        recent = data.history[f"author_prev_mean_last{w}" if w else "author_prev_mean"].to_numpy()[te]
        preds[f"author history: mean of last {w or 'all'}"] = np.where(np.isfinite(recent), recent, y_tr.mean())
    log("TF-IDF features")
    text = text_features(ecfg, [data.texts[i] for i in tr], [data.texts[i] for i in te], y_tr, folds)
    preds["TF-IDF char ridge"] = text.ridge_test
    blocks = gbdt_blocks(cfg, data, use_age, use_history)
    b_tr, b_te = blocks.iloc[tr].reset_index(drop=True), blocks.iloc[te].reset_index(drop=True)
    log("LightGBM baselines")
    preds["LightGBM hand"] = _lgbm(ecfg, b_tr, y_tr, b_te, ecfg.seed)
    svd_cols = [f"svd{i}" for i in range(text.svd_train.shape[1])]
    x_tr = pd.concat([b_tr, pd.DataFrame(text.svd_train, columns=svd_cols)], axis=1)
    x_te = pd.concat([b_te, pd.DataFrame(text.svd_test, columns=svd_cols)], axis=1)
    preds["LightGBM hand+TF-IDF"] = _lgbm(ecfg, x_tr, y_tr, x_te, ecfg.seed)
    x_tr["tfidf_ridge"], x_te["tfidf_ridge"] = text.ridge_oof, text.ridge_test
    preds["LightGBM all, no LLM"] = _lgbm(ecfg, x_tr, y_tr, x_te, ecfg.seed)
    if llm is not None:
        preds["LoRA LLM"] = llm.test
        if llm.oof is not None:
            preds.update(stack_predictions(ecfg, x_tr, x_te, y_tr, llm, folds))
    return preds


def stack_predictions(ecfg: EvalConfig, x_tr: pd.DataFrame, x_te: pd.DataFrame, y_tr: np.ndarray, llm: LLMScores,
                      folds: np.ndarray) -> dict[str, np.ndarray]:
    """Two ways to add the cross-fitted LLM score to the GBDT, both fitted only on training notes that have
    an out-of-fold LLM score:
    - stack: LightGBM on all GBDT features + the LLM score (+ PCA of its pooled states if configured);
    - blend: a ridge over the out-of-fold scores of LightGBM (all, no LLM) and of the LLM."""
    from sklearn.linear_model import RidgeCV

    has = np.isfinite(llm.oof)
    s_tr, s_te = x_tr[has].reset_index(drop=True), x_te.copy()
    s_tr["llm_score"], s_te["llm_score"] = llm.oof[has], llm.test
    if llm.oof_pooled is not None and ecfg.stack_embedding_dims:
        from sklearn.decomposition import PCA

        pca = PCA(ecfg.stack_embedding_dims, random_state=0).fit(llm.oof_pooled[has])
        cols = [f"llm_pc{i}" for i in range(ecfg.stack_embedding_dims)]
        s_tr = pd.concat([s_tr, pd.DataFrame(pca.transform(llm.oof_pooled[has]), columns=cols)], axis=1)
        s_te = pd.concat([s_te, pd.DataFrame(pca.transform(llm.test_pooled), columns=cols)], axis=1)
    out = {"stack: LightGBM all + LLM": _lgbm(ecfg, s_tr, y_tr[has], s_te, ecfg.seed)}
    gbdt_oof = np.empty(len(y_tr))
    for k in np.unique(folds):
        gbdt_oof[folds == k] = _lgbm(ecfg, x_tr[folds != k], y_tr[folds != k], x_tr[folds == k], ecfg.seed)
    gbdt_test = _lgbm(ecfg, x_tr, y_tr, x_te, ecfg.seed)
    blend = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(np.c_[gbdt_oof[has], llm.oof[has]], y_tr[has])
    out["blend: ridge(LightGBM all, LLM)"] = blend.predict(np.c_[gbdt_test, llm.test])
    return out


# ------------------------------------------------------------------------------------------- evaluation
def score_report(cfg: PopularityConfig, data: PreparedData, preds: dict[str, np.ndarray]) -> dict[str, Any]:
    """Metrics with bootstrap intervals, MAE difference against the mean baseline, best-note ranking."""
    from notellm.evaluation.regression import best_note_ranking, bootstrap_metrics, result_rows

    te = data.test_idx
    y = data.y[te]
    intervals = bootstrap_metrics(y, preds, baseline="mean", n_boot=cfg.eval.bootstrap, seed=cfg.eval.seed)
    groups = [data.authors[i] for i in te]
    ranking = {name: best_note_ranking(y, p, groups) for name, p in preds.items()}
    return {
        "split": cfg.split.kind, "test_notes": int(len(te)), "train_notes": int((~data.test).sum()),
        "target": describe_target(cfg.target.resolved()),
        "metrics": {name: {m: asdict(iv) for m, iv in ints.items()} for name, ints in intervals.items()},
        "ranking": ranking,
        "rows": result_rows(intervals, ranking),
    }


def check_no_overlap(model_dir: str | Path, data: PreparedData) -> None:
    """A saved model must not have been trained on any of this split's test notes."""
    path = Path(model_dir) / "train_note_ids.json"
    if not path.exists():
        raise NotellmError(f"{model_dir} has no train_note_ids.json: cannot check it never saw the test notes")
    seen = set(read_json(path)["note_ids"])
    overlap = [data.note_ids[i] for i in data.test_idx if data.note_ids[i] in seen]
    if overlap:
        raise NotellmError(f"{model_dir} was trained on {len(overlap)} of this split's test notes "
                           f"(e.g. {overlap[0]}): evaluate it on the split it was trained for")


def evaluate(cfg: PopularityConfig, model_dir: str | Path | None = None, stack: bool = False,
             log: Log = _quiet, data: PreparedData | None = None, llm: LLMScores | None = None) -> dict[str, Any]:
    """Baselines, the saved model (`model_dir`) and, with `stack`, cross-fitted LLMs + the stacked GBDT,
    all on the configured split's test rows."""
    data = data or prepare_data(cfg)
    if stack and llm is None:
        llm = cross_fit_llm(cfg, data, log=log)
    preds = baseline_predictions(cfg, data, llm, log=log)
    if model_dir is not None:
        check_no_overlap(model_dir, data)
        loaded = load_model(model_dir)
        preds[f"saved model {model_dir}"] = predict_table(loaded, data.table, data.source, cfg.data.as_of,
                                                               rows=data.test_idx, log=log)
    report = score_report(cfg, data, preds)
    report["use_age"], report["use_history"] = cfg.eval.use_age, cfg.eval.use_history
    if llm is not None:
        report["llm_training"] = llm.info
    return report
