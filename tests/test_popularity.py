"""Popularity data and metrics: targets, splits, leak-free author history, hand-computed metrics."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from notellm.config import load_config
from notellm.data.popularity import (
    HistoryConfig,
    SplitConfig,
    TargetConfig,
    author_fold,
    author_history_features,
    describe_target,
    feature_frame,
    hand_features,
    note_texts,
    split_mask,
    target_values,
)
from notellm.data.schema import empty_note, notes_to_table
from notellm.errors import ConfigError, DataError
from notellm.evaluation.regression import best_note_ranking, bootstrap_metrics, regression_metrics
from notellm.inference.popularity import collate
from notellm.training.popularity import PopularityConfig, length_bucketed_batches, prepare

T0 = datetime(2024, 5, 1, 0, 0, tzinfo=timezone.utc)


def note(note_id, author="alice", hours=0, likes=12, collects=1, comments=2, title="t", content="c", **extra):
    row = empty_note(note_id)
    row.update(author_id=author, published_at=T0 + timedelta(hours=hours), likes=likes, collects=collects,
               comments=comments, title=title, content=content, **extra)
    return row


# ------------------------------------------------------------------------------------------------ targets
def test_wlaes_readme_and_code_weights_by_hand():
    table = notes_to_table([note("a"), note("b", likes=0, collects=0, comments=0)])
    # ln(13) + 0.5 ln(2) + 0.2 ln(3) = 2.564949 + 0.346574 + 0.219722
    assert target_values(table, TargetConfig().resolved()) == pytest.approx([3.1312454, 0.0])
    # RedNoob's code: 2.0 on comments -> ln(13) + 0.5 ln(2) + 2.0 ln(3)
    code = TargetConfig(name="wlaes_rednoob_code").resolved()
    assert code == {"likes": 1.0, "collects": 0.5, "comments": 2.0}
    assert target_values(table, code)[0] == pytest.approx(5.1087475)
    assert describe_target(TargetConfig().resolved()) == "1*ln(likes+1) + 0.5*ln(collects+1) + 0.2*ln(comments+1)"


def test_target_weights_from_config_overrides(tmp_path):
    cfg = load_config(PopularityConfig, None, ["target.weights.likes=1", "target.weights.shares=0.25"])
    assert cfg.target.resolved() == {"likes": 1.0, "shares": 0.25}
    with pytest.raises(ConfigError, match="unknown count column"):
        TargetConfig(weights={"views": 1.0}).resolved()
    with pytest.raises(ConfigError, match="not a preset"):
        TargetConfig(name="nope").resolved()


def test_missing_count_is_an_error_naming_row_and_field():
    table = notes_to_table([note("a"), note("b", collects=None)])
    with pytest.raises(DataError) as err:
        target_values(table, TargetConfig().resolved(), source="x.csv")
    assert (err.value.row, err.value.field, err.value.file) == (2, "collects", "x.csv")
    assert np.isnan(target_values(table, TargetConfig().resolved(), missing="nan")[1])


# ------------------------------------------------------------------------------------------------- splits
def test_author_split_is_stable_and_author_disjoint():
    # sha1 mod 5 of these ids, computed once by hand: alice 0, bob 0, carol 1
    assert [author_fold(a, 5) for a in ("alice", "bob", "carol")] == [0, 0, 1]
    rows = [note(f"n{i}", author=f"user{i % 37}", hours=i) for i in range(200)]
    table = notes_to_table(rows)
    test = split_mask(table, SplitConfig(kind="author"))
    authors = np.array(table.column("author_id").to_pylist())
    assert not set(authors[test]) & set(authors[~test])
    assert 0 < test.sum() < 200


def test_time_split_takes_the_latest_notes():
    rows = [note(f"n{i}", hours=(i * 7) % 10) for i in range(10)]  # hours 0,7,4,1,8,5,2,9,6,3
    test = split_mask(notes_to_table(rows), SplitConfig(kind="time", test_fraction=0.2))
    assert sorted(np.flatnonzero(test)) == [4, 7]  # hours 8 and 9
    random = split_mask(notes_to_table(rows), SplitConfig(kind="random", test_fraction=0.3, seed=1))
    assert random.sum() == 3


def test_split_needs_the_column_it_splits_on():
    rows = [note("a"), note("b", author=None)]
    with pytest.raises(DataError) as err:
        split_mask(notes_to_table(rows), SplitConfig(kind="author"))
    assert (err.value.row, err.value.field) == (2, "author_id")


# ----------------------------------------------------------------------------------------- author history
def test_author_history_by_hand_and_ties_are_not_history():
    authors = ["a", "a", "a", "a", "b"]
    hours = np.array([0, 10, 10, 20, 5]) * 3600.0
    y = np.array([1.0, 3.0, 5.0, 2.0, 9.0])
    f = author_history_features(authors, hours, y, HistoryConfig(windows=[2]))
    assert f["author_prev_count"].tolist() == [0, 1, 1, 3, 0]
    assert np.isnan(f["author_prev_mean"][0]) and np.isnan(f["author_prev_mean"][4])
    assert f["author_prev_mean"][1] == f["author_prev_mean"][2] == 1.0    # the other t=10 note is not earlier
    assert f["author_prev_mean"][3] == pytest.approx(3.0)                  # (1 + 3 + 5) / 3
    assert f["author_prev_mean_last2"][3] == pytest.approx(4.0)            # (3 + 5) / 2
    assert f["author_prev_max"][3] == 5.0
    assert f["author_days_since_prev"][3] == pytest.approx(10 / 24)


def test_author_history_never_uses_a_note_published_at_or_after_the_note():
    rng = np.random.default_rng(0)
    n = 60
    authors = [f"u{i % 4}" for i in range(n)]
    seconds = rng.integers(0, 30, n).astype(float) * 86400  # many ties on purpose
    y = rng.normal(5, 2, n)
    base = author_history_features(authors, seconds, y)
    for j in range(n):  # perturb one note's target: only strictly later notes of the same author may move
        y2 = y.copy()
        y2[j] += 100.0
        moved = author_history_features(authors, seconds, y2)
        changed = ~np.isclose(base.to_numpy(), moved.to_numpy(), equal_nan=True).all(axis=1)
        allowed = (np.array(authors) == authors[j]) & (seconds > seconds[j])
        assert not (changed & ~allowed).any(), f"perturbing note {j} changed features of notes not after it"
        if allowed.any():
            assert changed[allowed].all()  # and the later notes do see it (the test can fail)


def test_unknown_targets_are_not_history():
    f = author_history_features(["a", "a", "a"], np.array([0.0, 1.0, 2.0]), np.array([4.0, np.nan, 1.0]))
    assert f["author_prev_count"].tolist() == [0, 1, 1]
    assert f["author_prev_last"][2] == 4.0


def test_hand_features_by_hand():
    row = note("a", title="好物!", content="第一行[哭惹R]😀\n第二行 @小红 看 https://x.cn/a ？12", hashtags=["x", "y"],
               extra='{"type": "video"}')
    f = hand_features(notes_to_table([row]), timezone="Asia/Shanghai").iloc[0]
    assert f["title_chars"] == 3 and f["content_lines"] == 2 and f["n_hashtags"] == 2
    assert f["n_platform_emoji"] == 1 and f["n_unicode_emoji"] == 1 and f["n_mentions"] == 1 and f["n_urls"] == 1
    assert f["n_exclaims"] == 1 and f["n_questions"] == 1 and f["n_digits"] == 2
    assert f["hour"] == 8 and f["weekday"] == 2 and f["is_video"] == 1  # 2024-05-01 00:00 UTC = Wed 08:00 Shanghai


def test_note_age_from_crawl_time_or_as_of():
    rows = [note("a", extra='{"crawled_at": "2024-05-11T00:00:00+00:00"}'), note("b", hours=24, extra="{}")]
    table = notes_to_table(rows)
    with pytest.raises(DataError) as err:
        feature_frame(table, ["note_age_days"])
    assert (err.value.row, err.value.field) == (2, "extra.crawled_at")
    ages = feature_frame(table, ["note_age_days", "log_note_age_days"], as_of="2024-05-11")
    assert ages["note_age_days"].tolist() == [10.0, 9.0]
    assert ages["log_note_age_days"][0] == pytest.approx(math.log(11))


def test_note_texts_reject_a_note_without_text():
    rows = [note("a", title="标题", content="正文", hashtags=["话题"]), note("b", title="", content="  ")]
    table = notes_to_table(rows)
    assert note_texts(table.slice(0, 1))[0] == "帖子标题：标题\n\n帖子话题：#话题\n\n帖子内容：正文"
    with pytest.raises(DataError) as err:
        note_texts(table, source="n.parquet")
    assert (err.value.row, err.value.field, err.value.file) == (2, "content", "n.parquet")


# ------------------------------------------------------------------------------------------------ metrics
def test_regression_metrics_by_hand():
    m = regression_metrics([1, 2, 3, 4], [1.5, 2, 2, 5])
    # errors .5, 0, -1, 1: MAE 2.5/4; RMSE sqrt(2.25/4); SST 5 -> R2 1 - 2.25/5;
    # ranks 1,2,3,4 vs 1,2.5,2.5,4 -> Pearson 4.5 / sqrt(5 * 4.5)
    assert m["mae"] == pytest.approx(0.625)
    assert m["rmse"] == pytest.approx(0.75)
    assert m["r2"] == pytest.approx(0.55)
    assert m["spearman"] == pytest.approx(0.9486833)
    assert math.isnan(regression_metrics([1, 2, 3], [2, 2, 2])["spearman"])  # a constant has no ranking


def test_bootstrap_intervals_and_paired_difference():
    y = np.random.default_rng(1).normal(0, 1, 200)
    preds = {"mean": np.full(200, y.mean()), "shifted": y + 1.0, "exact": y.copy()}
    ints = bootstrap_metrics(y, preds, baseline="mean", n_boot=300, seed=0)
    assert (ints["shifted"]["mae"].low, ints["shifted"]["mae"].high) == pytest.approx((1.0, 1.0))
    assert ints["exact"]["mae"].value == 0.0 and ints["exact"]["mae_diff"].high < 0
    assert ints["mean"]["mae_diff"].value == ints["mean"]["mae_diff"].low == 0.0
    assert ints["exact"]["r2"].low == pytest.approx(1.0)
    lo, hi = ints["mean"]["mae"].low, ints["mean"]["mae"].high
    assert lo < ints["mean"]["mae"].value < hi


def test_best_note_ranking_by_hand():
    y = [1, 3, 2, 5, 4, 7]
    p = [0, 1, 5, 2, 1, 0]
    groups = ["a", "a", "a", "b", "b", "c"]  # a: top-predicted has y=2 (miss); b: hit; c: one note, not counted
    r = best_note_ranking(y, p, groups)
    assert r["authors"] == 2 and r["hit_rate"] == 0.5
    assert r["chance"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    constant = best_note_ranking(y, [1.0] * 6, groups)  # ties broken at random: exactly chance
    assert constant["hit_rate"] == pytest.approx(r["chance"])
    tied = best_note_ranking(y, [0, 9, 9, 2, 1, 0], groups)  # a: top pick tied between y=3 (best) and y=2
    assert tied["hit_rate"] == pytest.approx((0.5 + 1) / 2)


# ------------------------------------------------------------------------------------------ batching
def test_dynamic_padding_buckets_by_length():
    rng = np.random.default_rng(0)
    lengths = rng.permutation(np.arange(1, 65))
    batches = length_bucketed_batches(lengths, 4, np.random.default_rng(1), bucket_batches=16)
    assert sorted(np.concatenate(batches).tolist()) == list(range(64))
    assert max(lengths[b].max() - lengths[b].min() for b in batches) == 3  # one sorted window: neighbours
    # batches are always full (processes split them equally); the rest of a window waits for the next epoch
    partial = length_bucketed_batches(lengths[:30], 4, np.random.default_rng(1), bucket_batches=4)
    assert [len(b) for b in partial] == [4] * 7 and len(set(np.concatenate(partial).tolist())) == 28
    ids, mask = collate([[5, 6, 7], [8]], pad_id=0, side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = collate([[5, 6, 7], [8]], pad_id=0, side="right")
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_shipped_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    xhs = load_config(PopularityConfig, root / "popularity_xhs.yaml")
    weibo = load_config(PopularityConfig, root / "popularity_weibo.yaml")
    assert xhs.target.resolved() == {"likes": 1.0, "collects": 0.5, "comments": 0.2}
    assert weibo.target.resolved() == {"likes": 1.0, "shares": 0.5, "comments": 0.2}
    assert (xhs.split.kind, weibo.split.kind) == ("author", "random")


# ------------------------------------------------------------------------------------------ real data
def test_real_xhs_targets_and_author_split():
    from conftest import shared_dataset

    from notellm.data.readers import read_mediacrawler

    path = shared_dataset("xhs_mediacrawler_hanseylee") / "xhs_note.csv"
    cfg = PopularityConfig()
    cfg.data.path = str(path)
    data = prepare(cfg, read_mediacrawler(path), str(path))
    row = data.note_ids.index("6660b5d70000000015013939")  # likes 1299, collects 1175, comments 126
    assert data.y[row] == pytest.approx(math.log(1300) + 0.5 * math.log(1176) + 0.2 * math.log(127))
    authors = np.array(data.authors)
    assert not set(authors[data.test]) & set(authors[~data.test])
    assert data.age is not None and (data.age["note_age_days"] >= 0).all()


# ------------------------------------------------------------------------------------------ evaluation
def _synthetic_notes(n=80):
    """Notes whose target rises with the number of '爆款' in the title; 16 authors; crawl time in extra."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        k = int(rng.integers(0, 4))
        likes = int(np.exp(1 + 1.5 * k + rng.normal(0, 0.3)))
        rows.append(note(f"n{i}", author=f"u{i % 16}", hours=i, likes=likes, collects=likes // 3, comments=k,
                         title="爆款" * k + f"笔记{i}", content="日常分享" * int(rng.integers(1, 4)),
                         extra='{"crawled_at": "2024-06-01T00:00:00+00:00"}'))
    return notes_to_table(rows)


def test_evaluate_runs_every_baseline_on_the_same_test_notes():
    from notellm.evaluation.popularity import baseline_predictions, score_report

    cfg = load_config(PopularityConfig, None, ["eval.svd_components=8", "eval.bootstrap=200", "eval.lgbm_rounds=60",
                                               "eval.lgbm_min_child_samples=5", "eval.inner_folds=3"])
    data = prepare(cfg, _synthetic_notes())
    preds = baseline_predictions(cfg.eval, cfg.split.kind, data)
    assert set(preds) == {"mean", "median", "author history: mean of last 10", "TF-IDF char ridge", "LightGBM hand",
                          "LightGBM hand+TF-IDF", "LightGBM all, no LLM"}
    # the history baseline: an author's earlier notes' mean target (last 10), else the training mean
    hist = data.history["author_prev_mean_last10"].to_numpy()[data.test]
    expected = np.where(np.isnan(hist), data.y[~data.test].mean(), hist)
    assert preds["author history: mean of last 10"] == pytest.approx(expected)
    assert np.isfinite(hist).any() and np.isnan(hist).any()
    report = score_report(cfg.eval, cfg.split.kind, cfg.target.resolved(), data, preds)
    y_test, y_train = data.y[data.test], data.y[~data.test]
    mean_mae = report["metrics"]["mean"]["mae"]["value"]
    assert mean_mae == pytest.approx(np.abs(y_test - y_train.mean()).mean())
    assert report["metrics"]["mean"]["mae_diff"]["value"] == 0.0
    # the title carries the signal: the text model must beat the mean predictor
    assert report["metrics"]["TF-IDF char ridge"]["mae"]["value"] < 0.7 * mean_mae
    assert report["metrics"]["TF-IDF char ridge"]["mae_diff"]["high"] < 0
    assert {r["model"] for r in report["rows"]} == set(preds)


def test_stacks_use_only_out_of_fold_llm_scores_and_tolerate_a_subset():
    from notellm.evaluation.popularity import LLMScores, baseline_predictions

    cfg = load_config(PopularityConfig, None, ["eval.svd_components=8", "eval.lgbm_rounds=60",
                                               "eval.lgbm_min_child_samples=5", "eval.inner_folds=3"])
    data = prepare(cfg, _synthetic_notes())
    rng = np.random.default_rng(0)
    y_tr, y_te = data.y[data.train_idx], data.y[data.test_idx]
    oof = y_tr + rng.normal(0, 0.05, len(y_tr))
    oof[::3] = np.nan  # notes outside the cross-fitted subset have no LLM score
    llm = LLMScores(test=y_te + rng.normal(0, 0.05, len(y_te)), oof=oof)
    preds = baseline_predictions(cfg.eval, cfg.split.kind, data, llm)
    mae = {k: np.abs(v - y_te).mean() for k, v in preds.items()}
    assert preds["LoRA LLM"] is llm.test
    # an almost exact LLM score must dominate both level-2 models
    assert mae["blend: ridge(LightGBM all, LLM)"] < 0.5 * mae["LightGBM all, no LLM"]
    assert mae["stack: LightGBM all + LLM"] < mae["LightGBM all, no LLM"]
    # pooled LLM states can join the stack as PCA components (fitted on the out-of-fold rows only)
    cfg.eval.stack_embedding_dims = 2
    llm.oof_pooled = rng.normal(size=(len(y_tr), 6)).astype(np.float32)
    llm.oof_pooled[::3] = np.nan
    llm.test_pooled = rng.normal(size=(len(y_te), 6)).astype(np.float32)
    with_pcs = baseline_predictions(cfg.eval, cfg.split.kind, data, llm)["stack: LightGBM all + LLM"]
    assert with_pcs.shape == y_te.shape and np.isfinite(with_pcs).all()


# ------------------------------------------------------------------------------------- LLM embeddings as features
def test_embedding_features_are_cross_fitted_no_training_row_sees_its_own_target():
    from notellm.data.popularity import group_folds
    from notellm.evaluation.popularity import EvalConfig, embedding_features

    rng = np.random.default_rng(0)
    n, dim = 60, 8
    vectors = rng.normal(size=(n, dim))
    y = vectors[:, 0] * 2 + rng.normal(0, 0.1, n)
    folds = group_folds(None, n, 3, 0)
    ecfg = EvalConfig(llm_pca_dims=4, llm_knn=5)
    base = embedding_features(ecfg, vectors, vectors[:10], y, folds)
    target_cols = ["llm_ridge", "llm_knn_mean", "llm_knn_sim"]
    assert {"llm_pc0", "llm_pc3", *target_cols} <= set(base.train.columns)
    # the ridge feature carries the signal, out of fold
    assert np.corrcoef(base.train["llm_ridge"], y)[0, 1] > 0.9
    for j in (0, 17, 42):  # move one training target: its own row's features must not move; its fold's neither
        y2 = y.copy()
        y2[j] += 100.0
        moved = embedding_features(ecfg, vectors, vectors[:10], y2, folds)
        same_fold = folds == folds[j]
        for col in target_cols:
            assert np.allclose(moved.train[col][same_fold], base.train[col][same_fold]), (j, col)
        assert not np.allclose(moved.train["llm_ridge"][~same_fold], base.train["llm_ridge"][~same_fold])
        assert np.allclose(moved.train.filter(like="llm_pc"), base.train.filter(like="llm_pc"))  # no targets
    # kNN target by hand: the mean target of the k most similar training notes
    keys = np.eye(4)
    means, sims = __import__("notellm.evaluation.popularity", fromlist=["knn_target"]).knn_target(
        np.array([[1.0, 0.1, 0, 0]]), keys, np.array([10.0, 20.0, 30.0, 40.0]), 2)
    assert means[0] == pytest.approx(15.0) and sims[0] == pytest.approx((1 + 0.1) / np.sqrt(1.01) / 2)


def test_llm_features_row_in_the_report_with_a_tiny_frozen_model(tmp_path):
    from notellm.training.popularity import evaluate

    cfg = load_config(PopularityConfig, None, [
        "eval.svd_components=8", "eval.bootstrap=100", "eval.lgbm_rounds=40", "eval.lgbm_min_child_samples=5",
        "eval.inner_folds=3", "eval.llm_features=frozen:tiny-qwen3@last", "eval.llm_pca_dims=4", "eval.llm_knn=5",
        "model.max_length=24",
        f"output_dir={tmp_path}"])
    data = prepare(cfg, _synthetic_notes(60))
    report = evaluate(cfg, data=data)
    rows = {r["model"] for r in report["rows"]}
    assert {"LightGBM all + LLM embeddings", "ridge (LLM embeddings)", "kNN target (LLM embeddings)"} <= rows
    assert report["metrics"]["LightGBM all + LLM embeddings"]["mae"]["value"] > 0
    cached = list((tmp_path / "features").glob("llm-vectors-*.npy"))  # one pass, both poolings kept
    assert len(cached) == 2 and all(np.load(c).shape == (60, 64) for c in cached)
    from notellm.evaluation.popularity import llm_note_vectors
    from notellm.inference.popularity import frozen_note_states

    states = frozen_note_states("tiny-qwen3", data.texts[:3], max_length=24, poolings=["mean", "last"])
    cached_mean = llm_note_vectors("frozen:tiny-qwen3@mean", data, tmp_path / "features",
                                   regressor_input={"max_length": 24, "suffix": cfg.model.suffix})
    assert cached_mean[:3] == pytest.approx(states["mean"], abs=1e-5)  # read back from the cache, same numbers
    assert not np.allclose(states["mean"], states["last"])


# ------------------------------------------------------------------------------------------ report pictures
def _report_with(preds_of_y, n_boot=200):
    from notellm.evaluation.popularity import score_report

    cfg = load_config(PopularityConfig, None, [f"eval.bootstrap={n_boot}"])
    data = prepare(cfg, _synthetic_notes())
    y = data.y[data.test_idx]
    preds = {name: f(y) for name, f in preds_of_y.items()}
    return score_report(cfg.eval, cfg.split.kind, cfg.target.resolved(), data, preds), y


def test_report_has_paired_differences_against_lightgbm_all():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1, 400)
    report, y = _report_with({"mean": lambda y: np.full(len(y), y.mean()),
                              "LightGBM all, no LLM": lambda y: y + noise[:len(y)],
                              "exact": lambda y: y.copy()})
    vs = report["versus_reference"]
    assert report["reference"] == "LightGBM all, no LLM"
    assert vs["LightGBM all, no LLM"]["mae"] == {"value": 0.0, "low": 0.0, "high": 0.0}
    assert vs["exact"]["mae"]["value"] == pytest.approx(-np.abs(noise[:len(y)]).mean())
    assert vs["exact"]["mae"]["high"] < 0 and vs["exact"]["spearman"]["low"] > 0  # clearly better on both
    row = {r["model"]: r for r in report["rows"]}["exact"]
    assert row["mae - LightGBM all"].startswith(f"{vs['exact']['mae']['value']:.3f} [")
    assert report["predictions"]["target"] == pytest.approx(y.tolist())
    assert len(report["predictions"]["note_id"]) == len(y) == report["test_notes"]


def test_popularity_pngs_are_written_with_one_point_per_test_note(tmp_path):
    from notellm.evaluation.plots import decile_calibration, plot_popularity, popularity_figures

    rng = np.random.default_rng(1)
    report, y = _report_with({"mean": lambda y: np.full(len(y), y.mean()),
                              "LightGBM all, no LLM": lambda y: y + rng.normal(0, 1, len(y)),
                              "LoRA LLM": lambda y: 0.5 * y + 1})
    other = dict(report, split="time")
    figures = popularity_figures([report, other])
    scatter_axes = [ax for ax in figures["scatter"].axes if ax.collections]
    assert len(scatter_axes) == 2  # mean and median are left out by default
    assert all(len(ax.collections[0].get_offsets()) == len(y) for ax in scatter_axes)
    lines = figures["calibration"].axes[0].get_lines()
    assert [len(line.get_xdata()) for line in lines[:2]] == [10, 10]
    assert len(figures["bars"].axes[0].patches) == 2 * 2  # 2 models x 2 splits
    # calibration by hand: 4 notes in 2 groups sorted by prediction
    means_p, means_y = decile_calibration([1, 2, 3, 4], [0.4, 0.3, 0.2, 0.1], bins=2)
    assert means_p == pytest.approx([0.15, 0.35]) and means_y == [3.5, 1.5]
    paths = plot_popularity(report, tmp_path / "report")
    assert sorted(p.name for p in paths.values()) == ["report-bars.png", "report-calibration.png",
                                                      "report-scatter.png"]
    for p in paths.values():
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


# ------------------------------------------------------------------------------------------ history in the prompt
def test_history_prompts_by_hand_only_earlier_known_visible_notes():
    from notellm.data.popularity import author_history_prompts

    authors = ["a", "a", "a", "a", "b"]
    seconds = np.array([0, 1, 1, 5, 2]) * 86400.0
    titles = ["一", "二", "三", "四", "五"]
    y = np.array([1.0, 2.0, np.nan, 4.0, 9.0])
    out = author_history_prompts(authors, seconds, titles, y, k=2)
    assert out[0] == "" and out[4] == ""                         # no earlier note of the same author
    assert out[1] == out[2] == "作者之前的笔记：\n《一》热度 1.0\n\n"  # a tie is not earlier
    assert out[3] == "作者之前的笔记：\n《一》热度 1.0\n《二》热度 2.0\n\n"  # note 2's target is unknown: never history
    assert author_history_prompts(authors, seconds, titles, y, k=1)[3] == "作者之前的笔记：\n《二》热度 2.0\n\n"
    assert author_history_prompts(authors, seconds, titles, y, k=5, window_days=4.5)[3] == \
        "作者之前的笔记：\n《二》热度 2.0\n\n"                       # day 0 is outside a 4.5-day window of day 5
    hidden = author_history_prompts(authors, seconds, titles, y, k=5, visible=np.array([1, 0, 1, 1, 1], bool))
    assert hidden[3] == "作者之前的笔记：\n《一》热度 1.0\n\n"
    # perturbing a note's target changes only the blocks of its author's strictly later notes
    for j in range(5):
        y2 = y.copy()
        y2[j] = 7.5 if np.isfinite(y2[j]) else np.nan
        moved = author_history_prompts(authors, seconds, titles, y2, k=5)
        changed = {i for i in range(5) if moved[i] != out[i]}
        assert changed <= {i for i in range(5) if authors[i] == authors[j] and seconds[i] > seconds[j]}, j
        assert j != 0 or changed == {1, 2, 3}


def test_history_texts_keep_the_test_side_out_of_training_inputs():
    from notellm.data.popularity import history_prompted_texts

    table = notes_to_table([note("a", hours=0, title="训练"), note("b", hours=1, title="测试"),
                            note("c", hours=2, title="训练二")])
    test = np.array([False, True, False])
    texts = history_prompted_texts(table, ["x", "y", "z"], np.array([1.0, 2.0, 3.0]), k=5, test=test)
    assert texts[1] == "作者之前的笔记：\n《训练》热度 1.0\n\ny"           # a test note reads earlier notes
    assert texts[2] == "作者之前的笔记：\n《训练》热度 1.0\n\nz"           # a training note never reads a test target


def test_residual_targets_are_cross_fitted():
    from notellm.evaluation.popularity import residual_targets

    cfg = load_config(PopularityConfig, None, ["eval.svd_components=4", "eval.lgbm_rounds=20",
                                               "eval.lgbm_min_child_samples=5", "eval.inner_folds=3"])
    data = prepare(cfg, _synthetic_notes(48))
    base = residual_targets(cfg.eval, cfg.split.kind, data)
    assert np.isnan(base[data.test_idx]).all() and np.isfinite(base[data.train_idx]).all()
    j = data.train_idx[0]
    data.y = data.y.copy()
    data.y[j] += 50.0  # a row's own target never reaches the GBDT that predicts it: its residual moves by 50
    moved = residual_targets(cfg.eval, cfg.split.kind, data)
    assert moved[j] - base[j] == pytest.approx(50.0)
