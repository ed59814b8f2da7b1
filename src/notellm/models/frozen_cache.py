"""Cache of what the frozen bottom of a decoder computes, so training runs only the layers it trains.

With LoRA in the top N layers only (`lora.top_layers`), every layer below them is frozen and deterministic
(no dropout there: adapters and their dropout sit in the top layers), so the hidden state a prompt has when it
enters the first adapted layer never changes during training. A note appears in many pairs; its prompt (note +
task) recurs, so each distinct prompt's bottom states are computed once and the top layers read them from here.

Exact because prompts are right-padded and attention is causal: a row's valid positions never see its padding
or another row, so its bottom states depend on its own tokens only (and agree with a batched forward to
floating-point tolerance). How: while a batch runs, the bottom layers are swapped for modules that pass their
input through (zero compute) except the last, which hands the top layers the cached states; masks and rotary
embeddings are built by the decoder as usual. Misses are computed first, in one no-grad pass over the missing
rows that stops after the last bottom layer.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from notellm.models import packing
from notellm.models.lora import decoder_layers


class _Stop(Exception):
    """Raised by the hook that ends a bottom-only pass after the last frozen layer."""


class _PassThrough(nn.Module):
    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class _Inject(nn.Module):
    def __init__(self, states: torch.Tensor):
        super().__init__()
        self.states = states

    def forward(self, hidden_states, *args, **kwargs):
        return self.states.to(hidden_states.dtype)


def frozen_bottom_layers(decoder: nn.Module) -> int:
    """How many bottom decoder layers (and the embeddings below them) hold no trainable parameter."""
    embeddings = decoder.get_input_embeddings() if hasattr(decoder, "get_input_embeddings") else None
    if embeddings is not None and any(p.requires_grad for p in embeddings.parameters()):
        return 0
    for i, layer in enumerate(decoder_layers(decoder)):
        if any(p.requires_grad for p in layer.parameters()):
            return i
    return len(decoder_layers(decoder))


class FrozenLayerCache:
    """Bottom-layer hidden states per prompt (token ids), least recently used dropped beyond `max_bytes`."""

    def __init__(self, decoder: nn.Module, frozen_layers: int, max_bytes: int = 4 << 30):
        if frozen_layers < 1:
            raise ValueError("nothing to cache: the lowest decoder layer trains")
        self.decoder, self.frozen, self.max_bytes = decoder, frozen_layers, max_bytes
        self.entries: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0

    # ---- the cache ----
    def _keys(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[tuple[int, ...]]:
        lengths = attention_mask.sum(1).tolist()
        return [tuple(row[:n]) for row, n in zip(input_ids.tolist(), lengths)]

    def _store(self, key: tuple[int, ...], states: torch.Tensor) -> None:
        self.entries[key] = states
        self.bytes += states.numel() * states.element_size()
        while self.bytes > self.max_bytes and len(self.entries) > 1:
            _, old = self.entries.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()

    @torch.no_grad()
    def _compute_bottom(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Hidden states leaving the last frozen layer, for these rows (a forward that stops there)."""
        captured: list[torch.Tensor] = []

        def stop(_module, _inputs, output):
            captured.append(output[0] if isinstance(output, tuple) else output)
            raise _Stop

        handle = decoder_layers(self.decoder)[self.frozen - 1].register_forward_hook(stop)
        try:
            self.decoder(input_ids=input_ids, attention_mask=attention_mask)
        except _Stop:
            pass
        finally:
            handle.remove()
        return captured[0]

    def bottom_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[batch, width, hidden] bottom states of the batch (zeros at padding), from the cache or computed."""
        keys = self._keys(input_ids, attention_mask)
        batch = {k: self.entries[k] for k in dict.fromkeys(keys) if k in self.entries}
        missing = [k for k in dict.fromkeys(keys) if k not in batch]
        if missing:
            rows = [keys.index(k) for k in missing]
            width = max(len(k) for k in missing)
            computed = self._compute_bottom(input_ids[rows, :width], attention_mask[rows, :width])
            for key, states in zip(missing, computed):
                batch[key] = states[: len(key)].clone()
                self._store(key, batch[key])
        for key in batch:
            if key in self.entries:
                self.entries.move_to_end(key)
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        first = batch[keys[0]]
        out = torch.zeros(input_ids.shape[0], input_ids.shape[1], first.shape[-1], dtype=first.dtype,
                          device=first.device)
        for r, key in enumerate(keys):
            out[r, : len(key)] = batch[key]
        return out

    # ---- a forward that uses it ----
    @contextmanager
    def injected(self, states: torch.Tensor) -> Iterator[None]:
        """Inside: the decoder skips its frozen layers and starts the trained ones from `states`."""
        layers = decoder_layers(self.decoder)
        saved = [layers[i] for i in range(self.frozen)]
        try:
            for i in range(self.frozen - 1):
                layers[i] = _PassThrough()
            layers[self.frozen - 1] = _Inject(states)
            yield
        finally:
            for i, layer in enumerate(saved):
                layers[i] = layer

    def last_hidden_state(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The top layers from the cached states; on CPUs padding-free (models/packing.py) where it applies."""
        states = self.bottom_states(input_ids, attention_mask)
        if packing.packs(self.decoder, input_ids, attention_mask):
            with packing.packed(input_ids, attention_mask) as batch, self.injected(batch.pack(states)):
                return batch.unpack(self.decoder(**batch.decoder_inputs()).last_hidden_state)
        with self.injected(states):
            return self.decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def stats(self) -> dict[str, float]:
        seen = self.hits + self.misses
        return {"cache_hit_rate": self.hits / seen if seen else 0.0, "cache_gb": self.bytes / 2**30}
