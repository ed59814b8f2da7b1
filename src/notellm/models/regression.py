"""A causal-LM backbone with a scalar regression head on the last non-padding token (RedNoob's model).

As Qwen3ForSequenceClassification, the score is a linear function of the last real token's final hidden
state; optional numeric features are concatenated to that state before the head. Differences:
- the pooled state goes through a parameter-free LayerNorm before the head (unit scale whatever the
  backbone; the training code can then start the head from a ridge fit on frozen states);
- only the decoder runs (no vocabulary projection: for Gemma 3 270M the 262k-row LM head costs more than
  all its layers);
- the last real token is found from the attention mask, and position ids are computed from the mask, so
  left and right padding give the same scores (HF's default positions shift left-padded sequences);
- LoRA (peft) can be limited to the top N decoder layers: backward then stops there, which is most of the
  saving on a CPU.

A trained model is a folder (`models.folder`): `adapter/` (peft LoRA of the decoder), `head.safetensors`, and
the card `notellm.json` (kind `popularity`: backbone id and seed, LoRA settings, input format, target
definition, feature names, normalisation statistics of target and features, held-out error, training summary).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from notellm.errors import NotellmError
from notellm.models.lora import LoraConfig, apply_lora


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... over the real tokens of each row, whatever side the padding is on (pads get 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position whose mask is 1 in each row (left or right padding)."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(-1)


def pool_last(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, last_token_index(attention_mask)]


def decoder_of(causal_lm: nn.Module) -> nn.Module:
    """The transformer body of a causal LM (embeddings + layers + final norm, no LM head)."""
    inner = getattr(causal_lm, "model", None)
    if inner is not None and hasattr(inner, "layers"):
        return inner
    if hasattr(causal_lm, "get_decoder"):
        return causal_lm.get_decoder()
    raise NotellmError(f"cannot find the decoder of {type(causal_lm).__name__}")


class NoteRegressor(nn.Module):
    """decoder -> hidden state of the last real token (+ features) -> Linear -> one score per note."""

    def __init__(self, decoder: nn.Module, hidden_size: int, n_features: int = 0):
        super().__init__()
        self.decoder = decoder
        self.n_features = n_features
        self.head = nn.Linear(hidden_size + n_features, 1)
        nn.init.zeros_(self.head.weight)  # start as the mean predictor (targets are standardised)
        nn.init.zeros_(self.head.bias)

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.decoder(input_ids=input_ids, attention_mask=attention_mask,
                           position_ids=position_ids_from_mask(attention_mask), use_cache=False)
        return pool_last(out.last_hidden_state, attention_mask).float()

    def head_input(self, pooled: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """LayerNorm (no parameters) of the pooled state, then the standardised features: every input of
        the head is on a unit scale, so one head learning rate suits any backbone (Gemma's final states
        are ~6x larger than unit)."""
        x = F.layer_norm(pooled.float(), (pooled.shape[-1],))
        if self.n_features:
            if features is None or features.shape != (pooled.shape[0], self.n_features):
                raise ValueError(f"the head expects {self.n_features} features per note")
            x = torch.cat([x, features.float()], dim=-1)
        return x

    def score(self, pooled: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        with torch.autocast(device_type=pooled.device.type, enabled=False):  # the head stays in float32
            return self.head(self.head_input(pooled, features)).squeeze(-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, features: torch.Tensor | None = None,
                return_pooled: bool = False):
        pooled = self.pooled(input_ids, attention_mask)
        score = self.score(pooled, features)
        return (score, pooled) if return_pooled else score


def add_regressor_lora(model: NoteRegressor, lora: LoraConfig) -> NoteRegressor:
    """Wrap the decoder with LoRA adapters; freeze everything else but the head."""
    for p in model.decoder.parameters():
        p.requires_grad_(False)
    model.decoder = apply_lora(model.decoder, lora)
    for p in model.head.parameters():
        p.requires_grad_(True)
    return model


def build_regressor(backbone: str, n_features: int = 0, lora: LoraConfig | None = None, seed: int = 0,
                    dtype: str = "float32"):
    """(NoteRegressor, tokenizer) from a backbone name (see models.backbone); LoRA applied when given."""
    from notellm.models.backbone import load_backbone

    causal_lm, tokenizer = load_backbone(backbone, dtype=dtype, seed=seed)
    decoder = decoder_of(causal_lm)
    hidden = causal_lm.config.get_text_config().hidden_size if hasattr(causal_lm.config, "get_text_config") \
        else causal_lm.config.hidden_size
    model = NoteRegressor(decoder, hidden, n_features)
    if lora is not None and lora.enabled:
        add_regressor_lora(model, lora)
    return model, tokenizer


def write_regressor(model: NoteRegressor, out: Path, card: dict[str, Any]) -> None:
    """Write adapter/, head.safetensors and the card into `out` (a folder `models.folder.saving` renames)."""
    from safetensors.torch import save_file

    from notellm.models.folder import write_card

    if hasattr(model.decoder, "peft_config"):
        model.decoder.save_pretrained(str(out / "adapter"))
    else:
        model.decoder.save_pretrained(str(out / "decoder"))
    save_file({k: v.detach().contiguous().cpu() for k, v in model.head.state_dict().items()}, str(out / "head.safetensors"))
    write_card(out, "popularity", card)


def load_regressor(model_dir: str | Path, merge: bool = False):
    """(NoteRegressor in eval mode, tokenizer, card) for a folder written by write_regressor."""
    from safetensors.torch import load_file

    from notellm.models.folder import expect_kind

    model_dir = Path(model_dir)
    meta = expect_kind(model_dir, "popularity")
    model, tokenizer = build_regressor(meta["backbone"], len(meta["features"]["names"]), None, meta.get("backbone_seed", 0))
    if (model_dir / "adapter").is_dir():
        from peft import PeftModel

        model.decoder = PeftModel.from_pretrained(model.decoder, str(model_dir / "adapter"))
        if merge:  # one matrix per projection (faster), but under bf16 autocast W + BA is rounded to 8 bits
            model.decoder = model.decoder.merge_and_unload()  # of mantissa and most of the small BA is lost
    elif (model_dir / "decoder").is_dir():
        from transformers import AutoModel

        model.decoder = AutoModel.from_pretrained(str(model_dir / "decoder"))
    model.head.load_state_dict(load_file(str(model_dir / "head.safetensors")))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer, meta
