"""The one training engine under every method: a run killed mid-way and started again with the same command ends
with the same weights and logged losses as an uninterrupted run; a changed config is refused by key; the time
budget covers pre-passes; checkpoints hold no pickle; progress is reported from the first phase."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers.methods import METHODS, logged_losses, model_tensors, prepare_alignment, setup
from notellm.cli import app
from notellm.cli.common import run_cli
from notellm.training.engine import Callback

TESTS = Path(__file__).resolve().parent


def run(args: list[str]) -> int:
    return run_cli(app, list(args))


class PhaseSpy(Callback):
    """An engine callback that records its phases and progress, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def on_phase(self, name, total=None, unit=""):
        self.seen.append(("phase", name, total, unit))

    def on_progress(self, completed, description=None):
        self.seen.append(("progress", completed))


def killed(args: list[str], step: int) -> subprocess.CompletedProcess:
    # the same thread count as this process: float sums in another order would differ in the last bits
    env = {"PYTHONPATH": f"{TESTS}:{TESTS.parent / 'src'}", "OMP_NUM_THREADS": str(torch.get_num_threads()),
           "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(Path.home()), "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, str(TESTS / "helpers" / "kill_after_step.py"), str(step), *args],
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.parametrize("method", METHODS)
def test_a_killed_run_rerun_with_the_same_command_ends_like_an_uninterrupted_one(tmp_path, method):
    """Checkpoints every 2 steps; the run dies after step 3 (step 2 saved, step 3 lost): the rerun resumes at
    step 2 and must reproduce steps 3 and 4 and the final weights exactly (dropout on: RNG states restored)."""
    if method == "align":
        prepare_alignment(tmp_path / "a")
        prepare_alignment(tmp_path / "b")
    reference = setup(method, tmp_path / "a")
    assert run(reference.args) == 0
    interrupted = setup(method, tmp_path / "b")
    proc = killed(interrupted.args, step=3)
    assert proc.returncode == 9, proc.stderr[-3000:]
    assert not interrupted.model_dir.exists()
    assert (interrupted.output_dir / "checkpoints" / "step-0000002" / "state.json").exists()
    assert run(interrupted.args) == 0
    log = [json.loads(line) for line in (interrupted.output_dir / "log.jsonl").read_text().splitlines()]
    resumed = [r for r in log if r.get("event") == "resumed"]
    assert len(resumed) == 1 and resumed[0]["step"] == 2
    expected, got = logged_losses(reference.output_dir), logged_losses(interrupted.output_dir)
    assert sorted(got) == sorted(expected) == [1, 2, 3, 4]
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-7), step
    want, have = model_tensors(reference.model_dir), model_tensors(interrupted.model_dir)
    assert want.keys() == have.keys() and want
    for key in want:
        torch.testing.assert_close(have[key], want[key], rtol=1e-5, atol=1e-6, msg=key)


def test_a_restart_with_another_config_is_refused_naming_each_change(tmp_path, capsys):
    command = setup("notellm", tmp_path, max_steps=2, save_every=1)
    assert run(command.args) == 0
    capsys.readouterr()
    assert run([*command.args, "model.dim=8", "lr=5e-4"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "holds a checkpoint (step-0000002) of a different run" in err
    assert "model.dim: 16 -> 8" in err and "lr: 0.002 -> 0.0005" in err and "resume=force" in err
    # data change: same path, other content
    pairs = Path(json.loads(json.dumps(str(tmp_path / "pairs.parquet"))))
    import pyarrow.parquet as pq

    table = pq.read_table(pairs)
    pq.write_table(table.slice(0, 12), pairs)
    assert run(command.args) == 2
    assert "train_pairs: sha256" in " ".join(capsys.readouterr().err.split())
    # knobs that do not change what is computed may differ (here: how often it logs)
    pq.write_table(table, pairs)
    assert run([*command.args, "log_every=5", "time_budget_min=30"]) == 0


def test_checkpoints_hold_no_pickle_and_a_planted_one_is_refused(tmp_path, capsys):
    command = setup("notellm", tmp_path, max_steps=2, save_every=1)
    assert run(command.args) == 0
    ckpt = command.output_dir / "checkpoints" / "step-0000002"
    assert sorted(p.suffix for p in ckpt.iterdir()) == [".json"] * 4 + [".safetensors"] * 3
    # a crafted file where a checkpoint tensor file should be: refused with one line, nothing executed
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    import pickle

    (ckpt / "optimizer.safetensors").write_bytes(pickle.dumps(Evil()))
    capsys.readouterr()
    assert run([*command.args, "max_steps=3"]) == 2
    assert "is damaged or not a notellm checkpoint" in capsys.readouterr().err
    assert not marker.exists()


def test_time_budget_counts_the_probe_and_stops_before_overrunning(tmp_path):
    """A popularity run whose budget is smaller than its planned steps: it stops on time, with a checkpoint and a
    saved model; the ridge probe and every step fall inside the budget."""
    command = setup("popularity", tmp_path, max_steps=-1, epochs=5000, time_budget_min=0.1, save_every=0,
                    log_every=1)
    assert run(command.args) == 0
    log = [json.loads(line) for line in (command.output_dir / "log.jsonl").read_text().splitlines()]
    prepared = next(r for r in log if r.get("event") == "prepared")
    assert prepared["probe_notes"] == 16 and prepared["probe_seconds"] < 6
    steps = [r for r in log if "loss" in r and "event" not in r]
    start = next(r for r in log if r.get("event") == "start")
    assert 0 < len(steps) < start["steps"]
    assert steps[-1]["elapsed_s"] <= 6.0  # budget 6 s, pre-pass included
    assert any(r.get("event") == "time_budget" for r in log)
    assert (command.model_dir / "notellm.json").exists()


def test_progress_callbacks_see_every_phase_from_the_start(tmp_path):
    from notellm.config import load_config
    from notellm.training.engine import Engine
    from notellm.training.popularity import PopularityConfig, PopularityRecipe

    command = setup("popularity", tmp_path, max_steps=2, save_every=0)
    spy = PhaseSpy()
    cfg = load_config(PopularityConfig, command.args[2])
    Engine(PopularityRecipe(cfg), [spy]).run()
    seen = spy.seen
    phases = [s[1] for s in seen if s[0] == "phase"]
    assert phases[0] == "loading popularity model"
    assert phases[1:] == ["preparing: input fingerprint, optimizer, checkpoint", "ridge probe on frozen states",
                          "train", "saving model", "scoring held-out notes"]
    probe = seen.index(("phase", "ridge probe on frozen states", 16, "notes"))
    assert seen[probe + 1][0] == "progress"  # the probe reports as it goes
    assert ("progress", 2) in seen
    scoring = seen.index(next(s for s in seen if s[:2] == ("phase", "scoring held-out notes")))
    assert seen[-1] == ("progress", seen[scoring][2])  # the held-out scoring inside the save reports too


def test_trackers_write_tensorboard_and_offline_wandb_runs(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    command = setup("notellm", tmp_path, max_steps=2, save_every=0, report_to="tensorboard")
    assert run(command.args) == 0
    events = list(command.output_dir.rglob("events.out.tfevents.*"))
    assert events
    if __import__("importlib").util.find_spec("wandb") is None:
        return
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    command = setup("notellm", tmp_path / "w", max_steps=2, save_every=0, report_to="wandb")
    assert run(command.args) == 0
    assert list((tmp_path / "wandb").rglob("*.wandb"))


def test_plot_draws_the_loss_curves_and_validation_of_a_run(tmp_path, capsys):
    from PIL import Image

    from notellm.evaluation.plots import read_log, series

    command = setup("notellm", tmp_path, max_steps=4, save_every=2, eval_every=2, eval_ks=[1, 2],
                    val_pairs=str(tmp_path / "pairs.parquet"))
    assert run(command.args) == 0
    data = series(read_log(command.output_dir))
    assert sorted(data["loss"]) == [1, 2, 3, 4] and sorted(data["val_R@1"]) == [2, 4]
    assert run(["plot", str(command.output_dir)]) == 0
    image = Image.open(command.output_dir / "curves.png")
    assert image.format == "PNG" and image.size[0] > image.size[1] > 200  # two panels side by side
    assert run(["plot", str(tmp_path / "nothing")]) == 2
    assert "no log.jsonl here" in capsys.readouterr().err


def test_validation_reports_progress_and_the_train_bar_comes_back(tmp_path):
    from notellm.config import load_config
    from notellm.training.engine import Engine
    from notellm.training.notellm import NoteLLMRecipe, NoteLLMTrainConfig

    command = setup("notellm", tmp_path, max_steps=4, save_every=0, eval_every=2, eval_ks=[1, 2],
                    val_pairs=str(tmp_path / "pairs.parquet"))
    spy = PhaseSpy()
    Engine(NoteLLMRecipe(load_config(NoteLLMTrainConfig, command.args[-1])), [spy]).run()
    seen = spy.seen
    phases = [s[1] for s in seen if s[0] == "phase"]
    assert phases[:3] == ["loading notellm model", "preparing: input fingerprint, optimizer, checkpoint", "train"]
    val, train = "validation: Recall@K", "train"
    assert phases[3:] == [val, train, val, train, val, "saving model"]  # steps 2 and 4, then the final report
    validation = seen.index(next(s for s in seen if s[:2] == ("phase", "validation: Recall@K")))
    notes = seen[validation][2]
    assert notes > 0 and seen[validation + 1][0] == "progress"
    back = validation + next(i for i, s in enumerate(seen[validation:]) if s[:2] == ("phase", "train"))
    assert seen[back - 1] == ("progress", notes)  # every validation note counted before the bar switches back
