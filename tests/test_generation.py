"""Hashtag / category generation: the category trie, constrained decoding, output structure, the k-NN baseline."""

import pytest

from notellm.evaluation.generation import ill_formed_rate
from notellm.inference.generate import (CategoryTrie, GenerationSettings, KnnTagger, NoteGenerator, category_answer,
                                        category_paths, read_generations, write_generations)
from notellm.models.prompts import PromptConfig

# paths sharing prefixes (美食 is both a whole path and the start of two longer ones), and an English one
CATEGORIES = [("美食",), ("美食", "家常菜"), ("美食", "家常菜", "川菜"), ("美食", "甜品"), ("时尚", "女装"),
              ("Travel", "Domestic trips")]


def _notes(n):
    words = ["今天天气很好", "周末去爬山", "红烧肉的做法", "夏日穿搭", "Weekend in Beijing", "猫咪日常"]
    return [dict(note_id=f"n{i}", title=f"笔记{i}{words[i % 6]}", content=words[(i * 7) % 6] * (1 + i % 4),
                 hashtags=["标签"], category=["美食"]) for i in range(n)]


@pytest.fixture(scope="module")
def tiny_notellm():
    from notellm.models.notellm import NoteLLMConfig, build_notellm

    config = NoteLLMConfig(backbone="tiny-qwen3", dim=0, max_length=96,
                           prompt=PromptConfig(category_levels=3, content_chars=30))
    return build_notellm(config, seed=0).eval()


def test_category_answer_is_the_training_answer():
    assert category_answer(("美食", "家常菜"), PromptConfig()) == "美食，家常菜。"
    assert category_answer(("美食",), PromptConfig(category_levels=3)) == "美食。"
    assert category_answer(("Travel", "Domestic trips"), PromptConfig(language="en")) == " Travel, Domestic trips."


def test_trie_allows_exactly_the_continuations_of_the_set():
    trie = CategoryTrie([[5, 6, 9], [5, 7, 9], [8, 9]], pad_id=0)
    assert sorted(trie.allowed([])) == [5, 8]
    assert sorted(trie.allowed([5])) == [6, 7]
    assert trie.allowed([5, 6]) == [9]
    assert trie.allowed([5, 6, 9]) == [0]      # finished: only padding
    assert trie.allowed([6]) == [0]            # off the trie (HF never gets there under the constraint)
    assert trie.depth == 3


def test_category_paths_cut_levels_and_deduplicate():
    notes = [{"category": ["美食", "家常菜", "川菜"]}, {"category": ["美食", "家常菜"]}, {"category": []},
             {"category": [" 时尚 "]}]
    assert category_paths(notes, 2) == [("时尚",), ("美食", "家常菜")]


@pytest.mark.parametrize("beams,n_notes", [(1, 64), (3, 24)])
def test_constrained_category_never_leaves_the_set_with_random_weights(tiny_notellm, beams, n_notes):
    generator = NoteGenerator(tiny_notellm, GenerationSettings(num_beams=beams, batch_size=16), CATEGORIES)
    out = generator.generate(_notes(n_notes), tasks=("category",))
    cats = [tuple(o.category) for o in out]
    assert all(c in CATEGORIES for c in cats), set(cats) - set(CATEGORIES)
    assert ill_formed_rate([o.category for o in out], CATEGORIES) == 0.0
    assert all(o.tags == [] for o in out)      # tags were not asked for


def test_free_category_from_random_weights_is_ill_formed(tiny_notellm):
    # the same model without the constraint: the trie is what keeps the output in the set
    generator = NoteGenerator(tiny_notellm, GenerationSettings(constrain_category=False, max_new_tokens=8),
                              CATEGORIES)
    out = generator.generate(_notes(16), tasks=("category",))
    assert ill_formed_rate([o.category for o in out], CATEGORIES) > 0.9


def test_constrained_decoding_needs_a_category_set(tiny_notellm):
    from notellm.errors import NotellmError

    with pytest.raises(NotellmError, match="category set"):
        NoteGenerator(tiny_notellm, GenerationSettings(constrain_category=True), [])


@pytest.mark.parametrize("strategy", ["list", "beams"])
def test_generation_structure_order_and_n(tiny_notellm, strategy, tmp_path):
    settings = GenerationSettings(n_tags=2, tag_strategy=strategy, max_new_tokens=6, batch_size=4)
    generator = NoteGenerator(tiny_notellm, settings, CATEGORIES)
    notes = _notes(6)
    seen = []
    out = generator.generate(notes, on_batch=seen.append)
    assert [o.note_id for o in out] == [n["note_id"] for n in notes]      # input order despite length sorting
    assert sum(seen) == 6 and seen == [4, 2]
    for o in out:
        assert len(o.tags) <= 2 and len({t.lower() for t in o.tags}) == len(o.tags)
        assert tuple(o.category) in CATEGORIES
        assert o.raw_category.endswith("。")
        if strategy == "beams":  # one decoded answer per beam (2 * n beams), a line each
            assert o.raw_tags.count("\n") >= 3
    path = write_generations(out, generator.describe(), tmp_path / "tags.parquet")
    table, meta = read_generations(path)
    assert table.column_names == ["note_id", "tags", "category", "raw_tags", "raw_category"]
    assert table.num_rows == 6
    assert meta["category_decoding"] == "constrained" and meta["tag_strategy"] == strategy and meta["n_tags"] == 2
    assert [tuple(p) for p in meta["categories"]] == CATEGORIES


def test_tag_parsing_respects_n_and_deduplicates(tiny_notellm):
    listing = NoteGenerator(tiny_notellm, GenerationSettings(n_tags=2, constrain_category=False))
    assert listing._parse_tags(["#穿搭，穿搭 ，夏日，显瘦。后面的不算"]) == ["穿搭", "夏日"]
    beams = NoteGenerator(tiny_notellm, GenerationSettings(n_tags=3, tag_strategy="beams",
                                                           constrain_category=False))
    # first topic of each beam, distinct after normalize_tag, at most n
    assert beams._parse_tags(["夏日。", "夏日 。", "Cats，穿搭。", "cats。", "显瘦。", "美食。"]) == \
        ["夏日", "Cats", "显瘦"]


def test_knn_baseline_votes_tags_and_category_of_nearest_notes():
    train = [
        dict(note_id="1", title="红烧肉的做法", content="家常红烧肉 简单好吃", hashtags=["美食", "红烧肉"],
             category=["美食", "家常菜"]),
        dict(note_id="2", title="红烧肉教程", content="红烧肉 做法 家常", hashtags=["红烧肉", "家常菜"],
             category=["美食", "家常菜"]),
        dict(note_id="3", title="夏日穿搭", content="显瘦 连衣裙 穿搭", hashtags=["穿搭"], category=["时尚", "女装"]),
        dict(note_id="4", title="夏日连衣裙", content="穿搭 显瘦", hashtags=["穿搭", "夏日"], category=["时尚", "女装"]),
    ]
    tagger = KnnTagger(train, k=2, n_tags=2, levels=2)
    out = tagger.generate([dict(note_id="q1", title="红烧肉", content="家常做法"),
                           dict(note_id="q2", title="连衣裙穿搭", content="夏日 显瘦")])
    # q1's two nearest are notes 1 and 2: 红烧肉 appears twice, then a tie of one vote broken by similarity
    assert out[0].tags[0] == "红烧肉" and len(out[0].tags) == 2 and out[0].category == ["美食", "家常菜"]
    assert out[1].tags[0] == "穿搭" and out[1].category == ["时尚", "女装"]
    assert tagger.describe()["k"] == 2


def test_constrained_answer_maps_back_to_its_path_even_with_a_comma_in_a_name(tiny_notellm):
    categories = [("美食", "甜品，饮品"), ("美食", "甜品")]
    generator = NoteGenerator(tiny_notellm, GenerationSettings(), categories)
    assert generator._parse_category("美食，甜品，饮品。") == ["美食", "甜品，饮品"]
    assert generator._parse_category("美食，甜品。") == ["美食", "甜品"]
    assert generator._parse_category("旅行，国内。") == ["旅行", "国内"]   # not in the set: split (free decoding)


def test_lm_head_gets_a_contiguous_input(tiny_notellm):
    # torch 2.13 CPU: bf16 linear on a strided input with frozen weights is ~400x slower (see generate.py)
    import torch

    NoteGenerator(tiny_notellm, GenerationSettings(constrain_category=False))
    NoteGenerator(tiny_notellm, GenerationSettings(constrain_category=False))   # registered once only
    head = tiny_notellm.lm.get_output_embeddings()
    assert len(head._forward_pre_hooks) == 1
    seen = []
    handle = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].is_contiguous()))
    try:
        with torch.inference_mode():
            head(torch.randn(2, 5, head.in_features)[:, -1:, :])
    finally:
        handle.remove()
    assert seen == [True]


def test_tag_strategy_follows_how_the_model_learned_hashtags():
    from notellm.inference.generate import strategy_for_card

    assert strategy_for_card(None) == "list"  # zero-shot: ask for n topics
    assert strategy_for_card({"objective": "csft", "hashtag_target": "sample"}) == "list"
    assert strategy_for_card({"objective": "notellm", "hashtag_target": "removed"}) == "beams"
    assert strategy_for_card({"objective": "csft"}) == "beams"  # cards from before the option: removed
    assert strategy_for_card({"objective": "gcl"}) == "list"  # never trained to generate
