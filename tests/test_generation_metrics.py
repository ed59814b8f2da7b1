"""Generation metrics against values computed by hand (Chinese text segmented with jieba)."""

import math

import pyarrow as pa
import pytest

from notellm.errors import DataError
from notellm.evaluation.generation import (bleu4, category_accuracy, evaluate_generation, ill_formed_rate, rouge,
                                           segment, tag_prf, tag_tokens)
from notellm.inference.generate import GeneratedNote, generations_to_table

# jieba 0.42.1 segmentations the hand computations below rely on
SEGMENTS = {
    "我爱北京天安门": ["我", "爱", "北京", "天安门"],
    "北京天安门": ["北京", "天安门"],
    "北京美食": ["北京", "美食"],
    "夏日穿搭": ["夏日", "穿", "搭"],
    "Summer OOTD": ["summer", "ootd"],
}

# note A: reference 我 爱 北京 天安门, hypothesis 北京 天安门; note B: reference = hypothesis = 北京 美食
REF_A, HYP_A = ["我爱北京天安门"], ["北京天安门"]
REF_B, HYP_B = ["北京美食"], ["北京", "美食"]


def test_jieba_segments_each_tag_on_its_own():
    for text, tokens in SEGMENTS.items():
        assert segment(text) == tokens
    # tags are segmented separately, '#' and blanks dropped, order kept
    assert tag_tokens(["#北京", "美食 "]) == ["北京", "美食"]
    assert tag_tokens(["夏日穿搭", "北京美食"]) == ["夏日", "穿", "搭", "北京", "美食"]


def test_sentence_bleu4_with_method1_smoothing_by_hand():
    # A: p1 = 2/2, p2 = 1/1, p3 = p4 = 0/1 -> smoothed 0.1; BP = exp(1 - 4/2)
    expected_a = math.exp(-1.0) * (1 * 1 * 0.1 * 0.1) ** 0.25           # 0.116334
    # B: p1 = p2 = 1, p3 = p4 = 0/1 -> 0.1; BP = 1
    expected_b = 0.1 ** 0.5                                              # 0.316228
    score_a = bleu4([tag_tokens(HYP_A)], [tag_tokens(REF_A)])
    assert score_a["bleu4"] == pytest.approx(expected_a, abs=1e-6)
    assert score_a["bleu4_sentence"] == pytest.approx(expected_a, abs=1e-6)
    both = bleu4([tag_tokens(HYP_A), tag_tokens(HYP_B)], [tag_tokens(REF_A), tag_tokens(REF_B)])
    assert both["bleu4_sentence"] == pytest.approx((expected_a + expected_b) / 2, abs=1e-6)   # 0.216281


def test_corpus_bleu4_sums_counts_over_notes():
    # p1 = 4/4, p2 = 2/2, p3 = p4 = 0/2 -> method1: 0.1/2 = 0.05; c = 4, r = 6 -> BP = exp(1 - 6/4)
    expected = math.exp(-0.5) * (1 * 1 * 0.05 * 0.05) ** 0.25           # 0.135624
    score = bleu4([tag_tokens(HYP_A), tag_tokens(HYP_B)], [tag_tokens(REF_A), tag_tokens(REF_B)])
    assert score["bleu4"] == pytest.approx(expected, abs=1e-6)


def test_rouge_on_jieba_tokens_by_hand():
    # A: R1 P=2/2 R=2/4 F=2/3; R2 ref bigrams {我爱, 爱北京, 北京天安门}, hyp {北京天安门}: F=2*(1*1/3)/(4/3)=0.5;
    #    RL LCS 2: F=2/3.  B: all 1.
    score = rouge([tag_tokens(HYP_A), tag_tokens(HYP_B)], [tag_tokens(REF_A), tag_tokens(REF_B)])
    assert score["rouge1"] == pytest.approx((2 / 3 + 1) / 2)
    assert score["rouge2"] == pytest.approx((0.5 + 1) / 2)
    assert score["rougeL"] == pytest.approx((2 / 3 + 1) / 2)


def test_rouge_default_tokenizer_would_drop_chinese():
    from rouge_score import rouge_scorer

    # why a whitespace tokenizer: the default one keeps [a-z0-9] only, so Chinese scores 0 even when identical
    default = rouge_scorer.RougeScorer(["rouge1"]).score("北京 美食", "北京 美食")["rouge1"].fmeasure
    assert default == 0.0
    assert rouge([["北京", "美食"]], [["北京", "美食"]])["rouge1"] == 1.0


def test_tag_precision_recall_f1_by_hand():
    pred = [["#北京[话题]", "美食", "旅行"], ["Summer OOTD"], []]
    gold = [["北京", "天安门"], ["summerootd"], ["猫"]]
    # matches after normalize_tag: 北京 (note 1), summerootd (note 2) -> 2 hits, 4 predicted, 4 true
    score = tag_prf(pred, gold)
    assert score["tag_precision"] == pytest.approx(0.5)
    assert score["tag_recall"] == pytest.approx(0.5)
    assert score["tag_f1"] == pytest.approx(0.5)
    # per note F1: 2*1/(3+2) = 0.4, 1, 0
    assert score["tag_macro_f1"] == pytest.approx(1.4 / 3)


PRED_CATS = [["美食", "家常菜"], ["美食", "甜品"], ["时尚"], [], ["Travel ", "国内游"]]
GOLD_CATS = [["美食", "家常菜", "川菜"], ["美食", "家常菜"], ["时尚", "女装"], ["情感"], ["travel"]]
CATEGORY_SET = [["美食", "家常菜"], ["美食", "甜品"], ["时尚", "女装"], ["travel"]]


def test_category_accuracy_per_level_and_path_by_hand():
    acc = category_accuracy(PRED_CATS, GOLD_CATS, levels=2)
    assert acc["cat_acc_l1"] == pytest.approx(4 / 5)     # all but the empty answer ('Travel ' == 'travel')
    assert acc["cat_acc_l2"] == pytest.approx(1 / 3)     # 3 notes have a level 2; only the first matches
    assert acc["cat_acc_path"] == pytest.approx(1 / 5)   # whole path cut to 2 levels
    assert acc["n_per_level"] == [5, 3]


def test_ill_formed_rate_by_hand():
    # ['时尚'] (a prefix only), [] and ['travel', '国内游'] are not in the set
    assert ill_formed_rate(PRED_CATS, CATEGORY_SET) == pytest.approx(3 / 5)
    assert ill_formed_rate([["美食", "家常菜"], ["TRAVEL"]], CATEGORY_SET) == 0.0


def _notes(rows):
    return pa.table({"note_id": [r[0] for r in rows], "hashtags": [r[1] for r in rows],
                     "category": [r[2] for r in rows]})


def test_evaluate_generation_joins_by_note_id_and_skips_untagged_notes_for_tag_metrics():
    notes = _notes([("a", REF_A, ["美食", "家常菜"]), ("b", REF_B, ["时尚", "女装"]), ("c", [], ["情感"])])
    preds = generations_to_table([
        GeneratedNote("b", HYP_B, ["时尚", "女装"], "", ""),
        GeneratedNote("a", HYP_A, ["美食", "甜品"], "", ""),
        GeneratedNote("c", ["猫"], ["情感", "x"], "", ""),
    ], {"category_levels": 2, "categories": CATEGORY_SET + [["情感"]]})
    import json

    meta = json.loads(preds.schema.metadata[b"notellm"])
    report = evaluate_generation(preds, notes, decoding=meta, name="t")
    assert (report.n_notes, report.n_tagged) == (3, 2)
    m = report.metrics
    assert m["bleu4"] == pytest.approx(math.exp(-0.5) * 0.05 ** 0.5, abs=1e-6)
    assert m["rouge1"] == pytest.approx(5 / 6)
    # tag sets of a and b (c has no true tag): 北京天安门 vs 我爱北京天安门, {北京, 美食} vs 北京美食: no hit
    assert m["tag_precision"] == 0.0 and m["tag_recall"] == 0.0
    assert m["cat_acc_l1"] == pytest.approx(1.0)
    assert m["cat_acc_l2"] == pytest.approx(1 / 2)
    assert m["cat_acc_path"] == pytest.approx(1 / 3)
    assert m["ill_formed"] == pytest.approx(1 / 3)       # ['美食', '甜品'] is in the set; ['情感', 'x'] is not
    assert m["tags_per_note"] == pytest.approx(4 / 3)
    assert report.decoding["category_set_size"] == 5


def test_unknown_predicted_note_is_an_error_naming_the_row():
    notes = _notes([("a", ["x"], ["美食"])])
    preds = generations_to_table([GeneratedNote("a", [], [], "", ""), GeneratedNote("zz", [], [], "", "")], {})
    with pytest.raises(DataError, match=r"row 2.*note_id.*'zz'"):
        evaluate_generation(preds, notes, pred_file="p.parquet")
