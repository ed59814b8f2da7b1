"""The one place that decides device, precision and CPU threads, for training, inference and serving alike.

- `resolve_device("auto")`: `cuda` when a GPU is visible, else `cpu`; any torch device string is kept.
- `resolve_bf16("auto", device)`: bf16 where the hardware runs it natively (CUDA with bf16 support; a CPU
  whose oneDNN has bf16 kernels, i.e. AVX512-BF16 or AMX, checked by running a tiny matmul), else float32.
  `true` / `false` force it.
- `autocast(device, enabled)`: the bf16 autocast context for that device (a no-op when disabled).
- `rewarded_threads()`: how many CPU threads pay off here (1 when one thread runs a matmul about as fast as all
  of them: `notellm embed`'s default).
- `weights_dtype(bf16, trains_all_weights)`: frozen base weights in bf16 when bf16 is on and only adapters
  train (the adapters stay float32: stable and about 3x faster than float32 on CPUs with bf16 units); float32
  when every weight trains (AdamW on bf16 weights loses small updates).
"""

from __future__ import annotations

import functools
import os
from contextlib import nullcontext
from typing import Any

from notellm.errors import ConfigError

BF16_SETTINGS = ("auto", "true", "false")


def resolve_device(setting: str | None = "auto") -> str:
    import torch

    setting = (setting or "auto").strip()
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {setting!r}: no CUDA device is visible here (use device=auto or cpu)")
    return setting


@functools.lru_cache(maxsize=None)
def cpu_bf16_works() -> bool:
    """True when this CPU runs bf16 matmuls natively (oneDNN says so and a tiny autocast matmul runs)."""
    import torch

    try:
        if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            return False
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = torch.ones(8, 8) @ torch.ones(8, 8)
        return out.dtype == torch.bfloat16 and bool(out[0, 0] == 8)
    except (RuntimeError, AttributeError):
        return False


def bf16_supported(device: str = "auto") -> bool:
    import torch

    device = resolve_device(device)
    if device.startswith("cuda"):
        return bool(torch.cuda.is_bf16_supported())
    return cpu_bf16_works()


def resolve_bf16(setting: Any = "auto", device: str = "auto") -> bool:
    """`auto` | `true` | `false` (YAML booleans too) -> whether to run in bf16 on `device`."""
    if setting is True or setting == "true":
        return True
    if setting is False or setting == "false":
        return False
    if setting in (None, "auto"):
        return bf16_supported(device)
    raise ConfigError(f"bf16 must be one of {list(BF16_SETTINGS)}, not {setting!r}")


def autocast(device: str, enabled: bool):
    """bf16 autocast on `device` (its type: `cuda:1` -> `cuda`), or nothing."""
    if not enabled:
        return nullcontext()
    import torch

    return torch.autocast(device.split(":")[0], dtype=torch.bfloat16)


def weights_dtype(bf16: bool, trains_all_weights: bool) -> str:
    return "bfloat16" if bf16 and not trains_all_weights else "float32"


def set_threads(threads: int | None) -> None:
    """torch's CPU threads (0 / None: leave torch's default). OpenMP busy-waiting is switched off first: on a
    CPU shared with other jobs it made forward passes several times slower."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if threads:
        import torch

        torch.set_num_threads(int(threads))


@functools.lru_cache(maxsize=None)
def rewarded_threads(max_threads: int | None = None, min_speedup: float = 1.3) -> int:
    """The torch CPU thread count this machine rewards: all of its cores when a float32 matmul runs at least
    `min_speedup` x faster on them than on one thread, else 1.

    A 2-vCPU VM whose vCPUs share one physical core (or a CPU that other jobs keep busy) runs a matmul about
    as fast on one thread as on two; the second thread then only adds synchronisation, and leaves no core to
    tokenising or the other jobs. Measured once per process on a 256 x 256 matmul, best of 3 runs each way
    (~0.05 s on idle cores)."""
    import time

    import torch

    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores = max(1, min(max_threads or available, available))
    if cores == 1:
        return 1
    a = torch.randn(256, 256)
    before = torch.get_num_threads()

    def best_seconds(threads: int) -> float:
        torch.set_num_threads(threads)
        a @ a  # warm-up: the thread pool, the kernel
        times = []
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(4):
                a @ a
            times.append(time.perf_counter() - start)
        return min(times)

    try:
        one, many = best_seconds(1), best_seconds(cores)
    finally:
        torch.set_num_threads(before)
    return cores if one / many >= min_speedup else 1


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), for every benchmark's header."""
    import platform
    from pathlib import Path

    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_summary() -> str:
    """One line naming what a measurement ran on: CPU model, cores, torch threads, the bf16 path, any GPU."""
    from pathlib import Path

    import torch

    flags = ""
    info = Path("/proc/cpuinfo")
    if info.exists():
        text = info.read_text(errors="replace")
        flags = ", ".join(f for f in ("amx_bf16", "avx512_bf16", "avx512_vnni") if f in text)
    gpu = f"; GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (f"CPU {cpu_model()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
            f"{'; ' + flags if flags else ''}){gpu}; torch {torch.__version__}")
