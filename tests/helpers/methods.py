"""Every training method as a command on tiny data: for the engine's kill-and-resume and multi-process tests.

`setup(name, tmp, **overrides)` writes the data and a config and returns the `notellm ...` arguments of the
method's training command and the model folder it writes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml

from helpers.toy import write_toy
from notellm.data.schema import empty_note, notes_to_table, write_notes

METHODS = ("notellm", "notellm2", "popularity", "popularity-head", "sft", "align")


@dataclass
class Command:
    args: list[str]           # after `notellm`
    model_dir: Path
    output_dir: Path


def _write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


SHARED = {"bf16": "false", "log_every": 1, "epochs": 10, "warmup_ratio": 0.0, "lr": 2e-3, "lora": {"r": 4, "alpha": 8, "dropout": 0.1}}


def posts(n_users: int = 6, per_user: int = 6) -> list[dict]:
    """Authors' posts over time with counts that rise with the post number."""
    t0 = datetime(2024, 5, 1, 8, tzinfo=timezone.utc)
    rows = []
    for u in range(n_users):
        for i in range(per_user):
            row = empty_note(f"u{u}-{i}")
            row.update(title=f"第{i}篇 用户{u}的分享", content=f"今天分享第{i}个好物，{'很好用' * (i % 3 + 1)}",
                       author_id=f"u{u}", published_at=t0 + timedelta(hours=7 * i + u), likes=10 * i + u,
                       collects=i, comments=2 * i, hashtags=[f"tag{i % 3}"], category=["生活", "好物"],
                       extra=json.dumps({"crawled_at": "2024-06-01T00:00:00+00:00"}))
            rows.append(row)
    return rows


def setup(name: str, tmp: Path, **overrides) -> Command:
    tmp.mkdir(parents=True, exist_ok=True)
    out = tmp / "run"
    if name in ("notellm", "notellm2"):
        if name == "notellm":
            files = write_toy(tmp)
            extra = {}
        else:
            from notellm.data.synthetic_mm import SyntheticMMConfig, generate_synthetic_mm

            files = generate_synthetic_mm(tmp / "mm", SyntheticMMConfig(n_topics=2, n_colours=2, n_shapes=2,
                                                                        notes_per_cluster=4, test_share=0.5))
            files = {"notes": files["notes"], "pairs": files["train_pairs"]}
            extra = {"multimodal": {"micl": True, "late_fusion": True, "vision_tower": "tiny-clip"}}
        config = {**SHARED, "notes": str(files["notes"]), "train_pairs": str(files["pairs"]), "output_dir": str(out),
                  "model": {"backbone": "tiny-qwen3", "dim": 16, "max_length": 96}, "batch_size": 4,
                  "max_steps": 4, "save_every": 2, "gen_weight": 0.5, **extra, **overrides}
        return Command(["train", str(_write(tmp / "train.yaml", config))], out / "model", out)
    notes = tmp / "notes.parquet"
    write_notes(notes_to_table(posts()), notes)
    if name == "popularity":
        config = {**SHARED, "output_dir": str(out), "data": {"source": "notes", "path": str(notes)},
                  "split": {"kind": "random", "test_fraction": 0.25}, "batch_size": 4, "max_steps": 4,
                  "save_every": 2, "probe_max_notes": 16, "eval_batch_size": 8,
                  "model": {"backbone": "tiny-qwen3", "max_length": 48}, **overrides}
        return Command(["popularity", "train", str(_write(tmp / "pop.yaml", config))], out / "model", out)
    if name == "popularity-head":  # a head on a frozen (untrained) tiny NoteLLM folder
        from notellm.models.notellm import NoteLLMConfig, build_notellm

        if not (tmp / "base").exists():
            build_notellm(NoteLLMConfig(backbone="tiny-qwen3", dim=16, max_length=96)).save(tmp / "base")
        config = {**SHARED, "output_dir": str(out), "data": {"source": "notes", "path": str(notes)},
                  "split": {"kind": "random", "test_fraction": 0.25}, "batch_size": 4, "max_steps": 4,
                  "save_every": 2, "eval_batch_size": 8,
                  "model": {"kind": "notellm-head", "backbone": str(tmp / "base")}, **overrides}
        return Command(["popularity", "train", str(_write(tmp / "head.yaml", config))], out / "model", out)
    config = {**SHARED, "output_dir": str(out), "batch_size": 2, "max_steps": 4, "save_every": 2,
              "data": {"source": "notes", "path": str(notes), "main_users": 4, "preference_users": 2,
                       "instructions": {"language": "zh", "shots": [1, 2]}},
              "model": {"backbone": "tiny-qwen3", "max_length": 200}, **overrides}
    path = _write(tmp / "coldstart.yaml", config)
    if name == "sft":
        return Command(["coldstart", "sft", str(path)], out / "sft" / "model", out / "sft")
    return Command(["coldstart", "align", str(path), "align.loss=idpop", "align.beta=0.5"],
                   out / "align-idpop" / "model", out / "align-idpop")


def prepare_alignment(tmp: Path) -> None:
    """An SFT model and hand-made preference pairs (a random tiny model writes no numbers to sample)."""
    import pyarrow as pa

    from notellm.cli import app
    from notellm.cli.common import run_cli
    from notellm.config import load_config
    from notellm.data.coldstart import read_instruction_set
    from notellm.inference.coldstart import reference_logprobs
    from notellm.io import write_parquet
    from notellm.models.coldstart import load_coldstart_model
    from notellm.training.coldstart import ColdStartConfig

    sft = setup("sft", tmp, max_steps=2, save_every=0)
    assert run_cli(app, sft.args) == 0
    cfg = load_config(ColdStartConfig, sft.args[2])
    _, _, pref = read_instruction_set(cfg.output_dir)
    model, tok, mcfg = load_coldstart_model(sft.model_dir)
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]  # noqa: E731
    rows = [dict(prompt=e.prompt, chosen_ids=ids(e.answer), rejected_ids=ids(" 9.99"), err_chosen=0.0,
                 err_rejected=abs(9.99 - e.target)) for e in pref]
    for key, col in (("ref_logp_chosen", "chosen_ids"), ("ref_logp_rejected", "rejected_ids")):
        values = reference_logprobs(model, tok, [r["prompt"] for r in rows], [r[col] for r in rows],
                                    mcfg.max_length, 8, 4)
        for r, v in zip(rows, values):
            r[key] = v
    write_parquet(pa.Table.from_pylist(rows), Path(cfg.output_dir) / "preference.parquet")


def logged_losses(run: Path) -> dict[int, float]:
    """The last logged loss of each step (a resumed run logs the steps after its checkpoint again)."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r and "event" not in r}


def model_tensors(model_dir: Path) -> dict[str, "object"]:
    from safetensors.torch import load_file

    out = {}
    for path in sorted(model_dir.rglob("*.safetensors")):
        for key, value in load_file(str(path)).items():
            out[f"{path.relative_to(model_dir)}:{key}"] = value
    return out
