"""int8 embedding on CPUs: SmoothQuant-style smoothing, then dynamic quantization of the decoder's Linears.

`quantize_int8(model)` replaces the `nn.Linear` layers of a NoteLLM's decoder (attention and MLP projections)
by torch's dynamically quantized Linear: weights int8 per output channel, activations quantized per batch on
the fly, int8 x int8 matmuls with int32 accumulation (fbgemm: AVX2 / AVX512-VNNI). The token embeddings, the
norms, the tied LM head (unused for embeddings) and the projection head stay float32, so the vectors keep
their size and normalisation; `benchmarks/embed_speed.py` reports their cosine to the float32 vectors.

Two things keep the vectors close to float32 (`benchmarks/int8_outliers.py` measures each):
- smoothing (below): a few activation channels of Gemma are hundreds of times larger than the rest, and one
  scale per activation tensor leaves the others a handful of int8 levels; per-channel scales from fixed
  calibration notes move that range into the weights, exactly (the model computes the same function before
  quantizing);
- one activation scale per token (`PerTokenInt8Linear`): torch's dynamic kernels take one scale for the whole
  input tensor, i.e. for every token of every note in the batch. Each token's row is divided by its own max
  |x| before the int8 kernel and its output multiplied back, so every row uses the full int8 range, and the
  kernel's tensor scale is the same for every batch: a note's vector no longer depends on its batch-mates.
  With it down_proj, which an earlier recipe kept in float32 (its input act(gate) * up keeps outliers after
  smoothing), quantizes too (on Gemma 3 270M min cosine .9954 with all seven projections int8, against .9925
  for the float32-down_proj recipe with one scale per batch).
`INT8_RECIPE` names these choices; embedding runs record it, so int8 vectors from another recipe never mix.

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
SMOOTH_ALPHA = 0.5  # a = .5 / .7 / .85 measured on Gemma 3 270M: .5 has the best min cosine
KEEP_FLOAT: tuple[str, ...] = ()  # Linear names left float32 (the per-batch-scale recipe needed "down_proj")
PER_TOKEN = True
CALIBRATION_NOTES = 32
CALIBRATION_SEED = 20261204
INT8_RECIPE = {"smooth_alpha": SMOOTH_ALPHA, "keep_float": list(KEEP_FLOAT),
               "activation_scale": "per_token" if PER_TOKEN else "per_batch",
               "calibration_notes": CALIBRATION_NOTES, "calibration_seed": CALIBRATION_SEED}


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


def quantize_int8(model: nn.Module, smooth_alpha: float | None = SMOOTH_ALPHA,
                  keep_float: tuple[str, ...] = KEEP_FLOAT, calibration: list[dict] | None = None,
                  per_token: bool = PER_TOKEN) -> nn.Module:
    """int8 quantization of the decoder's Linear layers of a NoteLLM (or NoteLLM-2) in eval mode, in place;
    returns the model. The model must hold float32 weights (LoRA merged, as `load_notellm` does).

    smooth_alpha: fold SmoothQuant scales with this exponent (from `calibration` notes, default the fixed
    `calibration_notes()`) into the decoder first; None skips it. keep_float: Linear names ending in one of
    these stay float32. per_token: one activation scale per token (`PerTokenInt8Linear`) instead of torch's one
    per batch. The defaults are `INT8_RECIPE`."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    decoder = model.lm.get_decoder()
    if any(p.dtype != torch.float32 for p in decoder.parameters()):
        raise ValueError("int8 quantization needs float32 weights (load the model with bf16 off)")
    if any(hasattr(m, "lora_A") for m in decoder.modules()):
        raise ValueError("merge the LoRA adapters before quantizing (load_notellm(merge_lora=True))")
    torch.backends.quantized.engine = int8_engine()
    model.eval()
    if smooth_alpha is not None:
        smooth_decoder(model, activation_maxima(model, calibration or calibration_notes()), smooth_alpha)
    targets = {name: per_channel_dynamic_qconfig for name, m in decoder.named_modules()
               if isinstance(m, nn.Linear) and not any(name.endswith(k) for k in keep_float)}
    with warnings.catch_warnings():  # torch's notice that eager quantization moves to torchao (see docstring)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        quantize_dynamic(decoder, targets, dtype=torch.qint8, inplace=True)
    if per_token:
        _scale_per_token(decoder)
    model.quantized = "int8"
    return model


class PerTokenInt8Linear(nn.Module):
    """A dynamically quantized Linear whose activations get one scale per token (row) instead of one per
    tensor: y = m * int8_linear(x / m) + b, m = max |x| of the row. The bias is added after the rescale (it
    must not be multiplied by m). Every row reaching the kernel has max |x| = 1, so the kernel's own
    per-tensor scale is the same whatever the batch holds."""

    def __init__(self, quantized: nn.Module):
        super().__init__()
        bias = quantized.bias()
        if bias is not None:
            quantized.set_weight_bias(quantized.weight(), None)
        self.quantized = quantized
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # max and -min instead of abs().amax(): two reductions and no full-size temporary
        m = torch.maximum(x.amax(-1, keepdim=True), x.amin(-1, keepdim=True).neg_()).clamp_(min=1e-12)
        y = self.quantized(x / m).mul_(m)
        return y if self.bias is None else y.add_(self.bias)


def _scale_per_token(decoder: nn.Module) -> None:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    for module in list(decoder.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, DynamicLinear):
                setattr(module, name, PerTokenInt8Linear(child))


def count_int8_layers(model: nn.Module) -> int:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return sum(isinstance(m, DynamicLinear) for m in model.modules())


# ---- SmoothQuant-style smoothing (issue 19) ----------------------------------------------------------------
# Dynamic int8 scales each batch's activations by one number per tensor. Gemma's activations have a few
# outlier channels (hundreds of times the others), so that one number leaves the other channels a handful of
# int8 levels and the vectors drift (min cosine .94 to float32 on demo notes). Dividing each input channel by
# s = max|x|^a / max|W|^(1-a) and multiplying the weight's column by s leaves the product unchanged and moves
# the outliers' range into the weights, which are quantized per output channel. The division is folded into
# the layer that produces the input (a norm's gain, v_proj's or up_proj's output rows), so it costs nothing.


def calibration_notes(n: int = CALIBRATION_NOTES) -> list[dict]:
    """Fixed calibration notes (the demo generator at a fixed seed): the same scales on every run and input,
    so a note's int8 vector never depends on which other notes a run embeds."""
    from notellm.data.demo import generate_demo

    return generate_demo(n_notes=n, seed=CALIBRATION_SEED).notes.to_pylist()


def activation_maxima(model: nn.Module, notes: list[dict], batch_size: int = 16) -> dict[str, torch.Tensor]:
    """Per input channel max |x| of every decoder Linear over `notes`' embedding prompts (float32 model)."""
    from notellm.inference.embed import embed_notes

    maxima: dict[str, torch.Tensor] = {}

    def record(name: str):
        def hook(_module, inputs, _output):
            x = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(0).float()
            maxima[name] = torch.maximum(maxima[name], x) if name in maxima else x
        return hook

    decoder = model.lm.get_decoder()
    hooks = [m.register_forward_hook(record(n)) for n, m in decoder.named_modules() if isinstance(m, nn.Linear)]
    try:
        embed_notes(model, notes, batch_size=batch_size)
    finally:
        for h in hooks:
            h.remove()
    return maxima


def _smoothing_scale(x_max: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    w_max = torch.stack([w.detach().abs().amax(0) for w in weights]).amax(0).float()
    s = x_max.clamp(min=1e-5).pow(alpha) / w_max.clamp(min=1e-5).pow(1 - alpha)
    return s.clamp(min=1e-5)


def _scale_columns(linears: list[nn.Linear], s: torch.Tensor) -> None:
    for lin in linears:
        lin.weight.data.mul_(s.to(lin.weight.dtype))


def _fold_into_norm(norm: nn.Module, s: torch.Tensor) -> bool:
    """Divide a norm's per-channel gain (`w`, or `1 + w` for Gemma) by s. False if it is not such a norm."""
    from notellm.models.backbone import rms_gain_offset

    offset = rms_gain_offset(norm) if getattr(norm, "weight", None) is not None else None
    if offset is None or norm.weight.shape != s.shape:
        return False
    with torch.no_grad():
        norm.weight.data.copy_((norm.weight.data + offset) / s.to(norm.weight.dtype) - offset)
    return True


def _fold_into_rows(lin: nn.Linear, s: torch.Tensor) -> None:
    lin.weight.data.div_(s.to(lin.weight.dtype)[:, None])
    if lin.bias is not None:
        lin.bias.data.div_(s.to(lin.bias.dtype))


def smooth_decoder(model: nn.Module, maxima: dict[str, torch.Tensor], alpha: float = SMOOTH_ALPHA) -> int:
    """Fold SmoothQuant scales into each decoder layer (float32, before quantizing); the model computes the
    same function (up to float rounding). Returns how many Linear inputs were smoothed. Layers whose names
    are not the Llama/Qwen/Gemma ones (`input_layernorm`, `self_attn.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj`)
    are left as they are."""
    decoder = model.lm.get_decoder()
    prefix = {id(m): n for n, m in decoder.named_modules()}
    smoothed = 0
    for layer in getattr(decoder, "layers", []):
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        name = prefix[id(layer)]
        mlp_norm = getattr(layer, "pre_feedforward_layernorm", None) or getattr(layer, "post_attention_layernorm", None)
        groups = [(getattr(layer, "input_layernorm", None), attn, ("q_proj", "k_proj", "v_proj"), "self_attn"),
                  (mlp_norm, mlp, ("gate_proj", "up_proj"), "mlp")]
        for norm, block, names, block_name in groups:
            linears = [getattr(block, n, None) for n in names] if block is not None else []
            key = f"{name}.{block_name}.{names[0]}"
            if norm is None or not all(isinstance(m, nn.Linear) for m in linears) or key not in maxima:
                continue
            s = _smoothing_scale(maxima[key], [m.weight for m in linears], alpha)
            if _fold_into_norm(norm, s):
                _scale_columns(linears, s)
                smoothed += len(linears)
        smoothed += _smooth_v_into_o(attn, maxima.get(f"{name}.self_attn.o_proj"), alpha)
        smoothed += _smooth_up_into_down(mlp, maxima.get(f"{name}.mlp.down_proj"), alpha)
    return smoothed


def _smooth_v_into_o(attn: nn.Module | None, x_max: torch.Tensor | None, alpha: float) -> int:
    """o_proj's input is attention-weighted v_proj outputs, one head copy per query head (grouped-query
    attention shares a kv head among `groups` query heads), so a scale per kv channel, folded into v_proj's
    rows, is exact. The scale of a kv channel takes the max over the query heads that read it."""
    v, o = getattr(attn, "v_proj", None), getattr(attn, "o_proj", None)
    if x_max is None or not isinstance(v, nn.Linear) or not isinstance(o, nn.Linear) or hasattr(attn, "v_norm"):
        return 0  # a norm after v_proj (Gemma 3n) would undo a row scale
    kv_width = v.out_features
    if o.in_features % kv_width:
        return 0
    groups = o.in_features // kv_width
    head_dim = getattr(attn, "head_dim", None) or kv_width
    kv_heads = kv_width // head_dim
    # o's input channel (query head h, d) reads kv head h // groups: view as (kv_heads, groups, head_dim)
    x_kv = x_max.reshape(kv_heads, groups, head_dim).amax(1).reshape(-1)
    w_kv = o.weight.detach().abs().amax(0).reshape(kv_heads, groups, head_dim).amax(1).reshape(-1).float()
    s = (x_kv.clamp(min=1e-5).pow(alpha) / w_kv.clamp(min=1e-5).pow(1 - alpha)).clamp(min=1e-5)
    _fold_into_rows(v, s)
    s_o = s.reshape(kv_heads, 1, head_dim).expand(kv_heads, groups, head_dim).reshape(-1)
    _scale_columns([o], s_o)
    return 1


def _smooth_up_into_down(mlp: nn.Module | None, x_max: torch.Tensor | None, alpha: float) -> int:
    """down_proj's input is act(gate(x)) * up(x): a scale folded into up_proj's rows passes through exactly."""
    up, down = getattr(mlp, "up_proj", None), getattr(mlp, "down_proj", None)
    if x_max is None or not isinstance(up, nn.Linear) or not isinstance(down, nn.Linear):
        return 0
    s = _smoothing_scale(x_max, [down.weight], alpha)
    _fold_into_rows(up, s)
    _scale_columns([down], s)
    return 1
