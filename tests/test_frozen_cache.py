"""The frozen-layer cache: training only the top layers from cached bottom states gives the same losses and
gradients as the full forward, hits on repeated prompts, and stays within its memory bound."""

from __future__ import annotations

import json

import pytest
import torch

from helpers.toy import write_toy
from notellm.errors import ConfigError
from notellm.models.lora import LoraConfig
from notellm.models.notellm import NoteLLMConfig
from notellm.training.engine import Engine
from notellm.training.notellm import NoteLLMRecipe, NoteLLMTrainConfig

FOUR_LAYERS = 'tiny-qwen3:{"num_hidden_layers": 4}'


def _config(tmp_path, **kw) -> NoteLLMTrainConfig:
    files = write_toy(tmp_path)
    base = dict(notes=str(files["notes"]), train_pairs=str(files["pairs"]), output_dir=str(tmp_path / "run"),
                model=NoteLLMConfig(backbone=FOUR_LAYERS, dim=16, max_length=64), batch_size=4, lr=2e-3,
                log_every=1, save_every=0, bf16="false", warmup_ratio=0.0,
                lora=LoraConfig(top_layers=1, dropout=0.0))
    base.update(kw)
    return NoteLLMTrainConfig(**base)


def _grads(module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("packed", [True, False])
def test_cached_bottom_gives_the_losses_and_gradients_of_the_full_forward(tmp_path, monkeypatch, packed):
    """Against the full padded forward; the top layers run padding-free on CPUs (models/packing.py) or padded."""
    from notellm.models import packing

    plain = NoteLLMRecipe(_config(tmp_path / "a"))
    cached = NoteLLMRecipe(_config(tmp_path / "b", cache_frozen_layers=True))
    m_plain, m_cached = plain.build(), cached.build()
    assert m_cached.model.frozen_cache.frozen == 3  # adapters in the top layer of four
    batch = plain.collate([0, 1, 2, 3], epoch=0)
    assert (batch["attention_mask"] == 0).any(), "the test batch must hold padding"
    monkeypatch.setattr(packing, "enabled", False)
    out_plain = m_plain(**batch)
    monkeypatch.setattr(packing, "enabled", packed)
    calls, real = [], packing.packed
    monkeypatch.setattr(packing, "packed", lambda *a: calls.append(1) or real(*a))
    out_cached = m_cached(**batch)
    assert bool(calls) == packed
    assert out_cached["loss"].item() == pytest.approx(out_plain["loss"].item(), abs=1e-5)
    out_plain["loss"].backward()
    out_cached["loss"].backward()
    g_plain, g_cached = _grads(m_plain), _grads(m_cached)
    assert g_plain.keys() == g_cached.keys() and len(g_plain) > 2
    for name in g_plain:
        assert torch.allclose(g_plain[name], g_cached[name], atol=1e-6, rtol=1e-4), name
    cache = m_cached.model.frozen_cache
    assert cache.misses == 8 and cache.hits == 0
    m_cached(**cached.collate([0, 1, 2, 3], epoch=0))  # the same prompts again: all from the cache
    assert cache.hits == 8 and out_cached["cache_hit_rate"].item() == 0.0


def test_a_run_with_the_cache_logs_the_losses_of_one_without(tmp_path):
    def run(folder, **kw):
        Engine(NoteLLMRecipe(_config(folder, max_steps=6, epochs=2, **kw))).run()
        records = [json.loads(line) for line in (folder / "run" / "log.jsonl").read_text().splitlines()]
        return [r for r in records if "loss" in r and "event" not in r]

    plain, cached = run(tmp_path / "a"), run(tmp_path / "b", cache_frozen_layers=True)
    assert [r["loss"] for r in cached] == pytest.approx([r["loss"] for r in plain], abs=1e-4)
    assert cached[-1]["cache_hit_rate"] > 0  # epoch 2 repeats some prompts of epoch 1


def test_memory_bound_and_nothing_to_cache(tmp_path):
    recipe = NoteLLMRecipe(_config(tmp_path / "a", cache_frozen_layers=True, frozen_cache_gb=1e-6))
    module = recipe.build()
    module(**recipe.collate([0, 1, 2, 3], epoch=0))
    cache = module.model.frozen_cache
    assert cache.bytes <= 1e-6 * 2**30 or len(cache.entries) == 1
    everywhere = NoteLLMRecipe(_config(tmp_path / "b", cache_frozen_layers=True, lora=LoraConfig(dropout=0.0)))
    assert everywhere.build().model.frozen_cache is None  # adapters in every layer: nothing is frozen
    with pytest.raises(ConfigError, match="no gradient_checkpointing"):
        _config(tmp_path / "c", cache_frozen_layers=True, gradient_checkpointing=True)
