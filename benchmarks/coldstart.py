"""Cold-start popularity (MultiSmpLLM): SFT vs DPO vs IDPOP vs LightGBM, 1/2/3-shot MAE and Spearman (SRC).

Datasets: Hacker News 2016 sample (English, score log(points+1), ../shared/datasets/hackernews_2016_sample)
and the generated demo corpus (Chinese, score WLAES). Authors with >= 5 posts; `main` users give the SFT
train questions (post n-1) and the test questions (post n); a disjoint `preference` sample gives the
alignment prompts. One model is trained on 1-, 2- and 3-shot questions together; metrics are per k.
LightGBM (per k, L1 objective) uses per-user history features and is trained on the same labelled questions
the LLM pipeline saw (main users' train questions + preference users' questions).

    OMP_WAIT_POLICY=PASSIVE nice .venv/bin/python benchmarks/coldstart.py --datasets hackernews,demo \
        --losses dpo,dpop,idpop --align-epochs 3 --align-minutes 12

Prints the machine (CPU model, load average), the preference pairs' statistics (error margins, one-token-apart
pairs, the most common chosen answer, IDPOP's mu), per model the non-number rate and how many distinct numbers
it answered, and writes OUT/<dataset>/logprobs.png: the chosen / rejected answers' log-probability shift
against the SFT reference over the alignment steps of every loss.

Exits 0 with a message when ../shared is absent (the Hacker News part needs it).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NOTELLM_SHARED", ROOT.parent / "shared"))
CONFIGS = {"hackernews": ROOT / "configs" / "coldstart_hackernews.yaml", "demo": ROOT / "configs" / "coldstart_demo.yaml"}
MODEL_ROWS = {"sft": "SFT (LoRA)", "align-dpo": "SFT + DPO", "align-dpop": "SFT + DPOP", "align-idpop": "SFT + IDPOP",
              "align-idpop-inside": "SFT + IDPOP, penalty inside the sigmoid",
              "lightgbm": "LightGBM (history feats)", "history-mean": "mean of k past scores",
              "history-last": "last past score"}


def run_dataset(name: str, args: argparse.Namespace) -> dict:
    from notellm.config import load_config, save_config
    from notellm.training.coldstart import ColdStartConfig, evaluate, train_alignment, train_sft

    overrides = [f"output_dir={args.out}/{name}", f"threads={args.threads}", "log_every=1"]
    for key, value in (("data.main_users", args.main_users), ("data.preference_users", args.preference_users),
                       ("epochs", args.sft_epochs), ("align.epochs", args.align_epochs),
                       ("align.time_budget_min", args.align_minutes)):
        if value is not None:  # otherwise the YAML's value
            overrides.append(f"{key}={value}")
    if name == "hackernews":
        overrides.append(f"data.path={SHARED / 'datasets' / 'hackernews_2016_sample' / 'hacker_news.csv'}")
    cfg = load_config(ColdStartConfig, CONFIGS[name], overrides + list(args.override))
    save_config(cfg, Path(cfg.output_dir) / "config.yaml")
    log = (lambda m: print(f"  [{name}] {m}", file=sys.stderr, flush=True)) if args.verbose else (lambda m: None)
    out = Path(cfg.output_dir)
    done = lambda stage: args.resume and (out / stage / "model" / "notellm.json").exists()  # noqa: E731
    times = {}
    t = time.time()
    if not done("sft"):
        train_sft(cfg)
        times["sft"] = time.time() - t
    for loss in args.losses:  # "idpop-inside": IDPOP with the penalty inside the sigmoid
        cfg.align.loss, _, where = loss.partition("-")
        if where not in ("", "inside"):
            raise SystemExit(f"--losses: {loss!r}: a loss, or a loss with -inside (e.g. idpop-inside)")
        cfg.align.placement = where or "outside"
        t = time.time()
        if not done(f"align-{loss}"):
            train_alignment(cfg)  # the first call also samples the preference pairs (cached after)
            times[f"align-{loss}"] = time.time() - t
        gc.collect()
    t = time.time()
    metrics = evaluate(cfg, ["sft"] + [f"align-{loss}" for loss in args.losses], log=log)
    times["eval"] = time.time() - t
    plot = plot_alignment(out, args.losses)
    sizes = json.loads((out / "users.json").read_text())
    pref = json.loads((out / "preference.json").read_text())
    steps = {loss: _last_step(out / f"align-{loss}") for loss in args.losses}
    return dict(metrics=metrics, times=times, sizes=sizes, preference=pref, shots=cfg.data.instructions.shots,
                align_steps=steps, plot=str(plot) if plot else None)


def _last_step(run: Path) -> int | None:
    from notellm.evaluation.plots import read_log, series

    try:
        return max(series(read_log(run)).get("loss", {0: 0}))
    except Exception:  # noqa: BLE001 (a finished stage kept by --resume from an older run may lack its log)
        return None


def plot_alignment(out: Path, losses: list[str]) -> Path | None:
    """chosen / rejected log-probability shift and margin of each alignment run, one picture."""
    from notellm.evaluation.plots import plot_runs

    runs = {loss.upper(): out / f"align-{loss}" for loss in losses if (out / f"align-{loss}" / "log.jsonl").is_file()}
    return plot_runs(runs, out / "logprobs.png") if runs else None


def print_table(name: str, res: dict) -> None:
    shots = res["shots"]
    s, p = res["sizes"], res["preference"]
    print(f"\n## {name}: {s['eligible_users']} authors with >= 5 posts; {s['main_users']} main users "
          f"({s['train_questions']} train / {s['test_questions']} test questions), {s['preference_users']} "
          f"preference users ({p['prompts']} prompts -> {p['pairs']} pairs; skipped {p['skipped']})")
    if "stats" in p:
        print("preference pairs: " + json.dumps(p["stats"]))
    print("alignment steps: " + json.dumps(res.get("align_steps", {})) + f"; log-probability plot: {res.get('plot')}")
    head = ("| model | " + " | ".join(f"{k}-shot MAE | {k}-shot SRC | {k}-shot non-num" for k in shots)
            + " | all MAE | all SRC | all MAE - SFT [95% CI] | distinct answers | top answer (share) |")
    print(head)
    print("|" + "---|" * (1 + 3 * len(shots) + 5))
    for key, per in res["metrics"].items():
        cells = []
        for k in shots:
            m = per[f"{k}-shot"]
            cells += [f"{m['mae']:.3f}", f"{m['src']:.3f}", f"{m['non_number_rate']:.1%}"]
        diff = per["all"].get("mae_filled_minus_sft")
        cells += [f"{per['all']['mae']:.3f}", f"{per['all']['src']:.3f}",
                  f"{diff[0]:+.3f} [{diff[1]:+.3f}, {diff[2]:+.3f}]" if diff else ""]
        a = per["all"]
        cells += [str(a.get("distinct_answers", "")),
                  f"{a['top_answer']:.2f} ({a['top_answer_share']:.0%})" if "top_answer" in a else ""]
        print(f"| {MODEL_ROWS.get(key, key)} | " + " | ".join(cells) + " |")
    print("stage seconds (this invocation): " + ", ".join(f"{k} {v:.0f}" for k, v in res["times"].items())
          + f", total {sum(res['times'].values()):.0f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="hackernews,demo")
    ap.add_argument("--losses", default="dpo,dpop,idpop", help="alignment runs, e.g. dpo,dpop,idpop,idpop-inside")
    ap.add_argument("--main-users", type=int, default=None, help="default: the config's data.main_users")
    ap.add_argument("--preference-users", type=int, default=None)
    ap.add_argument("--sft-epochs", type=float, default=None)
    ap.add_argument("--align-epochs", type=float, default=None)
    ap.add_argument("--align-minutes", type=float, default=None, help="time budget of each alignment run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_coldstart"))
    ap.add_argument("--override", action="append", default=[], help="extra config override key=value (repeatable)")
    ap.add_argument("--resume", action="store_true", help="keep finished stages (sft/, align-<loss>/) of --out")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    args.losses = [x.strip() for x in args.losses.split(",") if x.strip()]
    names = [x.strip() for x in args.datasets.split(",") if x.strip()]
    if "hackernews" in names and not (SHARED / "datasets" / "hackernews_2016_sample").is_dir():
        print(f"{SHARED}/datasets/hackernews_2016_sample is absent: skipping the Hacker News benchmark")
        names.remove("hackernews")
    if not names:
        return 0
    from notellm.device import machine_summary

    print(f"machine: {machine_summary()}; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    results = {}
    for name in names:
        try:
            results[name] = run_dataset(name, args)
        except ImportError as exc:  # a reader or the demo generator that is not there
            print(f"{name}: skipped, cannot import what it needs ({exc})")
            continue
        print_table(name, results[name])
        print(f"load average after {name}: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
