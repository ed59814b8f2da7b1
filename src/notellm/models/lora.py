"""LoRA for every notellm model: which projections get adapters, and a dropout in front of them that is fast on CPUs.

All four trainers (NoteLLM, NoteLLM-2, popularity, cold start) wrap their backbone here, so "LoRA in the top N
layers" and the dropout speed-up mean the same thing everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from notellm.errors import NotellmError

DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a causal LM or of its bare decoder."""
    if getattr(model, "layers", None) is None and hasattr(model, "get_decoder"):
        model = model.get_decoder()
    layers = getattr(model, "layers", None)
    if layers is None:
        raise NotellmError(f"cannot find the decoder layers of {type(model).__name__}")
    return layers


def lora_target_regex(model: nn.Module, target_modules: Sequence[str], top_layers: int = 0) -> str:
    """A peft target pattern: the named projections, in every layer or only in the top `top_layers`
    (backward then stops at the lowest adapted layer, which is where the speed comes from)."""
    n = len(decoder_layers(model))
    if not 0 <= top_layers <= n:
        raise NotellmError(f"lora top_layers must be in 0..{n} for this backbone, got {top_layers}")
    layers = range(n - top_layers, n) if top_layers else range(n)
    names = "|".join(re.escape(m) for m in target_modules)
    return rf"(.*\.)?layers\.({'|'.join(str(i) for i in layers)})\.(.*\.)?({names})"


class FastDropout(nn.Dropout):
    """Inverted dropout that draws its mask as 16-bit integers, four per 64-bit draw, on CPU tensors.

    torch's CPU `bernoulli_` spends ~6 ns per element, and LoRA drops out the input of every adapted
    projection: a fifth of a Gemma-270M training step on a 2-core CPU. Drawing 16-bit integers and keeping
    those at or above round(p * 2^16) is 3x faster; p is then exact to 1/65536. On GPUs this is plain dropout.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or not x.is_cpu:
            return F.dropout(x, self.p, self.training, self.inplace)
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
        draws = words.view(torch.int16)[:n].view(x.shape)  # uniform over -32768..32767
        keep = draws >= round(self.p * 65536) - 32768
        return torch.where(keep, x * (1.0 / (1.0 - self.p)), 0.0)


def use_fast_dropout(model: nn.Module) -> int:
    """Swap every LoRA dropout of a peft model for FastDropout; returns how many were swapped."""
    swapped = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        for name, dropout in dropouts.items():
            if type(dropout) is nn.Dropout:
                dropouts[name] = FastDropout(dropout.p, dropout.inplace)
                swapped += 1
    return swapped


def add_lora(model: nn.Module, r: int, alpha: int, dropout: float, target_modules: Sequence[str],
             top_layers: int = 0, task_type: str | None = None, trainable_token_indices: list[int] | None = None):
    """Wrap `model` with LoRA adapters (peft) on `target_modules`, in all layers or the top `top_layers`."""
    from peft import LoraConfig, get_peft_model

    targets = lora_target_regex(model, target_modules, top_layers) if top_layers else list(target_modules)
    kwargs = {"trainable_token_indices": trainable_token_indices} if trainable_token_indices else {}
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type=task_type,
                        **kwargs)
    peft_model = get_peft_model(model, config)
    use_fast_dropout(peft_model)
    return peft_model


def adapters_in_float32(model: nn.Module, under_autocast: bool) -> None:
    """Trainable (adapter) weights in float32 over frozen, possibly bf16, base weights.

    `under_autocast`: every forward runs under bf16 autocast. The adapters then take their input as it comes:
    peft would copy each adapter's bf16 input to float32 (the adapter's dtype) only for autocast to copy it
    straight back, two copies of every adapted projection's input per step.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    if under_autocast:
        for module in model.modules():
            if isinstance(module, BaseTunerLayer):
                module.cast_input_dtype_enabled = False
