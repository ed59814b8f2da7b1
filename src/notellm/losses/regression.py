"""The popularity regression loss (RedNoob): MSE or Huber on standardised targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

REGRESSION_LOSSES = ("mse", "huber")


class RegressionLoss(nn.Module):
    """Mean squared error or Huber loss (delta on the standardised scale) over the batch; computed in float32
    whatever the autocast dtype of the predictions."""

    def __init__(self, kind: str = "huber", delta: float = 1.0):
        super().__init__()
        if kind not in REGRESSION_LOSSES:
            raise ValueError(f"kind must be one of {REGRESSION_LOSSES}, got {kind!r}")
        self.kind, self.delta = kind, delta

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        prediction, target = prediction.float(), target.float()
        if self.kind == "mse":
            return F.mse_loss(prediction, target)
        return F.huber_loss(prediction, target, delta=self.delta)
