"""The quick start runs every stage on a tiny model and reports Recall@K for both models."""

import json

from typer.testing import CliRunner

from notellm.cli import app


def test_quickstart_runs_all_stages_and_resumes(tmp_path):
    out = tmp_path / "qs"
    args = ["quickstart", "--out", str(out), "--backbone", "tiny-qwen3", "--notes", "400", "--train-minutes", "0.05",
            "--batch-size", "4"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for name in ("notes", "events", "pairs", "train_pairs", "test_pairs"):
        assert (out / "data" / f"{name}.parquet").exists()
    zero = json.loads((out / "emb_zero" / "recall.json").read_text())
    trained = json.loads((out / "emb_trained" / "recall.json").read_text())
    assert zero["pool_size"] == trained["pool_size"] > 0 and zero["n_queries"] == trained["n_queries"] > 0
    assert (out / "train" / "model" / "notellm.json").exists()
    # running again reuses every artefact (no retraining): the same numbers come back
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert json.loads((out / "emb_trained" / "recall.json").read_text())["overall"] == trained["overall"]
