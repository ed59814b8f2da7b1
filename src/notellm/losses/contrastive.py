"""Contrastive losses: Generative Contrastive Learning (GCL, NoteLLM) and its masked form (mICL's image loss).

Both take embeddings of B pairs (rows a_i, b_i) and give the same value and gradients whether the global batch
is on one process or spread over several (embeddings are gathered WITH gradient).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All processes' `x` concatenated along dim 0 (gradients flow back to every process's part).

    Returns (gathered, offset of this process's rows). Without a process group: (x, 0).
    """
    if not distributed():
        return x, 0
    from torch.distributed.nn.functional import all_gather

    parts = all_gather(x.contiguous())
    offset = sum(p.shape[0] for p in parts[: dist.get_rank()])
    return torch.cat(parts, dim=0), offset


def gather_keys(keys: torch.Tensor) -> torch.Tensor:
    """All processes' note keys concatenated (no gradient: keys are integers)."""
    if not distributed():
        return keys
    parts = [torch.empty_like(keys) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, keys.contiguous())
    return torch.cat(parts)


def same_note_mask(keys: torch.Tensor | None, offset: int, n_local: int, n_all: int,
                   device: torch.device) -> torch.Tensor:
    """[n_local, n_all] True where column j must not be a negative of row i: j is i itself or, when note keys
    are given, j is another copy of i's note or of its partner's note (a popular note appears in several pairs
    of one batch; scoring its copy as a negative at cosine 1 pushes every embedding toward one point)."""
    rows = torch.arange(n_local, device=device) + offset
    mask = torch.zeros(n_local, n_all, dtype=torch.bool, device=device)
    mask[torch.arange(n_local, device=device), rows] = True
    if keys is not None:
        everyone = gather_keys(keys)
        mine, partners = everyone[rows], everyone[rows ^ 1]
        mask |= (everyone[None, :] == mine[:, None]) | (everyone[None, :] == partners[:, None])
        mask[torch.arange(n_local, device=device), rows ^ 1] = False
    return mask


def global_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum of a (non-differentiable) tensor over processes; the tensor itself without a process group."""
    if not distributed():
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value


class GenerativeContrastiveLoss(nn.Module):
    """In-batch InfoNCE for B pairs (2B notes): note i's positive is its partner, every other note a negative.

    sim = cos(n_i, n_j) * exp(t), t learnable (initialised at 3.0, scale ~20), scale clamped at `max_scale`;
    the diagonal (a note against itself) is masked, and so are other copies of the same notes when `keys` (one
    integer per note, in row order) are given. Rows are interleaved (a0, b0, a1, b1, ...), so the loss over all
    2B rows is symmetric in a and b.

    With a process group, each process's rows are scored against the gathered global batch. The returned loss
    is this process's mean; averaging the gradients over processes (as DDP does) gives exactly the gradients of
    the single-process loss over the global batch.
    """

    def __init__(self, init_log_scale: float = 3.0, max_scale: float = 100.0, learnable: bool = True):
        super().__init__()
        # shape (1,), not (): DeepSpeed broadcasts parameters as byte views, which 0-dim tensors cannot give
        self.log_scale = nn.Parameter(torch.tensor([float(init_log_scale)]), requires_grad=learnable)
        self.max_log_scale = math.log(max_scale)

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.clamp(max=self.max_log_scale).exp().squeeze(0)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "log_scale"
        if key in state_dict and state_dict[key].dim() == 0:  # checkpoints written before the (1,) shape
            state_dict[key] = state_dict[key].reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, emb_a: torch.Tensor, emb_b: torch.Tensor, keys: torch.Tensor | None = None,
                negatives: torch.Tensor | None = None, negative_keys: torch.Tensor | None = None,
                false_negative_margin: float | None = None) -> torch.Tensor:
        """`negatives`: mined hard negatives, any number of extra notes that are negatives of every row (their
        `negative_keys` mask them where they are a row's own note or partner). `false_negative_margin`: a
        negative whose cosine to a row exceeds the row's positive cosine + margin is masked, as it is more
        likely an unlabelled positive than a negative (Qwen3-Embedding's rule)."""
        local = torch.stack([emb_a, emb_b], dim=1).reshape(-1, emb_a.shape[-1]).float()
        local = F.normalize(local, dim=-1)
        everyone, offset = gather_with_grad(local)
        partner = (torch.arange(local.shape[0], device=local.device) + offset) ^ 1  # interleaved: 2k <-> 2k+1
        masked = same_note_mask(keys, offset, local.shape[0], everyone.shape[0], local.device)
        if negatives is not None:
            extra, _ = gather_with_grad(F.normalize(negatives.float(), dim=-1))
            masked = torch.cat([masked, self._negative_mask(keys, negative_keys, offset, local.shape[0],
                                                            extra.shape[0], local.device)], dim=1)
            everyone = torch.cat([everyone, extra])
        cosines = local @ everyone.T
        if false_negative_margin is not None:
            rows = torch.arange(local.shape[0], device=local.device)
            positive = cosines[rows, partner].detach()
            too_close = cosines.detach() > positive[:, None] + false_negative_margin
            too_close[rows, partner] = False
            masked = masked | too_close
        logits = (cosines * self.scale).masked_fill(masked, float("-inf"))
        return F.cross_entropy(logits, partner)

    @staticmethod
    def _negative_mask(keys, negative_keys, offset: int, n_local: int, n_extra: int,
                       device: torch.device) -> torch.Tensor:
        """[n_local, n_extra] True where a hard negative is the row's own note or its partner's."""
        if keys is None or negative_keys is None:
            return torch.zeros(n_local, n_extra, dtype=torch.bool, device=device)
        everyone, extra = gather_keys(keys), gather_keys(negative_keys)
        rows = torch.arange(n_local, device=device) + offset
        return (extra[None, :] == everyone[rows][:, None]) | (extra[None, :] == everyone[rows ^ 1][:, None])


class MaskedGenerativeContrastiveLoss(GenerativeContrastiveLoss):
    """GCL over the pairs flagged valid only (the mICL image loss: a pair counts when both notes have an image
    vector). Invalid rows are neither queries nor negatives. With every pair valid it equals GCL."""

    def forward(self, emb_a: torch.Tensor, emb_b: torch.Tensor, pair_valid: torch.Tensor | None = None) -> torch.Tensor:
        # one process with every pair valid: plain GCL. With a process group every process takes the masked
        # path, so all of them make the same collective calls.
        if pair_valid is None or (bool(pair_valid.all()) and not distributed()):
            return super().forward(emb_a, emb_b)
        local = torch.stack([emb_a, emb_b], dim=1).reshape(-1, emb_a.shape[-1]).float()
        local = F.normalize(local, dim=-1)
        valid = pair_valid.repeat_interleave(2)
        everyone, offset = gather_with_grad(local)
        valid_all, _ = gather_with_grad(valid.float())
        logits = (local @ everyone.T) * self.scale
        logits = logits.masked_fill(~valid_all.bool()[None, :], float("-inf"))
        rows = torch.arange(local.shape[0], device=local.device)
        logits[rows, rows + offset] = float("-inf")
        if not bool(valid.any()):
            return local.sum() * 0.0  # keeps every parameter in the graph (DDP), contributes nothing
        partner = (rows + offset) ^ 1
        return F.cross_entropy(logits[valid], partner[valid])
