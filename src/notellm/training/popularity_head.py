"""One model for the platform: a popularity head trained on top of a frozen NoteLLM, as a recipe of the shared
engine (`notellm popularity train CONFIG model.kind=notellm-head model.backbone=<NoteLLM folder | zero-shot:...>`).

The NoteLLM's weights never train: its embeddings and generated tags are the base folder's by construction (the
output folder holds the base folder's files unchanged, plus `score_head.safetensors`). Only the head, a
Linear(hidden, 1) on the standardized pooled state the projection reads, learns, with the popularity regression
loss (losses/regression.py) on the targets, split and data of `notellm popularity train` (the same config keys,
the same `prepare`).

Since the backbone is frozen, every note's pooled state is computed once and kept under output_dir/head_features/
(one file per batch): the training notes' in the run's first phase, inside `time_budget_min`, with progress; the
held-out notes' when the folder is saved (the scoring every popularity run does there). The engine's items are
the training notes' feature rows, so a step costs a matrix-vector product and a resumed run reads the features
back. When the budget ends inside the feature pass, the head is fit (ridge) on the notes read so far and saved,
without a checkpoint: the same command again continues the pass, then trains. The head trains
on features standardized by their training-row statistics (a well-conditioned problem whatever the backbone's
massive dimensions), and is folded back into the pooled state's units when saved. The folder's card carries the
target and the head's error on the split's test notes (`popularity_head.heldout`): the interval and percentile
the server gives with every score.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from notellm.data.popularity import PreparedData, describe_target
from notellm.errors import ConfigError, DataError
from notellm.fingerprint import file_digest
from notellm.inference.embed import ZERO_SHOT_PREFIX, head_features, load_model_for_embedding
from notellm.inference.popularity import Standardizer
from notellm.io import atomic_path, read_json, write_json
from notellm.losses import RegressionLoss
from notellm.training.engine import PRE_PASS_CUT, Callback, Engine, Recipe
from notellm.training.popularity import PopularityConfig, prepare, write_heldout

FEATURES_DIR = "head_features"
TRAINING_PASS = "frozen NoteLLM: pooled state of every training note"  # the phase both callers show
FEATURE_SHARE = 0.95  # of the time budget the training notes' feature pass may use; the steps are cheap
PREFIX = "popularity_"  # the head's train ids / test predictions / metrics beside the NoteLLM's own files


class HeadModule(nn.Module):
    """Linear head + loss on features standardized with the training rows' mean and std (buffers)."""

    def __init__(self, hidden: int, loss: RegressionLoss):
        super().__init__()
        self.linear = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.bias.zero_()
        self.loss = loss
        self.register_buffer("x_mean", torch.zeros(hidden), persistent=False)
        self.register_buffer("x_std", torch.ones(hidden), persistent=False)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear((features.float() - self.x_mean) / self.x_std).squeeze(-1)

    def forward(self, features: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": self.loss(self.predict(features), target)}

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight [1, hidden], bias [1]) of the same function on unstandardized features."""
        w = self.linear.weight.detach().float() / self.x_std[None, :]
        b = self.linear.bias.detach().float() - (w[0] * self.x_mean).sum()
        return w, b.reshape(1)


class NoteLLMHeadRecipe(Recipe):
    """A popularity head on a frozen NoteLLM: items are the training notes' pooled states."""

    kind = "popularity-head"
    input_keys = ("data.path",)

    def __init__(self, args: PopularityConfig, data: PreparedData | None = None):
        self.args, self.data = args, data
        self.x: torch.Tensor | None = None
        self.cache: FeatureCache | None = None
        self.feature_seconds = 0.0

    def build(self, engine: Engine) -> nn.Module:
        cfg = self.args
        check_head_config(cfg)
        self.engine = engine
        self.data = self.data or prepare(cfg)
        self.rows = self.data.train_idx
        self.score_rows = self.data.test_idx if cfg.score_heldout else np.zeros(0, dtype=int)
        self.notes = self.data.table.to_pylist()
        # float32 weights (the folder of a zero-shot backbone is saved from them), bf16 autocast when chosen
        self.model = load_model_for_embedding(cfg.model.backbone, bf16=False).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        y = self.data.y[self.rows]
        if not np.isfinite(y).all():
            raise ConfigError("every training row needs a finite target")
        self.target_norm = Standardizer.fit(y[:, None])
        self.y_std = torch.tensor(self.target_norm.transform(y[:, None])[:, 0], dtype=torch.float32)
        self.module = HeadModule(int(self.model.feat_mean.numel()), RegressionLoss(cfg.loss, cfg.huber_delta))
        return self.module

    def num_items(self) -> int:
        return len(self.rows)

    def fingerprint(self) -> dict[str, Any]:
        out = super().fingerprint()
        backbone = self.args.model.backbone
        if not backbone.startswith(ZERO_SHOT_PREFIX):  # a folder: its content, not its path
            out["inputs"]["model.backbone"] = "sha256:" + file_digest(backbone)["sha256"]
        out["rows"] = _digest([self.data.note_ids[i] for i in self.rows])
        return out

    # ---- the feature pass: every note once, cached in parts (a cut or killed pass continues)
    def _feature_key(self) -> dict[str, Any]:
        fp = self.fingerprint()
        return {"format": FeatureCache.FORMAT, "inputs": fp["inputs"], "backbone": self.args.model.backbone,
                "bf16": bool(self.engine.bf16), "ids": _digest(self.data.note_ids)}

    def _cache(self) -> "FeatureCache":
        if self.cache is None:
            acc = self.engine.accelerator
            folder, key = Path(self.args.output_dir) / FEATURES_DIR, self._feature_key()
            if acc.is_main_process:
                FeatureCache.reset_unless(folder, key)
            acc.wait_for_everyone()
            self.cache = FeatureCache(folder, len(self.data.note_ids), int(self.model.feat_mean.numel()),
                                      writer=acc.is_main_process)
        return self.cache

    def _read_features(self, rows: np.ndarray, what: str, timed: bool = False) -> bool:
        """Compute the pooled states of `rows` not cached yet, in batches of like length taken in a seeded random
        order (so a cut pass has read a random sample). `timed` (the training rows' pass, inside the budget):
        stop before a batch that would end past FEATURE_SHARE of the budget, once any training row has been read.
        True when every row of `rows` is in."""
        cache = self._cache()
        missing = rows[~cache.have[rows]]
        if not len(missing):
            return True
        notes = self.notes
        by_length = missing[np.argsort([len(str(notes[i].get("title") or "")) + len(str(notes[i].get("content") or ""))
                                        for i in missing], kind="stable")]
        size = self.args.eval_batch_size
        batches = [by_length[i:i + size] for i in range(0, len(by_length), size)]
        order = np.random.default_rng([self.args.seed, 5]).permutation(len(batches))
        self.model.to(self.engine.device)
        phase = self.engine.phase(what, len(rows), "notes")
        phase.advance(len(rows) - len(missing))
        slowest = 0.0
        for b in order:
            if timed and cache.have[self.rows].any() and self.engine.pre_pass_would_overrun(slowest, FEATURE_SHARE):
                return False
            started = time.time()
            batch = batches[b]
            cache.add(batch, head_features(self.model, [notes[i] for i in batch], batch_size=len(batch),
                                           bf16=self.engine.bf16))
            slowest = max(slowest, time.time() - started)
            self.feature_seconds += time.time() - started
            phase.advance(len(batch))
        return True

    def features(self) -> torch.Tensor:
        """[notes, hidden] pooled states (rows not read yet are zeros); on first use the training rows' are
        completed (a resumed run reads them back) and the scaler fit on them."""
        if self.x is None:
            self._read_features(self.rows, TRAINING_PASS)
            self.x = torch.from_numpy(self._cache().x)  # shares memory: rows read later appear in it
            self._fit_scaler(self.rows)
        return self.x

    def _fit_scaler(self, rows: np.ndarray) -> None:
        train = self.x[rows]
        std = train.std(0, unbiased=False)
        self.module.x_mean.copy_(train.mean(0))
        self.module.x_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))  # constant features: 0

    def before_training(self, engine: Engine, module: nn.Module) -> dict[str, Any]:
        """The training notes' feature pass (inside the time budget; a pass the budget cuts leaves the head
        fit on the rows it read, and a rerun continues the pass), then with `head_init: ridge` the head starts
        from a ridge fit (alpha by GCV) on the training rows read."""
        complete = self._read_features(self.rows, TRAINING_PASS, timed=True)
        have = self._cache().have[self.rows]
        read = self.rows[have]
        self.x = torch.from_numpy(self.cache.x)
        self._fit_scaler(read)
        info: dict[str, Any] = {"feature_notes": len(read), "training_notes": len(self.rows),
                                "feature_seconds": round(self.feature_seconds, 1)}
        if not complete:
            info[PRE_PASS_CUT] = True
        if self.args.head_init == "ridge":
            from sklearn.linear_model import RidgeCV

            x = ((self.x[read] - self.module.x_mean) / self.module.x_std).numpy()
            ridge = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(x, self.y_std.numpy()[have])
            with torch.no_grad():
                self.module.linear.weight.copy_(torch.tensor(ridge.coef_, dtype=torch.float32)[None, :])
                self.module.linear.bias.fill_(float(ridge.intercept_))
            info["probe_alpha"] = float(ridge.alpha_)
        self.probe = info
        return info

    def collate(self, indices: list[int], epoch: int) -> dict[str, Any]:
        x = self.features()
        return {"features": x[self.rows[indices]], "target": self.y_std[indices]}

    # ---- the one folder
    def predict_rows(self, rows: np.ndarray) -> np.ndarray:
        """Scores (the target's units) of `data` rows from their features (read now when not cached) and the
        current head."""
        self._read_features(np.asarray(rows), "frozen NoteLLM: pooled state of the held-out notes")
        with torch.no_grad():
            z = self.module.predict(self.features()[rows].to(self.module.x_mean.device)).cpu().numpy()
        return z * self.target_norm.std[0] + self.target_norm.mean[0]

    def head_card(self, summary: dict[str, Any]) -> dict[str, Any]:
        cfg = self.args
        from notellm.models.folder import training_notes

        weights = cfg.target.resolved()
        zero_shot = cfg.model.backbone.startswith(ZERO_SHOT_PREFIX)
        return {"target": {"name": cfg.target.name, "weights": weights, "formula": describe_target(weights),
                           "log": "natural"},
                "base_model": cfg.model.backbone if zero_shot else Path(cfg.model.backbone).name,
                # the base's category set (`tag`): its training notes, not this run's popularity notes
                "base_notes": None if zero_shot else training_notes(cfg.model.backbone),
                "train": {**summary, "notes": len(self.rows), **getattr(self, "probe", {})},
                "config": asdict(cfg)}

    def save(self, module: nn.Module, folder: Path, summary: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        from notellm.models.folder import read_card, write_card
        from notellm.models.notellm import SCORE_HEAD_FILE

        cfg, model = self.args, self.model
        self.features()  # a run resumed at its last step has not read them yet: the scaler folds in below
        head = model.add_popularity_head(self.target_norm.mean[0], self.target_norm.std[0])
        weight, bias = module.folded()
        with torch.no_grad():
            head.linear.weight.copy_(weight.to(head.linear.weight.device))
            head.linear.bias.copy_(bias.to(head.linear.bias.device))
        info = self.head_card(summary)
        if len(self.score_rows):
            pred = self.predict_rows(self.score_rows)
            info["heldout"] = write_heldout(cfg.split, self.data, self.score_rows, pred, folder, PREFIX)
        write_json({"note_ids": [self.data.note_ids[i] for i in self.rows]}, folder / f"{PREFIX}train_note_ids.json")
        backbone = cfg.model.backbone
        if backbone.startswith(ZERO_SHOT_PREFIX):  # no files to keep: the untrained NoteLLM as a folder
            model.write_to(folder, {"popularity_head": info})
            return
        # the base folder's files as they are (its embeddings and tags unchanged), then the head and the card
        for path in Path(backbone).iterdir():
            if path.name.startswith(PREFIX) or path.name in (SCORE_HEAD_FILE, "notellm.json"):
                continue  # a head trained before on this folder is replaced
            (shutil.copytree if path.is_dir() else shutil.copy2)(path, folder / path.name)
        save_file(head.tensors(), str(folder / SCORE_HEAD_FILE))
        card = read_card(backbone)
        card["popularity_head"] = {"file": SCORE_HEAD_FILE, "input": "standardized pooled state",
                                   "target_mean": float(head.target_mean), "target_std": float(head.target_std),
                                   **info}
        write_card(folder, card["kind"], card)


class FeatureCache:
    """Pooled states computed so far, one file per batch under output_dir/head_features/ (each written whole),
    beside key.json naming what made them: a pass cut by the time budget, or killed, continues where it
    stopped, and features of another model, data or precision are dropped, never mixed in."""

    FORMAT = 2  # 1: one features.npy written at the end of the pass

    def __init__(self, folder: Path, notes: int, width: int, writer: bool):
        self.folder, self.writer = folder, writer
        self.x = np.zeros((notes, width), dtype=np.float32)
        self.have = np.zeros(notes, dtype=bool)
        self.parts = sorted(folder.glob("part-*.npz"))
        for part in self.parts:
            with np.load(part, allow_pickle=False) as saved:
                rows, x = saved["rows"], saved["x"]
            in_range = not len(rows) or 0 <= rows.min() <= rows.max() < notes
            if rows.ndim != 1 or x.shape != (len(rows), width) or not in_range:
                raise DataError(f"{part}: not a feature part of this run (rows {rows.shape}, features {x.shape}); "
                                f"delete {folder} to compute them again")
            self.x[rows], self.have[rows] = x, True

    @staticmethod
    def reset_unless(folder: Path, key: dict[str, Any]) -> None:
        """Keep `folder` when its key.json is `key`; otherwise start it empty with that key."""
        if (folder / "key.json").is_file() and read_json(folder / "key.json") == key:
            return
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        write_json(key, folder / "key.json")

    def add(self, rows: np.ndarray, x: np.ndarray) -> None:
        self.x[rows], self.have[rows] = x, True
        if not self.writer:
            return
        part = self.folder / f"part-{len(self.parts):06d}.npz"
        with atomic_path(part) as tmp, open(tmp, "wb") as f:  # a file: np.savez would add .npz to the temp name
            np.savez(f, rows=np.asarray(rows, dtype=np.int64), x=np.asarray(x, dtype=np.float32))
        self.parts.append(part)


def check_head_config(cfg: PopularityConfig) -> None:
    """What a head on a NoteLLM cannot read: one-line config errors."""
    backbone = cfg.model.backbone
    if cfg.model.features:
        raise ConfigError("model.kind=notellm-head reads the NoteLLM's pooled state only: model.features must be []")
    if cfg.model.history_k:
        raise ConfigError("model.kind=notellm-head reads the NoteLLM's embedding prompt: model.history_k must be 0")
    if backbone.startswith(ZERO_SHOT_PREFIX):
        return
    from notellm.models.folder import read_card

    if not Path(backbone).is_dir():
        raise ConfigError(f"model.backbone={backbone!r}: model.kind=notellm-head needs a NoteLLM folder "
                          f"(`notellm train`) or zero-shot:<backbone>")
    kind = read_card(backbone)["kind"]
    if kind != "notellm":
        raise ConfigError(f"model.backbone={backbone} holds a {kind} model; model.kind=notellm-head needs a "
                          f"(text) NoteLLM folder or zero-shot:<backbone>")


def _digest(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(map(str, ids)).encode("utf-8")).hexdigest()


def train_head(cfg: PopularityConfig, callbacks: Sequence[Callback] | None = None,
               data: PreparedData | None = None) -> Path:
    """Train the head on the split's training notes (resumable); save output_dir/model: the NoteLLM folder's
    files + score_head.safetensors, with the head's held-out test error in its card."""
    Engine(NoteLLMHeadRecipe(cfg, data), callbacks).run()
    return Path(cfg.output_dir) / "model"


__all__ = ["HeadModule", "NoteLLMHeadRecipe", "check_head_config", "train_head"]
