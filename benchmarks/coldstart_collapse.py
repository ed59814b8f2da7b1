"""Why IDPOP answers one constant on Hacker News: the score distribution, the preference pairs that an SFT model
without prompt signal samples, and which answers each preference loss pushes up. No model is loaded (seconds).

1. Constant answers: the MAE of answering one number on every test question (the targets are the same for
   k = 1, 2, 3: every k asks about the same post n), against the recorded SFT / DPO / IDPOP rows.
2. Simulated preference pairs: each preference prompt is sampled `align.n_samples` times from the SFT training
   answers' distribution (what an SFT model with SRC ~ 0 on Hacker News learns: the marginal), the pair is
   picked by `training.coldstart.pick_pair`, and `preference_stats` reports margins, one-digit pairs, the most
   common chosen answer and IDPOP's mu_j (eq. 13-14, the config's lambda / alpha / delta). Repeated over
   `--repeats` seeds. The share of prompts skipped for equal errors checks the assumption against the run.
3. First-step push: at policy == reference, the gradient of each loss on log pi(y|x) is
       DPO:            +beta/2 for a chosen answer, -beta/2 for a rejected one   (sigma(0) = 1/2)
       DPOP / IDPOP:   chosen +beta/2 + w_j (outside the sigmoid, eq. 12; w_j = lambda or mu_j)
       ... inside:     chosen +beta/2 * (1 + w_j), rejected -beta/2              (Smaug's DPO-Positive)
   (the hinge max(0, log pi_ref - log pi_theta) passes its gradient at 0, and DPO lowers the chosen answer's
   probability after the first steps, so the penalty stays active). Summed per answer text over the pairs and
   divided by the pair count: the answer with the largest push is where the aligned model's greedy answer goes.

    .venv/bin/python benchmarks/coldstart_collapse.py            # needs ../shared (Hacker News)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NOTELLM_SHARED", ROOT.parent / "shared"))
HN_CSV = SHARED / "datasets" / "hackernews_2016_sample" / "hacker_news.csv"


def constant_maes(targets: list[float], answers: list[float]) -> dict[str, float]:
    import numpy as np

    t = np.asarray(targets)
    return {f"{a:.2f}": float(np.abs(t - a).mean()) for a in answers}


def simulate_pairs(prompts, answers: list[str], n_samples: int, seed: int):
    """Rows as build_preference_data writes them, with answers drawn from `answers` (the SFT marginal);
    token ids are the answers' characters (Gemma writes one token per digit)."""
    import pyarrow as pa

    from notellm.training.coldstart import pick_pair

    rng = random.Random(seed)
    rows, skipped = [], Counter()
    for e in prompts:
        samples = [rng.choice(answers) for _ in range(n_samples)]
        picked = pick_pair(samples, e.target)
        if isinstance(picked, str):
            skipped[picked] += 1
            continue
        c, r, err_c, err_r = picked
        rows.append(dict(chosen=samples[c], rejected=samples[r], chosen_ids=[ord(x) for x in samples[c]],
                         rejected_ids=[ord(x) for x in samples[r]], err_chosen=err_c, err_rejected=err_r))
    return pa.Table.from_pylist(rows), skipped


def first_step_push(table, mu: list[float], beta: float, lam: float) -> dict[str, dict[str, float]]:
    """{loss: {answer: summed gradient coefficient on log pi(answer|x) / pairs}} at policy == reference."""
    push: dict[str, dict[str, float]] = {k: defaultdict(float) for k in
                                         ("chosen", "rejected", "dpo", "dpop", "idpop", "idpop_inside")}
    chosen = [c.strip() for c in table.column("chosen").to_pylist()]
    rejected = [r.strip() for r in table.column("rejected").to_pylist()]
    n = len(chosen)
    for c, r, m in zip(chosen, rejected, mu):
        push["chosen"][c] += 1 / n
        push["rejected"][r] += 1 / n
        for kind, extra_c, inside in (("dpo", 0.0, False), ("dpop", lam, False), ("idpop", m, False),
                                      ("idpop_inside", m, True)):
            push[kind][c] += (beta / 2 * (1 + extra_c) if inside else beta / 2 + extra_c) / n
            push[kind][r] -= beta / 2 / n
    return {k: dict(v) for k, v in push.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--out", default=str(ROOT / "runs" / "coldstart_collapse.json"))
    ap.add_argument("--override", action="append", default=[], help="config override key=value (repeatable)")
    args = ap.parse_args()
    if not HN_CSV.is_file():
        print(f"{HN_CSV} is absent: nothing to analyse")
        return 0
    import numpy as np

    from notellm.config import load_config
    from notellm.data.coldstart import load_notes, make_instruction_set
    from notellm.training.coldstart import ColdStartConfig, pair_weights, preference_stats

    cfg = load_config(ColdStartConfig, ROOT / "configs" / "coldstart_hackernews.yaml",
                      [f"data.path={HN_CSV}"] + args.override)
    table, source = load_notes(cfg.data)
    data = make_instruction_set(table, cfg.data, source)
    train_answers = [e.answer.strip() for e in data.train]
    counts = Counter(train_answers)
    test_targets = [e.target for e in data.test]
    print(f"data: {data.summary['main_users']} main users, {len(data.train)} train / {len(data.test)} test "
          f"questions, {len(data.preference)} preference prompts")
    print("SFT train answers (most common): " + ", ".join(f"{a} {n / len(train_answers):.0%}"
                                                         for a, n in counts.most_common(6)))
    print(f"test targets: median {np.median(test_targets):.2f}, mean {np.mean(test_targets):.2f}, "
          f"share 0.69 (one point) {np.mean(np.isclose(test_targets, np.log(2), atol=5e-3)):.0%}")
    consts = constant_maes(test_targets, [float(a) for a, _ in counts.most_common(4)])
    print("MAE of one constant answer on every test question: "
          + ", ".join(f"{a}: {m:.3f}" for a, m in consts.items()))

    acfg = cfg.align
    stats, skipped, pushes = [], Counter(), []
    for seed in range(args.repeats):
        pairs, skip = simulate_pairs(data.preference, train_answers, acfg.n_samples, seed)
        skipped.update(skip)
        stats.append(preference_stats(pairs, acfg))
        pushes.append(first_step_push(pairs, pair_weights(pairs, acfg), acfg.beta, acfg.lam))
    mean = lambda key: float(np.mean([s[key] for s in stats]))  # noqa: E731
    summary = dict(
        prompts=len(data.preference), pairs=mean("pairs"),
        skipped_equal_error_share=skipped["equal_error"] / (args.repeats * len(data.preference)),
        margin_median=float(np.mean([s["margin_quantiles_0_10_50_90_100"][2] for s in stats])),
        margin_below_0_1=mean("margin_below_0_1"), one_token_apart=mean("one_token_apart"),
        top_chosen=Counter(s["top_chosen"] for s in stats).most_common(1)[0][0],
        top_chosen_share=mean("top_chosen_share"), top_rejected_share=mean("top_rejected_share"),
        mu_median=float(np.mean([s["mu_quantiles_0_10_50_90_100"][2] for s in stats])),
        mu_p10_p90=[float(np.mean([s["mu_quantiles_0_10_50_90_100"][i] for s in stats])) for i in (1, 3)],
        mu_over_beta_median=mean("mu_over_beta_median"), beta=acfg.beta, lam=acfg.lam, alpha=acfg.alpha,
        delta=acfg.delta,
    )
    print("simulated preference pairs (mean over %d seeds): %s" % (args.repeats, json.dumps(summary)))
    answers = [a for a, _ in counts.most_common(6)]
    print("\nfirst-step push on log pi(answer|x), summed over pairs / pairs (mean over seeds):")
    print("| answer | share of SFT answers | chosen in | rejected in | "
          + " | ".join(("DPO", "DPOP", "IDPOP", "IDPOP inside")) + " |")
    print("|---|---|---|---|---|---|---|---|")
    push_mean = {}
    kinds = ("chosen", "rejected", "dpo", "dpop", "idpop", "idpop_inside")
    for kind in kinds:
        push_mean[kind] = {a: float(np.mean([p[kind].get(a, 0.0) for p in pushes])) for a in answers}
    for a in answers:
        print(f"| {a} | {counts[a] / len(train_answers):.0%} | "
              + " | ".join(f"{push_mean[k][a]:.0%}" for k in kinds[:2]) + " | "
              + " | ".join(f"{push_mean[k][a]:+.4f}" for k in kinds[2:]) + " |")
    top = {k: max(v, key=v.get) for k, v in push_mean.items() if k in kinds[2:]}
    print("largest push: " + ", ".join(f"{k} -> {a}" for k, a in top.items()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(dict(constant_mae=consts, pairs=summary, push=push_mean,
                                              train_answer_shares={a: counts[a] / len(train_answers) for a in answers}),
                                         indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
