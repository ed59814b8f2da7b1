"""The NoteLLM trainer: the loss falls; a killed run resumes exactly; bad pairs give a clear error."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from helpers.toy import write_toy
from notellm.errors import DataError
from notellm.models.notellm import NoteLLMConfig
from notellm.training.notellm_trainer import NoteLLMTrainer, TrainConfig

TESTS = Path(__file__).resolve().parent


def config(tmp: Path, **kw) -> TrainConfig:
    files = write_toy(tmp)
    base = dict(notes=str(files["notes"]), train_pairs=str(files["pairs"]), output_dir=str(tmp / "run"),
                model=NoteLLMConfig(backbone="tiny-qwen3", dim=16, max_length=64), batch_pairs=4, lr=2e-3,
                log_every=1, save_every=2, bf16="false", warmup_ratio=0.0)
    base.update(kw)
    return TrainConfig(**base)


def losses(run: Path) -> dict[int, float]:
    records = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r and "event" not in r}


def test_loss_falls_on_a_fixed_batch(tmp_path):
    trainer = NoteLLMTrainer(config(tmp_path))
    batch = trainer.collate([0, 1, 2, 3], epoch=0)
    opt = torch.optim.AdamW([p for p in trainer.module.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(15):
        out = trainer.module(**batch)
        first = first if first is not None else out["loss"].item()
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert out["loss"].item() < 0.5 * first
    assert out["generative"].item() > 0  # CSFT is part of the objective


def test_training_run_saves_a_self_describing_model(tmp_path):
    cfg = config(tmp_path, epochs=2)
    summary = NoteLLMTrainer(cfg).train()
    assert summary["steps"] == 8  # 16 pairs / 4 per step x 2 epochs
    card = json.loads((tmp_path / "run" / "model" / "notellm.json").read_text())
    assert card["config"]["backbone"] == "tiny-qwen3" and card["config"]["pooling"] == "before_emb"
    assert card["config"]["dim"] == 16 and card["weights"] == "lora"
    logged = losses(tmp_path / "run")
    assert sorted(logged) == list(range(1, 9))


def test_killed_run_resumes_with_the_same_next_losses(tmp_path):
    """Kill (SIGKILL-like os._exit) after step 3; the checkpoint of step 2 must reproduce steps 3 and 4."""
    (tmp_path / "a").mkdir()
    reference = config(tmp_path / "a", epochs=1, lora={"dropout": 0.1})
    NoteLLMTrainer(reference).train()
    expected = losses(tmp_path / "a" / "run")

    (tmp_path / "b").mkdir()
    killed = config(tmp_path / "b", epochs=1, lora={"dropout": 0.1})
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(TESTS)!r})
        from notellm.training import notellm_trainer as t
        from notellm.config import from_dict
        import json
        cfg = from_dict(t.TrainConfig, json.loads({json.dumps(json.dumps(_asdict(killed)))}))
        original = t.NoteLLMTrainer._after_step
        def after_step(self, module, optimizer, scheduler, position, *rest):
            done = original(self, module, optimizer, scheduler, position, *rest)
            if position["step"] == 3:
                os._exit(9)
            return done
        t.NoteLLMTrainer._after_step = after_step
        t.NoteLLMTrainer(cfg).train()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr[-2000:]
    assert not (tmp_path / "b" / "run" / "model").exists()
    NoteLLMTrainer(killed).train()
    resumed = losses(tmp_path / "b" / "run")  # steps 1-3 from the killed run, then 3-4 after resuming
    assert resumed[4] == pytest.approx(expected[4], rel=1e-5)
    log = [json.loads(l) for l in (tmp_path / "b" / "run" / "log.jsonl").read_text().splitlines()]
    after_resume = [r for r in log[[i for i, r in enumerate(log) if r.get("event") == "resumed"][0]:] if "loss" in r]
    assert after_resume[0]["step"] == 3
    assert after_resume[0]["loss"] == pytest.approx(expected[3], rel=1e-5)


def _asdict(cfg):
    from dataclasses import asdict

    return asdict(cfg)


def test_pairs_naming_unknown_notes_are_a_clear_error(tmp_path):
    cfg = config(tmp_path)
    pq.write_table(pa.table({"note_a": ["0-0-0", "nope"], "note_b": ["0-0-1", "0-1-1"]}), tmp_path / "bad.parquet")
    cfg.train_pairs = str(tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"row 2.*note_a.*'nope'|'nope'.*row 2"):
        NoteLLMTrainer(cfg)


def test_sampled_hashtag_targets_are_subsets_in_order_and_resampled_each_epoch():
    from notellm.training.notellm_trainer import assign_task

    note = {"hashtags": ["a", "b", "c", "d", "e"], "category": ["x"]}
    draws = [assign_task(note, 0, epoch, slot, 1.0, "sample") for epoch in range(3) for slot in range(40)]
    assert all(task == "hashtag" for task, _ in draws)
    targets = [t for _, t in draws]
    assert all(t == tuple(sorted(set(t))) and 1 <= len(t) <= 5 and set(t) <= set(range(5)) for t in targets)
    # j is uniform over 1..5: every size occurs among 120 draws, and the mean size is near 3
    assert {len(t) for t in targets} == {1, 2, 3, 4, 5}
    assert 2.6 < sum(map(len, targets)) / len(targets) < 3.4
    assert [assign_task(note, 0, 0, s, 1.0, "sample") for s in range(5)] == draws[:5]  # same on resume
    assert targets[:40] != targets[40:80]  # another epoch, other targets
    assert assign_task(note, 0, 0, 0, 1.0, "removed")[1] in range(5)
    assert assign_task(note, 0, 0, 0, 0.0, "sample") == ("category", None)
