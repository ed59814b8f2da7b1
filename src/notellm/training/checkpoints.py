"""Training checkpoints without pickle: safetensors for tensors, JSON for everything else.

    output_dir/checkpoints/step-0000040/
        trainable.safetensors   every parameter that requires grad (adapters, heads, the temperature)
        optimizer.safetensors   the optimizer's per-parameter tensors (AdamW: step, exp_avg, exp_avg_sq)
        optimizer.json          its param groups (lr, betas, ...) and which tensors belong to which parameter
        scheduler.json          the LR scheduler's state
        rng.safetensors         torch (and CUDA) generator states
        rng.json                numpy's and Python's generator states
        state.json              position (step, epoch, micro-batch, training seconds) and the run's
                                fingerprint; written last, so a folder with a state.json is complete

A checkpoint folder is written beside its final name and renamed into place whole (`notellm.io.atomic_dir`).
DeepSpeed / FSDP checkpoints hold sharded state that accelerate writes; their folder gets the same state.json.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from notellm.errors import NotellmError
from notellm.io import atomic_dir, atomic_path, clean_stale_temps, read_json

STATE_FILE = "state.json"


class CheckpointError(NotellmError):
    """A checkpoint that cannot be used (damaged, from another run, or not ours)."""


def checkpoint_dir(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


def step_name(step: int) -> str:
    return f"step-{step:07d}"


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint (one with a state.json), or None."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return None
    done = sorted(p for p in root.glob("step-???????") if (p / STATE_FILE).is_file())
    return done[-1] if done else None


def read_state(checkpoint: Path) -> dict[str, Any]:
    try:
        return read_json(checkpoint / STATE_FILE)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {checkpoint} is damaged ({STATE_FILE}: {exc}); delete it to resume "
                              f"from the one before, or start a new output_dir") from None


def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in module.named_parameters() if p.requires_grad}


# ---- optimizer / scheduler / RNG as tensors + JSON ------------------------------------------------------
def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = tensor
    for index, values in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_states() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return tensors, {"numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
                     "python": [py_version, list(py_state), py_gauss]}


def _set_rng_states(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, state, gauss = meta["python"]
    random.setstate((version, tuple(state), gauss))


def _write_json(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")


# ---- save / load ----------------------------------------------------------------------------------------
def save_checkpoint(output_dir: Path, module: nn.Module, optimizer, scheduler, state: dict[str, Any],
                    keep: int) -> Path:
    """Write checkpoints/step-N whole (temp folder + rename); keep the newest `keep` checkpoints."""
    from safetensors.torch import save_file

    final = checkpoint_dir(output_dir) / step_name(state["step"])
    with atomic_dir(final) as tmp:
        save_file(trainable_state(module), str(tmp / "trainable.safetensors"))
        opt_tensors, opt_meta = _split_optimizer(optimizer.state_dict())
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        _write_json(opt_meta, tmp / "optimizer.json")
        _write_json(scheduler.state_dict(), tmp / "scheduler.json")
        rng_tensors, rng_meta = _rng_states()
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        _write_json(rng_meta, tmp / "rng.json")
        _write_json(state, tmp / STATE_FILE)
    prune_checkpoints(output_dir, keep)
    return final


def prune_checkpoints(output_dir: Path, keep: int) -> None:
    root = checkpoint_dir(output_dir)
    for old in sorted(root.glob("step-???????"))[:-max(1, keep)]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: Path, module: nn.Module, optimizer, scheduler) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG states; return the checkpoint's state.json."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state = read_state(path)
    try:
        weights = load_file(str(path / "trainable.safetensors"))
        opt_tensors = load_file(str(path / "optimizer.safetensors"))
        rng_tensors = load_file(str(path / "rng.safetensors"))
        opt_meta = read_json(path / "optimizer.json")
        sched_state = read_json(path / "scheduler.json")
        rng_meta = read_json(path / "rng.json")
    except (OSError, ValueError, SafetensorError) as exc:
        raise CheckpointError(f"checkpoint {path} is damaged or not a notellm checkpoint ({exc})") from None
    params = dict(module.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    unknown = [n for n in weights if n not in params]
    if missing or unknown:
        raise CheckpointError(f"checkpoint {path} does not fit this model ({len(missing)} trainable tensors missing"
                              f"{', e.g. ' + missing[0] if missing else ''}; {len(unknown)} unknown): start a new "
                              f"output_dir")
    with torch.no_grad():
        for name, tensor in weights.items():
            if params[name].shape != tensor.shape:
                raise CheckpointError(f"checkpoint {path}: {name} has shape {tuple(tensor.shape)}, the model "
                                      f"{tuple(params[name].shape)}; start a new output_dir")
            params[name].copy_(tensor)
    try:
        optimizer.load_state_dict(_join_optimizer(opt_tensors, opt_meta))
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path}: the optimizer state does not fit this trainer ({exc}); "
                              f"start a new output_dir") from None
    scheduler.load_state_dict(sched_state)
    _set_rng_states(rng_tensors, rng_meta)
    return state


def save_sharded_checkpoint(accelerator, output_dir: Path, scheduler, state: dict[str, Any], keep: int) -> Path:
    """DeepSpeed / FSDP: every process writes its shards through accelerate into a temp folder with an agreed
    name; the main process adds the JSON state and renames it into place once all have written."""
    final = checkpoint_dir(output_dir) / step_name(state["step"])
    tmp = final.with_name(f".{final.name}.sharded.tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        rng_tensors, rng_meta = _rng_states()
        _write_json(scheduler.state_dict(), tmp / "scheduler.json")
        _write_json(rng_meta, tmp / "rng.json")
        _write_json(state, tmp / STATE_FILE)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        prune_checkpoints(output_dir, keep)
    accelerator.wait_for_everyone()
    return final


def load_sharded_checkpoint(accelerator, path: Path, scheduler) -> dict[str, Any]:
    """Load a DeepSpeed / FSDP checkpoint with accelerate. DeepSpeed reads its shards with `torch.load`; it is
    made to refuse anything but tensors and plain containers (`weights_only=True`), so a planted file cannot
    run code."""
    state = read_state(path)
    with _torch_load_weights_only():
        try:
            accelerator.load_state(str(path))
        except Exception as exc:  # noqa: BLE001 - any failure to unpickle safely is a refused checkpoint
            if "weights_only" in str(exc) or "Unsupported global" in str(exc):
                raise CheckpointError(f"checkpoint {path} holds objects other than tensors and was refused "
                                      f"(never unpickled): {str(exc).splitlines()[0]}") from None
            raise
    scheduler.load_state_dict(read_json(path / "scheduler.json"))
    return state


class _torch_load_weights_only:
    """Within the block, `torch.load` always loads with weights_only=True (numpy's scalar types allowed,
    as accelerate's own loader does), whatever its caller asked for."""

    def __enter__(self):
        self._original = torch.load

        def safe_load(*args, **kwargs):
            kwargs["weights_only"] = True
            return self._original(*args, **kwargs)

        torch.load = safe_load
        import torch.serialization as ser

        self._globals = ser.get_safe_globals()
        ser.add_safe_globals(_numpy_safe_globals())
        return self

    def __exit__(self, *exc):
        import torch.serialization as ser

        torch.load = self._original
        ser.clear_safe_globals()
        if self._globals:
            ser.add_safe_globals(self._globals)
        return False


def _numpy_safe_globals() -> list:
    """The types a sharded checkpoint may hold besides tensors: numpy's (accelerate's RNG states, as its own
    loader allows) and DeepSpeed's plain state records (loss scaler, ZeRO stage, fragment addresses). Each is a
    data class rebuilt from its fields; nothing else can be named, so no function runs while loading."""
    from accelerate.utils.other import TORCH_SAFE_GLOBALS

    out = list(TORCH_SAFE_GLOBALS)
    try:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address
    except ImportError:
        return out
    return out + [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def write_run_config(output_dir: Path, config: dict[str, Any]) -> None:
    with atomic_path(Path(output_dir) / "train_config.json") as tmp:
        tmp.write_text(json.dumps(config, ensure_ascii=False, indent=2, default=str), encoding="utf-8")


def clean_checkpoint_temps(output_dir: Path) -> None:
    """Temporary checkpoint folders a killed run left behind."""
    clean_stale_temps(checkpoint_dir(output_dir))
