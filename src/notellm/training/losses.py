"""NoteLLM's losses as small modules (sentence-transformers style), each testable on its own.

- GenerativeContrastiveLoss (GCL): symmetric in-batch InfoNCE over co-occurring note pairs, learnable scale.
- CollaborativeSFTLoss (CSFT): next-token loss on answer tokens only.
- NoteLLMLoss: L = (L_cl + a * L_gen) / (1 + a).

Both losses give the same value and gradients whether the global batch is on one process or spread over
several (embeddings are gathered WITH gradient; token counts are summed over processes).
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

    def forward(self, emb_a: torch.Tensor, emb_b: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        local = torch.stack([emb_a, emb_b], dim=1).reshape(-1, emb_a.shape[-1]).float()
        local = F.normalize(local, dim=-1)
        everyone, offset = gather_with_grad(local)
        logits = (local @ everyone.T) * self.scale
        masked = same_note_mask(keys, offset, local.shape[0], everyone.shape[0], local.device)
        logits = logits.masked_fill(masked, float("-inf"))
        partner = (torch.arange(local.shape[0], device=local.device) + offset) ^ 1  # interleaved: 2k <-> 2k+1
        return F.cross_entropy(logits, partner)


class CollaborativeSFTLoss(nn.Module):
    """Mean next-token cross-entropy over answer tokens (labels != -100) of the global batch.

    `logits` are the LM's predictions at the positions in `labels` already shifted (logits[k] predicts
    labels[k]); pass only answer positions to avoid materialising the full vocabulary for every token.
    Normalised by the global number of answer tokens, times the world size, so that the mean of the
    processes' losses is the global mean.
    """

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        mask = labels != -100
        total = F.cross_entropy(logits[mask].float(), labels[mask], reduction="sum")
        count = global_sum(mask.sum().to(logits.device)).clamp(min=1)
        world = dist.get_world_size() if distributed() else 1
        return total * world / count


class NoteLLMLoss(nn.Module):
    """L = (L_cl + a * L_gen) / (1 + a); a = 0.01 in the reference code."""

    def __init__(self, gen_weight: float = 0.01, init_log_scale: float = 3.0, max_scale: float = 100.0):
        super().__init__()
        self.gen_weight = gen_weight
        self.contrastive = GenerativeContrastiveLoss(init_log_scale, max_scale)
        self.generative = CollaborativeSFTLoss()

    def forward(self, emb_a, emb_b, answer_logits=None, answer_labels=None,
                keys: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        l_cl = self.contrastive(emb_a, emb_b, keys)
        l_gen = self.generation_term(answer_logits, answer_labels, l_cl.device)
        return {"loss": self.combine(l_cl, l_gen), "contrastive": l_cl.detach(), "generative": l_gen.detach(),
                "scale": self.contrastive.scale.detach()}

    def generation_term(self, answer_logits, answer_labels, device: torch.device) -> torch.Tensor:
        """L_gen, or 0 when there are no answers or generation is switched off (a = 0)."""
        if answer_logits is None or self.gen_weight == 0:
            return torch.zeros((), device=device)
        return self.generative(answer_logits, answer_labels)

    def combine(self, l_cl: torch.Tensor, l_gen: torch.Tensor) -> torch.Tensor:
        return (l_cl + self.gen_weight * l_gen) / (1 + self.gen_weight)
