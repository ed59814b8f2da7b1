"""One model for the platform: a popularity head trained on top of a frozen NoteLLM folder (`notellm popularity
train CONFIG model.kind=notellm-head`). The output folder embeds exactly as its base folder, generates the same
tags, and scores notes with the head; the API and the server give the same scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from fastapi.testclient import TestClient

from helpers.methods import posts
from notellm.cli import app
from notellm.cli.common import run_cli
from notellm.data.schema import notes_to_table, write_notes
from notellm.inference.embed import Embedder

CONFIG = {"bf16": "false", "log_every": 1, "warmup_ratio": 0.0, "epochs": 30, "batch_size": 4, "lr": 1e-2,
          "head_init": "zeros", "eval_batch_size": 8, "split": {"kind": "random", "test_fraction": 0.25}}


def write_config(root: Path, backbone: str, name: str, **overrides) -> Path:
    config = {**CONFIG, "output_dir": str(root / name), "data": {"source": "notes", "path": str(root / "notes.parquet")},
              "model": {"kind": "notellm-head", "backbone": backbone}, **overrides}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    """A tiny NoteLLM folder (`base`) and the one folder trained on top of it through the CLI."""
    from notellm.models.notellm import NoteLLMConfig, build_notellm

    root = tmp_path_factory.mktemp("onemodel")
    rows = posts()
    write_notes(notes_to_table(rows), root / "notes.parquet")
    build_notellm(NoteLLMConfig(backbone="tiny-qwen3", dim=16, max_length=96)).save(root / "base")
    # as `notellm train` leaves it: the run's config beside the folder names its notes (the category set of `tag`)
    (root / "train_config.json").write_text(json.dumps({"notes": str(root / "notes.parquet")}), encoding="utf-8")
    config = write_config(root, str(root / "base"), "run")
    assert run_cli(app, ["popularity", "train", str(config)]) == 0
    return {"root": root, "rows": rows, "base": root / "base", "model": root / "run" / "model", "config": config}


def logged(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_training_lowers_the_heads_loss_and_beats_the_mean(one):
    log = logged(one["root"] / "run")
    losses = [r["loss"] for r in log if "loss" in r and "event" not in r]
    assert len(losses) == 30 * (27 // 4)  # 27 training notes, batches of 4, 30 epochs
    assert np.mean(losses[-6:]) < 0.3 * np.mean(losses[:6])
    # the feature pass ran once, as the run's first (timed) phase, over every training note; the held-out
    # notes' features were read when the folder was saved
    prepared = next(r for r in log if r.get("event") == "prepared")
    assert prepared["feature_notes"] == prepared["training_notes"] == 27 and "cut_by_time_budget" not in prepared
    parts = sorted((one["root"] / "run" / "head_features").glob("part-*.npz"))
    with_rows = [np.load(p, allow_pickle=False)["rows"] for p in parts]
    assert sorted(np.concatenate(with_rows).tolist()) == list(range(36))  # every note once
    card = json.loads((one["model"] / "notellm.json").read_text())
    heldout = card["popularity_head"]["heldout"]
    test = pq.read_table(one["model"] / "popularity_test_predictions.parquet").to_pydict()
    train_ids = set(json.loads((one["model"] / "popularity_train_note_ids.json").read_text())["note_ids"])
    assert heldout["notes"] == len(test["note_id"]) == 9 and not train_ids & set(test["note_id"])
    y, pred = np.array(test["target"]), np.array(test["prediction"])
    assert heldout["mae"] == pytest.approx(np.abs(y - pred).mean())
    # better than predicting the training mean on the held-out notes
    from notellm.config import load_config
    from notellm.training.popularity import PopularityConfig, prepare

    data = prepare(load_config(PopularityConfig, one["config"]))
    assert heldout["mae"] < np.abs(y - data.y[data.train_idx].mean()).mean()
    assert {"10", "90"} <= set(heldout["residual_quantiles"]) and "80" in heldout["abs_error_quantiles"]


def test_targets_and_split_are_popularity_trains(one):
    """The same `prepare` as `notellm popularity train`: WLAES of the notes, the configured random split."""
    from notellm.config import load_config
    from notellm.data.popularity import target_values
    from notellm.training.popularity import PopularityConfig, prepare

    cfg = load_config(PopularityConfig, one["config"])
    data = prepare(cfg)
    test = pq.read_table(one["model"] / "popularity_test_predictions.parquet").to_pydict()
    assert test["note_id"] == [data.note_ids[i] for i in data.test_idx]
    wlaes = target_values(notes_to_table(one["rows"]), {"likes": 1.0, "collects": 0.5, "comments": 0.2})
    np.testing.assert_allclose(test["target"], wlaes[data.test_idx])
    card = json.loads((one["model"] / "notellm.json").read_text())["popularity_head"]
    assert card["target"]["name"] == "wlaes" and card["target"]["weights"]["likes"] == 1.0
    assert card["base_model"] == "base" and card["train"]["notes"] == 27
    assert card["base_notes"] == str(one["root"] / "notes.parquet")  # the base's training notes (tag's categories)


def test_a_folder_without_the_recorded_base_notes_asks_its_base(one, tmp_path):
    from notellm.models.folder import training_notes

    card = json.loads((one["model"] / "notellm.json").read_text())
    del card["popularity_head"]["base_notes"]  # a folder written before the card recorded them
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "notellm.json").write_text(json.dumps(card), encoding="utf-8")
    assert training_notes(tmp_path / "old") == training_notes(one["base"]) == str(one["root"] / "notes.parquet")
    assert training_notes(one["model"]) == str(one["root"] / "notes.parquet")


def test_the_folder_embeds_and_tags_exactly_as_its_base(one):
    from notellm import NoteLLM

    notes = one["rows"][:10]
    base, head = Embedder(str(one["base"]), bf16=False), Embedder(str(one["model"]), bf16=False)
    assert np.array_equal(base.encode(notes), head.encode(notes))  # bit for bit: the backbone was frozen
    for path in one["base"].rglob("*"):
        if path.is_file() and path.name != "notellm.json":
            assert (one["model"] / path.relative_to(one["base"])).read_bytes() == path.read_bytes(), path
    tags = [NoteLLM.from_pretrained(p, bf16=False).tag(notes[:2], n_tags=2, max_new_tokens=8)
            for p in (one["base"], one["model"])]
    assert tags[0] == tags[1]
    # the base's category set (its training notes), not the head run's: the category is decoded inside it
    assert [t["category"] for t in tags[1]] == [["生活", "好物"]] * 2


def test_notellm_tag_on_the_folder_finds_the_bases_category_set(one, tmp_path):
    from notellm.inference.generate import read_generations

    out = []
    for name, folder in (("base", one["base"]), ("one", one["model"])):
        assert run_cli(app, ["tag", "--model", str(folder), "--notes", str(one["root"] / "notes.parquet"),
                             "--out", str(tmp_path / f"{name}.parquet"), "--limit", "3", "--n-tags", "2",
                             "--max-new-tokens", "8", "--fp32"]) == 0
        out.append(read_generations(tmp_path / f"{name}.parquet")[0].select(["note_id", "tags", "category"]))
    assert out[0].to_pylist() == out[1].to_pylist()
    assert out[1].column("category").to_pylist() == [["生活", "好物"]] * 3


def test_the_api_predicts_the_saved_heldout_scores(one):
    from notellm import NoteLLM
    from notellm.errors import NotellmError

    model = NoteLLM.from_pretrained(one["model"], bf16=False)
    assert model.has_popularity_head and model.popularity["target"]["name"] == "wlaes"
    test = pq.read_table(one["model"] / "popularity_test_predictions.parquet").to_pydict()
    by_id = {r["note_id"]: r for r in one["rows"]}
    scores = model.predict_popularity([by_id[i] for i in test["note_id"]])
    # the saved head (folded back to the pooled state's units) scores as the trained one did
    np.testing.assert_allclose(scores, test["prediction"], rtol=1e-4, atol=1e-4)
    assert np.std(scores) > 0
    plain = NoteLLM.from_pretrained(one["base"], bf16=False)
    assert not plain.has_popularity_head
    with pytest.raises(NotellmError, match="no popularity head"):
        plain.predict_popularity(["周末去哪儿"])


def test_one_folder_serves_embeddings_recommendations_tags_and_popularity(one, tmp_path):
    from notellm import NoteLLM
    from notellm.inference.index import build_index
    from notellm.serving.app import create_app_from_paths

    rows, model = one["rows"], str(one["model"])
    embedder = Embedder(model, bf16=False)
    build_index([r["note_id"] for r in rows], embedder.encode(rows), embedder.meta,
                notes=notes_to_table(rows)).save(tmp_path / "index")
    web = create_app_from_paths(model=model, index=str(tmp_path / "index"), notes=str(one["root"] / "notes.parquet"),
                                tagger="model")
    note = {"title": rows[3]["title"], "content": rows[3]["content"], "hashtags": rows[3]["hashtags"]}
    with TestClient(web) as c:
        vector = c.post("/embed", json={"notes": [note]}).json()
        similar = c.post("/similar", json={"note": note, "k": 3}).json()["results"]
        tags = c.post("/tags", json={"note": note}).json()
        body = c.post("/popularity", json={"note": note}).json()
        health = c.get("/health").json()["components"]["popularity"]
    assert vector["dim"] == 16 and similar[0]["note_id"] == rows[3]["note_id"]
    assert tags["tagger"] == "NoteGenerator" and isinstance(tags["hashtags"], list)
    # the server runs the model at the index's recorded precision (float32 here), as the API does when told
    expected = NoteLLM.from_pretrained(model, bf16=False).predict_popularity([note])[0]
    assert body["score"] == pytest.approx(float(expected), abs=1e-5)
    assert body["target"]["name"] == "wlaes" and body["model"] == "model"
    assert body["percentile"]["overall"] is not None and body["interval"]["coverage"] == 0.8
    assert body["interval"]["low"] < body["interval"]["high"] and body["interval"]["margin"] > 0
    assert health["class"] == "NoteLLMHeadPopularity" and health["head"] == "notellm"


def test_a_zero_shot_backbone_becomes_a_folder_with_the_same_embeddings(one):
    root = one["root"]
    config = write_config(root, "zero-shot:tiny-qwen3", "zs", epochs=2)
    assert run_cli(app, ["popularity", "train", str(config)]) == 0
    notes = one["rows"][:6]
    got = Embedder(str(root / "zs" / "model"), bf16=False).encode(notes)
    want = Embedder("zero-shot:tiny-qwen3", bf16=False).encode(notes)
    np.testing.assert_array_equal(got, want)
    card = json.loads((root / "zs" / "model" / "notellm.json").read_text())
    assert card["popularity_head"]["base_model"] == "zero-shot:tiny-qwen3" and card["popularity_head"]["heldout"]


def test_a_rerun_resumes_and_configs_it_cannot_read_are_refused(one, capsys):
    before = (one["model"] / "score_head.safetensors").read_bytes()
    assert run_cli(app, ["popularity", "train", str(one["config"])]) == 0  # finished: resumes at the end
    assert (one["model"] / "score_head.safetensors").read_bytes() == before
    assert any(r.get("event") == "resumed" for r in logged(one["root"] / "run"))
    capsys.readouterr()
    root = one["root"]
    assert run_cli(app, ["popularity", "train", str(write_config(root, str(one["base"]), "bad1")),
                         "model.features=[hour]"]) == 2
    assert "model.features must be []" in capsys.readouterr().err
    assert run_cli(app, ["popularity", "train", str(write_config(root, str(root / "missing"), "bad2"))]) == 2
    assert "needs a NoteLLM folder" in capsys.readouterr().err
    assert run_cli(app, ["popularity", "train", str(write_config(root, str(one["base"]), "bad3")),
                         "model.kind=lora"]) == 2
    assert "model.kind must be one of" in capsys.readouterr().err


def test_popularity_predict_takes_the_one_folder(one, tmp_path, capsys):
    """`notellm popularity predict` on the one folder gives NoteLLM.predict_popularity's scores."""
    from notellm import NoteLLM, PopularityModel

    rows, model = one["rows"], str(one["model"])
    assert run_cli(app, ["popularity", "predict", model, "--notes", str(one["root"] / "notes.parquet"),
                         "--out", str(tmp_path / "scores.parquet")]) == 0
    got = pq.read_table(tmp_path / "scores.parquet").to_pydict()
    expected = NoteLLM.from_pretrained(model).predict_popularity(rows)
    assert got["note_id"] == [r["note_id"] for r in rows]
    np.testing.assert_allclose(got["score"], expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(PopularityModel.from_pretrained(model).predict(rows), expected, rtol=0, atol=1e-6)
    # `notellm serve --popularity-model` given the one folder scores as well
    from notellm.serving.components import PopularityPredictor

    served = PopularityPredictor(model)
    np.testing.assert_allclose(served.predict(rows), expected, rtol=0, atol=1e-6)
    assert served.describe()["target"]["name"] == "wlaes" and served.heldout["notes"] == 9
    capsys.readouterr()
    body = "城市周边露营地推荐 #露营[话题]#"  # one note from the command line: a string note of the API
    assert run_cli(app, ["popularity", "predict", model, "--content", body]) == 0
    expected_one = NoteLLM.from_pretrained(model).predict_popularity([body])[0]
    assert capsys.readouterr().out.splitlines()[0] == f"{expected_one:.4f}"
    # a NoteLLM folder without a head, or a head asked for features it does not read: one line, exit 2
    assert run_cli(app, ["popularity", "predict", str(one["base"]), "--title", "周末去哪儿"]) == 2
    assert "without a popularity head" in capsys.readouterr().err
    assert run_cli(app, ["popularity", "predict", model, "--title", "周末去哪儿", "--feature", "hour=3"]) == 2
    assert "has no feature(s) ['hour']" in capsys.readouterr().err


def test_popularity_eval_takes_the_one_folder_as_a_rednoob_folder(one, tmp_path):
    """`notellm popularity eval --model` on the one folder: the same report keys and rows as for a RedNoob folder
    on the same split, with the head's scores of the test notes."""
    from notellm import NoteLLM

    root = one["root"]
    rednoob = {**CONFIG, "output_dir": str(tmp_path / "rednoob"), "max_steps": 2, "epochs": 1, "probe_max_notes": 8,
               "score_heldout": False, "data": {"source": "notes", "path": str(root / "notes.parquet")},
               "model": {"backbone": "tiny-qwen3", "max_length": 48}, "lora": {"r": 4, "alpha": 8}}
    config = tmp_path / "rednoob.yaml"
    config.write_text(yaml.safe_dump(rednoob, allow_unicode=True), encoding="utf-8")
    assert run_cli(app, ["popularity", "train", str(config)]) == 0
    reports = {}
    for name, folder in (("one", one["model"]), ("rednoob", tmp_path / "rednoob" / "model")):
        out = tmp_path / f"{name}.json"
        assert run_cli(app, ["popularity", "eval", str(one["config"]), "eval.bootstrap=50", "--model", str(folder),
                             "--json", str(out)]) == 0
        reports[name] = (json.loads(out.read_text()), f"saved model {folder}")
        assert out.with_name(f"{name}-scatter.png").is_file()
    (head, head_row), (lora, lora_row) = reports["one"], reports["rednoob"]
    assert head.keys() == lora.keys() and head["test_notes"] == lora["test_notes"] == 9
    assert head["metrics"][head_row].keys() == lora["metrics"][lora_row].keys()
    assert head["metrics"][head_row].keys() >= {"mae", "rmse", "r2", "spearman"}
    assert head["versus_reference"][head_row].keys() == lora["versus_reference"][lora_row].keys()
    rows = {r["model"]: r for r in head["rows"]}
    assert rows[head_row].keys() == {r["model"]: r for r in lora["rows"]}[lora_row].keys()
    # the baselines are the same numbers; the head's row scores the split's test notes as the API does, at the
    # config's precision (bf16=false)
    assert head["metrics"]["mean"] == lora["metrics"]["mean"]
    by_id = {r["note_id"]: r for r in one["rows"]}
    test_notes = [by_id[i] for i in head["predictions"]["note_id"]]
    expected = NoteLLM.from_pretrained(one["model"], bf16=False).predict_popularity(test_notes)
    np.testing.assert_allclose(head["predictions"][head_row], expected, rtol=0, atol=1e-6)
    saved = pq.read_table(one["model"] / "popularity_test_predictions.parquet").to_pydict()
    assert saved["note_id"] == head["predictions"]["note_id"]
    np.testing.assert_allclose(head["predictions"][head_row], saved["prediction"], atol=1e-4)
    assert rows[head_row]["mae"].startswith(f"{head['metrics'][head_row]['mae']['value']:.3f}")


class CountingFeatures:
    """Wraps the feature pass's `head_features`: counts the notes it reads, sleeps per batch (a slow backbone),
    and can fail on a given call (a killed run)."""

    def __init__(self, sleep: float = 0.0, fail_on_call: int | None = None):
        from notellm.training import popularity_head

        self.real, self.sleep, self.fail_on_call = popularity_head.head_features, sleep, fail_on_call
        self.notes = self.calls = 0

    def __call__(self, model, notes, **kwargs):
        import time

        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("killed")
        time.sleep(self.sleep)
        self.notes += len(notes)
        return self.real(model, notes, **kwargs)


def head_weights(folder: Path) -> np.ndarray:
    from safetensors.numpy import load_file

    return load_file(str(folder / "score_head.safetensors"))["weight"]


def test_a_budget_that_ends_in_the_feature_pass_saves_a_head_and_a_rerun_continues(one, monkeypatch, capsys):
    """time_budget_min cuts the training notes' feature pass (a slow backbone: 0.25 s a batch, a 0.9 s budget):
    the run stops inside its budget with the notes read so far saved, fits the head on them (ridge), scores the
    held-out notes, writes no checkpoint; the same command again reads only the notes still missing, then
    trains to the same head as a run never cut."""
    from notellm.training import popularity_head

    root = one["root"]
    config = write_config(root, str(one["base"]), "cut", head_init="ridge", time_budget_min=0.015)
    slow = CountingFeatures(sleep=0.25)
    monkeypatch.setattr(popularity_head, "head_features", slow)
    assert run_cli(app, ["popularity", "train", str(config)]) == 0
    log = logged(root / "cut")
    prepared = next(r for r in log if r.get("event") == "prepared")
    assert prepared["cut_by_time_budget"] and 4 <= prepared["feature_notes"] < 27 == prepared["training_notes"]
    assert prepared["feature_seconds"] < 0.9
    stop = next(r for r in log if r.get("event") == "time_budget")
    assert stop["step"] == 0 and stop["phase"] == "before_training" and stop["elapsed_s"] <= 0.9
    saved = next(r for r in log if r.get("event") == "saved")
    assert saved["steps"] == 0 and not list((root / "cut").glob("checkpoint*"))
    card = json.loads((root / "cut" / "model" / "notellm.json").read_text())["popularity_head"]
    assert card["train"]["feature_notes"] == prepared["feature_notes"] and card["heldout"]["notes"] == 9
    assert np.abs(head_weights(root / "cut" / "model")).sum() > 0  # the ridge fit on the notes read
    assert slow.notes == prepared["feature_notes"] + 9  # the held-out notes read when saving

    again = CountingFeatures()
    monkeypatch.setattr(popularity_head, "head_features", again)
    assert run_cli(app, ["popularity", "train", str(config), "time_budget_min=null"]) == 0
    assert again.notes == 27 - prepared["feature_notes"]  # only the training notes still missing
    prepared = [r for r in logged(root / "cut") if r.get("event") == "prepared"][-1]
    assert prepared["feature_notes"] == 27 and "cut_by_time_budget" not in prepared
    clean = write_config(root, str(one["base"]), "uncut", head_init="ridge")
    monkeypatch.setattr(popularity_head, "head_features", CountingFeatures())
    assert run_cli(app, ["popularity", "train", str(clean)]) == 0
    np.testing.assert_allclose(head_weights(root / "cut" / "model"), head_weights(root / "uncut" / "model"),
                               rtol=1e-3, atol=1e-6)
    capsys.readouterr()


def test_a_killed_feature_pass_continues_and_features_of_another_run_are_dropped(one, monkeypatch, capsys):
    from notellm.training import popularity_head

    root = one["root"]
    config = write_config(root, str(one["base"]), "killed")
    monkeypatch.setattr(popularity_head, "head_features", CountingFeatures(fail_on_call=4))  # eval batches of 8
    with pytest.raises(RuntimeError, match="killed"):
        run_cli(app, ["popularity", "train", str(config)])
    parts = list((root / "killed" / "head_features").glob("part-*.npz"))
    assert len(parts) == 3  # the batches read before the failure, each in a file of its own
    read = sum(len(np.load(part, allow_pickle=False)["rows"]) for part in parts)
    rerun = CountingFeatures()
    monkeypatch.setattr(popularity_head, "head_features", rerun)
    assert run_cli(app, ["popularity", "train", str(config)]) == 0
    assert rerun.notes == 27 - read + 9  # the training notes not read before the failure, then the held-out ones
    np.testing.assert_allclose(head_weights(root / "killed" / "model"), head_weights(one["model"]), rtol=1e-3, atol=1e-6)
    # a feature folder made by something else (another note set, model or precision): dropped, not mixed in
    key = root / "killed" / "head_features" / "key.json"
    key.write_text(json.dumps({**json.loads(key.read_text()), "bf16": True}), encoding="utf-8")
    again = CountingFeatures()
    monkeypatch.setattr(popularity_head, "head_features", again)
    assert run_cli(app, ["popularity", "train", str(config)]) == 0  # finished: resumes at its end, reads all again
    assert again.notes == 36
    capsys.readouterr()
