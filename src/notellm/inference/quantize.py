"""int8 embedding on CPUs: dynamic quantization of the decoder's Linear layers.

`quantize_int8(model)` replaces every `nn.Linear` of a NoteLLM's decoder (attention and MLP projections) by
torch's dynamically quantized Linear: weights int8 per output channel, activations quantized per batch on the
fly, int8 x int8 matmuls with int32 accumulation (fbgemm: AVX2 / AVX512-VNNI). The token embeddings, the
norms, the tied LM head (unused for embeddings) and the projection head stay float32, so the vectors keep
their size and normalisation; `benchmarks/embed_speed.py` reports their cosine to the float32 vectors.

Why torch's eager dynamic quantization and not ONNX Runtime: it needs no export step and no extra package,
works on every backbone `load_backbone` builds, and on this project's CPUs (no AMX) runs the projections about
twice as fast as float32. torch marks `torch.ao.quantization` as deprecated in favour of torchao; its eager
dynamic path still ships with torch 2.13, and this module is the one place to change if it goes.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

QUANTIZE_CHOICES = ("none", "int8")


def check_quantize(setting: str | None) -> str:
    """`none` | `int8` (None: none); anything else is a ConfigError naming the choices."""
    from notellm.errors import ConfigError

    setting = (setting or "none").strip().lower()
    if setting not in QUANTIZE_CHOICES:
        raise ConfigError(f"quantize must be one of {list(QUANTIZE_CHOICES)}, not {setting!r}")
    return setting


def int8_engine() -> str:
    """The quantized-kernel engine of this torch build ('x86' = fbgemm + oneDNN, else fbgemm/qnnpack)."""
    engines = torch.backends.quantized.supported_engines
    for name in ("x86", "fbgemm", "qnnpack"):
        if name in engines:
            return name
    from notellm.errors import NotellmError

    raise NotellmError(f"this torch build has no int8 kernels (quantized engines: {engines})")


def quantize_int8(model: nn.Module) -> nn.Module:
    """Dynamic int8 quantization of the decoder's Linear layers of a NoteLLM (or NoteLLM-2) in eval mode,
    in place; returns the model. The model must hold float32 weights (LoRA merged, as `load_notellm` does)."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    decoder = model.lm.get_decoder()
    if any(p.dtype != torch.float32 for p in decoder.parameters()):
        raise ValueError("int8 quantization needs float32 weights (load the model with bf16 off)")
    if any(hasattr(m, "lora_A") for m in decoder.modules()):
        raise ValueError("merge the LoRA adapters before quantizing (load_notellm(merge_lora=True))")
    torch.backends.quantized.engine = int8_engine()
    model.eval()
    with warnings.catch_warnings():  # torch's notice that eager quantization moves to torchao (see docstring)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        quantize_dynamic(decoder, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    model.quantized = "int8"
    return model


def count_int8_layers(model: nn.Module) -> int:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return sum(isinstance(m, DynamicLinear) for m in model.modules())
