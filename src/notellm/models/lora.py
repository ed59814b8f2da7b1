"""LoRA for every notellm model: one config (`LoraConfig`, the `lora:` section of every training config), one
applier (`apply_lora`), and a dropout and an adapter sum that are fast on CPUs.

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
        if not self.fast(x):
            return F.dropout(x, self.p, self.training, self.inplace)
        return torch.where(self.keep_mask(x), x * (1.0 / (1.0 - self.p)), 0.0)

    def fast(self, x: torch.Tensor) -> bool:
        """Whether this call draws its own mask (training, p > 0, a CPU tensor)."""
        return self.training and self.p > 0.0 and x.is_cpu

    def keep_mask(self, x: torch.Tensor) -> torch.Tensor:
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
        draws = words.view(torch.int16)[:n].view(x.shape)  # uniform over -32768..32767
        return draws >= round(self.p * 65536) - 32768

    def drop_unscaled(self, x: torch.Tensor) -> torch.Tensor:
        """The dropped input without the 1 / (1 - p): for a caller that folds the rescaling into a later,
        smaller tensor (the LoRA sum's alpha), one pass over the input less, forward and backward."""
        return torch.where(self.keep_mask(x), x, 0.0)


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


def fused_lora_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """peft's LoRA `Linear.forward` with the adapter's scaling and its sum into the base output done inside one
    `addmm` (base(x) + s * B(A(dropout(x))) as one matrix product with alpha = s, beta = 1), and FastDropout's
    1 / (1 - p) folded into that alpha.

    peft computes `result + lora_B(...) * scaling`: two more passes over every adapted projection's output
    (and one more in backward), about as many elements as the base projections write; the dropout's rescaling
    is one more pass over its input each way. The sum is the same up to float rounding (tests/test_lora.py), and
    the dropout masks are the same draws. Anything but one plain adapter (merged, disabled, DoRA or another
    variant, mixed batches, a LoRA bias, ZeRO-3 partitioned weights) takes peft's path.
    """
    name = self.active_adapters[0] if len(self.active_adapters) == 1 else None
    lora_b = self.lora_B[name] if name in self.lora_B else None
    if (lora_b is None or self.disable_adapters or self.merged or kwargs.get("adapter_names") is not None
            or name in self.lora_variant or lora_b.bias is not None or hasattr(lora_b.weight, "ds_id")):
        return type(self).forward(self, x, *args, **kwargs)
    result = self.base_layer(x, *args, **kwargs)
    x = self._cast_input_dtype(x, self.lora_A[name].weight.dtype)
    dropout, scale = self.lora_dropout[name], self.scaling[name]
    if isinstance(dropout, FastDropout) and dropout.fast(x):  # A is linear: A(m * x / (1 - p)) = A(m * x) / (1 - p)
        down, scale = self.lora_A[name](dropout.drop_unscaled(x)), scale / (1.0 - dropout.p)
    else:
        down = self.lora_A[name](dropout(x))
    if down.dtype != result.dtype:  # e.g. bf16 base weights without autocast: peft's promotion rules
        return (result + lora_b(down) * scale).to(result.dtype)
    out = result.shape[-1]
    fused = torch.addmm(result.reshape(-1, out), down.reshape(-1, down.shape[-1]), lora_b.weight.t(), alpha=scale)
    return fused.view(result.shape)


def use_fused_forward(model: nn.Module) -> int:
    """Give every peft LoRA `Linear` of `model` the fused forward above; returns how many."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    fused = 0
    for module in model.modules():
        if type(module) is LoraLinear:
            module.forward = fused_lora_forward.__get__(module)  # the instance's own: saving is unchanged
            fused += 1
    return fused


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
    use_fused_forward(peft_model)
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
