"""LoRA for every notellm model: one config (`LoraConfig`, the `lora:` section of every training config), one
applier (`apply_lora`), and a dropout in front of the adapters that is fast on CPUs.

All four model kinds (NoteLLM, NoteLLM-2, popularity, cold start) wrap their backbone here, so "LoRA in the top N
layers" and the dropout speed-up mean the same thing everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from notellm.errors import ConfigError, NotellmError

DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraConfig:
    """The `lora:` section of every training config."""

    enabled: bool = True              # false: train every weight (full fine-tuning)
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    top_layers: int = 0               # adapters only in the last N decoder layers (0: all); backward stops there
    train_emb_token: bool = False     # NoteLLM: train the [EMB] input row too (peft trainable tokens). Off by
                                      # default: with before_emb pooling the row only feeds CSFT, and on
                                      # tied-embedding models (Gemma) its gradient costs a vocabulary x hidden
                                      # matmul, +27% a step

    def __post_init__(self):
        if self.r < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1 or self.top_layers < 0:
            raise ConfigError(f"lora: r >= 1, alpha > 0, 0 <= dropout < 1 and top_layers >= 0 are needed "
                              f"(got r={self.r}, alpha={self.alpha}, dropout={self.dropout}, "
                              f"top_layers={self.top_layers})")
        if not self.target_modules:
            raise ConfigError("lora.target_modules is empty")


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
        raise ConfigError(f"lora.top_layers must be in 0..{n} for this backbone ({n} layers), got {top_layers}")
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


def apply_lora(model: nn.Module, cfg: LoraConfig, task_type: str | None = None,
               trainable_token_indices: list[int] | None = None) -> nn.Module:
    """Wrap `model` (a causal LM or a bare decoder) with peft LoRA adapters as `cfg` says; only the adapters
    (and the trainable token rows, if any) require grad afterwards. Returns the peft model."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets = lora_target_regex(model, cfg.target_modules, cfg.top_layers) if cfg.top_layers \
        else list(cfg.target_modules)
    kwargs = {"trainable_token_indices": trainable_token_indices} if trainable_token_indices else {}
    config = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                            task_type=task_type, **kwargs)
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as exc:  # e.g. no module named like target_modules in this backbone
        raise ConfigError(f"lora: {exc}") from None
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
