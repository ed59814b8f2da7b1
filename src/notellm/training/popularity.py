"""Popularity prediction (RedNoob): LoRA regression on a causal LM, as a recipe of the shared engine.

    cfg = load_config(PopularityConfig, "configs/popularity_xhs.yaml", ["epochs=2"])
    model_dir = train(cfg)                       # LoRA + head on the split's training notes -> output_dir/model
    report = evaluate(cfg, model_dir=model_dir)  # mean, median, TF-IDF, LightGBM, the model: same test rows

Training: notes become `note_text` (title, hashtags, content), tokenised once, cut to `model.max_length` (the
optional `model.suffix` is kept at the end); each epoch shuffles the notes, sorts windows of `bucket_batches`
batches by length and pads each batch only to its own longest note. Targets (and the head's extra features)
are standardised with training statistics, stored in the model folder. With `head_init: ridge` the head starts
from a ridge fit on the frozen backbone's states of at most `probe_max_notes` training notes (LP-FT); that
pass runs inside `time_budget_min`, with progress. The saved folder carries the model's error on the split's
test notes (`heldout` in its card), so a server can give an interval with every score.

Stack (`evaluate(..., stack=True)`): the LLM is cross-fitted (`eval.stack_folds` models, each trained on the
other folds of the training rows, or of a random `eval.stack_max_notes` of them), each fold a resumable engine
run under output_dir/stack/; the level-2 models are in `evaluation.popularity`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from notellm.data.popularity import (DataConfig, HistoryConfig, PreparedData, SplitConfig, TargetConfig,
                                     describe_target, feature_frame, group_folds, history_prompted_texts,
                                     prepare_data)
from notellm.device import weights_dtype
from notellm.errors import ConfigError
from notellm.evaluation.popularity import (EvalConfig, LLMScores, baseline_predictions, check_no_overlap,
                                           score_report)
from notellm.inference.popularity import (Standardizer, collate, encode_texts, load_model, pooled_states,
                                          predict_scores, predict_table)
from notellm.io import write_json, write_parquet
from notellm.losses import RegressionLoss
from notellm.losses.regression import REGRESSION_LOSSES
from notellm.models.lora import LoraConfig, adapters_in_float32
from notellm.training.engine import Callback, Engine, Recipe, TrainingArgs

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass
class PopularityModelConfig:
    kind: str = "regressor"             # regressor: RedNoob (LoRA LM + head) | notellm-head: a popularity head on
                                        # top of a frozen NoteLLM (backbone = its folder or zero-shot:<backbone>)
    backbone: str = "gemma-3-270m"      # offline default; any HF id or local folder
    backbone_seed: int = 0              # only matters for random test backbones (tiny-qwen3)
    max_length: int = 128               # tokens per note, suffix included
    content_chars: int = 600            # content is cut to this many characters before tokenising
    suffix: str = ""                    # text always kept after the (cut) note; "" = RedNoob's input exactly
    features: list[str] = field(default_factory=list)  # numeric features concatenated to the head input
    history_k: int = 0                  # history in the prompt: the author's k latest earlier notes with their
                                        # scores before the note (0: none); raise max_length to make room
    history_window_days: float = 0.0    # only earlier notes within this many days (0: any)


MODEL_KINDS = ("regressor", "notellm-head")

_OLD_TRAIN_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "warmup_ratio", "max_grad_norm", "bf16", "device",
                   "threads", "time_budget_min", "seed", "log_every", "head_lr", "loss", "huber_delta",
                   "bucket_batches", "padding_side", "head_init", "eval_batch_size")


@dataclass
class PopularityConfig(TrainingArgs):
    output_dir: str = "runs/popularity"
    lr: float = 3e-4                    # LoRA weights
    batch_size: int = 8                 # notes per process per micro-step
    warmup_ratio: float = 0.05
    scheduler: str = "linear"
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(r=8, alpha=16))
    head_lr: float = 1e-4               # the regression head (its inputs are unit-scale)
    loss: str = "huber"                 # mse | huber (on standardised targets)
    huber_delta: float = 1.0
    head_init: str = "ridge"            # ridge: start the head from a ridge fit on frozen states (LP-FT) | zeros
    probe_max_notes: int = 512          # the ridge pre-pass reads at most this many training notes
    bucket_batches: int = 16            # length-sorting window, in batches
    padding_side: str = "right"         # right | left (scores are the same either way)
    eval_batch_size: int = 16           # notes per forward pass when scoring
    score_heldout: bool = True          # score the split's test notes into the saved card (after the budget;
                                        # slow on a CPU: false saves right after the last step)
    data: DataConfig = field(default_factory=DataConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: PopularityModelConfig = field(default_factory=PopularityModelConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    renamed: ClassVar[dict[str, str]] = {
        **TrainingArgs.renamed, **{f"train.{k}": k for k in _OLD_TRAIN_KEYS},
        **{f"model.lora.{k}": f"lora.{k}" for k in ("r", "alpha", "dropout", "target_modules", "top_layers")},
        "model.lora": "lora",
    }
    def __post_init__(self):
        super().__post_init__()
        for name, cls in (("data", DataConfig), ("target", TargetConfig), ("split", SplitConfig),
                          ("model", PopularityModelConfig), ("eval", EvalConfig)):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, cls(**getattr(self, name)))
        self.check()

    def check(self) -> None:
        if self.loss not in REGRESSION_LOSSES:
            raise ConfigError(f"loss must be one of {list(REGRESSION_LOSSES)}, not {self.loss!r}")
        if self.head_init not in ("ridge", "zeros"):
            raise ConfigError(f"head_init must be ridge or zeros, not {self.head_init!r}")
        if self.padding_side not in ("left", "right"):
            raise ConfigError(f"padding_side must be left or right, not {self.padding_side!r}")
        if self.probe_max_notes < 1 or self.eval_batch_size < 1 or self.bucket_batches < 1:
            raise ConfigError("probe_max_notes, eval_batch_size and bucket_batches must be >= 1")
        if self.model.kind not in MODEL_KINDS:
            raise ConfigError(f"model.kind must be one of {list(MODEL_KINDS)}, not {self.model.kind!r}")
        self.split.check()
        self.target.resolved()


def prepare(cfg: PopularityConfig, table: pa.Table | None = None, source: str = "<notes>") -> PreparedData:
    """The configured split of the configured source, with every feature block."""
    return prepare_data(cfg.data, cfg.target, cfg.split, cfg.eval.history, cfg.model.content_chars, table, source)


def model_texts(cfg: PopularityConfig, data: PreparedData) -> list[str]:
    """The regressor's input text of every row: the note, after its author's history when `model.history_k`."""
    return history_prompted_texts(data.table, data.texts, data.y, cfg.model.history_k, cfg.model.history_window_days,
                                  data.source, test=data.test)


def head_features(cfg: PopularityConfig, data: PreparedData) -> np.ndarray | None:
    """The head's extra features (raw, NaN where undefined) for every row, or None when it has none."""
    names = list(cfg.model.features)
    if not names:
        return None
    frame = feature_frame(data.table, names, data.y, timezone=cfg.data.timezone, as_of=cfg.data.as_of,
                          history=cfg.eval.history, source=data.source)
    return frame.to_numpy(dtype=float)


def length_bucketed_batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator,
                            bucket_batches: int = 16) -> list[np.ndarray]:
    """Shuffle, sort windows of `bucket_batches` batches by length, cut into full batches, shuffle the batches:
    random order, little padding. Items past the last full batch of a window are left out of this epoch."""
    lengths = np.asarray(lengths)
    order = rng.permutation(len(lengths))
    window = batch_size * max(1, bucket_batches)
    batches: list[np.ndarray] = []
    for start in range(0, len(order), window):
        part = order[start:start + window]
        part = part[np.argsort(-lengths[part], kind="stable")]
        batches.extend(part[i:i + batch_size] for i in range(0, len(part) - batch_size + 1, batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


class RegressionModule(nn.Module):
    """Regressor + loss in one module (DDP / DeepSpeed see every trainable parameter)."""

    def __init__(self, model: nn.Module, loss: RegressionLoss):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, input_ids, attention_mask, target, features=None) -> dict[str, torch.Tensor]:
        return {"loss": self.loss(self.model(input_ids, attention_mask, features), target)}


class PopularityRecipe(Recipe):
    """RedNoob on the shared engine. `rows` are the training rows of `data` (default: the split's training
    notes); `score_rows` get scored into the folder's held-out error (default: the split's test notes);
    `targets` (one per row of `data`) replace `data.y` as what the model learns (e.g. residuals of a GBDT)."""

    kind = "popularity"

    def __init__(self, args: PopularityConfig, data: PreparedData | None = None, rows: np.ndarray | None = None,
                 score_rows: np.ndarray | None | bool = True, targets: np.ndarray | None = None):
        self.args, self.data = args, data
        self.rows, self.score_rows = rows, score_rows
        self.targets = targets
        self.input_keys = ("data.path",) if data is None or rows is None else ()

    # setup
    def build(self, engine: Engine | None = None) -> nn.Module:
        from notellm.models.regression import build_regressor

        cfg, mcfg = self.args, self.args.model
        self.engine = engine
        self.bf16 = engine.bf16 if engine is not None else False
        self.data = self.data or prepare(cfg)
        self.rows = self.data.train_idx if self.rows is None else np.asarray(self.rows)
        if self.score_rows is True:
            self.score_rows = self.data.test_idx if cfg.score_heldout else None
        feats = head_features(cfg, self.data)
        dtype = weights_dtype(self.bf16, trains_all_weights=not cfg.lora.enabled)
        torch.manual_seed(cfg.seed)
        model, self.tokenizer = build_regressor(mcfg.backbone, 0 if feats is None else feats.shape[1], cfg.lora,
                                                seed=mcfg.backbone_seed, dtype=dtype)
        adapters_in_float32(model, under_autocast=dtype == "bfloat16")
        model.head.float()
        if cfg.gradient_checkpointing:
            model.decoder.gradient_checkpointing_enable()
        self.model = model
        self.texts = model_texts(cfg, self.data)
        self.ids, self.truncated = encode_texts(self.tokenizer, [self.texts[i] for i in self.rows], mcfg.max_length,
                                                mcfg.suffix)
        y = (self.data.y if self.targets is None else np.asarray(self.targets, dtype=float))[self.rows]
        if not np.isfinite(y).all():
            raise ConfigError("every training row needs a finite target")
        self.target_norm = Standardizer.fit(y[:, None])
        self.y_std = torch.tensor(self.target_norm.transform(y[:, None])[:, 0], dtype=torch.float32)
        self.feats = None if feats is None else feats[self.rows]
        self.feature_norm = Standardizer.fit(self.feats) if self.feats is not None else None
        self.f_std = None if self.feats is None else torch.tensor(self.feature_norm.transform(self.feats),
                                                                  dtype=torch.float32)
        self.module = RegressionModule(model, RegressionLoss(cfg.loss, cfg.huber_delta))
        return self.module

    def num_items(self) -> int:
        return len(self.rows)

    def fingerprint(self) -> dict[str, Any]:
        out = super().fingerprint()
        out["config"]["model"].pop("kind", None)  # always "regressor" here; checkpoints from before the key resume
        out["rows"] = _digest_ids([self.data.note_ids[i] for i in self.rows])
        if self.targets is not None:
            out["targets"] = _digest_ids([f"{v:.6g}" for v in np.asarray(self.targets)[self.rows]])
        return out

    def before_training(self, engine: Engine, module: nn.Module) -> dict[str, Any]:
        """Ridge probe: the head starts from a ridge fit (alpha by GCV) on the frozen backbone's states of a
        bounded, fixed sample of the training notes. Under a time budget the probe reads no batch that would end
        after a quarter of it (one batch at least), so most of the budget goes to training steps."""
        if self.args.head_init != "ridge":
            return {}
        from sklearn.linear_model import RidgeCV

        started = time.time()
        n = min(self.args.probe_max_notes, len(self.ids))
        rng = np.random.default_rng([self.args.seed, 3])
        sample = np.sort(rng.permutation(len(self.ids))[:n])
        sample = sample[np.argsort([-len(self.ids[i]) for i in sample], kind="stable")]  # batches of like length,
        batch = self.args.eval_batch_size
        batches = [sample[i:i + batch] for i in range(0, n, batch)]
        batches = [batches[i] for i in rng.permutation(len(batches))]  # in random order: no slow longest-first start
        deadline = started + 0.25 * 60 * self.args.time_budget_min if self.args.time_budget_min else None
        phase = engine.phase("ridge probe on frozen states", n, "notes")
        self.model.eval()
        states, read, slowest = [], [], 0.0
        for rows in batches:
            # under a budget: stop before a batch that would end past the probe's quarter (one batch at least)
            if deadline is not None and read and time.time() + slowest > deadline:
                break
            t = time.time()
            states.append(pooled_states(self.model, [self.ids[i] for i in rows], self.tokenizer.pad_token_id,
                                        batch_size=batch, device=str(engine.device), bf16=engine.bf16,
                                        padding_side=self.args.padding_side))
            slowest = max(slowest, time.time() - t)
            read.append(rows)
            phase.advance(len(rows))
        self.model.train()
        states = np.concatenate(states)
        sample = np.concatenate(read)
        with torch.no_grad():
            feats = None if self.f_std is None else self.f_std[sample]
            x = self.model.head_input(torch.tensor(states), feats).numpy()
        ridge = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(x, self.y_std.numpy()[sample])
        with torch.no_grad():
            self.model.head.weight.copy_(torch.tensor(ridge.coef_, dtype=torch.float32)[None, :])
            self.model.head.bias.fill_(float(ridge.intercept_))
        self.probe = {"probe_alpha": float(ridge.alpha_), "probe_notes": len(sample),
                      "probe_seconds": round(time.time() - started, 1)}
        return self.probe

    # batches
    def epoch_batches(self, epoch: int, global_batch: int) -> list[np.ndarray]:
        return length_bucketed_batches([len(x) for x in self.ids], global_batch,
                                       np.random.default_rng([self.args.seed, epoch]), self.args.bucket_batches)

    def collate(self, indices: list[int], epoch: int) -> dict[str, Any]:
        input_ids, mask = collate([self.ids[i] for i in indices], self.tokenizer.pad_token_id, self.args.padding_side)
        batch = {"input_ids": input_ids, "attention_mask": mask, "target": self.y_std[indices]}
        if self.f_std is not None:
            batch["features"] = self.f_std[indices]
        return batch

    def param_groups(self, module: nn.Module) -> list[dict[str, Any]]:
        body = [p for n, p in module.model.named_parameters() if p.requires_grad and not n.startswith("head.")]
        head = list(module.model.head.parameters())
        return [{"params": body, "lr": self.args.lr, "weight_decay": self.args.weight_decay},
                {"params": head, "lr": self.args.head_lr, "weight_decay": 0.0}]

    # results
    def predict(self, rows: np.ndarray, return_pooled: bool = False, on_batch: Callable[[int], None] | None = None):
        """Scores (on the target's scale) of `data` rows with the current weights."""
        texts = [self.texts[i] for i in rows]
        feats = None if self.feats is None else head_features(self.args, self.data)[rows]
        return predict_scores(self.model, self.tokenizer, texts, feats, target_norm=self.target_norm,
                              feature_norm=self.feature_norm, max_length=self.args.model.max_length,
                              suffix=self.args.model.suffix, batch_size=self.args.eval_batch_size,
                              bf16=self.bf16, device=self.args.device, padding_side=self.args.padding_side,
                              return_pooled=return_pooled, on_batch=on_batch)

    def card(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Everything `inference.popularity` needs to rebuild inputs exactly as in training."""
        cfg = self.args
        weights = cfg.target.resolved()
        return {
            "backbone": cfg.model.backbone, "backbone_seed": cfg.model.backbone_seed, "lora": asdict(cfg.lora),
            "input": {"template": "帖子标题：<title>\\n\\n帖子话题：<#tags>\\n\\n帖子内容：<content>",
                      "content_chars": cfg.model.content_chars, "max_length": cfg.model.max_length,
                      "suffix": cfg.model.suffix, "padding_side": cfg.padding_side,
                      "pooling": "last non-padding token",
                      "history_k": cfg.model.history_k, "history_window_days": cfg.model.history_window_days},
            "target": {"name": cfg.target.name, "weights": weights, "formula": describe_target(weights),
                       "log": "natural", "mean": self.target_norm.mean[0], "std": self.target_norm.std[0],
                       # a residual head learns other targets than the formula's (its score alone is no WLAES)
                       "given_targets": self.targets is not None},
            "features": {"names": list(cfg.model.features),
                         "mean": self.feature_norm.mean if self.feature_norm else [],
                         "std": self.feature_norm.std if self.feature_norm else [],
                         "timezone": cfg.data.timezone, "history": asdict(cfg.eval.history),
                         "missing": "standardised, then NaN -> 0 (the training mean)"},
            "train": {**summary, "notes": len(self.rows), "truncated_notes": self.truncated,
                      **getattr(self, "probe", {})},
            "config": asdict(cfg),
        }

    def save(self, module: nn.Module, folder: Path, summary: dict[str, Any]) -> None:
        from notellm.models.regression import write_regressor

        card = self.card(summary)
        write_json({"note_ids": [self.data.note_ids[i] for i in self.rows]}, folder / "train_note_ids.json")
        if self.score_rows is not None and len(self.score_rows):
            card["heldout"] = self.score_heldout(folder)
        module.model.eval()
        write_regressor(module.model, folder, card)

    def score_heldout(self, folder: Path) -> dict[str, Any]:
        """The model's error on the held-out rows: metrics, absolute-error quantiles (a served score's
        interval), and the predictions themselves."""
        rows = np.asarray(self.score_rows)
        engine = getattr(self, "engine", None)
        phase = engine.phase("scoring held-out notes", len(rows), "notes") if engine is not None else None
        pred = self.predict(rows, on_batch=phase.advance if phase is not None else None)
        return write_heldout(self.args.split, self.data, rows, pred, folder)


def write_heldout(split: SplitConfig, data: PreparedData, rows: np.ndarray, pred: np.ndarray, folder: Path,
                  prefix: str = "") -> dict[str, Any]:
    """The held-out error of predictions `pred` of `data` rows `rows`: written as `{prefix}test_predictions.parquet`
    and `{prefix}test_metrics.json` in `folder`, returned as the card's `heldout` (metrics, absolute-error and
    residual quantiles for a served score's interval, target quantiles for its percentile)."""
    from notellm.evaluation.regression import regression_metrics

    y = data.y[rows]
    write_parquet(pa.table({"note_id": [data.note_ids[i] for i in rows], "target": y, "prediction": pred}),
                  folder / f"{prefix}test_predictions.parquet")
    errors = np.abs(pred - y)
    metrics = regression_metrics(y, pred)
    heldout = {"split": split.kind, "notes": int(len(rows)), **metrics,
               "abs_error_quantiles": {str(q): float(np.quantile(errors, q / 100)) for q in (50, 80, 90, 95)},
               "residual_quantiles": {str(q): float(np.quantile(y - pred, q / 100)) for q in (5, 10, 90, 95)},
               "score_quantiles": [float(v) for v in np.quantile(y, np.linspace(0, 1, 101))]}
    write_json({"test": metrics, "test_notes": int(len(rows)), "split": asdict(split)},
               folder / f"{prefix}test_metrics.json")
    return heldout


def _digest_ids(ids: Sequence[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(map(str, ids)).encode("utf-8")).hexdigest()


# ---- pipelines -------------------------------------------------------------------------------------------
def train(cfg: PopularityConfig, callbacks: Sequence[Callback] | None = None,
          data: PreparedData | None = None) -> Path:
    """Train on the split's training rows (resumable); save output_dir/model with its held-out test error.
    `model.kind=notellm-head`: a head on a frozen NoteLLM instead (training/popularity_head.py)."""
    if cfg.model.kind == "notellm-head":
        from notellm.training.popularity_head import train_head

        return train_head(cfg, callbacks, data)
    recipe = PopularityRecipe(cfg, data)
    Engine(recipe, callbacks).run()
    return Path(cfg.output_dir) / "model"


def fit_rows(cfg: PopularityConfig, data: PreparedData, rows: np.ndarray, output_dir: str | Path,
             callbacks: Sequence[Callback] | None = None, targets: np.ndarray | None = None) -> PopularityRecipe:
    """Train on `rows` of `data` into `output_dir` (resumable); return the recipe holding the trained model."""
    recipe = PopularityRecipe(replace(cfg, output_dir=str(output_dir)), data, rows=rows, score_rows=None,
                              targets=targets)
    recipe.summary = Engine(recipe, callbacks).run()
    return recipe


def cross_fit_llm(cfg: PopularityConfig, data: PreparedData, folds: int | None = None,
                  callbacks: Sequence[Callback] | None = None, log: Log = _quiet,
                  targets: np.ndarray | None = None) -> LLMScores:
    """`folds` >= 2: the training notes (or a random `eval.stack_max_notes` of them) are cut into folds
    (authors kept together in an author split); fold model k trains on the other folds and scores fold k
    and the test notes. `oof` is NaN for training notes outside the subset. `folds` = 1: one model on all
    (or the subset of) training notes, no `oof`. `targets` (one per row of `data`, e.g. the cross-fitted
    residuals of `evaluation.popularity.residual_targets`) replace `data.y` as what the models learn."""
    folds = folds or cfg.eval.stack_folds
    tr, te = data.train_idx, data.test_idx
    subset = np.arange(len(tr))
    if 0 < cfg.eval.stack_max_notes < len(tr):
        subset = np.sort(np.random.default_rng(cfg.eval.seed).permutation(len(tr))[: cfg.eval.stack_max_notes])
    want_pooled = cfg.eval.stack_embedding_dims > 0
    root = Path(cfg.output_dir) / "stack"
    if folds == 1:
        recipe = fit_rows(cfg, data, tr[subset], root / "all", callbacks, targets)
        out = recipe.predict(te, return_pooled=want_pooled)
        score, pooled = out if want_pooled else (out, None)
        return LLMScores(score, None, pooled, None, [_fold_info(recipe)])
    fold_of = np.full(len(tr), -1)
    fold_of[subset] = group_folds([data.authors[i] for i in tr[subset]] if cfg.split.kind == "author" else None,
                                  len(subset), folds, cfg.seed)
    oof = np.full(len(tr), np.nan)
    oof_pooled = None
    test_scores, test_pooled, infos = [], [], []
    for k in range(folds):
        fit_rows_k, hold_rows = tr[(fold_of >= 0) & (fold_of != k)], tr[fold_of == k]
        log(f"fold {k + 1}/{folds}: training on {len(fit_rows_k)} notes, scoring {len(hold_rows)} + {len(te)} test")
        recipe = fit_rows(cfg, data, fit_rows_k, root / f"fold-{k}", callbacks, targets)
        rows = np.concatenate([hold_rows, te])
        phase = recipe.engine.phase(f"fold {k + 1}/{folds}: scoring", len(rows), "notes")
        out = recipe.predict(rows, return_pooled=want_pooled, on_batch=phase.advance)
        score, pooled = out if want_pooled else (out, None)
        oof[fold_of == k] = score[: len(hold_rows)]
        test_scores.append(score[len(hold_rows):])
        if want_pooled:
            if oof_pooled is None:
                oof_pooled = np.full((len(tr), pooled.shape[1]), np.nan, dtype=np.float32)
            oof_pooled[fold_of == k] = pooled[: len(hold_rows)]
            test_pooled.append(pooled[len(hold_rows):])
        infos.append(_fold_info(recipe))
        del recipe
    return LLMScores(np.mean(test_scores, axis=0), oof, np.mean(test_pooled, axis=0) if want_pooled else None,
                     oof_pooled, infos)


def _fold_info(recipe: PopularityRecipe) -> dict[str, Any]:
    summary = getattr(recipe, "summary", {})
    return {"notes": len(recipe.rows), "output_dir": recipe.args.output_dir, "steps": summary.get("steps"),
            "steps_planned": summary.get("planned_steps"), "seconds": summary.get("seconds"), "bf16": recipe.bf16,
            **getattr(recipe, "probe", {})}


def evaluate(cfg: PopularityConfig, model_dir: str | Path | None = None, stack: bool = False,
             log: Log = _quiet, data: PreparedData | None = None, llm: LLMScores | None = None,
             callbacks: Sequence[Callback] | None = None,
             models: dict[str, str | Path] | None = None) -> dict[str, Any]:
    """Baselines, the saved model (`model_dir`; row "saved model DIR"), more saved models by row name
    (`models`) and, with `stack`, cross-fitted LLMs + the stacked GBDT, all on the configured split's test rows.
    A saved model is a popularity folder or a NoteLLM folder with a popularity head."""
    data = data or prepare(cfg)
    if stack and llm is None:
        llm = cross_fit_llm(cfg, data, callbacks=callbacks, log=log)
    vectors = None
    if cfg.eval.llm_features != "none":
        from notellm.evaluation.popularity import llm_note_vectors

        log(f"note embeddings by {cfg.eval.llm_features}")
        vectors = llm_note_vectors(cfg.eval.llm_features, data, Path(cfg.output_dir) / "features",
                                   regressor_input={"max_length": cfg.model.max_length, "suffix": cfg.model.suffix})
    preds = baseline_predictions(cfg.eval, cfg.split.kind, data, llm, log=log, note_vectors=vectors)
    saved = {f"saved model {model_dir}": model_dir} if model_dir is not None else {}
    for name, folder in {**saved, **(models or {})}.items():
        check_no_overlap(folder, data)
        # at the run's precision (bf16=auto|true|false), as its training-time held-out scores were
        preds[name] = predict_table(load_model(folder), data.table, data.source, cfg.data.as_of, rows=data.test_idx,
                                    bf16=cfg.bf16)
    report = score_report(cfg.eval, cfg.split.kind, cfg.target.resolved(), data, preds)
    report["use_age"], report["use_history"] = cfg.eval.use_age, cfg.eval.use_history
    if llm is not None:
        report["llm_training"] = llm.info
    return report


__all__ = ["PopularityConfig", "PopularityModelConfig", "PopularityRecipe", "RegressionModule", "cross_fit_llm",
           "evaluate", "fit_rows", "head_features", "write_heldout", "model_texts", "length_bucketed_batches", "prepare", "train", "HistoryConfig"]
