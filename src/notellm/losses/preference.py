"""Preference losses for aligning a popularity predictor: DPO, DPOP (fixed lambda) and IDPOP (MultiSmpLLM).

All three take the summed answer log-probabilities of the chosen (y_w) and rejected (y_l) answers under the
policy pi_theta and under the frozen reference pi_ref (the SFT model), with
    h = [log pi_theta(y_w|x) - log pi_ref(y_w|x)] - [log pi_theta(y_l|x) - log pi_ref(y_l|x)].

- DPO (eq. 7):      L = -log sigma(beta * h)
- DPOP / IDPOP (eq. 12, the penalty outside the sigmoid as the paper writes it):
                    L = -log sigma(beta * h) + w_j * max(0, log pi_ref(y_w|x) - log pi_theta(y_w|x))
  with w_j = lambda for DPOP and w_j = mu_j for IDPOP (eq. 14):
                    mu_j = lambda / (W_{j,c} - W_{j,r} + delta),
                    W = 10 * exp(-alpha * M / (M_max - M_min))                                    (eq. 13)
  where M is the absolute error |predicted score - true score| of an answer, and M_max / M_min are the
  largest and smallest absolute errors over all answers (chosen and rejected) of the alignment set D_A.
  An answer without a number has M = inf, so W = 0.
- placement="inside" puts the penalty inside the sigmoid, as Smaug's DPO-Positive does:
                    L = -log sigma(beta * (h - w_j * max(0, log pi_ref(y_w|x) - log pi_theta(y_w|x))))

The penalty is zero whenever the policy gives the chosen answer at least the reference's log-probability, so
it only acts against DPO's failure mode of lowering the chosen answer's absolute probability.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

LOSS_KINDS = ("dpo", "dpop", "idpop")


def answer_weights(errors: torch.Tensor, alpha: float, m_min: float, m_max: float) -> torch.Tensor:
    """Eq. 13: W = 10 * exp(-alpha * M / (M_max - M_min)); an infinite error (no number) gives 0."""
    spread = m_max - m_min
    if not spread > 0:
        raise ValueError(f"M_max - M_min must be > 0 (got M_min={m_min}, M_max={m_max})")
    return 10.0 * torch.exp(-alpha * errors.double() / spread)


def idpop_mu(
    err_chosen: torch.Tensor, err_rejected: torch.Tensor, lam: float, alpha: float, delta: float,
    m_min: float, m_max: float,
) -> torch.Tensor:
    """Eq. 14: mu_j = lambda / (W_c - W_r + delta), one per pair."""
    w_c = answer_weights(err_chosen, alpha, m_min, m_max)
    w_r = answer_weights(err_rejected, alpha, m_min, m_max)
    return (lam / (w_c - w_r + delta)).float()


def error_range(errors: Sequence[float]) -> tuple[float, float]:
    """(M_min, M_max) over the finite absolute errors of the alignment set."""
    finite = [e for e in errors if math.isfinite(e)]
    if not finite:
        raise ValueError("no answer in the alignment set has a finite error")
    return min(finite), max(finite)


@dataclass
class PreferenceLossOutput:
    loss: torch.Tensor            # mean over the batch
    dpo_term: torch.Tensor        # per pair: -log sigma(beta * h)  (inside placement: with the penalty)
    penalty: torch.Tensor         # per pair: w_j * max(0, ref_chosen - policy_chosen)
    chosen_shift: torch.Tensor    # per pair: policy_chosen - ref_chosen (negative = chosen answer lost mass)
    margin: torch.Tensor          # per pair: beta * h


class PreferenceLoss(nn.Module):
    """DPO, DPOP or IDPOP on summed answer log-probabilities (see module doc for the formulas)."""

    def __init__(self, kind: str = "idpop", beta: float = 0.1, lam: float = 1.0, placement: str = "outside"):
        super().__init__()
        if kind not in LOSS_KINDS:
            raise ValueError(f"kind must be one of {LOSS_KINDS}, got {kind!r}")
        if placement not in ("outside", "inside"):
            raise ValueError(f"placement must be 'outside' or 'inside', got {placement!r}")
        self.kind, self.beta, self.lam, self.placement = kind, beta, lam, placement

    def forward(
        self,
        policy_chosen: torch.Tensor,
        policy_rejected: torch.Tensor,
        ref_chosen: torch.Tensor,
        ref_rejected: torch.Tensor,
        mu: torch.Tensor | None = None,
    ) -> PreferenceLossOutput:
        chosen_shift = policy_chosen - ref_chosen
        h = chosen_shift - (policy_rejected - ref_rejected)
        drop = torch.clamp(-chosen_shift, min=0.0)  # max(0, log pi_ref(y_w|x) - log pi_theta(y_w|x))
        if self.kind == "dpo":
            weight = torch.zeros_like(drop)
        elif self.kind == "dpop":
            weight = torch.full_like(drop, self.lam)
        else:
            if mu is None:
                raise ValueError("IDPOP needs mu (one per pair, see idpop_mu)")
            weight = mu.to(drop)
        penalty = weight * drop
        if self.placement == "inside":
            dpo_term = -F.logsigmoid(self.beta * (h - penalty))
            per_pair = dpo_term
        else:
            dpo_term = -F.logsigmoid(self.beta * h)
            per_pair = dpo_term + penalty
        return PreferenceLossOutput(per_pair.mean(), dpo_term, penalty, chosen_shift.detach(), self.beta * h.detach())
