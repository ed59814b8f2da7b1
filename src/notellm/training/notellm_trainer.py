"""`notellm train`: Generative Contrastive Learning + Collaborative SFT for NoteLLM (LoRA or full).

An explicit loop (nanoGPT-style) on top of accelerate, so the same code runs on a laptop CPU and, through
`accelerate launch` with the shipped DeepSpeed / FSDP configs, on many GPUs and machines:

    setup -> for each step: batch -> forward (embeddings + answer logits) -> loss -> backward -> step
          -> log / validate / checkpoint  -> save the model folder

Checkpoints hold the trainable weights, optimizer, scheduler, data position and RNG states; a run started
again with the same output_dir continues exactly where the last checkpoint left it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from notellm.errors import DataError
from notellm.models.notellm import NoteLLM, NoteLLMConfig
from notellm.models.lora import adapters_in_float32, add_lora
from notellm.models.prompts import TASK_CATEGORY, TASK_EMBED, TASK_HASHTAG, NotePrompt, build_prompt
from notellm.training.losses import NoteLLMLoss

OBJECTIVES = ("notellm", "gcl", "csft")
HASHTAG_TARGETS = ("removed", "sample")


@dataclass
class LoraSettings:
    enabled: bool = True
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    train_emb_token: bool = False  # train the [EMB] input row too (peft trainable_token_indices). Off by default:
                                   # with before_emb pooling the row only feeds CSFT, and on tied-embedding models
                                   # (Gemma) its gradient costs a full vocabulary x hidden matmul, +27% a step
    top_layers: int = 0           # adapters only in the last N decoder layers (0: all); backward stops there


@dataclass
class TrainConfig:
    notes: str = ""                     # Note table (Parquet)
    train_pairs: str = ""               # pairs (note_a, note_b[, score]); unused by objective=csft
    val_pairs: str | None = None        # validation pairs: loss and Recall@K during training
    output_dir: str = "runs/notellm"
    model: NoteLLMConfig = field(default_factory=NoteLLMConfig)
    objective: str = "notellm"          # notellm = GCL + CSFT | gcl | csft (generation only)
    gen_weight: float = 0.01            # a in L = (L_cl + a L_gen) / (1 + a)
    topic_rate: float = 0.4             # share of notes given the hashtag task (the rest: category)
    hashtag_target: str = "removed"     # removed: one tag taken out of the input is the answer (reference code)
                                        # sample: j random tags are, the input has none (paper; `notellm tag`)
    init_log_scale: float = 3.0
    max_scale: float = 100.0
    lora: LoraSettings = field(default_factory=LoraSettings)
    lr: float = 1e-4
    head_lr: float | None = 2e-3        # projection + temperature; None: lr. A fresh random projection of
                                        # hidden states dominated by a few massive dimensions keeps little of
                                        # their signal, and at the backbone's lr it takes hundreds of steps to fix
    scale_lr: float | None = None       # the contrastive log-scale; None: head_lr. Data whose pairs are only weakly
                                        # related want a far lower scale than the initial 20, and reach it only
                                        # if the scale moves faster than the weights
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0   # clip the global gradient norm; a fresh head's first steps spike without
    warmup_ratio: float = 0.1
    warmup_steps: int | None = None     # overrides warmup_ratio (time-capped runs: the ratio of a whole epoch is
                                        # more steps than the run will take)
    scheduler: str = "cosine"
    batch_pairs: int = 16               # pairs per process per step (2x notes); csft: notes per step
    grad_accum: int = 1
    epochs: float = 1.0
    max_steps: int = -1
    max_minutes: float | None = None    # stop (and save) after this much wall time
    bf16: str = "auto"                  # auto | true | false
    gradient_checkpointing: bool = False
    grad_cache_chunk: int = 0           # >0: GradCache with chunks of this many notes (huge in-batch negatives)
    log_every: int = 10
    eval_every: int = 0                 # 0: only at the end
    eval_ks: list[int] = field(default_factory=lambda: [10, 50, 100])
    save_every: int = 50
    keep_checkpoints: int = 2
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = NoteLLMConfig(**self.model)
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**self.lora)
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got '{self.objective}'")
        if self.hashtag_target not in HASHTAG_TARGETS:
            raise ValueError(f"hashtag_target must be one of {HASHTAG_TARGETS}, got '{self.hashtag_target}'")


# ---- data ------------------------------------------------------------------------------------------------
class NoteStore:
    """Note-table rows by id, as dicts (what prompts are built from)."""

    def __init__(self, notes_path: str):
        from notellm.data.schema import read_notes

        table = read_notes(notes_path)
        cols = ["note_id", "title", "content", "hashtags", "category", "image_paths"]
        self.rows = {r["note_id"]: r for r in table.select(cols).to_pylist()}
        self.keys = {note_id: k for k, note_id in enumerate(self.rows)}  # integer ids for the loss's masks
        self.path = notes_path

    def __getitem__(self, note_id: str) -> dict[str, Any]:
        return self.rows[note_id]

    def check_ids(self, ids: list[str], source: str, field_name: str) -> None:
        for i, note_id in enumerate(ids, start=1):
            if note_id not in self.rows:
                raise DataError(f"note id '{note_id}' is not in the note table {self.path}",
                                file=source, row=i, field=field_name)


def read_pairs(path: str, store: NoteStore) -> list[tuple[str, str]]:
    import pyarrow.parquet as pq

    if not Path(path).exists():
        raise DataError("pairs file does not exist", file=path)
    table = pq.read_table(path)
    for col in ("note_a", "note_b"):
        if col not in table.column_names:
            raise DataError(f"missing column '{col}'", file=path, field=col)
    a, b = table["note_a"].to_pylist(), table["note_b"].to_pylist()
    store.check_ids(a, path, "note_a")
    store.check_ids(b, path, "note_b")
    return list(zip(a, b))


def assign_task(note: dict[str, Any], seed: int, epoch: int, slot: int, topic_rate: float,
                hashtag_target: str = "removed") -> tuple[str, int | tuple[int, ...] | None]:
    """Task for one note occurrence and its hashtag target (build_prompt's `tag_target`): the hashtag task with
    probability topic_rate, else the category task. Drawn from (seed, epoch, slot), so it is resampled every
    epoch and identical on resume. hashtag_target "removed": one tag removed from the input is the answer
    (reference code); "sample": j of the note's tags, j uniform in 1..all, are the answer and the input has
    none (the paper's template, and what `notellm tag` asks)."""
    rng = np.random.default_rng([seed, epoch, slot])
    tags, category = note.get("hashtags") or [], note.get("category") or []
    wants_tags = rng.random() < topic_rate
    if tags and (wants_tags or not category):
        if hashtag_target == "sample":
            j = int(rng.integers(1, len(tags) + 1))
            return TASK_HASHTAG, tuple(sorted(int(i) for i in rng.choice(len(tags), j, replace=False)))
        return TASK_HASHTAG, int(rng.integers(len(tags)))
    if category:
        return TASK_CATEGORY, None
    return TASK_EMBED, None


def item_notes(item: str | tuple[str, str]) -> tuple[str, ...]:
    """The note ids of one training item: a pair (notellm, gcl) or a single note (csft)."""
    return (item,) if isinstance(item, str) else tuple(item)


def standardizer_ids(note_ids: set[str], seed: int, n: int = 256) -> list[str]:
    """The notes whose pooled states fit the standardizer: the first n of a fixed permutation of the training
    notes (the same on every run and resume, and for the zero-shot baseline that uses the same statistics)."""
    ids = sorted(note_ids)
    return [ids[i] for i in np.random.default_rng([seed, 11]).permutation(len(ids))[:n]]


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 7]).permutation(n)


# ---- the module trained ----------------------------------------------------------------------------------
class TrainModule(nn.Module):
    """Model + loss in one module, so DDP / DeepSpeed / FSDP see every trainable parameter (incl. the scale)."""

    def __init__(self, model: NoteLLM, loss: NoteLLMLoss, objective: str):
        super().__init__()
        self.model, self.loss, self.objective = model, loss, objective

    def forward(self, input_ids, attention_mask, emb_pos, labels, note_keys=None) -> dict[str, torch.Tensor]:
        out = self.model(input_ids, attention_mask, emb_pos, labels if self.objective != "gcl" else None)
        if self.objective == "csft":
            l_gen = self.loss.generative(out["answer_logits"], out["answer_labels"])
            return {"loss": l_gen, "generative": l_gen.detach(), "contrastive": torch.zeros(()),
                    "scale": self.loss.contrastive.scale.detach()}
        emb = out["embeddings"]
        return self.loss(emb[0::2], emb[1::2], out.get("answer_logits"), out.get("answer_labels"), note_keys)


def apply_lora(model: NoteLLM, settings: LoraSettings) -> None:
    tokens = [model.emb_token_id] if settings.train_emb_token else None
    model.lm = add_lora(model.lm, settings.r, settings.alpha, settings.dropout, settings.target_modules,
                        settings.top_layers, task_type="CAUSAL_LM", trainable_token_indices=tokens)


def make_accelerator():
    """An Accelerator that joins every launched process, GPUs or not.

    Several processes (torchrun / accelerate launch) without a GPU need `cpu=True` to be joined with gloo, else
    each would train alone. accelerate turns DeepSpeed off under `cpu=True` and, without it, finds no backend on
    a CPU machine; DeepSpeed itself runs on CPUs (its CPU accelerator, gloo), so it is handed gloo by name."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.cuda.is_available():
        return Accelerator()
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return Accelerator(kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")])
    return Accelerator(cpu=True)


def use_bf16(setting: str) -> bool:
    if setting in ("true", True):
        return True
    if setting in ("false", False):
        return False
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


# ---- checkpoints -----------------------------------------------------------------------------------------
def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in module.named_parameters() if p.requires_grad}


def latest_checkpoint(output_dir: Path) -> Path | None:
    done = sorted(p for p in (output_dir / "checkpoints").glob("step-*") if (p / "state.json").exists()
                  and not p.name.endswith(".tmp"))
    return done[-1] if done else None


def save_checkpoint(output_dir: Path, module: nn.Module, optimizer, scheduler, position: dict, keep: int) -> Path:
    """Write step-N.tmp, then rename: a kill mid-write leaves the previous checkpoint intact."""
    from safetensors.torch import save_file

    final = output_dir / "checkpoints" / f"step-{position['step']:07d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_state(module), str(tmp / "trainable.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optim.pt")
    torch.save({"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
               tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(position), encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted((output_dir / "checkpoints").glob("step-???????"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, module: nn.Module, optimizer, scheduler) -> dict:
    from safetensors.torch import load_file

    state = load_file(str(path / "trainable.safetensors"))
    params = dict(module.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state]
    if missing:
        raise DataError(f"checkpoint does not match the model: {len(missing)} trainable tensors missing, "
                        f"e.g. {missing[:3]}", file=str(path))
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)
    optim = torch.load(path / "optim.pt", weights_only=False)
    try:
        optimizer.load_state_dict(optim["optimizer"])
    except ValueError as exc:  # e.g. a checkpoint from a version with other parameter groups
        raise DataError(f"the optimizer state does not fit this trainer ({exc}); start a new output_dir",
                        file=str(path)) from exc
    scheduler.load_state_dict(optim["scheduler"])
    rng = torch.load(path / "rng.pt", weights_only=False)
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    return json.loads((path / "state.json").read_text(encoding="utf-8"))


# ---- the trainer -----------------------------------------------------------------------------------------
class NoteLLMTrainer:
    """Builds everything from a TrainConfig; `train()` runs (or resumes) the loop and saves the model folder."""

    def __init__(self, config: TrainConfig, model: NoteLLM | None = None, accelerator=None):
        self.cfg = config
        self.out = Path(config.output_dir)
        self.bf16 = use_bf16(config.bf16)
        # Mixed precision from `accelerate launch` / its config when given; otherwise our own bf16 autocast, so
        # that several trainers with different settings can run in one process (accelerate's state is global).
        self.accelerator = accelerator or make_accelerator()
        self.store = NoteStore(config.notes)
        self.items = self._read_items()
        self.model = model or self._build_model()
        self.loss = NoteLLMLoss(config.gen_weight, config.init_log_scale, config.max_scale)
        self.module = TrainModule(self.model, self.loss, config.objective)

    # setup
    def _read_items(self) -> list:
        if self.cfg.objective == "csft":
            return list(self.store.rows)
        return read_pairs(self.cfg.train_pairs, self.store)

    def _build_model(self) -> NoteLLM:
        from notellm.models.notellm import build_notellm

        # LoRA on bf16 hardware: frozen base weights in bf16, trainable weights in fp32 (stable, ~3x faster)
        dtype = "bfloat16" if (self.bf16 and self.cfg.lora.enabled) else "float32"
        model = build_notellm(self.cfg.model, dtype=dtype, seed=self.cfg.seed)
        model.proj.float()
        if self.cfg.model.standardize and self.cfg.model.dim > 0:
            model.fit_standardizer(self._standardizer_sample())
        if self.cfg.lora.enabled:
            torch.manual_seed(self.cfg.seed)  # adapters drawn alike whatever drew from the RNG before
            apply_lora(model, self.cfg.lora)
            adapters_in_float32(model.lm, under_autocast=dtype == "bfloat16")
        if self.cfg.gradient_checkpointing:
            model.lm.gradient_checkpointing_enable()
            if self.cfg.lora.enabled:
                model.lm.enable_input_require_grads()
        return model

    def _standardizer_sample(self) -> list[dict[str, Any]]:
        ids = {i for item in self.items for i in item_notes(item)}
        return [self.store[i] for i in standardizer_ids(ids, self.cfg.seed)]

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    def steps_per_epoch(self) -> int:
        global_batch = self.cfg.batch_pairs * self.world
        steps = len(self.items) // global_batch // self.cfg.grad_accum
        if steps == 0:
            raise DataError(f"{len(self.items)} training items cannot fill one global batch of {global_batch}"
                            f" x {self.cfg.grad_accum} accumulation steps", file=self.cfg.train_pairs or self.cfg.notes)
        return steps

    def total_steps(self) -> int:
        total = math.ceil(self.cfg.epochs * self.steps_per_epoch())
        return min(total, self.cfg.max_steps) if self.cfg.max_steps > 0 else total

    # batches
    def to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        device = self.accelerator.device
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def micro_batches(self, epoch: int, start_micro: int) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        """This process's micro-batches of one epoch (a fixed permutation), from `start_micro` on."""
        order = epoch_order(len(self.items), self.cfg.seed, epoch)
        per_process = self.cfg.batch_pairs
        global_batch = per_process * self.world
        n_micro = len(order) // global_batch
        for micro in range(start_micro, n_micro):
            chunk = order[micro * global_batch: (micro + 1) * global_batch]
            mine = chunk[self.rank * per_process: (self.rank + 1) * per_process]
            yield micro, self.to_device(self.collate([int(i) for i in mine], epoch))

    def collate(self, indices: list[int], epoch: int) -> dict[str, torch.Tensor]:
        prompts: list[NotePrompt] = []
        for index in indices:
            for side, note_id in enumerate(item_notes(self.items[index])):
                note = self.store[note_id]
                task, target = assign_task(note, self.cfg.seed, epoch, 2 * index + side, self.cfg.topic_rate,
                                           self.cfg.hashtag_target)
                prompts.append(build_prompt(note, task, self.cfg.model.prompt, tag_target=target))
        batch = self.model.encode_prompts(prompts, with_answers=self.cfg.objective != "gcl")
        if self.cfg.objective != "csft":
            batch["note_keys"] = self.note_keys(indices)
        return batch

    def note_keys(self, indices: list[int]) -> torch.Tensor:
        """One integer per note of the batch, in row order: the loss masks other copies of a note."""
        ids = [n for i in indices for n in item_notes(self.items[i])]
        return torch.tensor([self.store.keys[n] for n in ids], dtype=torch.long)

    # loop
    def _optimizer(self):
        head, scale, body = [], [], []
        for name, p in self.module.named_parameters():
            if p.requires_grad:
                group = scale if name.startswith("loss.") else head if name.startswith("model.proj.") else body
                group.append(p)
        head_lr = self.cfg.head_lr or self.cfg.lr
        groups = [{"params": body, "lr": self.cfg.lr}]
        if head:
            groups.append({"params": head, "lr": head_lr})
        if scale:
            groups.append({"params": scale, "lr": self.cfg.scale_lr or head_lr})
        return torch.optim.AdamW(groups, weight_decay=self.cfg.weight_decay)

    def train(self) -> dict[str, Any]:
        from transformers import get_scheduler

        cfg, acc = self.cfg, self.accelerator
        torch.manual_seed(cfg.seed)
        total = self.total_steps()
        optimizer = self._optimizer()
        warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_ratio * total)
        scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=warmup,
                                  num_training_steps=total)
        # the scheduler is not prepared: accelerate would step it once per process, but our step count is global
        self._configure_deepspeed()
        module, optimizer = acc.prepare(self.module, optimizer)
        acc.register_for_checkpointing(scheduler)
        position = {"step": 0, "epoch": 0, "micro": 0}
        checkpoint = latest_checkpoint(self.out)
        if checkpoint is not None and self.sharded:
            acc.load_state(str(checkpoint))
            position = json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))
            self._log({"event": "resumed", "from": str(checkpoint), **position})
        elif checkpoint is not None:
            position = load_checkpoint(checkpoint, acc.unwrap_model(module), optimizer, scheduler)
            self._log({"event": "resumed", "from": str(checkpoint), **position})
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "train_config.json").write_text(json.dumps(asdict(cfg), ensure_ascii=False, indent=2), "utf-8")
        summary = self._loop(module, optimizer, scheduler, position, total)
        return summary

    def _configure_deepspeed(self) -> None:
        """DeepSpeed wants its batch sizes in its config, and we hand accelerate no dataloader to read them
        from: notes per process per micro-step, and our accumulation (its engine steps at the boundaries and
        scales the loss itself). Its engine also clips: our max_grad_norm."""
        plugin = self.accelerator.state.deepspeed_plugin
        if plugin is None:
            return
        notes = self.cfg.batch_pairs * (1 if self.cfg.objective == "csft" else 2)
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = notes
        plugin.deepspeed_config["gradient_accumulation_steps"] = self.cfg.grad_accum
        plugin.deepspeed_config["gradient_clipping"] = self.cfg.max_grad_norm or 0.0  # the engine clips
        plugin.deepspeed_config.pop("train_batch_size", None)

    def _loop(self, module, optimizer, scheduler, position: dict, total: int) -> dict[str, Any]:
        from notellm.cli.common import progress

        cfg, acc = self.cfg, self.accelerator
        started, tokens, pairs, last = time.time(), 0, 0, {}
        stop = position["step"] >= total
        module.train()
        with progress() as bar:
            task = bar.add_task("train", total=total, completed=position["step"])
            while not stop:
                accum = 0
                for micro, batch in self.micro_batches(position["epoch"], position["micro"]):
                    out = self._forward_backward(module, batch)
                    tokens += int(batch["attention_mask"].sum()) * self.world
                    pairs += cfg.batch_pairs * self.world
                    accum += 1
                    position["micro"] = micro + 1
                    if accum < cfg.grad_accum:
                        continue
                    accum = 0
                    if cfg.max_grad_norm:  # DeepSpeed clips inside its engine and returns None
                        norm = acc.clip_grad_norm_(module.parameters(), cfg.max_grad_norm)
                        if norm is not None:
                            out["grad_norm"] = torch.as_tensor(norm)
                    optimizer.step()
                    engine_norm = module.get_global_grad_norm() if hasattr(module, "get_global_grad_norm") else None
                    if engine_norm is not None:  # DeepSpeed's engine clipped: log its norm
                        out["grad_norm"] = torch.as_tensor(float(engine_norm))
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    position["step"] += 1
                    last = {k: float(v) for k, v in self.global_mean(out).items()}
                    bar.update(task, advance=1, description=f"train loss {last['loss']:.3f}")
                    stop = self._after_step(module, optimizer, scheduler, position, total, last, started,
                                            tokens, pairs)
                    if stop:
                        break
                else:
                    position.update(epoch=position["epoch"] + 1, micro=0)
        return self._finish(module, optimizer, scheduler, position, last, started)

    def _forward_backward(self, module, batch) -> dict[str, torch.Tensor]:
        cfg, acc = self.cfg, self.accelerator
        if cfg.grad_cache_chunk and cfg.objective != "csft":
            from notellm.training.gradcache import grad_cache_backward

            return grad_cache_backward(module, batch, cfg.grad_cache_chunk, 1.0 / cfg.grad_accum,
                                       no_sync=acc.no_sync if acc.num_processes > 1 else None,
                                       autocast=self.autocast)
        with self.autocast():
            out = module(**batch)
        acc.backward(out["loss"] if self.sharded_by_deepspeed else out["loss"] / cfg.grad_accum)
        return out

    def global_mean(self, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Loss terms averaged over processes (each process holds the mean over its equal share of the batch),
        so the log shows the global batch's loss whatever the number of processes."""
        if self.accelerator.num_processes == 1:
            return {k: v.detach() for k, v in terms.items()}
        names = list(terms)
        stacked = torch.stack([terms[k].detach().float().to(self.accelerator.device) for k in names])
        return dict(zip(names, self.accelerator.reduce(stacked, "mean")))

    def autocast(self):
        if self.accelerator.mixed_precision != "no":
            return self.accelerator.autocast()
        return torch.autocast(self.accelerator.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _after_step(self, module, optimizer, scheduler, position, total, last, started, tokens, pairs) -> bool:
        cfg = self.cfg
        elapsed = time.time() - started
        if position["step"] % cfg.log_every == 0 or position["step"] == 1:
            self._log({"step": position["step"], "epoch": position["epoch"], **last,
                       "temperature": 1.0 / last["scale"], "lr": scheduler.get_last_lr()[0],
                       "pairs_per_s": pairs / elapsed, "tokens_per_s": tokens / elapsed})
        if cfg.eval_every and position["step"] % cfg.eval_every == 0:
            self._log({"step": position["step"], **self.validate()})
            module.train()
        out_of_time = cfg.max_minutes is not None and elapsed > cfg.max_minutes * 60
        done = position["step"] >= total or out_of_time
        if cfg.save_every and (position["step"] % cfg.save_every == 0 or done):
            self._checkpoint(module, optimizer, scheduler, position)
        return done

    @property
    def sharded_by_deepspeed(self) -> bool:
        return self.accelerator.distributed_type.value == "DEEPSPEED"

    @property
    def sharded(self) -> bool:
        """DeepSpeed / FSDP shard parameters and optimizer state: checkpoints go through accelerate."""
        return self.accelerator.distributed_type.value in ("DEEPSPEED", "FSDP")

    def _checkpoint(self, module, optimizer, scheduler, position) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        if self.sharded:
            final = self.out / "checkpoints" / f"step-{position['step']:07d}"
            acc.save_state(str(final))
            if acc.is_main_process:
                (final / "state.json").write_text(json.dumps(dict(position, config=asdict(self.cfg))), "utf-8")
        elif acc.is_main_process:
            save_checkpoint(self.out, acc.unwrap_model(module), optimizer, scheduler,
                            dict(position, config=asdict(self.cfg)), self.cfg.keep_checkpoints)
        acc.wait_for_everyone()

    def _finish(self, module, optimizer, scheduler, position, last, started) -> dict[str, Any]:
        acc = self.accelerator
        summary = {"steps": position["step"], "epochs": position["epoch"] + position["micro"] / max(1, len(self.items) // (self.cfg.batch_pairs * self.world)),
                   "seconds": time.time() - started, "last": last}
        if self.cfg.val_pairs:
            summary["validation"] = self.validate()
        with self._gathered_for_saving():
            if acc.is_main_process:
                self.model.save(self.out / "model", extra={"backbone_seed": self.cfg.seed, "train": summary,
                                                           "objective": self.cfg.objective,
                                                           "hashtag_target": self.cfg.hashtag_target})
                self._log({"event": "saved", "model": str(self.out / "model"), **summary})
        acc.wait_for_everyone()
        return summary

    def _gathered_for_saving(self):
        """DeepSpeed ZeRO-3 partitions every parameter above its persistence threshold across processes (a
        7B model's projection, a big model's adapters): gather them, on every process, while the main process
        saves; otherwise it would write empty tensors."""
        plugin = self.accelerator.state.deepspeed_plugin
        if plugin is None or plugin.zero_stage != 3:
            return contextlib.nullcontext()
        import deepspeed

        params = [p for p in self.model.parameters() if p.requires_grad or not self.cfg.lora.enabled]
        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)  # trained: adapters and projection

    # validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Recall@K on the validation pairs (the DESIGN.md protocol) with the current weights."""
        import pyarrow.parquet as pq

        from notellm.evaluation.recall import evaluate_recall

        self.model.eval()
        pairs = pq.read_table(self.cfg.val_pairs)
        ids = sorted(set(pairs["note_a"].to_pylist()) | set(pairs["note_b"].to_pylist()))
        vectors = embed_ids(self.model, self.store, ids, batch_size=32, autocast=self.bf16)
        report = evaluate_recall(None, pairs, (ids, vectors), ks=self.cfg.eval_ks, buckets=False)
        self.model.train()
        return {f"val_R@{k}": v for k, v in report.overall.recall.items()}

    def _log(self, record: dict[str, Any]) -> None:
        if not self.accelerator.is_main_process:
            return
        from notellm.cli.common import console

        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False, default=float) + "\n")
        shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
                         if not isinstance(v, dict))
        console.log(shown, highlight=False)


def embed_ids(model: NoteLLM, store: NoteStore, ids: list[str], batch_size: int = 32,
              autocast: bool = False) -> np.ndarray:
    from notellm.inference.embed import embed_notes

    return embed_notes(model, [store[i] for i in ids], batch_size=batch_size, bf16=autocast)
