"""Hashtag and category generation on KuaiRec captions: CSFT-trained NoteLLM against two baselines.

Protocol (kuairec-gen-v1):
- Notes: `read_kuairec(../shared/datasets/kuairec_captions)` (title = cover text, content = caption without
  its #tags, hashtags, category = up to 3 levels).
- Split by video: the sorted note ids permuted by `numpy.random.default_rng(0)`; the first 20% are test
  notes, the rest train. The evaluation subset is the first `--subset` test notes in that permuted order.
- Systems, all on the same subset and prompt (tags never in the input; 3 category levels):
  * prior: the 3 most frequent training tags and the most frequent category path, for every note (floor);
  * k-NN: most frequent tags / category path of the 10 nearest training notes (TF-IDF char 2-4 grams);
  * zero-shot: the untrained backbone (Gemma 3 270M) with the same Note Compression Prompt;
  * CSFT: the model trained by `notellm train configs/csft_kuairec.yaml`.
  LLM categories are decoded constrained to the training notes' category paths (ill-formed 0 by
  construction) and, separately, free (ill-formed rate measured against the same set).
- Metrics (notellm.evaluation.generation): corpus BLEU-4 and ROUGE-1/2/L F on jieba tokens of the tags,
  tag-set P/R/F1 (micro), category accuracy per level and for the whole path, ill-formed rate.

    python benchmarks/generation.py --prepare                      # write the split (seconds)
    nice -n 10 notellm train configs/csft_kuairec.yaml              # ~15 minutes
    nice -n 10 python benchmarks/generation.py --systems csft       # ~13 min on a shared 2-core CPU
    nice -n 10 python benchmarks/generation.py --systems zero-shot  # ~11 min
    python benchmarks/generation.py                                 # every system; saved runs are reused

Generations are saved under runs/kuairec_gen/gen/ and reused while their settings (and the model card) match.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NOTELLM_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "datasets" / "kuairec_captions"
COLUMNS = ["note_id", "title", "content", "hashtags", "category"]


def split_notes(workdir: Path, test_share: float = 0.2, seed: int = 0) -> tuple[Path, Path]:
    """Seeded split by video; writes train.parquet and test.parquet (test rows in permuted order)."""
    import numpy as np

    from notellm.data.readers import read_kuairec
    from notellm.data.schema import write_notes

    table = read_kuairec(DATA)
    ids = sorted(table["note_id"].to_pylist())
    order = np.random.default_rng(seed).permutation(len(ids))
    n_test = int(round(test_share * len(ids)))
    test_ids = [ids[i] for i in order[:n_test]]
    test_set = set(test_ids)
    index = {note_id: i for i, note_id in enumerate(table["note_id"].to_pylist())}
    train = table.take([index[i] for i in ids if i not in test_set])
    test = table.take([index[i] for i in test_ids])
    workdir.mkdir(parents=True, exist_ok=True)
    return write_notes(train, workdir / "train.parquet"), write_notes(test, workdir / "test.parquet")


def rows_of(path: Path) -> list[dict]:
    from notellm.data.schema import read_notes

    return read_notes(path).select(COLUMNS).to_pylist()


class Runs:
    """Generation tables under workdir/gen/, reused when a run with the same settings exists (--fresh redoes)."""

    def __init__(self, workdir: Path, fresh: bool):
        self.dir = workdir / "gen"
        self.fresh = fresh

    def get(self, name: str, settings: dict, make):
        from notellm.inference.generate import read_generations, write_generations

        path = self.dir / f"{name}.parquet"
        if path.exists() and not self.fresh:
            table, meta = read_generations(path)
            if meta.get("bench_settings") == settings:
                return table, meta
        started = time.time()
        rows, meta = make()
        seconds = time.time() - started
        meta = {**meta, "bench_settings": settings, "seconds": seconds, "notes_per_s": len(rows) / seconds}
        write_generations(rows, meta, path)
        return read_generations(path)


def prior_predictions(train: list[dict], notes: list[dict], n_tags: int, levels: int):
    """Every note gets the n most frequent training tags and the most frequent training category path."""
    from collections import Counter

    from notellm.data.text import normalize_tag
    from notellm.inference.generate import GeneratedNote

    tags = Counter(normalize_tag(t) for n in train for t in n["hashtags"] or [])
    paths = Counter(tuple(n["category"][:levels]) for n in train if n["category"])
    top_tags, top_path = [t for t, _ in tags.most_common(n_tags)], list(paths.most_common(1)[0][0])
    rows = [GeneratedNote(n["note_id"], top_tags, top_path, "", "") for n in notes]
    return rows, {"category_decoding": "prior", "tag_strategy": "prior", "category_levels": levels}


def card_stamp(model_spec: str) -> str | None:
    """A fingerprint of a model folder's card (steps, time saved), so a retrained model is never served stale runs."""
    import hashlib

    card = Path(model_spec) / "notellm.json"
    return hashlib.sha256(card.read_bytes()).hexdigest()[:16] if card.exists() else None


def llm_runs(runs: Runs, label: str, model_spec: str, notes: list[dict], categories, args, free: bool,
             beams_tags: bool) -> list[tuple[str, object, dict]]:
    """Tags (list) + constrained category; optionally a free category and beam-strategy tags."""
    from notellm.inference.embed import bf16_supported
    from notellm.inference.generate import GenerationSettings, NoteGenerator, load_generation_model

    loaded = {}

    def model():
        if "m" not in loaded:
            loaded["m"] = load_generation_model(model_spec, bf16=bf16_supported())
            loaded["m"].config.prompt.category_levels = args.levels
        return loaded["m"]

    def make(tasks, **kw):
        def run():
            settings = GenerationSettings(n_tags=args.n_tags, batch_size=args.batch_size,
                                          max_new_tokens=args.max_new_tokens, **kw)
            generator = NoteGenerator(model(), settings, categories)
            done = [0]

            def tick(n):
                done[0] += n
                print(f"  {label} {tasks} {kw}: {done[0]}/{len(notes)}", file=sys.stderr, end="\r")

            out = generator.generate(notes, on_batch=tick, tasks=tasks)
            print(file=sys.stderr)
            return out, {**generator.describe(), "model": model_spec}
        return run

    base = {"model": model_spec, "model_card": card_stamp(model_spec), "subset": len(notes), "n_tags": args.n_tags, "levels": args.levels,
            "max_new_tokens": args.max_new_tokens}
    out = []
    table, meta = runs.get(f"{label}", {**base, "run": "list+constrained"},
                           make(("tags", "category"), constrain_category=True))
    out.append((f"{label}", table, meta))
    if free:
        cat, cmeta = runs.get(f"{label}-free", {**base, "run": "free"},
                              make(("category",), constrain_category=False))
        mixed = table.set_column(table.column_names.index("category"), "category", cat["category"])
        mixed = mixed.set_column(mixed.column_names.index("raw_category"), "raw_category", cat["raw_category"])
        out.append((f"{label}, free category", mixed, {**meta, "category_decoding": "free",
                                                       "notes_per_s": cmeta["notes_per_s"]}))
    if beams_tags:
        tags, tmeta = runs.get(f"{label}-beams", {**base, "run": "beams"},
                               make(("tags",), constrain_category=False, tag_strategy="beams"))
        mixed = table.set_column(table.column_names.index("tags"), "tags", tags["tags"])
        out.append((f"{label}, tags by beams", mixed, {**meta, "tag_strategy": "beams",
                                                       "notes_per_s": tmeta["notes_per_s"]}))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepare", action="store_true", help="only write the split (for notellm train)")
    parser.add_argument("--workdir", default=str(ROOT / "runs" / "kuairec_gen"))
    parser.add_argument("--model", default=str(ROOT / "runs" / "csft_kuairec" / "model"),
                        help="the CSFT-trained model folder (skipped with a message when absent)")
    parser.add_argument("--label", default="csft", help="name of the trained model's rows (and saved runs)")
    parser.add_argument("--backbone", default="gemma-3-270m", help="zero-shot baseline backbone")
    parser.add_argument("--systems", default="prior,knn,zero-shot,csft")
    parser.add_argument("--subset", type=int, default=300, help="test notes evaluated (fixed: the first in the "
                                                                 "seeded permutation)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--n-tags", type=int, default=3)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--no-free", action="store_true", help="skip the free-category runs")
    parser.add_argument("--no-beams", action="store_true", help="skip the beam-strategy tag runs")
    parser.add_argument("--fresh", action="store_true", help="regenerate even when a matching run is saved")
    args = parser.parse_args()

    if not (DATA / "kuairec_caption_category.csv").exists():
        print(f"{DATA} is not present: nothing to benchmark.")
        return 0
    import torch

    torch.set_num_threads(int(os.environ.get("NOTELLM_THREADS", "2")))
    workdir = Path(args.workdir)
    train_path, test_path = split_notes(workdir)
    if args.prepare:
        print(f"wrote {train_path} and {test_path}")
        return 0

    from rich.console import Console

    from notellm.data.schema import read_notes
    from notellm.evaluation.generation import evaluate_generation, report_table
    from notellm.inference.generate import KnnTagger, category_paths

    train, test = rows_of(train_path), rows_of(test_path)
    subset = test[: args.subset]
    categories = category_paths(train, args.levels)
    truth = read_notes(test_path)
    runs = Runs(workdir, args.fresh)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    results: list[tuple[str, object, dict]] = []

    if "knn" in systems:
        knn = KnnTagger(train, k=args.k, n_tags=args.n_tags, levels=args.levels)
        for label, notes in ((f"knn k={args.k}", subset), (f"knn k={args.k}, all test notes", test)):
            settings = {"k": args.k, "n": len(notes), "n_tags": args.n_tags, "levels": args.levels}
            table, meta = runs.get(label.replace(" ", "_").replace(",", "").replace("=", ""), settings,
                                   lambda notes=notes: (knn.generate(notes), knn.describe()))
            results.append((label, table, meta))
    if "prior" in systems:  # sanity floor: the same most frequent training tags and path for every note
        settings = {"n": len(subset), "n_tags": args.n_tags, "levels": args.levels}
        table, meta = runs.get("prior", settings, lambda: prior_predictions(train, subset, args.n_tags, args.levels))
        results.append(("most frequent (prior)", table, meta))
    if "zero-shot" in systems:
        results += llm_runs(runs, "zero-shot", f"zero-shot:{args.backbone}", subset, categories, args,
                            free=not args.no_free, beams_tags=False)
    if "csft" in systems:
        if (Path(args.model) / "notellm.json").exists():
            results += llm_runs(runs, args.label, args.model, subset, categories, args, free=not args.no_free,
                                beams_tags=not args.no_beams)
        else:
            print(f"no trained model at {args.model}: train it with `nice -n 10 notellm train "
                  f"configs/csft_kuairec.yaml` (skipping csft)")

    reports = [evaluate_generation(table, truth, category_set=categories, levels=args.levels, name=label,
                                   decoding=meta) for label, table, meta in results]
    console = Console(width=200)
    console.print(report_table(reports, title=f"kuairec-gen-v1: {len(train)} train notes, subset of "
                                              f"{len(subset)} test notes ({len(test)} in all)"))
    print("\n| system | notes (tagged) | BLEU-4 | ROUGE-1 | ROUGE-2 | ROUGE-L | tag P | tag R | tag F1 | "
          + " | ".join(f"cat L{k}" for k in range(1, args.levels + 1)) + " | cat path | ill-formed | notes/s |")
    print("|---" * (12 + args.levels) + "|")
    for (label, _, meta), r in zip(results, reports):
        m = r.metrics
        cells = [m["bleu4"], m["rouge1"], m["rouge2"], m["rougeL"], m["tag_precision"], m["tag_recall"],
                 m["tag_f1"]] + [m[f"cat_acc_l{k}"] for k in range(1, args.levels + 1)] + \
                [m["cat_acc_path"], m["ill_formed"]]
        speed = meta.get("notes_per_s")
        speed_cell = f"{speed:.2f}" if speed else "-"
        print(f"| {label} | {r.n_notes} ({r.n_tagged}) | " + " | ".join(f"{c:.3f}" for c in cells)
              + f" | {speed_cell} |")
    from notellm.io import write_json

    write_json({"protocol": "kuairec-gen-v1", "subset": len(subset), "train": len(train), "test": len(test),
                "category_set_size": len(categories), "reports": [r.to_dict() for r in reports]},
               workdir / "report.json")
    print(f"\nreport: {workdir / 'report.json'}; category set: {len(categories)} paths of <= {args.levels} levels "
          "from the training notes; BLEU-4 = nltk corpus BLEU, smoothing method1, jieba tokens; notes/s: the "
          "run that made the row (tags + constrained category; category only for 'free category'; tags only "
          "for 'tags by beams'), niced on a shared 2-core CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
