"""Training throughput: `notellm train` (GCL + CSFT) against sentence-transformers' trainer with
MultipleNegativesRankingLoss, same backbone, same LoRA, same batch, same prompts, in one run.

Both train LoRA (r=16 on all attention and MLP projections) over bf16 base weights where the CPU supports it,
on pairs of demo-corpus notes from the same subcategory, for the same number of steps. notellm also computes
the generation (CSFT) loss on answer tokens; sentence-transformers sees the prompt cut right before `[EMB]`.

    python benchmarks/train_speed.py --steps 10 --batch-size 8

Both are timed from the end of their first step to the end of the last (oneDNN builds its bf16 kernels for new
shapes during the first step, which took 12 s here against ~5 s for later ones). The table gives wall-clock
pairs/s and, next to it, the process CPU seconds per step: on a CPU that other jobs share, the wall-clock ratio
also measures how the load changed between the two runs, the CPU-time ratio much less so.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pyarrow as pa
import pyarrow.parquet as pq
import torch

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_pairs(n_notes: int, n_pairs: int, tmp: Path) -> tuple[str, str, list[dict]]:
    from notellm.data.demo import generate_demo
    from notellm.data.schema import write_notes

    notes = generate_demo(n_notes=n_notes, seed=0).notes
    write_notes(notes, tmp / "notes.parquet")
    rows = notes.select(["note_id", "title", "content", "hashtags", "category", "image_paths"]).to_pylist()
    by_cat: dict[str, list[str]] = {}
    for r in rows:
        by_cat.setdefault("/".join(r["category"]), []).append(r["note_id"])
    pairs = [(ids[i], ids[i + 1]) for ids in by_cat.values() for i in range(0, len(ids) - 1, 2)][:n_pairs]
    pq.write_table(pa.table({"note_a": [a for a, _ in pairs], "note_b": [b for _, b in pairs]}), tmp / "pairs.parquet")
    return str(tmp / "notes.parquet"), str(tmp / "pairs.parquet"), rows


def run_notellm(notes: str, pairs: str, args, out: Path, model: dict | None = None, **config) -> dict:
    """Train `args.steps` steps of `args.batch_size` pairs; `model` / `config`: more NoteLLMModel / training
    keys (gpu_check.py sets max_length and grad_cache_chunk)."""
    from notellm.models.notellm import NoteLLMConfig
    from notellm.training.engine import Callback, Engine
    from notellm.training.notellm import NoteLLMRecipe, NoteLLMTrainConfig

    cfg = NoteLLMTrainConfig(notes=notes, train_pairs=pairs, output_dir=str(out), batch_size=args.batch_size,
                             max_steps=args.steps, model=NoteLLMConfig(backbone=args.backbone, **(model or {})),
                             save_every=0, log_every=1000, warmup_ratio=0.0, **config)
    recipe = NoteLLMRecipe(cfg)
    tokens, answers, step_ends, cpu_ends = [], [], [], []
    original_collate = recipe.collate

    def counting_collate(idx, epoch):
        batch = original_collate(idx, epoch)
        tokens.append(int(batch["attention_mask"].sum()))
        answers.append(int((batch["labels"] != -100).sum()))
        return batch

    recipe.collate = counting_collate

    class StepClock(Callback):
        def on_progress(self, completed, description=None):
            if description and description.startswith("train step") and completed > len(step_ends) - 1:
                step_ends.append(time.perf_counter())
                cpu_ends.append(time.process_time())

    engine = Engine(recipe, [StepClock()])
    engine.run()
    step_ends, cpu_ends = step_ends[1:], cpu_ends[1:]  # the first mark is the start of the loop (step 0)
    return {"seconds": step_ends[-1] - step_ends[0], "cpu_seconds": cpu_ends[-1] - cpu_ends[0], "tokens": sum(tokens[1:]), "answer_tokens": sum(answers[1:]),
            "bf16": engine.bf16, "model": recipe.model}


def run_sentence_transformers(rows: list[dict], pairs_path: str, args, out: Path, bf16: bool) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import TrainerCallback

    from notellm.models.backbone import resolve_backbone
    from notellm.models.prompts import EMB_TOKEN, build_prompt

    by_id = {r["note_id"]: r for r in rows}
    text = lambda i: build_prompt(by_id[i]).prefix.split(EMB_TOKEN)[0]
    table = pq.read_table(pairs_path)
    data = Dataset.from_dict({"anchor": [text(i) for i in table["note_a"].to_pylist()],
                              "positive": [text(i) for i in table["note_b"].to_pylist()]})
    transformer = Transformer(resolve_backbone(args.backbone),
                              model_kwargs={"dtype": torch.bfloat16 if bf16 else torch.float32})
    hidden = transformer.get_embedding_dimension() if hasattr(transformer, "get_embedding_dimension") else 640
    model = SentenceTransformer(modules=[transformer, Pooling(hidden, "lasttoken"), Normalize()], device="cpu")
    model.add_adapter(LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=LORA_TARGETS))
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    train_args = SentenceTransformerTrainingArguments(
        output_dir=str(out), per_device_train_batch_size=args.batch_size, max_steps=args.steps,
        learning_rate=1e-4, warmup_steps=0, bf16=bf16, use_cpu=True, logging_steps=1000, save_strategy="no",
        report_to="none", dataloader_num_workers=0, seed=0)
    step_ends: list[float] = []
    cpu_ends: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            step_ends.append(time.perf_counter())
            cpu_ends.append(time.process_time())

    trainer = SentenceTransformerTrainer(model=model, args=train_args, train_dataset=data,
                                         loss=MultipleNegativesRankingLoss(model), callbacks=[StepClock()])
    trainer.train()
    return {"seconds": step_ends[-1] - step_ends[0], "cpu_seconds": cpu_ends[-1] - cpu_ends[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="steps per trainer; the first (warm-up) is not timed")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--backbone", default="gemma-3-270m")
    parser.add_argument("--lora-forward", choices=["fused", "peft"], default="fused",
                        help="notellm's adapters: the fused sum (models.lora.fused_lora_forward, the default) or "
                             "peft's own forward, to measure what the fusion alone is worth")
    parser.add_argument("--packing", choices=["on", "off"], default="on",
                        help="notellm's CPU batches padding-free (models.packing, the default) or padded, to measure "
                             "what packing alone is worth")
    args = parser.parse_args()
    if args.packing == "off":
        import notellm.models.packing as packing

        packing.enabled = False
    if args.lora_forward == "peft":
        import notellm.models.lora as lora

        lora.use_fused_forward = lambda model: 0  # apply_lora looks the name up when it runs
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        notes, pairs, rows = make_pairs(2000, args.steps * args.batch_size, tmp)
        ours = run_notellm(notes, pairs, args, tmp / "notellm")
        del ours["model"]
        st = run_sentence_transformers(rows, pairs, args, tmp / "st", ours["bf16"])
    n_pairs = (args.steps - 1) * args.batch_size  # timed from the end of step 1: both warm up in step 1
    from notellm.device import machine_summary

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{machine_summary()}; backbone "
          f"{args.backbone}; LoRA r=16; bf16={ours['bf16']}; {args.steps} steps x {args.batch_size} pairs, "
          f"steps 2-{args.steps} timed; notellm LoRA forward {args.lora_forward}, packing {args.packing}; load average {load:.1f} at the end")
    print(f"{'trainer':52s} {'pairs/s':>8s} {'tokens/s':>9s} {'ratio':>6s} {'CPU-s/step':>10s} {'CPU ratio':>9s}")
    steps = args.steps - 1
    print(f"{'sentence-transformers + MNRL (contrastive only)':52s} {n_pairs / st['seconds']:8.2f} {'':>9s} "
          f"{1.0:6.2f} {st['cpu_seconds'] / steps:10.1f} {1.0:9.2f}")
    print(f"{'notellm GCL + CSFT (contrastive + generation)':52s} {n_pairs / ours['seconds']:8.2f} "
          f"{ours['tokens'] / ours['seconds']:9.0f} {st['seconds'] / ours['seconds']:6.2f} "
          f"{ours['cpu_seconds'] / steps:10.1f} {st['cpu_seconds'] / ours['cpu_seconds']:9.2f}")
    print(json.dumps({"notellm_pairs_per_s": n_pairs / ours["seconds"], "st_pairs_per_s": n_pairs / st["seconds"],
                      "ratio": st["seconds"] / ours["seconds"], "cpu_ratio": st["cpu_seconds"] / ours["cpu_seconds"],
                      "load_average": load}))

if __name__ == "__main__":
    main()
