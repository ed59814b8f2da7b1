"""Padding-free decoder forward for right-padded CPU batches: the batch's real tokens run as one packed row.

A batch of notes padded to its longest row spends the projections and MLPs (nearly all of a step's matrix
products) on padding: on the demo corpus 16 notes of 103 tokens on average pad to 124, a fifth more rows.
Here every real token is concatenated into one row of T tokens, positions restart at 0 for each note (RoPE sees
each note exactly as before), every token-wise layer runs on T rows, and only attention goes back to the padded
[batch, heads, longest, dim] layout for one causal `scaled_dot_product_attention` call, where padding never
reaches a real token (causal attention, padding on the right). The result is the padded batch's last hidden
states, zeros at padding: the same numbers as the padded forward up to float rounding (tests/test_packing.py).
`NoteLLM.hidden_states` and the frozen-layer cache's top layers (models/frozen_cache.py) run this way.
This is TRL's padding-free training (`padding_free=True`, flash-attention's varlen kernels on GPUs) done with
the sdpa kernel CPUs have.

How it reaches the attention: the "sdpa" entry of transformers' `AttentionInterface` becomes a dispatcher that
runs the packed attention inside `packed(...)` in the calling thread (a context variable) and
transformers' own sdpa otherwise, so every other model and call in the process behaves exactly as before, and
concurrent requests in a server's threads never see each other's packing. The decoder gets a placeholder 4-D
mask, which transformers passes through as it is: no [T, T] mask is built.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

enabled = True  # NoteLLM.hidden_states packs CPU batches; benchmarks/train_speed.py --packing off clears it


@dataclass
class Packing:
    """Where the packed row's tokens sit in the padded [batch, longest] layout."""

    slots: torch.Tensor     # [T] index of each real token in the flattened [batch * longest] layout
    fill: torch.Tensor      # [batch * longest] index of the packed token each padded slot takes (padding: any real one)
    batch: int
    longest: int


_current: contextvars.ContextVar[Packing | None] = contextvars.ContextVar("notellm_packing", default=None)


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                     sliding_window=None, softcap=None, **kwargs):
    """transformers attention function: query [1, heads, T, dim] of the packed row -> [1, T, heads, dim]."""
    packing = _current.get()
    if packing is None:
        raise RuntimeError("packed attention outside notellm.models.packing.packed")
    if softcap is not None:
        raise RuntimeError("packed attention has no logit soft-capping")

    def padded(x: torch.Tensor) -> torch.Tensor:  # [1, h, T, d] -> [batch, h, longest, d]
        h, d = x.shape[1], x.shape[-1]
        x = x[0].index_select(1, packing.fill)
        return x.view(h, packing.batch, packing.longest, d).transpose(0, 1)

    out = F.scaled_dot_product_attention(padded(query), padded(key), padded(value), is_causal=True, scale=scaling,
                                         dropout_p=dropout if module.training else 0.0,
                                         enable_gqa=query.shape[1] != key.shape[1])
    heads, dim = out.shape[1], out.shape[-1]
    out = out.transpose(1, 2).reshape(packing.batch * packing.longest, heads, dim).index_select(0, packing.slots)
    return out[None], None


def sdpa_or_packed(module, query, key, value, attention_mask, **kwargs):
    """The "sdpa" attention function while notellm is imported: packed inside `packed_forward`, transformers'
    sdpa everywhere else."""
    if _current.get() is None:
        return _transformers_sdpa(module, query, key, value, attention_mask, **kwargs)
    return packed_attention(module, query, key, value, attention_mask, **kwargs)


_transformers_sdpa = None


def _register() -> None:
    global _transformers_sdpa
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    current = ALL_ATTENTION_FUNCTIONS["sdpa"]
    if current is not sdpa_or_packed:
        _transformers_sdpa = current
        AttentionInterface.register("sdpa", sdpa_or_packed)


def right_padded(attention_mask: torch.Tensor) -> bool:
    """Every row's real tokens first, then its padding."""
    lengths = attention_mask.sum(1)
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return bool((attention_mask.bool() == (positions[None, :] < lengths[:, None])).all())


def can_pack(decoder, attention_mask: torch.Tensor) -> bool:
    """Packing gives the padded forward's states: sdpa attention without soft-capping, every row within the
    sliding window, padding on the right, no empty row."""
    config = decoder.config
    if config._attn_implementation != "sdpa" or getattr(config, "attn_logit_softcapping", None):
        return False
    window = getattr(config, "sliding_window", None)
    if window is not None and attention_mask.shape[1] > window:
        return False
    return right_padded(attention_mask) and bool((attention_mask.sum(1) > 0).all())


def packs(decoder, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> bool:
    """Whether a forward of this batch runs packed: on CPUs (GPUs pad cheaply, and under FSDP / ZeRO-3 the
    usual path is the tested one), packing on, and `can_pack`."""
    return input_ids.is_cpu and enabled and can_pack(decoder, attention_mask)


@contextlib.contextmanager
def packed(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Iterator["PackedInputs"]:
    """Inside: sdpa attention in this thread runs packed for this right-padded batch (`can_pack`); yields the
    decoder's packed inputs and the maps between the padded and the packed layouts."""
    _register()
    batch, longest = input_ids.shape
    real = attention_mask.bool().reshape(-1)
    slots = real.nonzero().squeeze(1)
    lengths = attention_mask.sum(1)
    positions = torch.arange(longest, device=input_ids.device).expand(batch, longest).reshape(-1)[slots]
    # each padded slot takes the packed index of its row's last real token: its key is never attended by a
    # real query (causal), its query's output is dropped
    packed_index = torch.cumsum(real.long(), 0) - 1
    row_last = (torch.cumsum(lengths, 0) - 1).repeat_interleave(longest)
    fill = torch.where(real, packed_index, row_last)
    layout = Packing(slots=slots, fill=fill, batch=batch, longest=longest)
    token = _current.set(layout)
    try:
        yield PackedInputs(layout, input_ids.reshape(-1)[slots][None], positions[None])
    finally:
        _current.reset(token)


@dataclass
class PackedInputs:
    layout: Packing
    input_ids: torch.Tensor      # [1, T]
    position_ids: torch.Tensor   # [1, T], restarting at 0 for each row

    def decoder_inputs(self) -> dict[str, torch.Tensor]:
        # a 4-D mask passes through transformers untouched; the packed attention does not read it
        placeholder = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=self.input_ids.device)
        return {"input_ids": self.input_ids, "position_ids": self.position_ids, "attention_mask": placeholder}

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """[batch, longest, ...] -> [1, T, ...]: the real tokens' rows."""
        return padded.reshape(-1, *padded.shape[2:]).index_select(0, self.layout.slots)[None]

    def unpack(self, hidden: torch.Tensor) -> torch.Tensor:
        """[1, T, hidden] -> [batch, longest, hidden], zeros at padding."""
        rows = self.layout.batch * self.layout.longest
        out = hidden.new_zeros(rows, hidden.shape[-1]).index_copy(0, self.layout.slots, hidden[0])
        return out.view(self.layout.batch, self.layout.longest, -1)


def packed_forward(decoder, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The decoder's last hidden states [batch, longest, hidden] of a right-padded batch (`can_pack`), computed
    on its real tokens only; zeros at padding."""
    with packed(input_ids, attention_mask) as batch:
        return batch.unpack(decoder(**batch.decoder_inputs()).last_hidden_state)


__all__ = ["PackedInputs", "can_pack", "packed", "packed_attention", "packed_forward", "packs", "right_padded",
           "sdpa_or_packed"]
