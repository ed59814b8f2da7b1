"""The NoteLLM recipe: the loss falls; a run saves a self-describing model; bad pairs give a clear error; task
draws. (Kill-and-resume for every method: tests/test_engine.py.)"""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from helpers.toy import write_toy
from notellm.errors import DataError
from notellm.models.notellm import NoteLLMConfig
from notellm.training.engine import Engine
from notellm.training.notellm import NoteLLMRecipe, NoteLLMTrainConfig, assign_task


def config(tmp: Path, **kw) -> NoteLLMTrainConfig:
    files = write_toy(tmp)
    base = dict(notes=str(files["notes"]), train_pairs=str(files["pairs"]), output_dir=str(tmp / "run"),
                model=NoteLLMConfig(backbone="tiny-qwen3", dim=16, max_length=64), batch_size=4, lr=2e-3,
                log_every=1, save_every=2, bf16="false", warmup_ratio=0.0)
    base.update(kw)
    return NoteLLMTrainConfig(**base)


def losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r and "event" not in r}


def test_loss_falls_on_a_fixed_batch(tmp_path):
    recipe = NoteLLMRecipe(config(tmp_path))
    module = recipe.build()
    batch = recipe.collate([0, 1, 2, 3], epoch=0)
    opt = torch.optim.AdamW(recipe.param_groups(module), lr=3e-3)
    first = None
    for _ in range(15):
        out = module(**batch)
        first = first if first is not None else out["loss"].item()
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert out["loss"].item() < 0.5 * first
    assert out["generative"].item() > 0  # CSFT is part of the objective


def test_training_run_saves_a_self_describing_model(tmp_path):
    cfg = config(tmp_path, epochs=2)
    summary = Engine(NoteLLMRecipe(cfg)).run()
    assert summary["steps"] == 8 and summary["epochs"] == 2  # 16 pairs / 4 per step x 2 epochs
    card = json.loads((tmp_path / "run" / "model" / "notellm.json").read_text())
    assert card["kind"] == "notellm" and card["format"] == "notellm/2"
    assert card["config"]["backbone"] == "tiny-qwen3" and card["config"]["pooling"] == "before_emb"
    assert card["config"]["dim"] == 16 and card["weights"] == "lora"
    assert sorted(losses(tmp_path / "run")) == list(range(1, 9))
    run_config = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert run_config["kind"] == "notellm" and run_config["batch_size"] == 4
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-0000006", "step-0000008"]


def test_pairs_naming_unknown_notes_are_a_clear_error(tmp_path):
    cfg = config(tmp_path)
    pq.write_table(pa.table({"note_a": ["0-0-0", "nope"], "note_b": ["0-0-1", "0-1-1"]}), tmp_path / "bad.parquet")
    cfg.train_pairs = str(tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"row 2.*note_a.*'nope'|'nope'.*row 2"):
        NoteLLMRecipe(cfg).build()
    (tmp_path / "junk.parquet").write_text("not parquet")
    cfg.train_pairs = str(tmp_path / "junk.parquet")
    with pytest.raises(DataError, match="not a readable Parquet pair table"):
        NoteLLMRecipe(cfg).build()


def test_sampled_hashtag_targets_are_subsets_in_order_and_resampled_each_epoch():
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


def test_scale_lr_zero_fixes_the_temperature_and_the_default_moves_it(tmp_path):
    scales = {}
    for scale_lr in (0.0, None):
        cfg = config(tmp_path / str(scale_lr), init_log_scale=3.0, scale_lr=scale_lr, max_steps=3)
        Engine(NoteLLMRecipe(cfg)).run()
        log = (tmp_path / str(scale_lr) / "run" / "log.jsonl").read_text().splitlines()
        scales[scale_lr] = [r["scale"] for r in map(json.loads, log) if "scale" in r]
    e3 = torch.tensor(3.0).exp().item()
    assert len(scales[0.0]) == 3 and all(s == pytest.approx(e3, rel=1e-6) for s in scales[0.0])
    assert scales[None][-1] != pytest.approx(scales[0.0][-1], rel=1e-4)  # head_lr 2e-3 moves it by then


def test_negative_head_or_scale_lr_is_a_config_error(tmp_path):
    from notellm.errors import ConfigError

    with pytest.raises(ConfigError, match="scale_lr"):
        config(tmp_path, scale_lr=-1.0)


def test_gcl_and_the_csft_free_share_read_the_full_compression_prompt_as_at_inference(tmp_path):
    """A generation task removes its answer from the input; GCL alone has no answer, so its notes (and the
    1 - csft_rate share under notellm) read the whole note, as `notellm embed` does."""
    occurrences = [(i, side) for i in range(16) for side in (0, 1)]

    def tasks(**kw) -> list[str]:
        recipe = NoteLLMRecipe(config(tmp_path, **kw))
        recipe.read_items()
        return [recipe.task_for(recipe.store[recipe.items[i][side]], i, side, 0)[0] for i, side in occurrences]

    assert set(tasks(objective="gcl")) == {"embed"}
    paper = tasks()
    assert "embed" not in paper and {"hashtag", "category"} <= set(paper)
    recipe = NoteLLMRecipe(config(tmp_path))
    recipe.read_items()
    assert paper == [assign_task(recipe.store[recipe.items[i][side]], 0, 0, 2 * i + side, 0.4)[0]
                     for i, side in occurrences]  # csft_rate 1.0 draws what it drew before the option
    mixed = tasks(csft_rate=0.5)
    assert 6 <= mixed.count("embed") <= 26  # 32 draws at 1/2
    assert all(m == p for m, p in zip(mixed, paper) if m != "embed")  # the others keep their task
    prompt = recipe.prompt(recipe.store[recipe.items[0][0]], 0, 0, 0)
    assert prompt.answer  # notellm: an answer follows the [EMB] prompt
