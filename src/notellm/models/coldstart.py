"""The cold-start model (MultiSmpLLM): a causal LM tuned to answer "what score will this post get" from a
user's past posts, by LoRA or by training only its last layers (Freeze).

A trained model is a folder (`models.folder`, kind `coldstart`): the peft adapter (LoRA) or the trained layers
as `trainable.safetensors` (Freeze), plus the card `notellm.json` (backbone, method, LoRA settings, weights
dtype, max length, the training summary).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from notellm.errors import ConfigError, NotellmError
from notellm.models.lora import LoraConfig, apply_lora, decoder_layers

METHODS = ("lora", "freeze")


@dataclass
class ColdStartModelConfig:
    backbone: str = "gemma-3-270m"      # offline default; any HF id or local folder
    method: str = "lora"                # lora (the `lora:` section) | freeze (train the last freeze_last_n layers)
    freeze_last_n: int = 2              # Freeze: train only the last N decoder layers
    dtype: str = "auto"                 # frozen weights: auto (bf16 when bf16 is on and LoRA trains) | float32 |
                                        # bfloat16
    max_length: int = 384               # prompt + answer tokens; longer prompts lose their oldest tokens

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"model.method must be one of {list(METHODS)}, not {self.method!r}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"model.dtype must be auto, float32 or bfloat16, not {self.dtype!r}")
        if self.max_length < 16:
            raise ConfigError(f"model.max_length must be >= 16, got {self.max_length}")

    def weights_dtype(self, bf16: bool) -> str:
        from notellm.device import weights_dtype

        return self.dtype if self.dtype != "auto" else weights_dtype(bf16, trains_all_weights=self.method == "freeze")


def make_trainable(model, mcfg: ColdStartModelConfig, lora: LoraConfig):
    """Apply LoRA or Freeze to a freshly loaded backbone; return the model to train."""
    if mcfg.method == "lora":
        return apply_lora(model, lora, task_type="CAUSAL_LM")
    layers = decoder_layers(model)
    if not 1 <= mcfg.freeze_last_n <= len(layers):
        raise ConfigError(f"model.freeze_last_n must be in 1..{len(layers)}, got {mcfg.freeze_last_n}")
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in list(layers)[-mcfg.freeze_last_n:]:
        for p in layer.parameters():
            p.requires_grad_(True)
    return model


def write_coldstart(model, mcfg: ColdStartModelConfig, lora: LoraConfig, out: Path, info: dict[str, Any],
                    dtype: str) -> None:
    """The adapter (LoRA) or the trained layers (Freeze), and the card, into `out`."""
    from notellm.models.folder import write_card

    if mcfg.method == "lora":
        model.save_pretrained(out)
    else:
        from safetensors.torch import save_file

        tensors = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(tensors, str(out / "trainable.safetensors"))
    write_card(out, "coldstart", {"backbone": mcfg.backbone, "model": asdict(mcfg), "lora": asdict(lora),
                                  "weights_dtype": dtype, **info})


def load_coldstart_model(model_dir: str | Path, trainable: bool = False, device: str = "auto", bf16: bool = False):
    """(model, tokenizer, ColdStartModelConfig) for a folder written by write_coldstart (older
    `notellm_coldstart.json` folders too)."""
    from notellm.device import resolve_device
    from notellm.models.backbone import load_backbone
    from notellm.models.folder import expect_kind

    model_dir = Path(model_dir)
    card = expect_kind(model_dir, "coldstart")
    section = dict(card["model"])
    legacy_lora = section.pop("lora", None)  # folders written before the shared `lora:` section
    mcfg = ColdStartModelConfig(**{k: v for k, v in section.items() if k in ColdStartModelConfig.__dataclass_fields__})
    lora_section = dict(card.get("lora") or legacy_lora or {})
    if "last_n_layers" in lora_section:
        lora_section["top_layers"] = lora_section.pop("last_n_layers") or 0
    lora = LoraConfig(**{k: v for k, v in lora_section.items() if k in LoraConfig.__dataclass_fields__})
    dtype = card.get("weights_dtype") or mcfg.weights_dtype(bf16)
    model, tokenizer = load_backbone(mcfg.backbone, dtype=dtype)
    model = model.to(resolve_device(device))
    if mcfg.method == "lora":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(model_dir), is_trainable=trainable)
    else:
        from safetensors.torch import load_file

        model = make_trainable(model, mcfg, lora)
        state = load_file(str(model_dir / "trainable.safetensors"))
        missing = set(state) - {n for n, _ in model.named_parameters()}
        if missing:
            raise NotellmError(f"{model_dir}: weights for unknown parameters {sorted(missing)[:3]}")
        model.load_state_dict(state, strict=False)
        if not trainable:
            for p in model.parameters():
                p.requires_grad_(False)
    model.train(trainable)
    return model, tokenizer, mcfg
