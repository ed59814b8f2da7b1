"""Cold-start popularity (MultiSmpLLM): instruction data, number parsing, SFT labels and step, pipeline."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from notellm.data.coldstart import (
    InstructionConfig,
    ScoreConfig,
    build_instructions,
    group_user_posts,
    popularity_scores,
    split_users,
)
from notellm.data.schema import empty_note, notes_to_table, write_notes
from notellm.errors import DataError
from notellm.data.coldstart import DataSourceConfig, collate, encode, read_instruction_set
from notellm.evaluation.coldstart import EvalConfig, score_predictions
from notellm.evaluation.numbers import count_non_numbers, parse_number
from notellm.inference.coldstart import generate_answers, reference_logprobs
from notellm.io import read_json, write_parquet
from notellm.models.coldstart import ColdStartModelConfig, load_coldstart_model, make_trainable
from notellm.models.lora import LoraConfig
from notellm.training import coldstart as cs

T0 = datetime(2016, 9, 7, 8, 0, tzinfo=timezone.utc)


def make_notes(posts_per_user: dict[str, int], with_counts: bool = True):
    """User u's post i (0-based, in time order) has title 'u-post-i' and likes = 10*i + len(u)."""
    rows = []
    for u, n in posts_per_user.items():
        for i in range(n):
            row = empty_note(f"{u}-{i}")
            row.update(title=f"{u}-post-{i}", author_id=u, published_at=T0 + timedelta(hours=7 * i + len(u)),
                       likes=10 * i + len(u) if with_counts else None, collects=i, comments=2 * i,
                       category=["Tech", "AI"], hashtags=[f"tag{i}"],
                       extra=json.dumps({"domain": f"{u}.com", "quality": 9.87}))
            rows.append(row)
    rows.reverse()  # file order is not time order
    return notes_to_table(rows)


# ----------------------------------------------------------------------------------------- numbers
@pytest.mark.parametrize("text, expected", [
    ("约 3.5 分", 3.5), ("Score: 4.20.", 4.2), ("3,5", 3.5), ("1,024", 1024.0), ("  7", 7.0),
    ("得分：-0.75。", -0.75), ("−2.5", -2.5), ("３.５", 3.5), ("3.52\n\nThe", 3.52), ("between 3-4", 3.0),
    ("-", None), ("four", None), ("三点五", None), ("", None), ("nan", None), ("v2", None), (None, None),
])
def test_parse_number_on_messy_answers(text, expected):
    assert parse_number(text) == expected


def test_count_non_numbers():
    assert count_non_numbers([parse_number(t) for t in ["1.0", "-", "four", "2"]]) == 2


# ------------------------------------------------------------------------------------- instructions
def test_scores_are_weighted_log_counts_and_missing_counts_are_errors():
    table = make_notes({"ab": 2})
    # post 1 of 'ab': likes 12, collects 1, comments 2 -> log 13 + 0.5 log 2 + 0.2 log 3
    scores = popularity_scores(table, ScoreConfig(1.0, 0.5, 0.2))
    row = table.column("note_id").to_pylist().index("ab-1")
    assert scores[row] == pytest.approx(math.log(13) + 0.5 * math.log(2) + 0.2 * math.log(3))
    with pytest.raises(DataError) as err:
        popularity_scores(make_notes({"ab": 2}, with_counts=False), ScoreConfig(), source="x.csv")
    assert err.value.row == 1 and err.value.field == "likes"


def test_train_question_uses_post_n_minus_1_and_never_sees_post_n():
    table = make_notes({"alice": 6, "bob": 5, "cy": 4})
    cfg = InstructionConfig(language="en", shots=[1, 2, 3], score=ScoreConfig(1.0, 0.0, 0.0),
                            extra_fields={"domain": "website"})
    users, skips = group_user_posts(table, cfg)
    assert [u.user_id for u in users] == ["alice", "bob"]  # cy has 4 < 5 posts
    assert skips.no_author == 0 and skips.no_time == 0
    alice = [u for u in users if u.user_id == "alice"]
    train = build_instructions(table, alice, cfg, "train")
    test = build_instructions(table, alice, cfg, "test")
    ids = table.column("note_id").to_pylist()
    for ex in train:
        assert ids[ex.target_row] == "alice-4"  # post n-1 of 6 posts
        assert [ids[r] for r in ex.history_rows] == [f"alice-{i}" for i in range(4 - ex.shots, 4)]
        assert "alice-post-5" not in ex.prompt and "4.03" not in ex.prompt  # post n: title, score log(56)
        assert ex.target == pytest.approx(math.log(46)) and ex.answer == " 3.83"
    three = [e for e in test if e.shots == 3][0]
    assert ids[three.target_row] == "alice-5" and three.answer == " 4.03"
    # At test time post n-1 (asked in training) is history, with its score shown.
    assert 'The title of post 3 is "alice-post-4"' in three.prompt and "post 3 is 3.83." in three.prompt
    assert 'The target new post is post 4, the title is "alice-post-5"' in three.prompt
    assert three.prompt.endswith("Provide the popularity score for this new post.\nAnswer:")
    assert "the category is Tech, the subcategory is AI, the concept is tag5" in three.prompt
    assert "the release time is Fri Sep 9 00:00" in three.prompt
    assert "the website is alice.com" in three.prompt and "9.87" not in three.prompt  # only chosen extra keys


def test_chinese_template():
    table = make_notes({"alice": 5})
    cfg = InstructionConfig(language="zh", shots=[1])
    users, _ = group_user_posts(table, cfg)
    (ex,) = build_instructions(table, users, cfg, "test")
    assert "帖子1的标题是“alice-post-3”，类别是Tech，子类别是AI，话题是tag3" in ex.prompt
    assert "帖子1的流行度得分是3.58。" in ex.prompt  # log(36)
    assert "目标新帖子是帖子2，标题是“alice-post-4”" in ex.prompt and ex.prompt.endswith("\n答案：")
    assert ex.answer == "3.83"


def test_user_split_is_disjoint_and_too_few_posts_is_an_error():
    table = make_notes({f"u{i}": 5 for i in range(10)})
    cfg = InstructionConfig()
    users, _ = group_user_posts(table, cfg)
    main, pref = split_users(users, 6, 3, seed=1)
    assert len(main) == 6 and len(pref) == 3 and not {u.user_id for u in main} & {u.user_id for u in pref}
    with pytest.raises(DataError):
        build_instructions(table, users, InstructionConfig(shots=[4]), "train")  # 5 posts < 4 + 2


# ------------------------------------------------------------------------------------------- SFT
def test_labels_only_on_answer_tokens_and_loss_matches_hf(tiny_backbone):
    model, tok = tiny_backbone
    items = [encode(tok, "Score of a short post:", " 3.52", 64), encode(tok, "A longer prompt here, please:", " 10.00", 64)]
    batch = collate(items, tok.pad_token_id)
    for i, item in enumerate(items):
        n_ans = len(item.answer_ids)
        assert item.answer_ids[-1] == tok.eos_token_id
        assert batch["labels"][i, -n_ans:].tolist() == item.answer_ids
        assert (batch["labels"][i, :-n_ans] == -100).all()
        assert batch["input_ids"][i, -(len(item.prompt_ids) + n_ans):].tolist() == item.prompt_ids + item.answer_ids
    with torch.no_grad():
        ours = cs.SFTModule(model)(**batch)["loss"]
        hf = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"], labels=batch["labels"]).loss
    assert ours.item() == pytest.approx(hf.item(), rel=1e-5)


def test_sft_step_lowers_the_loss():
    from notellm.models.backbone import load_backbone

    model, tok = load_backbone("tiny-qwen3", seed=1)
    module = cs.SFTModule(model).train()
    items = [encode(tok, f"User u{i} history ... new post score?", f" {i}.25", 64) for i in range(4)]
    batch = collate(items, tok.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    with torch.no_grad():
        before = module(**batch)["loss"].item()
    for _ in range(5):
        loss = module(**batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        after = module(**batch)["loss"].item()
    assert after < before - 0.5


def test_left_padded_batched_generation_equals_one_by_one(tiny_backbone):
    model, tok = tiny_backbone
    prompts = ["short", "a much longer prompt with many more tokens in it"]
    batched = generate_answers(model, tok, prompts, 64, max_new_tokens=5, batch_size=2)
    single = [generate_answers(model, tok, [p], 64, max_new_tokens=5)[0] for p in prompts]
    assert [a[0].token_ids for a in batched] == [a[0].token_ids for a in single]
    assert [a[0].logp for a in batched] == pytest.approx([a[0].logp for a in single], abs=1e-4)
    # the head reads a contiguous input (strided F.linear is slow on CPU), the hook registered once
    head = model.get_output_embeddings()
    assert head._notellm_contiguous and len(head._forward_pre_hooks) == 1


def test_sampled_answers_carry_their_reference_logprob(tiny_backbone):
    model, tok = tiny_backbone
    prompts = ["user history: 1.00, 2.00; new post:", "another prompt"]
    torch.manual_seed(0)
    sampled = generate_answers(model, tok, prompts, 64, sample=True, n=2, max_new_tokens=4)
    assert [len(a) for a in sampled] == [2, 2]
    flat = [s for a in sampled for s in a]
    again = reference_logprobs(model, tok, [p for p in prompts for _ in range(2)], [s.token_ids for s in flat],
                                  64, 4, batch_size=4)
    assert [s.logp for s in flat] == pytest.approx(again, abs=1e-4)
    assert all(s.logp < 0 and 1 <= len(s.token_ids) <= 4 for s in flat)


def test_freeze_trains_only_the_last_layers():
    from notellm.models.backbone import load_backbone

    model, _ = load_backbone("tiny-qwen3")
    model = make_trainable(model, ColdStartModelConfig(backbone="tiny-qwen3", method="freeze", freeze_last_n=1),
                           LoraConfig())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("model.layers.1.") for n in trainable)
    lora = make_trainable(load_backbone("tiny-qwen3")[0], ColdStartModelConfig(backbone="tiny-qwen3", method="lora"),
                          LoraConfig(r=4, top_layers=1))
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert len(trainable) == 14 and all(".layers.1." in n and "lora_" in n for n in trainable)  # 7 modules x A, B


# ----------------------------------------------------------------------------- preference and eval
def test_pick_pair_chooses_the_smaller_error_and_skips_ties():
    assert cs.pick_pair(["3.0", "约 2.5 分"], 2.0) == (1, 0, 0.5, 1.0)
    assert cs.pick_pair(["four", "2.10"], 2.0) == (1, 0, pytest.approx(0.1), math.inf)
    assert cs.pick_pair(["2.4", "9", "2.1"], 2.0) == (2, 1, pytest.approx(0.1), 7.0)
    assert cs.pick_pair(["2.5", "1.5"], 2.0) == "equal_error"
    assert cs.pick_pair(["-", "n/a"], 2.0) == "unparseable"


def test_preference_stats_report_margins_one_digit_pairs_and_mu():
    import pyarrow as pa

    from notellm.losses.preference import idpop_mu

    ids = lambda text: [ord(ch) for ch in text]  # noqa: E731 (one id per character, as Gemma's digits)
    pairs = [(" 0.69", " 1.69", 0.0, 1.0), (" 0.69", " 3.00", 0.05, 2.0), (" 1.10", " 0.69", 0.1, 0.3)]
    table = pa.Table.from_pylist([dict(chosen=c, rejected=r, chosen_ids=ids(c), rejected_ids=ids(r), err_chosen=ec,
                                       err_rejected=er) for c, r, ec, er in pairs])
    acfg = cs.AlignConfig(beta=0.1, lam=0.5, alpha=1.0, delta=0.5)
    stats = cs.preference_stats(table, acfg)
    assert stats["pairs"] == 3 and stats["margin_quantiles_0_10_50_90_100"][2] == pytest.approx(1.0)
    assert stats["margin_quantiles_0_10_50_90_100"][0] == pytest.approx(0.2) and stats["margin_below_0_1"] == 0.0
    assert stats["one_token_apart"] == pytest.approx(1 / 3)  # only 0.69 vs 1.69
    assert (stats["top_chosen"], stats["top_chosen_share"]) == ("0.69", pytest.approx(2 / 3))
    assert (stats["m_min"], stats["m_max"], stats["mu_max_possible"]) == (0.0, 2.0, 1.0)
    mu = idpop_mu(torch.tensor([0.0, 0.05, 0.1]), torch.tensor([1.0, 2.0, 0.3]), 0.5, 1.0, 0.5, 0.0, 2.0)
    assert stats["mu_over_beta_median"] == pytest.approx(float(mu.median()) / 0.1, rel=1e-5)
    # the closest pair (errors 0.1 vs 0.3) gets the largest mu: the penalty is strongest where the pair says least
    assert stats["mu_quantiles_0_10_50_90_100"][4] == pytest.approx(float(mu[2]), abs=1e-4)


def test_score_predictions_counts_non_numbers():
    res = score_predictions([1.0, 2.0, 3.0, 4.0], [1.5, None, 5.0, 2.0], fallback=[0.0, 1.0, 0.0, 0.0])
    assert res["non_number"] == 1 and res["n"] == 4
    assert res["mae"] == pytest.approx((0.5 + 2.0 + 2.0) / 3)
    assert res["src"] == pytest.approx(0.5)  # prediction ranks (1,3,2) vs (1,2,3): 1 - 6*2/(3*8)
    assert res["mae_filled"] == pytest.approx((0.5 + 1.0 + 2.0 + 2.0) / 4)
    constant = score_predictions([1.0, 2.0, 3.0], [2.0, 2.0, 2.0], fallback=[0.0] * 3)
    assert math.isnan(constant["src"]) and constant["mae"] == pytest.approx(2 / 3)
    assert (constant["distinct_answers"], constant["top_answer"], constant["top_answer_share"]) == (1, 2.0, 1.0)
    assert (res["distinct_answers"], res["top_answer_share"]) == (3, pytest.approx(1 / 3))


def write_preference_pairs(cfg: cs.ColdStartConfig) -> None:
    """The random tiny model writes no numbers, so build the pairs by hand: the truth vs. a wrong score, with the
    SFT model's log-probabilities as the reference."""
    import pyarrow as pa

    _, _, pref = read_instruction_set(cfg.output_dir)
    model, tok, mcfg = load_coldstart_model(cs.sft_folder(cfg))
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]  # noqa: E731
    rows = [dict(prompt=e.prompt, chosen_ids=ids(e.answer), rejected_ids=ids(" 9.99"), err_chosen=0.0,
                 err_rejected=abs(9.99 - e.target)) for e in pref]
    prompts = [r["prompt"] for r in rows]
    for key, col in (("ref_logp_chosen", "chosen_ids"), ("ref_logp_rejected", "rejected_ids")):
        values = reference_logprobs(model, tok, prompts, [r[col] for r in rows], mcfg.max_length, 8, 4)
        for r, v in zip(rows, values):
            r[key] = v
    write_parquet(pa.Table.from_pylist(rows), Path(cfg.output_dir) / "preference.parquet")


def tiny_coldstart_config(tmp_path, notes_path, **kw) -> cs.ColdStartConfig:
    cfg = cs.ColdStartConfig(output_dir=str(tmp_path / "run"), epochs=1, batch_size=4, bf16="false", log_every=1,
                             **kw)
    cfg.data = DataSourceConfig(source="notes", path=str(notes_path), main_users=3, preference_users=2)
    cfg.model = ColdStartModelConfig(backbone="tiny-qwen3", max_length=256)
    return cfg


def test_pipeline_sft_align_eval_on_tiny_model(tmp_path):
    notes_path = tmp_path / "notes.parquet"
    write_notes(make_notes({f"user{i}": 5 + i % 2 for i in range(5)}), notes_path)
    cfg = tiny_coldstart_config(tmp_path, notes_path)
    sft_dir = cs.train_sft(cfg)
    info = read_json(sft_dir / "notellm.json")
    assert info["kind"] == "coldstart" and info["examples"] == 9 and info["data"]["preference_users"] == 2
    _, test, pref = read_instruction_set(cfg.output_dir)
    assert len(test) == 9 and len(pref) == 6
    write_preference_pairs(cfg)
    cfg.align = cs.AlignConfig(loss="idpop", epochs=2, batch_size=3, lr=5e-3, beta=0.5)
    align_dir = cs.train_alignment(cfg)
    log = [json.loads(line) for line in (align_dir.parent / "log.jsonl").read_text().splitlines()]
    history = [r for r in log if "margin" in r]
    assert len(history) == 4  # 6 pairs / 3 per step x 2 epochs
    assert history[0]["chosen_shift"] == pytest.approx(0.0, abs=1e-3)  # policy starts at the reference
    assert history[-1]["margin"] > history[0]["margin"]
    cfg.eval = EvalConfig(models=["sft", "align-idpop"], max_new_tokens=3)
    metrics = cs.evaluate(cfg)
    assert set(metrics) == {"sft", "align-idpop", "history-mean", "history-last", "lightgbm"}
    assert metrics["history-mean"]["1-shot"]["non_number"] == 0
    table = pq.read_table(tmp_path / "run" / "eval" / "predictions.parquet")
    assert table.num_rows == 9 and "raw:align-idpop" in table.column_names


@pytest.mark.slow
def test_gemma_left_padding_gives_the_same_answers_and_logprobs():
    """The real backbone: a left-padded batch answers exactly as each prompt alone, and the sampling pass's
    log-probabilities equal a separate forward pass (what the stored reference log-probabilities rely on)."""
    from notellm.models.backbone import load_backbone

    model, tok = load_backbone("gemma-3-270m")
    prompts = ["The popularity score of post 1 is 2.30. The popularity score of post 2 is",
               "帖子1的流行度得分是1.25。帖子2的流行度得分是"]
    batched = generate_answers(model, tok, prompts, 96, max_new_tokens=4, batch_size=2)
    single = [generate_answers(model, tok, [p], 96, max_new_tokens=4)[0] for p in prompts]
    assert [a[0].token_ids for a in batched] == [a[0].token_ids for a in single]
    again = reference_logprobs(model, tok, prompts, [a[0].token_ids for a in batched], 96, 4, batch_size=2)
    assert [a[0].logp for a in batched] == pytest.approx(again, abs=1e-3)


def test_each_placement_of_a_loss_trains_in_its_own_folder():
    from notellm.training.coldstart import AlignConfig, ColdStartConfig

    assert AlignConfig(loss="idpop").stage_name() == "align-idpop"
    assert AlignConfig(loss="idpop", placement="inside").stage_name() == "align-idpop-inside"
    cfg = ColdStartConfig(output_dir="runs/x", align={"loss": "dpop", "placement": "inside"})
    assert cfg.stage("align").output_dir.endswith("align-dpop-inside")
