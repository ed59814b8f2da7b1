"""Popularity prediction with a trained RedNoob-style model folder (LoRA LLM + regression head), or with a
NoteLLM folder carrying a popularity head (`model.kind=notellm-head`: `load_model` returns a HeadModel).

    loaded = load_model("runs/popularity_xhs/model")
    scores = predict_table(loaded, notes_table)        # on the target's scale (e.g. WLAES)

Inputs are rebuilt exactly as in training from the folder's card: the note text (title, hashtags, content cut
to `content_chars`), tokenised and cut to `max_length` with the fixed `suffix` kept at the end; the head's extra
features computed from the table and standardised with the training statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from notellm.data.popularity import (HistoryConfig, feature_frame, history_feature_names, history_prompted_texts,
                                     note_texts, target_values)
from notellm.device import autocast, resolve_bf16, resolve_device
from notellm.errors import ConfigError, DataError

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


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


# ---- tokenising ------------------------------------------------------------------------------------------
def encode_texts(tokenizer, texts: Sequence[str], max_length: int, suffix: str = "") -> tuple[list[list[int]], int]:
    """Token ids per text, cut to `max_length` with `suffix` always kept at the end; and how many were cut."""
    suffix_ids = tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else []
    room = max_length - len(suffix_ids)
    if room < 2:
        raise ConfigError(f"model.max_length {max_length} leaves no room beside the suffix ({len(suffix_ids)} tokens)")
    ids = tokenizer(list(texts), add_special_tokens=True)["input_ids"] if len(texts) else []
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


# ---- forward passes --------------------------------------------------------------------------------------
def pooled_states(model, ids: Sequence[Sequence[int]], pad_id: int, *, batch_size: int = 16, device: str = "cpu",
                  bf16: bool = False, padding_side: str = "right",
                  on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """Last-real-token states (float32, N x hidden) without gradients, in batches of similar length."""
    import torch

    order = np.argsort([-len(x) for x in ids], kind="stable")
    out: np.ndarray | None = None
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            input_ids, mask = collate([ids[i] for i in idx], pad_id, padding_side)
            with autocast(device, bf16):
                pooled = model.pooled(input_ids.to(device), mask.to(device))
            if out is None:
                out = np.empty((len(ids), pooled.shape[-1]), dtype=np.float32)
            out[idx] = pooled.float().cpu().numpy()
            if on_batch:
                on_batch(len(idx))
    if out is None:
        return np.empty((0, 0), dtype=np.float32)
    return out


def frozen_note_states(backbone: str, texts: Sequence[str], *, max_length: int, suffix: str = "",
                       poolings: Sequence[str] = ("mean", "last"), batch_size: int = 16, bf16: bool = False,
                       seed: int = 0, on_batch: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """States of an untrained backbone over the regressor's own input (note text cut to `max_length` with
    `suffix` kept), every pooling from one forward pass: `mean` over real tokens, `last` = the last real
    token (what the regression head reads). float32, one row per text."""
    import torch

    from notellm.models.backbone import load_backbone
    from notellm.models.regression import decoder_of, pool_last, position_ids_from_mask

    unknown = set(poolings) - {"mean", "last"}
    if unknown:
        raise ValueError(f"poolings must be mean or last, not {sorted(unknown)}")
    causal_lm, tokenizer = load_backbone(backbone, dtype="bfloat16" if bf16 else "float32", seed=seed)
    decoder = decoder_of(causal_lm).eval()
    ids, _ = encode_texts(tokenizer, texts, max_length, suffix)
    order = np.argsort([-len(x) for x in ids], kind="stable")
    out: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            input_ids, mask = collate([ids[i] for i in idx], tokenizer.pad_token_id, "right")
            with autocast("cpu", bf16):
                hidden = decoder(input_ids=input_ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                                 use_cache=False).last_hidden_state.float()
            pooled = {"last": lambda: pool_last(hidden, mask),
                      "mean": lambda: (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)}
            for name in poolings:
                vec = pooled[name]().numpy()
                out.setdefault(name, np.empty((len(ids), vec.shape[1]), dtype=np.float32))[idx] = vec
            if on_batch:
                on_batch(len(idx))
    return out


def head_scores(model, pooled: np.ndarray, features: np.ndarray | None) -> np.ndarray:
    import torch

    with torch.no_grad():
        feats = None if features is None else torch.tensor(features, dtype=torch.float32)
        return model.score(torch.tensor(pooled), feats).cpu().numpy().astype(float)


def predict_scores(model, tokenizer, texts: Sequence[str], features: np.ndarray | None, *, target_norm: Standardizer,
                   feature_norm: Standardizer | None, max_length: int, suffix: str = "", batch_size: int = 16,
                   bf16: str | bool = "auto", device: str = "auto", padding_side: str = "right",
                   return_pooled: bool = False, on_batch: Callable[[int], None] | None = None):
    """Scores on the target's scale for `texts` (sorted by length into batches, returned in input order)."""
    device = resolve_device(device)
    model.to(device).eval()
    ids, _ = encode_texts(tokenizer, texts, max_length, suffix)
    pooled = pooled_states(model, ids, tokenizer.pad_token_id, batch_size=batch_size, device=device,
                           bf16=resolve_bf16(bf16, device), padding_side=padding_side, on_batch=on_batch)
    model.to("cpu")
    scores = head_scores(model, pooled, None if feature_norm is None else feature_norm.transform(features))
    scores = scores * target_norm.std[0] + target_norm.mean[0]
    return (scores, pooled) if return_pooled else scores


# ---- a model folder --------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    meta: dict[str, Any]

    @property
    def feature_names(self) -> list[str]:
        return list(self.meta["features"]["names"])

    @property
    def target_norm(self) -> Standardizer:
        return Standardizer([self.meta["target"]["mean"]], [self.meta["target"]["std"]])

    @property
    def feature_norm(self) -> Standardizer | None:
        f = self.meta["features"]
        return Standardizer(f["mean"], f["std"]) if f["names"] else None

    @property
    def heldout(self) -> dict[str, Any] | None:
        """The model's error on its held-out test notes, as saved at training time (None for older folders)."""
        return self.meta.get("heldout")


class HeadModel:
    """A NoteLLM folder with a popularity head (`notellm popularity train ... model.kind=notellm-head`): the one
    model that embeds, tags and scores. It scores exactly as `NoteLLM.from_pretrained(folder).predict_popularity`
    (the same loader, precision and batches); `meta` has a popularity folder's `target`, `features` and
    `heldout` keys, from the card's `popularity_head` section."""

    def __init__(self, model_dir: str | Path, card: dict[str, Any]):
        head = card["popularity_head"]
        self.model_dir = str(model_dir)
        self.meta = {"kind": "notellm-head", "backbone": card.get("backbone"), "target": head["target"],
                     "features": {"names": []}, "heldout": head.get("heldout")}
        self._embedders: dict[bool, Any] = {}
        self.embedder(resolve_bf16("auto"))  # load now: a broken folder fails here, not at the first request

    @property
    def feature_names(self) -> list[str]:
        return []

    @property
    def heldout(self) -> dict[str, Any] | None:
        return self.meta["heldout"]

    def embedder(self, bf16: bool):
        """The folder loaded as `notellm embed` / the API load it (bf16 weights under bf16), once per precision."""
        from notellm.inference.embed import Embedder

        if bf16 not in self._embedders:
            self._embedders[bf16] = Embedder(self.model_dir, bf16=bf16)
        return self._embedders[bf16]

    def predict(self, notes: Sequence[dict[str, Any]], bf16: str | bool = "auto", batch_size: int | None = None,
                on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        from notellm.inference.embed import score_notes

        embedder = self.embedder(resolve_bf16(bf16))
        return score_notes(embedder.model, notes, batch_size or embedder.batch_size, embedder.bf16, on_batch)


def load_model(model_dir: str | Path) -> LoadedModel | HeadModel:
    """A popularity folder (`notellm popularity train`), or a NoteLLM folder with a popularity head
    (`model.kind=notellm-head`): the card's kind decides."""
    from notellm.models.folder import ModelFolderError, expect_kind
    from notellm.models.regression import load_regressor

    card = expect_kind(model_dir, "popularity", "notellm")
    if card["kind"] == "notellm":
        if not card.get("popularity_head"):
            raise ModelFolderError(f"{model_dir} is a NoteLLM folder without a popularity head: train one on it "
                                   f"(`notellm popularity train CONFIG model.kind=notellm-head "
                                   f"model.backbone={model_dir}`)")
        return HeadModel(model_dir, card)
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
                  feature_overrides: dict[str, float] | None = None, bf16: str = "auto",
                  batch_size: int | None = None, rows: Sequence[int] | None = None, return_pooled: bool = False,
                  on_batch: Callable[[int], None] | None = None):
    """Scores for the table's rows (or only `rows`; features such as author history still see all rows).
    A HeadModel reads each note's text only, in batches of `batch_size` (default: the embedder's)."""
    if isinstance(loaded, HeadModel):
        return _predict_head(loaded, table, feature_overrides, bf16, batch_size, rows, return_pooled, on_batch)
    batch_size = batch_size or 16
    meta = loaded.meta
    feats = table_features(loaded, table, source, as_of, feature_overrides)
    texts = note_texts(table, meta["input"]["content_chars"], source)
    if meta["input"].get("history_k", 0):  # the author's earlier notes in this table, with their known scores
        targets = target_values(table, meta["target"]["weights"], source, missing="nan")
        texts = history_prompted_texts(table, texts, targets, meta["input"]["history_k"],
                                       meta["input"].get("history_window_days", 0.0), source)
    if rows is not None:
        rows = np.asarray(rows, dtype=int)
        feats = None if feats is None else feats[rows]
        texts = [texts[i] for i in rows]
    return predict_scores(loaded.model, loaded.tokenizer, texts, feats, target_norm=loaded.target_norm,
                          feature_norm=loaded.feature_norm, max_length=meta["input"]["max_length"],
                          suffix=meta["input"]["suffix"], batch_size=batch_size, bf16=bf16,
                          padding_side=meta["input"].get("padding_side", "right"), return_pooled=return_pooled,
                          on_batch=on_batch)


def _predict_head(loaded: HeadModel, table: pa.Table, feature_overrides: dict[str, float] | None, bf16: str,
                  batch_size: int | None, rows: Sequence[int] | None, return_pooled: bool,
                  on_batch: Callable[[int], None] | None) -> np.ndarray:
    if feature_overrides:
        name = sorted(feature_overrides)[0]
        raise DataError(f"the model has no feature(s) {sorted(feature_overrides)}: a NoteLLM popularity head reads "
                        f"the note's text only", field=name)
    if return_pooled:
        raise ConfigError("a NoteLLM popularity head does not return the regressor's pooled states")
    notes = table.to_pylist()
    if rows is not None:
        notes = [notes[int(i)] for i in rows]
    return loaded.predict(notes, bf16, batch_size, on_batch)
