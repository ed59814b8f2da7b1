"""Gradient caching (GradCache, Gao et al. 2021): contrastive batches far larger than fit in memory at once.

1. Embed the whole batch in chunks without building a graph.
2. Compute the contrastive loss on those (detached) embeddings and take its gradient w.r.t. each embedding.
3. Re-run each chunk with a graph and back-propagate `<embedding, cached gradient>` plus the chunk's share of
   the generation loss. RNG states are replayed so dropout masks match step 1.

The parameter gradients equal those of the plain loss over the full batch (tested), while peak activation
memory is that of one chunk.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import torch

from notellm.losses.contrastive import global_sum


def _rows(batch: dict[str, torch.Tensor], start: int, stop: int) -> dict[str, torch.Tensor]:
    return {k: v[start:stop] for k, v in batch.items()}


def grad_cache_backward(module, batch: dict[str, torch.Tensor], chunk_notes: int, loss_scale: float = 1.0,
                        no_sync: Callable | None = None, autocast: Callable | None = None) -> dict[str, torch.Tensor]:
    """Backward of the NoteLLM loss over `batch` in chunks of `chunk_notes` rows (kept even: pairs stay whole).

    `module` is a TrainModule (possibly DDP-wrapped: pass `accelerator.no_sync` so only the last chunk syncs).
    Returns the loss terms like TrainModule.forward.
    """
    inner = getattr(module, "module", module)
    model, loss_fn = inner.model, inner.loss
    chunk_notes = max(2, chunk_notes - chunk_notes % 2)
    keys = batch.get("note_keys")
    batch = {k: v for k, v in batch.items() if k != "note_keys"}
    n = batch["input_ids"].shape[0]
    spans = [(s, min(s + chunk_notes, n)) for s in range(0, n, chunk_notes)]
    autocast = autocast or nullcontext
    # 1. embeddings without a graph, remembering each chunk's RNG state for the replay
    states, embeddings = [], []
    with torch.no_grad():
        for start, stop in spans:
            states.append(torch.get_rng_state())
            with autocast():
                embeddings.append(model(**_rows(batch, start, stop) | {"labels": None})["embeddings"].float())
    # 2. contrastive loss and its gradient w.r.t. the embeddings (and the learnable scale)
    emb = torch.cat(embeddings).requires_grad_(True)
    l_cl = loss_fn.contrastive(emb[0::2], emb[1::2], keys)
    a = loss_fn.gen_weight if inner.objective == "notellm" else 0.0
    ((l_cl / (1 + a)) * loss_scale).backward()
    emb_grad = emb.grad
    # 3. replay each chunk with a graph
    answer_tokens = global_sum((batch["labels"][:, 1:] != -100).sum()).clamp(min=1)
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    gen_total = torch.zeros(())
    for k, (start, stop) in enumerate(spans):
        sync = nullcontext() if (k == len(spans) - 1 or no_sync is None) else no_sync(module)
        with sync:
            torch.set_rng_state(states[k])
            rows = _rows(batch, start, stop)
            with autocast():
                out = model(**(rows if a else rows | {"labels": None}))
            surrogate = (out["embeddings"].float() * emb_grad[start:stop]).sum()
            if a:
                gen_sum = torch.nn.functional.cross_entropy(out["answer_logits"].float(), out["answer_labels"],
                                                            reduction="sum")
                surrogate = surrogate + (a / (1 + a)) * gen_sum * world / answer_tokens
                gen_total = gen_total + gen_sum.detach()
            (surrogate * loss_scale).backward()
    l_gen = gen_total * world / answer_tokens
    return {"loss": ((l_cl + a * l_gen) / (1 + a)).detach(), "contrastive": l_cl.detach(), "generative": l_gen,
            "scale": loss_fn.contrastive.scale.detach()}
