"""One prepared GPU check (issue 22): everything a short GPU loan should measure, in one command.

    python benchmarks/gpu_check.py                 # on one GPU: about 5 minutes (target < 8)
    python benchmarks/gpu_check.py --dry-run       # on a CPU with tiny models: the same code paths, ~1-2 min

It runs, prints and writes (`--out`, default runs/gpu_check: gpu_check.json + gpu_check.md):

1. fsdp:       `notellm train` under `accelerate launch --config_file configs/accelerate/fsdp.yaml` (1 process)
               on a random Qwen3-0.6B-shaped model (`qwen3-0.6b-shape`, built from its config: no download),
               demo-corpus pairs: the loss decreases, and a run stopped at a checkpoint and started again logs
               the same losses as one that never stopped. accelerate allows FSDP only on GPUs, so a dry run
               launches the same command without the FSDP config.
2. embed:      notes/s of that model and of Gemma 3 270M at 128 tokens a note, bf16 weights, and the share of
               the GPU's bf16 peak they reach (model FLOPs = 2 x matmul parameters x tokens; the attention
               scores and the unused LM head are not counted).
3. train:      NoteLLM GCL + CSFT training on the 0.6B shape (LoRA r 16, 128 tokens): pairs/s, tokens/s and % of
               peak, with and without GradCache (model FLOPs = 4 x matmul parameters x tokens for LoRA over
               frozen weights: forward + the activation gradients; GradCache's extra forward is not counted,
               so its overhead shows as a lower share).
4. trainers:   `notellm popularity train` and `notellm coldstart sft` a few steps each on the demo corpus,
               through the shared engine, on the GPU.

A dry run uses `tiny-qwen3` in place of both real-size models; its numbers only show that the code runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

# dense bf16 tensor-core peak (TFLOP/s, without sparsity) by device-name fragment; the first match wins
PEAK_BF16_TFLOPS = [
    ("H200", 989.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("H800", 989.0),
    ("GH200", 989.0), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0),
    ("L4", 121.0), ("A10G", 125.0), ("A10", 125.0), ("A6000", 155.0), ("RTX 4090", 165.0), ("RTX 3090", 71.0),
]
SECTIONS = ("fsdp", "embed", "train", "trainers")


def peak_tflops(device_name: str) -> float | None:
    for fragment, tflops in PEAK_BF16_TFLOPS:
        if fragment.lower() in device_name.lower():
            return tflops
    return None


def matmul_parameters(lm) -> int:
    """Weights that multiply every token in a forward pass without the LM head: the decoder's 2-D weights
    except the token embeddings (LoRA adapters excluded)."""
    decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else lm
    return sum(p.numel() for name, p in decoder.named_parameters()
               if p.dim() == 2 and "embed" not in name and "lora_" not in name)


def share_of_peak(flops_per_s: float, peak: float | None) -> float | None:
    return None if peak is None else 100.0 * flops_per_s / (peak * 1e12)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Plan(SimpleNamespace):
    """Sizes for a real run or a dry run."""


def make_plan(dry_run: bool) -> Plan:
    if dry_run:
        return Plan(big="tiny-qwen3", embed_models=["tiny-qwen3"], small="tiny-qwen3", embed_batch=4,
                    embed_iters=2, train_batch=4, train_steps=3, grad_cache_chunk=4, fsdp_pairs=16, fsdp_batch=4,
                    trainer_steps=2, notes=400)
    return Plan(big="qwen3-0.6b-shape", embed_models=["qwen3-0.6b-shape", "gemma-3-270m"], small="gemma-3-270m",
                embed_batch=256, embed_iters=10, train_batch=32, train_steps=6, grad_cache_chunk=16,
                fsdp_pairs=64, fsdp_batch=16, trainer_steps=4, notes=2000)


# ---- 1. FSDP: train, checkpoint, resume ------------------------------------------------------------------
def logged_losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r and "event" not in r}


def notellm_cli(config: Path, overrides: list[str], fsdp: bool) -> list[str]:
    if fsdp:
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(ROOT / "configs/accelerate/fsdp.yaml"), "--num_processes", "1", "-m", "notellm.cli", "train",
                str(config), *overrides]
    return [sys.executable, "-m", "notellm", "train", str(config), *overrides]


def run_command(cmd: list[str], log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        done = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    if done.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        raise RuntimeError(f"{' '.join(cmd[:6])} ... exited {done.returncode}:\n" + "\n".join(tail))
    return time.perf_counter() - start


def check_fsdp(plan: Plan, data: dict[str, str], work: Path, fsdp: bool) -> dict[str, Any]:
    """A straight run of 3 epochs, and the same run stopped after its first checkpoint and started again."""
    import yaml

    steps_per_epoch = plan.fsdp_pairs // plan.fsdp_batch
    total, half = 3 * steps_per_epoch, (3 * steps_per_epoch) // 2
    config = {"notes": data["notes"], "train_pairs": data["pairs"], "batch_size": plan.fsdp_batch,
              "model": {"backbone": plan.big, "dim": 64, "max_length": 128}, "epochs": 3, "lr": 1e-3,
              "warmup_ratio": 0.0, "log_every": 1, "save_every": half, "bf16": "auto",
              # a constant rate: the first half-run stops early through max_steps, and a decaying schedule
              # would then differ from the straight run's before the checkpoint
              "scheduler": "constant"}
    path = work / "fsdp.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    straight, resumed = work / "fsdp_straight", work / "fsdp_resumed"
    seconds = run_command(notellm_cli(path, [f"output_dir={straight}", f"max_steps={total}"], fsdp),
                          work / "fsdp_straight.log")
    run_command(notellm_cli(path, [f"output_dir={resumed}", f"max_steps={half}"], fsdp), work / "fsdp_first.log")
    run_command(notellm_cli(path, [f"output_dir={resumed}", f"max_steps={total}"], fsdp), work / "fsdp_second.log")
    a, b = logged_losses(straight), logged_losses(resumed)
    first, last = [a[s] for s in range(1, steps_per_epoch + 1)], [a[s] for s in range(total - steps_per_epoch + 1,
                                                                                       total + 1)]
    resume_gap = max(abs(a[s] - b[s]) for s in range(half + 1, total + 1))
    events = [json.loads(line).get("event") for line in (resumed / "log.jsonl").read_text().splitlines()]
    return {"fsdp": fsdp, "model": plan.big, "steps": total, "seconds": round(seconds, 1),
            "loss_first_epoch": sum(first) / len(first), "loss_last_epoch": sum(last) / len(last),
            "loss_decreases": sum(last) < sum(first), "resumed": "resumed" in events,
            "resume_max_loss_gap": resume_gap, "resume_matches": "resumed" in events and resume_gap < 1e-2,
            "model_saved": (straight / "model" / "notellm.json").exists()}


# ---- 2. embedding throughput -----------------------------------------------------------------------------
@torch.inference_mode()
def embed_throughput(backbone: str, device: str, batch: int, iters: int, tokens: int = 128) -> dict[str, Any]:
    from notellm.models.notellm import NoteLLMConfig, build_notellm

    bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
    model = build_notellm(NoteLLMConfig(backbone=backbone, dim=0), dtype="bfloat16" if bf16 else "float32")
    model.to(device).eval()
    vocab = model.lm.get_input_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, min(vocab, 100_000), (batch, tokens), generator=generator).to(device)
    mask = torch.ones_like(ids)
    emb_pos = torch.full((batch,), tokens - 1, dtype=torch.long, device=device)
    for _ in range(2):  # warm-up: kernels, allocator
        model(ids, mask, emb_pos)
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        model(ids, mask, emb_pos)
    sync(device)
    seconds = time.perf_counter() - start
    params = matmul_parameters(model.lm)
    notes_per_s = batch * iters / seconds
    del model
    return {"model": backbone, "bf16": bf16, "tokens_per_note": tokens, "batch": batch, "notes_per_s": notes_per_s,
            "matmul_params": params, "model_tflops": 2 * params * tokens * notes_per_s / 1e12}


# ---- 3. training throughput ------------------------------------------------------------------------------
def train_throughput(plan: Plan, data: dict[str, str], work: Path, grad_cache: bool) -> dict[str, Any]:
    from train_speed import run_notellm

    args = SimpleNamespace(batch_size=plan.train_batch, steps=plan.train_steps, backbone=plan.big)
    extra = {"grad_cache_chunk": plan.grad_cache_chunk} if grad_cache else {}
    out = run_notellm(data["notes"], data["pairs"], args, work / f"train_gc{int(grad_cache)}",
                      model={"max_length": 128}, **extra)
    params = matmul_parameters(out.pop("model").lm)
    timed_pairs = (plan.train_steps - 1) * plan.train_batch
    tokens_per_s = out["tokens"] / out["seconds"]
    return {"model": plan.big, "grad_cache": grad_cache, "chunk": plan.grad_cache_chunk if grad_cache else 0,
            "batch_pairs": plan.train_batch, "bf16": out["bf16"], "pairs_per_s": timed_pairs / out["seconds"],
            "tokens_per_s": tokens_per_s, "matmul_params": params, "model_tflops": 4 * params * tokens_per_s / 1e12}


# ---- 4. popularity and cold start on the shared engine ---------------------------------------------------
def check_trainers(plan: Plan, work: Path) -> list[dict[str, Any]]:
    import yaml

    shared = {"max_steps": plan.trainer_steps, "log_every": 1, "save_every": 0, "bf16": "auto",
              "lora": {"r": 8, "alpha": 16}}
    popularity = {**shared, "output_dir": str(work / "popularity"), "batch_size": 8, "probe_max_notes": 64,
                  "data": {"source": "demo", "demo_notes": 400},
                  "split": {"kind": "random", "test_fraction": 0.2}, "model": {"backbone": plan.small,
                                                                            "max_length": 96}}
    coldstart = {**shared, "output_dir": str(work / "coldstart"), "batch_size": 4,
                 "data": {"source": "demo", "demo_notes": 600, "main_users": 16, "preference_users": 8},
                 "model": {"backbone": plan.small, "max_length": 256}}
    results = []
    for name, config, cmd, run_dir in (
            ("popularity", popularity, ["popularity", "train"], work / "popularity"),
            ("coldstart sft", coldstart, ["coldstart", "sft"], work / "coldstart" / "sft")):
        path = work / f"{name.split()[0]}.yaml"
        path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
        seconds = run_command([sys.executable, "-m", "notellm", *cmd, str(path)], work / f"{name.split()[0]}.log")
        losses = logged_losses(run_dir)
        records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
        device = next((r.get("device") for r in records if r.get("event") == "start" and "device" in r), None)
        results.append({"trainer": name, "model": plan.small, "steps": len(losses), "device": device,
                        "seconds": round(seconds, 1), "finite": all(math.isfinite(v) for v in losses.values()),
                        "last_loss": losses[max(losses)] if losses else None})
    return results


# ---- the report ------------------------------------------------------------------------------------------
def demo_pairs(work: Path, n_notes: int, n_pairs: int) -> dict[str, str]:
    from train_speed import make_pairs

    notes, pairs, _ = make_pairs(n_notes, n_pairs, work)
    return {"notes": notes, "pairs": pairs}


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    peak = report["peak_bf16_tflops"]
    lines = [f"Device: {report['device_name']} (bf16 peak {fmt(peak, 0)} TFLOP/s); {report['machine']}; "
             f"{'DRY RUN (tiny models, numbers only show the code runs)' if report['dry_run'] else 'real sizes'}",
             "", "| check | model | result | % of bf16 peak |", "|---|---|---|---|"]
    if "fsdp" in report:
        f = report["fsdp"]
        lines.append(f"| train {'under FSDP' if f['fsdp'] else '(no FSDP: dry run)'}, {f['steps']} steps | "
                     f"{f['model']} | loss {f['loss_first_epoch']:.3f} -> {f['loss_last_epoch']:.3f} "
                     f"({'decreases' if f['loss_decreases'] else 'DOES NOT DECREASE'}); resume "
                     f"{'matches' if f['resume_matches'] else 'DIFFERS'} (max gap {f['resume_max_loss_gap']:.2e}) | |")
    for e in report.get("embed", []):
        lines.append(f"| embed, {e['tokens_per_note']} tokens, batch {e['batch']}, bf16={e['bf16']} | {e['model']} | "
                     f"{e['notes_per_s']:.1f} notes/s ({e['model_tflops']:.2f} TFLOP/s) | "
                     f"{fmt(share_of_peak(e['model_tflops'] * 1e12, peak))} |")
    for t in report.get("train", []):
        lines.append(f"| train GCL + CSFT, {t['batch_pairs']} pairs, "
                     f"{'GradCache chunk ' + str(t['chunk']) if t['grad_cache'] else 'no GradCache'} | {t['model']} | "
                     f"{t['pairs_per_s']:.2f} pairs/s, {t['tokens_per_s']:.0f} tokens/s | "
                     f"{fmt(share_of_peak(t['model_tflops'] * 1e12, peak))} |")
    for r in report.get("trainers", []):
        lines.append(f"| {r['trainer']} train, {r['steps']} steps on {r['device']} | {r['model']} | "
                     f"{'finite losses' if r['finite'] else 'NON-FINITE LOSS'}, last {fmt(r['last_loss'], 3)}, "
                     f"{r['seconds']} s | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny models: check the script itself")
    parser.add_argument("--out", default="runs/gpu_check")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {SECTIONS}")
    gpu = torch.cuda.is_available()
    if not gpu and not args.dry_run:
        parser.error("no GPU is visible: run with --dry-run on a CPU")
    from notellm.device import machine_summary

    plan, device = make_plan(args.dry_run), "cuda" if gpu else "cpu"
    name = torch.cuda.get_device_name(0) if gpu else "CPU"
    report: dict[str, Any] = {"dry_run": args.dry_run, "device_name": name, "machine": machine_summary(),
                              "peak_bf16_tflops": peak_tflops(name) if gpu else None, "sections": only}
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = demo_pairs(work, plan.notes, max(plan.fsdp_pairs, plan.train_batch * plan.train_steps))
        steps = {"fsdp": lambda: check_fsdp(plan, data, work, fsdp=gpu),
                 "embed": lambda: [embed_throughput(m, device, plan.embed_batch, plan.embed_iters)
                                   for m in plan.embed_models],
                 "train": lambda: [train_throughput(plan, data, work, grad_cache=g) for g in (False, True)],
                 "trainers": lambda: check_trainers(plan, work)}
        for section in only:
            t0 = time.perf_counter()
            report[section] = steps[section]()
            report.setdefault("seconds", {})[section] = round(time.perf_counter() - t0, 1)
            print(f"[gpu_check] {section}: {report['seconds'][section]} s", flush=True)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    table = markdown(report)
    (out / "gpu_check.md").write_text(table, encoding="utf-8")
    print("\n" + table)
    return report


if __name__ == "__main__":
    main()
