"""The objectives that mix a contrastive and a generative term.

- NoteLLMLoss:    L = (L_cl + a * L_gen) / (1 + a), L_cl = GCL over the note pairs; a = 0.01 in the reference code.
- MultimodalLoss: the same with L_cl the mICL mix (w_m * GCL(multimodal vectors) + w_v * GCL(image vectors))
                  / (w_m + w_v); w_m 9, w_v 1 in NoteLLM-2.
"""

from __future__ import annotations

import torch
from torch import nn

from notellm.losses.contrastive import GenerativeContrastiveLoss, MaskedGenerativeContrastiveLoss
from notellm.losses.generative import CollaborativeSFTLoss


class NoteLLMLoss(nn.Module):
    """L = (L_cl + a * L_gen) / (1 + a); a = 0.01 in the reference code."""

    def __init__(self, gen_weight: float = 0.01, init_log_scale: float = 3.0, max_scale: float = 100.0):
        super().__init__()
        self.gen_weight = gen_weight
        self.contrastive = GenerativeContrastiveLoss(init_log_scale, max_scale)
        self.generative = CollaborativeSFTLoss()

    def forward(self, emb_a, emb_b, answer_logits=None, answer_labels=None, keys: torch.Tensor | None = None,
                negatives: torch.Tensor | None = None, negative_keys: torch.Tensor | None = None,
                false_negative_margin: float | None = None) -> dict[str, torch.Tensor]:
        l_cl = self.contrastive(emb_a, emb_b, keys, negatives, negative_keys, false_negative_margin)
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


class MultimodalLoss(NoteLLMLoss):
    """(L_cl + a L_gen) / (1 + a) with L_cl the mICL mix of the multimodal and the image GCL."""

    def __init__(self, gen_weight: float = 0.0, init_log_scale: float = 3.0, max_scale: float = 100.0,
                 multimodal_weight: float = 9.0, image_weight: float = 1.0):
        super().__init__(gen_weight, init_log_scale, max_scale)
        self.image_contrastive = MaskedGenerativeContrastiveLoss(init_log_scale, max_scale)
        self.multimodal_weight, self.image_weight = multimodal_weight, image_weight

    def forward(self, emb_a, emb_b, answer_logits=None, answer_labels=None, img_a=None, img_b=None,
                image_pairs=None, keys: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        l_m = self.contrastive(emb_a, emb_b, keys)
        if img_a is not None and self.image_weight > 0:
            l_v = self.image_contrastive(img_a, img_b, image_pairs)
            w_m, w_v = self.multimodal_weight, self.image_weight
            l_cl = (w_m * l_m + w_v * l_v) / (w_m + w_v)
        else:
            l_v, l_cl = torch.zeros((), device=l_m.device), l_m
        l_gen = self.generation_term(answer_logits, answer_labels, l_m.device)
        return {"loss": self.combine(l_cl, l_gen), "contrastive": l_m.detach(), "image_contrastive": l_v.detach(),
                "generative": l_gen.detach(), "scale": self.contrastive.scale.detach()}
