"""One training loop for every method (NoteLLM, NoteLLM-2, popularity regression, cold-start SFT, preference
alignment). A method is a `Recipe`: it builds the module to train and says how to batch, collate and save; the
`Engine` owns everything else:

    setup:   threads, seed, accelerate (devices, processes, mixed precision, DeepSpeed / FSDP configs)
             -> recipe.build() (the model is loaded; the time budget starts here)
             -> resume check (a checkpoint from another config or other data is refused, by key)
             -> recipe.before_training() on a fresh start (e.g. a ridge probe: inside the budget)
             -> AdamW over recipe.param_groups(), warmup + decay schedule, accelerate.prepare
    train:   for each optimizer step: grad_accum micro-batches (recipe.collate -> recipe.backward)
             -> clip -> step -> log (jsonl + trackers) -> validate / checkpoint / time budget
    save:    the model folder, written whole (temp folder + rename) by recipe.save()

Every run is resumable: a checkpoint holds the trainable weights, optimizer, scheduler, data position and RNG
states (safetensors + JSON, no pickle), so a run killed at any point and started again with the same command
ends with the same weights and logged losses as an uninterrupted one.

Why not `transformers.Trainer` (as TRL and sentence-transformers build on): its resume replays a dataloader
rather than restoring a data position, so methods whose batches are built per step (NoteLLM's per-epoch task
draws, length-bucketed popularity batches) would not resume exactly; GradCache's two-pass backward, a time
budget that includes a pre-pass, and per-method checkpoint contents would each need overriding most of its
loop. This loop is ~200 lines, reads in one sitting, and runs unchanged under torchrun, `accelerate launch`,
DeepSpeed ZeRO-2/3 and FSDP.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from notellm.device import autocast, resolve_bf16, set_threads
from notellm.errors import ConfigError, DataError
from notellm.fingerprint import describe_changes, file_digest
from notellm.io import atomic_dir, clean_stale_temps
from notellm.models.lora import LoraConfig
from notellm.training import checkpoints as ckpt

log = logging.getLogger("notellm.train")

SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
TRACKERS = ("none", "tensorboard", "wandb")
RESUME = ("auto", "force")
PRE_PASS_CUT = "cut_by_time_budget"  # a before_training result key: the budget ended inside the pre-pass


@dataclass
class TrainingArgs:
    """The knobs every trainer shares, with one name each (TRL-style: each method's config extends this)."""

    output_dir: str = "runs/train"          # checkpoints/, log.jsonl, model/ go here; a rerun resumes
    epochs: float = 1.0                     # passes over the training items (a fraction stops mid-epoch)
    max_steps: int = -1                     # > 0: at most this many optimizer steps
    lr: float = 1e-4                        # peak learning rate of the main parameters
    batch_size: int = 8                     # training items per process per micro-step
    grad_accum: int = 1                     # micro-steps per optimizer step
    warmup_steps: int | None = None         # linear warmup steps (overrides warmup_ratio)
    warmup_ratio: float = 0.1               # warmup as a share of the planned steps
    scheduler: str = "cosine"               # cosine | linear | constant | constant_with_warmup
    weight_decay: float = 0.0               # AdamW's decoupled weight decay
    max_grad_norm: float | None = 1.0       # clip the global gradient norm (null: no clipping)
    seed: int = 0                           # data order, task draws, dropout, new weights
    time_budget_min: float | None = None    # stop (and save) before this many minutes after the model loaded
    bf16: str = "auto"                      # auto | true | false: bf16 autocast (frozen weights in bf16)
    device: str = "auto"                    # auto | cpu | cuda (accelerate launch decides for multi-process runs)
    threads: int = 0                        # torch CPU threads (0: torch's default)
    gradient_checkpointing: bool = False    # recompute activations in backward (less memory, slower)
    report_to: str = "none"                 # none | tensorboard | wandb (wandb offline without network)
    log_every: int = 10                     # log every N steps (step 1 always)
    save_every: int = 50                    # checkpoint every N steps (and at the end; 0: only at the end)
    keep_checkpoints: int = 2               # newest checkpoints kept
    resume: str = "auto"                    # auto: resume an identical run, refuse a changed one | force
    lora: LoraConfig = field(default_factory=LoraConfig)

    # old names of shared knobs -> their name now (a config using one gets a one-line error saying so)
    renamed: ClassVar[dict[str, str]] = {
        "batch_pairs": "batch_size", "max_minutes": "time_budget_min", "autocast": "bf16",
        "lora.last_n_layers": "lora.top_layers",
    }
    # keys that may differ when a run resumes: they change when and how it reports, not what it computes
    resumable_changes: ClassVar[tuple[str, ...]] = (
        "output_dir", "time_budget_min", "log_every", "save_every", "keep_checkpoints", "report_to", "resume",
        "threads", "device", "max_steps", "epochs",
    )

    def __post_init__(self):
        if isinstance(self.lora, dict):
            self.lora = LoraConfig(**self.lora)
        checks = [
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.grad_accum >= 1, "grad_accum must be >= 1"),
            (self.epochs > 0, "epochs must be > 0"),
            (self.lr > 0, "lr must be > 0"),
            (self.warmup_steps is None or self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
            (self.time_budget_min is None or self.time_budget_min > 0, "time_budget_min must be > 0 (or null)"),
            (self.max_grad_norm is None or self.max_grad_norm > 0, "max_grad_norm must be > 0 (or null)"),
            (self.log_every >= 1 and self.save_every >= 0 and self.keep_checkpoints >= 1,
             "log_every >= 1, save_every >= 0 and keep_checkpoints >= 1 are needed"),
            (self.scheduler in SCHEDULERS, f"scheduler must be one of {list(SCHEDULERS)}, not {self.scheduler!r}"),
            (self.resume in RESUME, f"resume must be one of {list(RESUME)}, not {self.resume!r}"),
            (str(self.bf16) in ("auto", "true", "false", "True", "False"), f"bf16 must be auto, true or false, not {self.bf16!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        for name in self.trackers:
            if name not in TRACKERS:
                raise ConfigError(f"report_to must name trackers from {list(TRACKERS)}, not {name!r}")

    @property
    def trackers(self) -> list[str]:
        return [t.strip() for t in str(self.report_to).split(",") if t.strip() and t.strip() != "none"]


# ---- callbacks: how progress and logs leave the core ------------------------------------------------------
class Callback:
    """Progress and log events of a run. The CLI draws a progress bar; a library user can pass their own."""

    def on_phase(self, name: str, total: float | None = None, unit: str = "") -> None:
        """A new phase starts ('loading model', 'probe', 'train'); `total` in `unit`s when known."""

    def on_progress(self, completed: float, description: str | None = None) -> None:
        """Progress within the current phase."""

    def on_log(self, record: dict[str, Any]) -> None:
        """A structured log record (also written to log.jsonl)."""

    def on_end(self) -> None:
        """The run is over (saved, or failed)."""


class LoggingCallback(Callback):
    """Phases and log records to the `notellm.train` logger."""

    def on_phase(self, name, total=None, unit=""):
        log.info("%s%s", name, f" ({total:g} {unit})" if total else "")

    def on_log(self, record):
        log.info(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
                          if not isinstance(v, (dict, list))))


class Phase:
    """What a recipe's pre-pass reports progress through: `phase.advance(n)`."""

    def __init__(self, callbacks: Sequence[Callback], name: str, total: float | None, unit: str):
        self.callbacks, self.done = callbacks, 0.0
        for cb in callbacks:
            cb.on_phase(name, total, unit)

    def advance(self, n: float = 1, description: str | None = None) -> None:
        self.done += n
        for cb in self.callbacks:
            cb.on_progress(self.done, description)


# ---- recipes: what a method supplies ---------------------------------------------------------------------
class Recipe:
    """A training method. Subclasses implement `build`, `num_items`, `collate`, `save`; the rest has defaults.

    `args` is the method's config (a TrainingArgs subclass). `input_keys` name its config keys that are input
    files: their content, not their path, goes into the run's fingerprint.
    """

    args: TrainingArgs
    kind: str = "model"
    input_keys: tuple[str, ...] = ()
    rows_per_item: int = 1                  # tensor rows per training item (a NoteLLM pair: 2 notes)

    # required
    def build(self, engine: "Engine") -> nn.Module:
        """Read the data and return the module to train (model and loss inside, so DDP / DeepSpeed see every
        trainable parameter)."""
        raise NotImplementedError

    def num_items(self) -> int:
        raise NotImplementedError

    def collate(self, indices: list[int], epoch: int) -> dict[str, Any]:
        """The tensors of one process's micro-batch of training items `indices`."""
        raise NotImplementedError

    def save(self, module: nn.Module, folder: Path, summary: dict[str, Any]) -> None:
        """Write the model folder into `folder` (an empty temp folder the engine renames into place)."""
        raise NotImplementedError

    # optional
    def before_training(self, engine: "Engine", module: nn.Module) -> dict[str, Any]:
        """A pre-pass on a fresh start (not on resume), inside the time budget; returns what to log. A pre-pass
        that the budget cuts (`engine.pre_pass_would_overrun`) returns `{PRE_PASS_CUT: True, ...}`: the engine then
        saves the model as it stands without training or a checkpoint, and a rerun starts the pre-pass again
        (the recipe keeps what it had computed)."""
        return {}

    def epoch_batches(self, epoch: int, global_batch: int) -> list[np.ndarray]:
        """The global batches of one epoch: item indices, `global_batch` each (the rest of the epoch's items
        are dropped). Default: a fixed permutation per (seed, epoch)."""
        order = np.random.default_rng([self.args.seed, epoch, 7]).permutation(self.num_items())
        return [order[i * global_batch:(i + 1) * global_batch] for i in range(len(order) // global_batch)]

    def loss(self, module: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Loss terms of one micro-batch: 'loss' is optimised, the others are logged."""
        return module(**batch)

    def backward(self, engine: "Engine", module: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Forward and backward of one micro-batch (GradCache overrides this)."""
        with engine.autocast():
            out = self.loss(module, batch)
        engine.backward(out["loss"])
        return out

    def param_groups(self, module: nn.Module) -> list[dict[str, Any]]:
        return [{"params": [p for p in module.parameters() if p.requires_grad], "lr": self.args.lr}]

    def saved_parameters(self, module: nn.Module) -> list[nn.Parameter]:
        """The parameters the model folder holds (gathered under ZeRO-3 while saving)."""
        return [p for p in module.parameters() if p.requires_grad]

    def validate(self, engine: "Engine", module: nn.Module) -> dict[str, float]:
        return {}

    def fingerprint(self) -> dict[str, Any]:
        """What makes this run: the config (input paths replaced by their files' content) and the kind."""
        config = asdict(self.args)
        inputs = {}
        for key in self.input_keys:
            node, parts = config, key.split(".")
            for part in parts[:-1]:
                node = node[part]
            path = node.pop(parts[-1])
            if path:
                digest = file_digest(path)
                inputs[key] = f"sha256:{digest['sha256']}" if "sha256" in digest else "missing"
        return {"kind": self.kind, "config": config, "inputs": inputs}


# ---- the engine ------------------------------------------------------------------------------------------
@dataclass
class Position:
    step: int = 0
    epoch: int = 0
    micro: int = 0
    seconds: float = 0.0     # training time of earlier runs of this output_dir (the time budget continues)
    items: int = 0
    tokens: int = 0


def make_accelerator(args: TrainingArgs):
    """An Accelerator that joins every launched process, GPUs or not.

    Several processes (torchrun / accelerate launch) without a GPU need `cpu=True` to be joined with gloo, else
    each would train alone. accelerate turns DeepSpeed off under `cpu=True` and, without it, finds no backend on
    a CPU machine; DeepSpeed itself runs on CPUs (its CPU accelerator, gloo), so it is handed gloo by name."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    kwargs: dict[str, Any] = {}
    if args.trackers:
        kwargs.update(log_with=args.trackers, project_dir=args.output_dir)
    if "wandb" in args.trackers:
        # offline unless the user asks for online: a run must not wait on (or fail for) a network it lacks;
        # `wandb sync` uploads the run folder later
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_DIR", args.output_dir)
        os.environ.setdefault("WANDB_SILENT", "true")
    multi = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if args.device == "cpu" or (multi and not torch.cuda.is_available()):
        if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
            return Accelerator(kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")], **kwargs)
        return Accelerator(cpu=True, **kwargs)
    return Accelerator(**kwargs)


class Engine:
    """Runs a Recipe: `Engine(recipe).run()` trains (or resumes) and saves output_dir/model."""

    def __init__(self, recipe: Recipe, callbacks: Sequence[Callback] | None = None, accelerator=None):
        self.recipe, self.args = recipe, recipe.args
        self.callbacks = list(callbacks) if callbacks is not None else [LoggingCallback()]
        set_threads(self.args.threads)
        self.accelerator = accelerator or make_accelerator(self.args)
        self.out = Path(self.args.output_dir)
        self.bf16 = resolve_bf16(str(self.args.bf16).lower(), str(self.accelerator.device))
        self.module: nn.Module | None = None
        self.started = time.time()

    # ---- helpers recipes use
    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def autocast(self):
        """accelerate's mixed precision when `accelerate launch` configured one, else our bf16 decision (several
        engines with different settings can then run in one process: accelerate's state is global)."""
        if self.accelerator.mixed_precision != "no":
            return self.accelerator.autocast()
        return autocast(self.device.type, self.bf16)

    def backward(self, loss: torch.Tensor) -> None:
        # DeepSpeed scales by its accumulation itself
        self.accelerator.backward(loss if self.sharded_by_deepspeed else loss / self.args.grad_accum)

    def phase(self, name: str, total: float | None = None, unit: str = "") -> Phase:
        return Phase(self.callbacks, name, total, unit)

    @property
    def sharded_by_deepspeed(self) -> bool:
        return self.accelerator.distributed_type.value == "DEEPSPEED"

    @property
    def sharded(self) -> bool:
        """DeepSpeed / FSDP shard parameters and optimizer state: checkpoints go through accelerate."""
        return self.accelerator.distributed_type.value in ("DEEPSPEED", "FSDP")

    def elapsed(self, position: Position) -> float:
        """Training seconds so far: earlier runs' plus this run's since the model loaded."""
        return position.seconds + time.time() - self.started

    # ---- the run
    def steps_per_epoch(self) -> int:
        global_batch = self.args.batch_size * self.world
        steps = self.recipe.num_items() // global_batch // self.args.grad_accum
        if steps == 0:
            raise DataError(f"{self.recipe.num_items()} training items cannot fill one global batch of "
                            f"{global_batch} x {self.args.grad_accum} accumulation steps (lower batch_size)")
        return steps

    def total_steps(self) -> int:
        total = math.ceil(self.args.epochs * self.steps_per_epoch())
        return min(total, self.args.max_steps) if self.args.max_steps > 0 else total

    def run(self) -> dict[str, Any]:
        try:
            return self._run()
        finally:
            for cb in self.callbacks:
                cb.on_end()

    def _run(self) -> dict[str, Any]:
        args, acc = self.args, self.accelerator
        torch.manual_seed(args.seed)
        np.random.seed(args.seed)
        if acc.is_main_process:
            clean_stale_temps(self.out, "model")
            ckpt.clean_checkpoint_temps(self.out)
        self.phase(f"loading {self.recipe.kind} model")
        module = self.recipe.build(self)
        self.started = time.time()  # the time budget counts from here, pre-passes included
        self.phase("preparing: input fingerprint, optimizer, checkpoint")
        total = self.total_steps()
        fingerprint = self.recipe.fingerprint()
        checkpoint = ckpt.latest_checkpoint(self.out)
        cut = False
        if checkpoint is not None:
            self._check_resume(checkpoint, fingerprint)
        elif info := self.recipe.before_training(self, module):
            self._log({"event": "prepared", **info})
            cut = bool(info.get(PRE_PASS_CUT))
        optimizer = torch.optim.AdamW(self.recipe.param_groups(module), lr=args.lr, weight_decay=args.weight_decay)
        scheduler = self._scheduler(optimizer, total)
        self._configure_deepspeed()
        self.module = module
        prepared, optimizer = acc.prepare(module, optimizer)
        position = Position()
        if checkpoint is not None:
            state = (ckpt.load_sharded_checkpoint(acc, checkpoint, scheduler) if self.sharded
                     else ckpt.load_checkpoint(checkpoint, acc.unwrap_model(prepared), optimizer, scheduler))
            position = Position(**state["position"])
            self._log({"event": "resumed", "from": str(checkpoint), **asdict(position)})
        if acc.is_main_process:
            ckpt.write_run_config(self.out, {"kind": self.recipe.kind, **asdict(args)})
        if args.trackers:
            acc.init_trackers(self.out.name or "notellm", config=_flat_config(asdict(args)))
        self._log({"event": "start", "kind": self.recipe.kind, "steps": total, "items": self.recipe.num_items(),
                   "processes": self.world, "bf16": self.bf16, "device": str(self.device)})
        if cut:  # the budget ended inside the pre-pass: the model as it stands, no checkpoint (a rerun continues
            # the pre-pass from the recipe's own cache, then trains)
            self._log({"event": "time_budget", "step": 0, "of": total, "phase": "before_training",
                       "elapsed_s": round(self.elapsed(position), 1),
                       "rerun": "the same command continues the pre-pass where it stopped, then trains"})
            return self._finish(prepared, position, {}, total)
        last = self._loop(prepared, optimizer, scheduler, position, total, fingerprint)
        return self._finish(prepared, position, last, total)

    def _check_resume(self, checkpoint: Path, fingerprint: dict[str, Any]) -> None:
        saved = ckpt.read_state(checkpoint).get("fingerprint", {})
        ignore = [f"config.{k}" for k in self.args.resumable_changes]
        changes = describe_changes(saved, fingerprint, ignore=ignore)
        changes = [c.removeprefix("config.").removeprefix("inputs.") for c in changes]
        if not changes:
            return
        if self.args.resume == "force":
            self._log({"event": "resume_forced", "changes": changes})
            return
        raise ConfigError(f"{self.out} holds a checkpoint ({checkpoint.name}) of a different run: "
                          f"{'; '.join(changes)}. Use another output_dir, or resume=force to continue it anyway")

    def _scheduler(self, optimizer, total: int):
        from transformers import get_scheduler

        warmup = self.args.warmup_steps if self.args.warmup_steps is not None else int(self.args.warmup_ratio * total)
        # not prepared: accelerate would step it once per process, but our step count is global
        return get_scheduler(self.args.scheduler, optimizer, num_warmup_steps=min(warmup, total),
                             num_training_steps=total)

    def _configure_deepspeed(self) -> None:
        """DeepSpeed wants its batch sizes in its config, and we hand accelerate no dataloader to read them
        from: rows per process per micro-step, and our accumulation (its engine steps at the boundaries and
        scales the loss itself). Its engine also clips: our max_grad_norm."""
        plugin = self.accelerator.state.deepspeed_plugin
        if plugin is None:
            return
        config = plugin.deepspeed_config
        config["train_micro_batch_size_per_gpu"] = self.args.batch_size * self.recipe.rows_per_item
        config["gradient_accumulation_steps"] = self.args.grad_accum
        config["gradient_clipping"] = self.args.max_grad_norm or 0.0
        config.pop("train_batch_size", None)

    def _loop(self, module, optimizer, scheduler, pos: Position, total: int, fingerprint) -> dict[str, float]:
        args, acc = self.args, self.accelerator
        global_batch = args.batch_size * self.world
        self._train_phase(pos, total)
        last: dict[str, float] = {}
        step_started = time.time()
        recent: collections.deque[float] = collections.deque(maxlen=8)  # step times seen lately
        module.train()
        while pos.step < total:
            batches = self.recipe.epoch_batches(pos.epoch, global_batch)
            usable = len(batches) - len(batches) % args.grad_accum  # no step mixes two epochs
            for micro in range(pos.micro, usable):
                mine = [int(i) for i in batches[micro][self.rank * args.batch_size:(self.rank + 1) * args.batch_size]]
                batch = self._to_device(self.recipe.collate(mine, pos.epoch))
                boundary = (micro + 1) % args.grad_accum == 0
                sync = contextlib.nullcontext() if boundary or self.sharded else acc.no_sync(module)
                with sync:
                    out = self.recipe.backward(self, module, batch)
                pos.micro, pos.items = micro + 1, pos.items + global_batch
                pos.tokens += int(batch["attention_mask"].sum()) * self.world if "attention_mask" in batch else 0
                if not boundary:
                    continue
                out.update(self._optimizer_step(module, optimizer, scheduler))
                pos.step += 1
                last = {k: float(v) for k, v in self._global_mean(out).items()}
                recent.append(time.time() - step_started)
                step_started = time.time()
                # the next step is predicted by the slowest of the last few: one step's time jitters
                if self._after_step(module, optimizer, scheduler, pos, total, last, max(recent), fingerprint):
                    return last
            pos.epoch, pos.micro = pos.epoch + 1, 0
        return last

    def _optimizer_step(self, module, optimizer, scheduler) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self.args.max_grad_norm:  # DeepSpeed clips inside its engine and returns None here
            norm = self.accelerator.clip_grad_norm_(module.parameters(), self.args.max_grad_norm)
            if norm is not None:
                out["grad_norm"] = torch.as_tensor(float(norm))
        optimizer.step()
        engine_norm = module.get_global_grad_norm() if hasattr(module, "get_global_grad_norm") else None
        if engine_norm is not None:  # DeepSpeed's engine clipped: log its norm
            out["grad_norm"] = torch.as_tensor(float(engine_norm))
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return out

    def _after_step(self, module, optimizer, scheduler, pos: Position, total: int, last: dict[str, float],
                    step_seconds: float, fingerprint) -> bool:
        args = self.args
        elapsed = self.elapsed(pos)
        if pos.step % args.log_every == 0 or pos.step == 1:
            record = {"step": pos.step, "epoch": pos.epoch, **last, "lr": scheduler.get_last_lr()[0],
                      "elapsed_s": round(elapsed, 2), "items_per_s": pos.items / max(elapsed, 1e-9)}
            if pos.tokens:
                record["tokens_per_s"] = pos.tokens / max(elapsed, 1e-9)
            self._log(record)
            if args.trackers:
                self.accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=pos.step)
        if getattr(args, "eval_every", 0) and pos.step % args.eval_every == 0:
            self._log({"step": pos.step, **self.recipe.validate(self, self.accelerator.unwrap_model(module))})
            module.train()
            self._train_phase(pos, total)  # validation showed a phase of its own
        out_of_time = self._out_of_time(elapsed, step_seconds)
        done = pos.step >= total or out_of_time
        if out_of_time and pos.step < total:
            self._log({"event": "time_budget", "step": pos.step, "of": total, "elapsed_s": round(elapsed, 1)})
        if (args.save_every and pos.step % args.save_every == 0) or done:
            self._checkpoint(module, optimizer, scheduler, pos, fingerprint)
        self._progress(pos, total)
        return done

    def _train_phase(self, pos: Position, total: int) -> None:
        timed = self.args.time_budget_min is not None
        self.phase("train", self.args.time_budget_min * 60 if timed else total, "s" if timed else "steps")
        self._progress(pos, total)

    def _out_of_time(self, elapsed: float, step_seconds: float, share: float = 1.0) -> bool:
        """Stop when the next step would end past `share` of the budget; every process stops at the same step."""
        if self.args.time_budget_min is None:
            return False
        late = elapsed + step_seconds > share * self.args.time_budget_min * 60
        late = torch.tensor([float(late)], device=self.device)
        if self.world > 1:
            late = self.accelerator.reduce(late, "max")
        return bool(late.item())

    def pre_pass_would_overrun(self, seconds: float, share: float = 1.0) -> bool:
        """For a pre-pass (`before_training`, a fresh start): would `seconds` more end past `share` of the time
        budget? The same answer on every process; False without a budget."""
        return self._out_of_time(time.time() - self.started, seconds, share)

    def _progress(self, pos: Position, total: int) -> None:
        timed = self.args.time_budget_min is not None
        done = min(self.elapsed(pos), self.args.time_budget_min * 60) if timed else pos.step
        for cb in self.callbacks:
            cb.on_progress(done, f"train step {pos.step}/{total}")

    def _checkpoint(self, module, optimizer, scheduler, pos: Position, fingerprint) -> None:
        acc = self.accelerator
        pos.seconds = self.elapsed(pos)
        self.started = time.time()
        state = {"step": pos.step, "position": asdict(pos), "fingerprint": fingerprint}
        if self.sharded:
            ckpt.save_sharded_checkpoint(acc, self.out, scheduler, state, self.args.keep_checkpoints)
            return
        acc.wait_for_everyone()
        if acc.is_main_process:
            ckpt.save_checkpoint(self.out, acc.unwrap_model(module), optimizer, scheduler, state,
                                 self.args.keep_checkpoints)
        acc.wait_for_everyone()

    def _finish(self, module, pos: Position, last: dict[str, float], total: int) -> dict[str, Any]:
        acc = self.accelerator
        per_epoch = max(1, self.recipe.num_items() // (self.args.batch_size * self.world))
        summary: dict[str, Any] = {"steps": pos.step, "planned_steps": total,
                                   "epochs": round(pos.epoch + pos.micro / per_epoch, 4),
                                   "seconds": round(self.elapsed(pos), 2), "last": last}
        raw = acc.unwrap_model(module)
        if validation := self.recipe.validate(self, raw):
            summary["validation"] = validation
        self.phase("saving model")
        with self._gathered(raw):
            if acc.is_main_process:
                with atomic_dir(self.out / "model") as folder:
                    self.recipe.save(raw, folder, summary)
        acc.wait_for_everyone()
        self._log({"event": "saved", "model": str(self.out / "model"), **summary})
        if self.args.trackers:
            acc.end_training()
        return summary

    def _gathered(self, module: nn.Module):
        """DeepSpeed ZeRO-3 partitions parameters across processes: gather the saved ones on every process
        while the main process saves (otherwise it would write empty tensors)."""
        plugin = self.accelerator.state.deepspeed_plugin
        if plugin is None or plugin.zero_stage != 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(self.recipe.saved_parameters(module), modifier_rank=None)

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def _global_mean(self, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Loss terms averaged over processes (each process holds the mean over its equal share of the batch),
        so the log shows the global batch's loss whatever the number of processes."""
        terms = {k: v.detach().float().reshape(()) for k, v in terms.items() if isinstance(v, torch.Tensor) and v.numel() == 1}
        if self.world == 1:
            return terms
        names = list(terms)
        stacked = torch.stack([terms[k].to(self.device) for k in names])
        return dict(zip(names, self.accelerator.reduce(stacked, "mean")))

    def _log(self, record: dict[str, Any]) -> None:
        if not self.accelerator.is_main_process:
            return
        import json

        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False, default=float) + "\n")
        for cb in self.callbacks:
            cb.on_log(record)


def _flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """Tracker-friendly config: nested keys dotted, lists as strings."""
    from notellm.fingerprint import flatten

    return {k: v if isinstance(v, (int, float, str, bool)) or v is None else str(v) for k, v in flatten(config).items()}


def train(recipe: Recipe, callbacks: Sequence[Callback] | None = None) -> dict[str, Any]:
    """Run `recipe` to the end (or resume it); return the run summary."""
    return Engine(recipe, callbacks).run()
