"""Popularity evaluation: the baselines an LLM method has to beat, stacking, and the score report.

All fitted on the same training rows of one split and scored on its test rows:
mean, median, the author's recent mean, TF-IDF (character n-grams) + ridge, LightGBM on hand features,
LightGBM on hand features + TF-IDF reduced by truncated SVD, and LightGBM on everything without the LLM (adding
a cross-fitted TF-IDF ridge score). Note age and author-history features join the GBDT inputs where
`eval.use_age` / `eval.use_history` allow. Given cross-fitted LLM scores (`LLMScores`), two level-2 models use
them: LightGBM on all GBDT features + the LLM score ("stack"), and a ridge over the out-of-fold LightGBM and LLM
scores ("blend"). `score_report` gives MAE / RMSE / R2 / Spearman with paired bootstrap intervals.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from notellm.data.popularity import HistoryConfig, PreparedData, describe_target, group_folds
from notellm.errors import DataError, NotellmError
from notellm.io import read_json

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


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
    llm_features: str = "none"         # none | zero-shot:<backbone>[@pooling] | frozen:<backbone>[@mean|last] |
                                       # a NoteLLM model folder: its note embeddings become LightGBM features
                                       # (PCA, kNN target, ridge score)
    llm_pca_dims: int = 32             # PCA components of the embeddings (fitted on training notes only)
    llm_knn: int = 20                  # neighbours of the kNN-target feature (0: none)


@dataclass
class LLMScores:
    """Cross-fitted LLM outputs on one split: test scores (mean of fold models) and out-of-fold train scores."""

    test: np.ndarray
    oof: np.ndarray | None
    test_pooled: np.ndarray | None = None
    oof_pooled: np.ndarray | None = None
    info: list[dict[str, Any]] = field(default_factory=list)


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


def gbdt_blocks(data: PreparedData, use_age: bool, use_history: bool) -> pd.DataFrame:
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


def baseline_predictions(ecfg: EvalConfig, split_kind: str, data: PreparedData, llm: LLMScores | None = None,
                         use_age: bool | None = None, use_history: bool | None = None,
                         log: Log = _quiet, note_vectors: np.ndarray | dict[str, np.ndarray] | None = None,
                         residual: LLMScores | None = None) -> dict[str, np.ndarray]:
    """Test predictions of every baseline (and of the LLM and the stack when `llm` is given; of LightGBM with
    LLM embedding features when `note_vectors`, one row per note of `data` (or {label: rows}), are given; and
    LightGBM all + an LLM trained on its cross-fitted residuals when `residual` is given)."""
    use_age = ecfg.use_age if use_age is None else use_age
    use_history = ecfg.use_history if use_history is None else use_history
    tr, te = data.train_idx, data.test_idx
    y_tr = data.y[tr]
    preds: dict[str, np.ndarray] = {
        "mean": np.full(len(te), y_tr.mean()),
        "median": np.full(len(te), float(np.median(y_tr))),
    }
    folds = group_folds([data.authors[i] for i in tr] if split_kind == "author" else None, len(tr),
                        ecfg.inner_folds, ecfg.seed)
    if use_history:  # the naive history baseline: the author's recent average, else the training mean
        w = max(ecfg.history.windows) if ecfg.history.windows else None
        recent = data.history[f"author_prev_mean_last{w}" if w else "author_prev_mean"].to_numpy()[te]
        preds[f"author history: mean of last {w or 'all'}"] = np.where(np.isfinite(recent), recent, y_tr.mean())
    log("TF-IDF features")
    text = text_features(ecfg, [data.texts[i] for i in tr], [data.texts[i] for i in te], y_tr, folds)
    preds["TF-IDF char ridge"] = text.ridge_test
    blocks = gbdt_blocks(data, use_age, use_history)
    b_tr, b_te = blocks.iloc[tr].reset_index(drop=True), blocks.iloc[te].reset_index(drop=True)
    log("LightGBM baselines")
    preds["LightGBM hand"] = _lgbm(ecfg, b_tr, y_tr, b_te, ecfg.seed)
    svd_cols = [f"svd{i}" for i in range(text.svd_train.shape[1])]
    x_tr = pd.concat([b_tr, pd.DataFrame(text.svd_train, columns=svd_cols)], axis=1)
    x_te = pd.concat([b_te, pd.DataFrame(text.svd_test, columns=svd_cols)], axis=1)
    preds["LightGBM hand+TF-IDF"] = _lgbm(ecfg, x_tr, y_tr, x_te, ecfg.seed)
    x_tr["tfidf_ridge"], x_te["tfidf_ridge"] = text.ridge_oof, text.ridge_test
    preds["LightGBM all, no LLM"] = _lgbm(ecfg, x_tr, y_tr, x_te, ecfg.seed)
    if note_vectors is not None:
        named = note_vectors if isinstance(note_vectors, dict) else {"": note_vectors}
        for label, vectors in named.items():
            tag = f" ({label})" if label else ""
            emb = embedding_features(ecfg, vectors[tr], vectors[te], y_tr, folds)
            if ecfg.llm_knn:
                preds[f"kNN target (LLM embeddings{', ' + label if label else ''})"] = emb.test["llm_knn_mean"].to_numpy()
            preds[f"ridge (LLM embeddings{', ' + label if label else ''})"] = emb.test["llm_ridge"].to_numpy()
            preds[f"LightGBM all + LLM embeddings{tag}"] = _lgbm(ecfg, pd.concat([x_tr, emb.train], axis=1), y_tr,
                                                                 pd.concat([x_te, emb.test], axis=1), ecfg.seed)
    if residual is not None:
        preds["residual: LightGBM all + LLM residual"] = preds["LightGBM all, no LLM"] + residual.test
    if llm is not None:
        preds["LoRA LLM"] = llm.test
        if llm.oof is not None:
            preds.update(stack_predictions(ecfg, x_tr, x_te, y_tr, llm, folds))
    return preds


def residual_targets(ecfg: EvalConfig, split_kind: str, data: PreparedData, use_age: bool | None = None,
                     use_history: bool | None = None) -> np.ndarray:
    """y minus the cross-fitted prediction of LightGBM all (no LLM) for training rows (each from a GBDT over
    the other `eval.inner_folds` folds, authors kept together in an author split), NaN for test rows: the
    targets of the residual head. The final score is LightGBM all (fitted on every training row) + the LLM."""
    use_age = ecfg.use_age if use_age is None else use_age
    use_history = ecfg.use_history if use_history is None else use_history
    tr, te = data.train_idx, data.test_idx
    y_tr = data.y[tr]
    folds = group_folds([data.authors[i] for i in tr] if split_kind == "author" else None, len(tr),
                        ecfg.inner_folds, ecfg.seed)
    out = np.full(len(data.y), np.nan)
    for k in np.unique(folds):
        fit, hold = tr[folds != k], tr[folds == k]
        x_fit, x_hold = gbdt_all_features(ecfg, split_kind, data, fit, hold, use_age, use_history)
        out[hold] = data.y[hold] - _lgbm(ecfg, x_fit, data.y[fit], x_hold, ecfg.seed)
    return out


def gbdt_all_features(ecfg: EvalConfig, split_kind: str, data: PreparedData, fit_rows: np.ndarray,
                      score_rows: np.ndarray, use_age: bool, use_history: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The inputs of "LightGBM all, no LLM" for `fit_rows` (TF-IDF ridge cross-fitted) and `score_rows`, with
    every text statistic fitted on `fit_rows` only."""
    folds = group_folds([data.authors[i] for i in fit_rows] if split_kind == "author" else None, len(fit_rows),
                        ecfg.inner_folds, ecfg.seed)
    text = text_features(ecfg, [data.texts[i] for i in fit_rows], [data.texts[i] for i in score_rows],
                         data.y[fit_rows], folds)
    blocks = gbdt_blocks(data, use_age, use_history)
    svd_cols = [f"svd{i}" for i in range(text.svd_train.shape[1])]
    x_fit = pd.concat([blocks.iloc[fit_rows].reset_index(drop=True), pd.DataFrame(text.svd_train, columns=svd_cols)],
                      axis=1)
    x_score = pd.concat([blocks.iloc[score_rows].reset_index(drop=True),
                         pd.DataFrame(text.svd_test, columns=svd_cols)], axis=1)
    x_fit["tfidf_ridge"], x_score["tfidf_ridge"] = text.ridge_oof, text.ridge_test
    return x_fit, x_score


@dataclass
class EmbeddingFeatures:
    train: pd.DataFrame     # cross-fitted where a feature uses targets
    test: pd.DataFrame


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_target(query: np.ndarray, keys: np.ndarray, targets: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean target, mean cosine) of each query's k nearest keys."""
    sims = _unit(query) @ _unit(keys).T
    k = min(k, keys.shape[0])
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    rows = np.arange(len(query))[:, None]
    return targets[top].mean(1), sims[rows, top].mean(1)


def embedding_features(ecfg: EvalConfig, train_vectors: np.ndarray, test_vectors: np.ndarray, y_train: np.ndarray,
                       folds: np.ndarray) -> EmbeddingFeatures:
    """LightGBM features from note embeddings: PCA components (fitted on training notes; no targets involved),
    the mean target of the k nearest training notes and a ridge score on the embeddings. The two that use
    targets are cross-fitted over `folds` for training rows, so no training note sees its own target."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import RidgeCV

    # z-scored with training statistics: LLM states are dominated by a few massive dimensions
    mean, std = train_vectors.mean(0), train_vectors.std(0)
    std = np.where(std > 0, std, 1.0)
    train_vectors, test_vectors = (train_vectors - mean) / std, (test_vectors - mean) / std
    dims = max(1, min(ecfg.llm_pca_dims, train_vectors.shape[1], len(train_vectors) - 1))
    pca = PCA(dims, random_state=0).fit(train_vectors)
    cols = [f"llm_pc{i}" for i in range(dims)]
    train = pd.DataFrame(pca.transform(train_vectors), columns=cols)
    test = pd.DataFrame(pca.transform(test_vectors), columns=cols)
    ridge_oof = np.empty(len(y_train))
    knn_oof, sim_oof = np.empty(len(y_train)), np.empty(len(y_train))
    alphas = np.logspace(-1, 4, 11)
    for k in np.unique(folds):
        fit, hold = folds != k, folds == k
        ridge_oof[hold] = RidgeCV(alphas=alphas).fit(train_vectors[fit], y_train[fit]).predict(train_vectors[hold])
        if ecfg.llm_knn:
            knn_oof[hold], sim_oof[hold] = knn_target(train_vectors[hold], train_vectors[fit], y_train[fit],
                                                      ecfg.llm_knn)
    train["llm_ridge"] = ridge_oof
    test["llm_ridge"] = RidgeCV(alphas=alphas).fit(train_vectors, y_train).predict(test_vectors)
    if ecfg.llm_knn:
        train["llm_knn_mean"], train["llm_knn_sim"] = knn_oof, sim_oof
        test["llm_knn_mean"], test["llm_knn_sim"] = knn_target(test_vectors, train_vectors, y_train, ecfg.llm_knn)
    return EmbeddingFeatures(train, test)


FROZEN_PREFIX = "frozen:"


def llm_note_vectors(spec: str, data: PreparedData, cache_dir: str | Path | None = None,
                     on_batch: Callable[[int], None] | None = None,
                     regressor_input: dict[str, Any] | None = None) -> np.ndarray:
    """Embeddings of every note of `data` by a NoteLLM folder, `zero-shot:<backbone>[@pooling]` (the note
    prompt of `notellm embed`) or `frozen:<backbone>[@mean|last]` (the untrained backbone over the regressor's
    input: `regressor_input` max_length and suffix), cached in `cache_dir` by spec, input and note ids."""
    from notellm.inference.embed import Embedder

    regressor_input = regressor_input or {}
    cache = _vector_cache(cache_dir, spec, data, regressor_input) if cache_dir else None
    if cache is not None and cache.is_file():
        vectors = np.load(cache, allow_pickle=False)
        if vectors.shape[0] == len(data.note_ids):
            return vectors
    if spec.startswith(FROZEN_PREFIX):
        from notellm.inference.popularity import frozen_note_states

        backbone, _, pooling = spec[len(FROZEN_PREFIX):].partition("@")
        states = frozen_note_states(backbone, data.texts, max_length=regressor_input.get("max_length", 128),
                                    suffix=regressor_input.get("suffix", ""), on_batch=on_batch)
        if cache_dir:  # one forward pass gives every pooling: keep the others for the next call
            for other, other_vectors in states.items():
                if other != (pooling or "mean"):
                    _save_vectors(_vector_cache(cache_dir, f"{FROZEN_PREFIX}{backbone}@{other}", data,
                                                regressor_input), other_vectors)
        vectors = states[pooling or "mean"]
    else:
        notes = data.table.select(["note_id", "title", "content", "hashtags", "category", "image_paths"]).to_pylist()
        vectors = Embedder(spec).encode(notes, on_batch=on_batch)
    if cache is not None:
        _save_vectors(cache, vectors)
    return vectors


def _vector_cache(cache_dir: str | Path, spec: str, data: PreparedData, regressor_input: dict[str, Any]) -> Path:
    import hashlib
    import json

    key = hashlib.sha256(json.dumps([spec, data.note_ids, regressor_input if spec.startswith(FROZEN_PREFIX) else {},
                                     data.texts[:1]]).encode("utf-8")).hexdigest()[:16]
    return Path(cache_dir) / f"llm-vectors-{key}.npy"


def _save_vectors(path: Path, vectors: np.ndarray) -> None:
    from notellm.io import atomic_path

    with atomic_path(path, suffix=".npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, vectors.astype(np.float32), allow_pickle=False)


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
REFERENCE = "LightGBM all, no LLM"   # the model every LLM row has to beat


def score_report(ecfg: EvalConfig, split_kind: str, weights: dict[str, float], data: PreparedData,
                 preds: dict[str, np.ndarray], reference: str = REFERENCE) -> dict[str, Any]:
    """Metrics with bootstrap intervals, MAE difference against the mean baseline, paired MAE and Spearman
    differences against `reference` (LightGBM on everything without the LLM), best-note ranking, and the test
    predictions themselves (for the plots)."""
    from notellm.evaluation.regression import best_note_ranking, bootstrap_metrics, paired_differences, result_rows

    te = data.test_idx
    y = data.y[te]
    intervals = bootstrap_metrics(y, preds, baseline="mean", n_boot=ecfg.bootstrap, seed=ecfg.seed)
    versus = (paired_differences(y, preds, reference, n_boot=ecfg.bootstrap, seed=ecfg.seed)
              if reference in preds else {})
    groups = [data.authors[i] for i in te]
    ranking = {name: best_note_ranking(y, p, groups) for name, p in preds.items()}
    return {
        "split": split_kind, "test_notes": int(len(te)), "train_notes": int((~data.test).sum()),
        "target": describe_target(weights),
        "metrics": {name: {m: asdict(iv) for m, iv in ints.items()} for name, ints in intervals.items()},
        "ranking": ranking,
        "reference": reference if versus else None,
        "versus_reference": {name: {m: asdict(iv) for m, iv in ints.items()} for name, ints in versus.items()},
        "rows": result_rows(intervals, ranking, versus=versus, label="LightGBM all"),
        "predictions": {"note_id": [data.note_ids[i] for i in te], "target": y.tolist(),
                        **{name: np.asarray(p, dtype=float).tolist() for name, p in preds.items()}},
    }


def check_no_overlap(model_dir: str | Path, data: PreparedData) -> None:
    """A saved model must not have been trained on any of this split's test notes (a NoteLLM folder with a
    popularity head names its head's training notes popularity_train_note_ids.json)."""
    names = ("popularity_train_note_ids.json", "train_note_ids.json")
    path = next((Path(model_dir) / n for n in names if (Path(model_dir) / n).exists()), None)
    if path is None:
        raise NotellmError(f"{model_dir} has no train_note_ids.json: cannot check it never saw the test notes")
    seen = set(read_json(path)["note_ids"])
    overlap = [data.note_ids[i] for i in data.test_idx if data.note_ids[i] in seen]
    if overlap:
        raise NotellmError(f"{model_dir} was trained on {len(overlap)} of this split's test notes "
                           f"(e.g. {overlap[0]}): evaluate it on the split it was trained for")


