"""Generation losses: next-token cross-entropy on answer tokens only (CSFT for NoteLLM, instruction SFT for
cold start).

Both are normalised by the answer-token count of the GLOBAL batch (times the world size), so the mean of the
processes' losses, which is what data parallel averages, is the single-process loss over the global batch,
whatever the number of processes and however the answer tokens fall between them.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from notellm.losses.contrastive import distributed, global_sum

IGNORE = -100


def _world() -> int:
    return dist.get_world_size() if distributed() else 1


def global_token_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """This process's share of the global per-token mean: total * world / global count."""
    return total * _world() / global_sum(count.to(total.device)).clamp(min=1)


class CollaborativeSFTLoss(nn.Module):
    """Mean next-token cross-entropy over answer tokens (labels != -100) of the global batch.

    `logits` are the LM's predictions at the positions in `labels` already shifted (logits[k] predicts
    labels[k]); pass only answer positions to avoid materialising the full vocabulary for every token.
    """

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        mask = labels != IGNORE
        total = F.cross_entropy(logits[mask].float(), labels[mask], reduction="sum")
        return global_token_mean(total, mask.sum())


class AnswerNLLLoss(nn.Module):
    """Mean negative log-likelihood of answer tokens from their log-probabilities (`token_logps` [B, T], zero
    where `mask` is False): the cold-start SFT loss, when the model's forward already gathered them."""

    def forward(self, token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return global_token_mean(-(token_logps * mask).sum(), mask.sum())
