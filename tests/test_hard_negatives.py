"""Mined hard negatives for GCL: what the miners pick, the per-epoch draw, and the recipe's batches and loss."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers.toy import toy_notes, write_toy
from notellm.errors import ConfigError, DataError
from notellm.models.notellm import NoteLLMConfig
from notellm.training.engine import Engine
from notellm.training.negatives import draw_negative, mine_hard_negatives
from notellm.training.notellm import NoteLLMRecipe, NoteLLMTrainConfig

NOTES = {n["note_id"]: n for n in toy_notes()}
PAIRS = [(a, a[:-1] + "1") for a in NOTES if a.endswith("0")]  # the two notes of one word pair up


def test_bm25_negatives_share_the_anchors_topic_and_never_name_a_partner():
    mined = mine_hard_negatives(PAIRS, NOTES, "bm25", depth=5)
    assert set(mined) == {a for a, _ in PAIRS}
    for anchor, negatives in mined.items():
        assert negatives and anchor not in negatives and anchor[:-1] + "1" not in negatives
        # the toy's notes of one topic share a content template: BM25 ranks them first
        assert all(n.split("-")[0] == anchor.split("-")[0] for n in negatives[:3]), (anchor, negatives)
    skipped = mine_hard_negatives(PAIRS, NOTES, "bm25", depth=3, skip_top=2)
    assert all(skipped[a] == mine_hard_negatives(PAIRS, NOTES, "bm25", depth=5)[a][2:5] for a in skipped)


def test_embedding_negatives_rank_by_cosine(tmp_path):
    from notellm.inference.embed import write_embeddings

    ids = ["a", "b", "c", "d", "e"]
    vectors = np.array([[1, 0], [0.9, 0.1], [0.8, 0.6], [0, 1], [-1, 0]], dtype=np.float32)
    write_embeddings(ids, vectors, {"model": "hand"}, tmp_path / "emb")
    pairs = [("a", "b"), ("d", "e"), ("c", "e")]
    notes = {i: {"note_id": i} for i in ids}
    mined = mine_hard_negatives(pairs, notes, str(tmp_path / "emb"), depth=2)
    assert mined["a"] == ["c", "d"]  # b is a's partner; c (cos .8) then d (0) before e (-1)
    assert mined["d"] == ["c", "b"]  # e is d's partner
    assert mined["c"] == ["b", "a"]
    write_embeddings(ids[:4], vectors[:4], {"model": "hand"}, tmp_path / "short")
    with pytest.raises(DataError, match="1 training note"):
        mine_hard_negatives(pairs, notes, str(tmp_path / "short"))
    with pytest.raises(ConfigError, match="none, bm25 or an embeddings folder"):
        mine_hard_negatives(pairs, notes, str(tmp_path / "nowhere"))


def test_draws_are_seeded_per_epoch_and_fall_back_when_an_anchor_has_none():
    candidates = [f"n{i}" for i in range(30)]
    first = [draw_negative(candidates, [], 0, 0, i) for i in range(20)]
    assert first == [draw_negative(candidates, [], 0, 0, i) for i in range(20)]  # resume draws the same
    assert first != [draw_negative(candidates, [], 0, 1, i) for i in range(20)]  # a new epoch draws anew
    assert draw_negative([], ["x", "y"], 0, 0, 3) in {"x", "y"}


def _config(tmp_path, **kw) -> NoteLLMTrainConfig:
    files = write_toy(tmp_path)
    base = dict(notes=str(files["notes"]), train_pairs=str(files["pairs"]), output_dir=str(tmp_path / "run"),
                model=NoteLLMConfig(backbone="tiny-qwen3", dim=16, max_length=64), batch_size=4, lr=2e-3,
                log_every=1, save_every=0, bf16="false", warmup_ratio=0.0, hard_negatives="bm25",
                hard_negative_depth=4)
    base.update(kw)
    return NoteLLMTrainConfig(**base)


def test_recipe_appends_one_embedding_only_negative_per_pair_and_trains(tmp_path):
    recipe = NoteLLMRecipe(_config(tmp_path, false_negative_margin=0.1))
    module = recipe.build()
    batch = recipe.collate([0, 1, 2, 3], epoch=0)
    assert batch["input_ids"].shape[0] == 12 and batch["n_negatives"] == 4
    assert batch["negative_keys"].shape == (4,)
    assert (batch["labels"][8:] == -100).all()  # negatives are embedded, never asked to generate
    drawn = recipe.draw_negatives([0, 1, 2, 3], 0)
    assert all(n in recipe.negatives[recipe.items[i][0]] for i, n in zip([0, 1, 2, 3], drawn))
    plain = NoteLLMRecipe(_config(tmp_path / "plain", hard_negatives="none"))
    plain_module = plain.build()
    plain_module.load_state_dict(module.state_dict())
    with torch.no_grad():
        harder = module(**batch)["contrastive"].item()
        easier = plain_module(**plain.collate([0, 1, 2, 3], epoch=0))["contrastive"].item()
    assert harder > easier  # more negatives in every row's softmax, same weights
    summary = Engine(NoteLLMRecipe(_config(tmp_path / "engine", max_steps=3))).run()
    records = [json.loads(line) for line in (tmp_path / "engine" / "run" / "log.jsonl").read_text().splitlines()]
    assert summary["steps"] == 3 and all(np.isfinite(r["loss"]) for r in records if "loss" in r)


def test_hard_negatives_refuse_generation_only_and_gradcache(tmp_path):
    with pytest.raises(ConfigError, match="hard_negatives needs a contrastive objective"):
        _config(tmp_path, objective="csft")
    with pytest.raises(ConfigError, match="hard_negatives needs a contrastive objective"):
        _config(tmp_path, grad_cache_chunk=4)
