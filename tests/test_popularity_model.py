"""The LLM regression model: last-token pooling under left/right padding, LoRA training, save/load, predict."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import torch

from notellm.data.schema import empty_note, notes_to_table, write_notes
from notellm.errors import DataError
from notellm.data.popularity import PreparedData
from notellm.inference.popularity import collate, load_model, predict_table
from notellm.models.folder import saving
from notellm.models.lora import LoraConfig
from notellm.models.regression import build_regressor, position_ids_from_mask
from notellm.training.engine import Engine
from notellm.training.popularity import PopularityConfig, PopularityRecipe

TEXTS = ["帖子标题：早起\n\n帖子内容：六点起床跑步", "短", "帖子标题：手机\n\n帖子内容：放下手机一周后我的变化很大，真的很大",
         "今天吃了什么", "周末去爬山看日出", "戒掉短视频的第十天", "宿舍好物分享", "考研上岸经验"]
TARGETS = np.array([3.0, 0.5, 8.0, 1.0, 5.0, 6.5, 2.0, 7.0])


def tiny_cfg(tmp, **train) -> PopularityConfig:
    base = dict(output_dir=str(tmp / "run"), bf16="false", log_every=1000, save_every=0,
                lora=LoraConfig(r=4, alpha=8, dropout=0.0))
    cfg = PopularityConfig(**{**base, **train})
    cfg.model.backbone = "tiny-qwen3"
    cfg.model.max_length = 32
    return cfg


def prepared(texts=TEXTS, targets=TARGETS) -> PreparedData:
    """The 8 texts as notes (note i published at i:00 UTC) with the given targets, all training notes."""
    from notellm.data.popularity import note_texts

    table = _notes([(t, "") for t in texts])
    return PreparedData(table, "<test>", np.asarray(targets, dtype=float), np.zeros(len(texts), dtype=bool),
                        note_texts(table), None, None, None, ["a"] * len(texts), table.column("note_id").to_pylist())


def fit(cfg: PopularityConfig, data: PreparedData | None = None) -> PopularityRecipe:
    data = data or prepared()
    recipe = PopularityRecipe(cfg, data, rows=np.arange(len(data.texts)), score_rows=None)
    Engine(recipe).run()
    return recipe


def _randomise_adapters(model, seed=0):
    """LoRA B starts at zero (a no-op): give adapters and head real values so pooling is really tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or name.startswith("head."):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def test_head_pools_the_last_real_token_with_left_or_right_padding():
    model, tok = build_regressor("tiny-qwen3", 0, LoraConfig(r=4, alpha=8, dropout=0.0, top_layers=1), seed=0)
    _randomise_adapters(model)
    model.eval()
    ids = [tok(t)["input_ids"] for t in TEXTS[:3]]
    assert len({len(x) for x in ids}) == 3
    with torch.no_grad():
        # manual: each note alone, no padding; hidden state at its last position through the head
        manual = []
        for x in ids:
            hidden = model.decoder(input_ids=torch.tensor([x]), attention_mask=torch.ones(1, len(x), dtype=torch.long)).last_hidden_state
            h = hidden[0, -1].float()
            manual.append(float(model.head((h - h.mean()) / torch.sqrt(h.var(unbiased=False) + 1e-5))))
        for side in ("right", "left"):
            input_ids, mask = collate(ids, tok.pad_token_id, side)
            got = model(input_ids, mask).tolist()
            assert got == pytest.approx(manual, abs=1e-5), side
    assert position_ids_from_mask(torch.tensor([[0, 0, 1, 1, 1]])).tolist() == [[0, 0, 0, 1, 2]]


def test_lora_training_lowers_the_loss_on_a_fixed_batch(tmp_path):
    import json

    cfg = tiny_cfg(tmp_path, epochs=40, batch_size=8, lr=3e-3, head_lr=3e-3, loss="mse", warmup_ratio=0.0,
                   head_init="zeros", log_every=1)
    recipe = fit(cfg)  # 8 notes, batch 8: every step sees the same batch
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3])
    lora_b = [p for n, p in recipe.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(float(p.detach().abs().sum()) > 0 for p in lora_b)  # the adapters trained, not just the head
    pred = recipe.predict(np.arange(8))
    assert np.mean(np.abs(pred - TARGETS)) < np.mean(np.abs(TARGETS.mean() - TARGETS))


def _notes(rows):
    out = []
    for i, (title, content) in enumerate(rows):
        row = empty_note(f"n{i}")
        row.update(title=title, content=content, author_id="a", likes=i, collects=0, comments=0,
                   published_at=datetime(2024, 5, 1, i, tzinfo=timezone.utc))
        out.append(row)
    return notes_to_table(out)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny model with one head feature (hour), trained a few steps and saved."""
    cfg = tiny_cfg(tmp_path_factory.mktemp("pop"), epochs=3, batch_size=4)
    cfg.model.features = ["hour"]
    recipe = fit(cfg)
    _randomise_adapters(recipe.model, seed=1)
    out = Path(cfg.output_dir) / "model"
    with saving(out) as folder:  # save the randomised adapters: pooling and merging are then really tested
        recipe.save(recipe.module, folder, {})
    return out, recipe, cfg


def test_saved_model_describes_itself_and_predicts_the_same(saved_model):
    out, recipe, cfg = saved_model
    loaded = load_model(out)
    meta = loaded.meta
    assert meta["backbone"] == "tiny-qwen3" and meta["target"]["log"] == "natural"
    assert meta["target"]["formula"] == "1*ln(likes+1) + 0.5*ln(collects+1) + 0.2*ln(comments+1)"
    assert meta["target"]["mean"] == pytest.approx(TARGETS.mean())
    assert meta["features"]["names"] == ["hour"] and meta["features"]["mean"] == pytest.approx([11.5])  # local hours 8..15
    assert (out / "adapter" / "adapter_config.json").exists() and (out / "head.safetensors").exists()
    table = _notes([(t, "") for t in TEXTS])
    # the same notes (hour of note i is i UTC = i + 8 in Shanghai) score the same from memory and from disk
    expected = recipe.predict(np.arange(8))
    got = predict_table(loaded, table, bf16="false")
    assert got == pytest.approx(expected, abs=1e-4)  # merged LoRA weights, same scores


def test_predict_bad_rows_name_row_and_field(saved_model, tmp_path):
    out, _, _ = saved_model
    loaded = load_model(out)
    table = _notes([("好", "正文"), ("", ""), ("x", "y")])
    with pytest.raises(DataError) as err:
        predict_table(loaded, table, source="notes.parquet")
    assert (err.value.row, err.value.field, err.value.file) == (2, "content", "notes.parquet")
    rows = table.to_pylist()
    rows[1].update(title="有标题", published_at=None)
    with pytest.raises(DataError) as err:
        predict_table(loaded, notes_to_table(rows), source="notes.parquet")
    assert (err.value.row, err.value.field) == (2, "hour")
    assert "published_at is missing" in str(err.value)


def test_cli_predict_one_note_and_a_table(saved_model, tmp_path, capsys):
    from notellm.cli import app
    from notellm.cli.common import run_cli

    out, _, _ = saved_model
    loaded = load_model(out)
    expected = predict_table(loaded, _notes([("早起", "六点起床")]), bf16="false")[0]
    import sys

    argv = sys.argv
    try:
        sys.argv = ["notellm", "popularity", "predict", str(out), "--title", "早起", "--content", "六点起床",
                    "--published-at", "2024-05-01T00:00:00+00:00", "--bf16", "false"]
        assert run_cli(app) == 0
        assert float(capsys.readouterr().out.strip()) == pytest.approx(expected, abs=1e-3)
        path = tmp_path / "notes.parquet"
        write_notes(_notes([("好", "正文"), ("", "")]), path)
        sys.argv = ["notellm", "popularity", "predict", str(out), "--notes", str(path)]
        assert run_cli(app) == 2  # a DataError, printed as one line
        message = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
        assert "row 2, field 'content': the note has no text" in message
    finally:
        sys.argv = argv


def test_history_prompt_model_saves_and_predicts_the_same_and_learns_given_targets(tmp_path):
    wlaes = np.log(np.arange(8) + 1.0)  # the table's own target (likes = i), so predict_table sees the same history
    cfg = tiny_cfg(tmp_path, max_steps=1, batch_size=4, head_init="zeros")
    cfg.model.history_k, cfg.model.max_length = 2, 64
    data = prepared(targets=wlaes)
    residuals = np.linspace(-1.0, 1.0, 8)
    recipe = PopularityRecipe(cfg, data, rows=np.arange(8), score_rows=None, targets=residuals)
    Engine(recipe).run()
    assert recipe.texts[0] == data.texts[0]
    assert recipe.texts[3].startswith(f"作者之前的笔记：\n《{TEXTS[1]}》热度 {wlaes[1]:.1f}\n《")
    assert recipe.target_norm.mean[0] == pytest.approx(0.0)  # it learned the given targets, not data.y
    _randomise_adapters(recipe.model, seed=2)
    out = tmp_path / "model"
    with saving(out) as folder:
        recipe.save(recipe.module, folder, {})
    loaded = load_model(out)
    assert loaded.meta["input"]["history_k"] == 2
    got = predict_table(loaded, _notes([(t, "") for t in TEXTS]), bf16="false")
    assert got == pytest.approx(recipe.predict(np.arange(8)), abs=1e-4)
