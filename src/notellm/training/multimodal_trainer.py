"""`notellm train` for NoteLLM-2: the NoteLLM trainer (loop, checkpoints, resume, validation) on the
multimodal model, with the mICL loss.

    L_cl = (w_m * GCL(multimodal vectors) + w_v * GCL(image vectors)) / (w_m + w_v)    (w_m 9, w_v 1; mICL)
    L    = (L_cl + a * L_gen) / (1 + a)                                                 (objective notellm)

NoteLLM-2 trains contrastively only (objective `gcl`, the default here); `notellm` adds CSFT as in NoteLLM.
A config file with a `multimodal:` section selects this trainer in `notellm train`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from notellm.errors import ConfigError
from notellm.models.multimodal import MultimodalSettings, NoteLLM2
from notellm.models.lora import adapters_in_float32, add_lora
from notellm.models.prompts import TASK_EMBED
from notellm.training.losses import GenerativeContrastiveLoss, NoteLLMLoss, distributed, gather_with_grad
from notellm.training.notellm_trainer import (LoraSettings, NoteLLMTrainer, TrainConfig, TrainModule,
                                              assign_task, item_notes)


@dataclass
class MultimodalTrainConfig(TrainConfig):
    objective: str = "gcl"   # NoteLLM-2 trains contrastively; `notellm` adds CSFT
    multimodal: MultimodalSettings = field(default_factory=MultimodalSettings)

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.multimodal, dict):
            self.multimodal = MultimodalSettings(**self.multimodal)
        if self.objective == "csft":
            raise ConfigError("objective csft (generation only) is not supported for the multimodal model")
        if self.grad_cache_chunk:
            raise ConfigError("grad_cache_chunk is not supported for the multimodal model (the mICL image loss "
                              "would be left out); use grad_accum or smaller batches")


def is_multimodal_config(path: str | None, overrides: Sequence[str] = ()) -> bool:
    """A training config selects NoteLLM-2 by a `multimodal:` section (in the file or as overrides)."""
    import yaml

    if any(o.split("=", 1)[0].strip().split(".")[0] == "multimodal" for o in overrides):
        return True
    if path is None or not Path(path).is_file():
        return False
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    return isinstance(data, dict) and "multimodal" in data


# ---- losses ----------------------------------------------------------------------------------------------
class MaskedGenerativeContrastiveLoss(GenerativeContrastiveLoss):
    """GCL over the pairs flagged valid only (the mICL image loss: a pair counts when both notes have an image
    vector). Invalid rows are neither queries nor negatives. With every pair valid it equals GCL."""

    def forward(self, emb_a: torch.Tensor, emb_b: torch.Tensor, pair_valid: torch.Tensor | None = None) -> torch.Tensor:
        # one process with every pair valid: plain GCL. With a process group every process takes the masked
        # path, so all of them make the same collective calls.
        if pair_valid is None or (bool(pair_valid.all()) and not distributed()):
            return super().forward(emb_a, emb_b)
        local = torch.stack([emb_a, emb_b], dim=1).reshape(-1, emb_a.shape[-1]).float()
        local = torch.nn.functional.normalize(local, dim=-1)
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
        return torch.nn.functional.cross_entropy(logits[valid], partner[valid])


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


class MultimodalTrainModule(TrainModule):
    def forward(self, input_ids, attention_mask, emb_pos, labels, note_keys=None) -> dict[str, torch.Tensor]:
        out = self.model(input_ids, attention_mask, emb_pos, labels if self.objective != "gcl" else None)
        emb = out["embeddings"]
        images: dict[str, Any] = {}
        if "image_embeddings" in out:
            img, has = out["image_embeddings"], out["has_image_embedding"]
            images = {"img_a": img[0::2], "img_b": img[1::2], "image_pairs": has[0::2] & has[1::2]}
        return self.loss(emb[0::2], emb[1::2], out.get("answer_logits"), out.get("answer_labels"), **images,
                         keys=note_keys)


def apply_multimodal_lora(model: NoteLLM2, settings: LoraSettings) -> None:
    """LoRA on the LLM only (the tower trains in full or is frozen); the [EMB] and [IMG_EMB] input rows train
    when `lora.train_emb_token` is set."""
    tokens = [model.emb_token_id, model.img_emb_token_id] if settings.train_emb_token else None
    model.lm = add_lora(model.lm, settings.r, settings.alpha, settings.dropout, settings.target_modules,
                        settings.top_layers, task_type="CAUSAL_LM", trainable_token_indices=tokens)


# ---- the trainer -----------------------------------------------------------------------------------------
class MultimodalTrainer(NoteLLMTrainer):
    """NoteLLMTrainer with the NoteLLM-2 model, prompts and loss; writes `image_problems.json` when images
    were skipped."""

    cfg: MultimodalTrainConfig

    def __init__(self, config: MultimodalTrainConfig, model: NoteLLM2 | None = None, accelerator=None):
        super().__init__(config, model, accelerator)
        mm = config.multimodal
        self.loss = MultimodalLoss(config.gen_weight if config.objective == "notellm" else 0.0,
                                   config.init_log_scale, config.max_scale, mm.multimodal_weight, mm.image_weight)
        self.module = MultimodalTrainModule(self.model, self.loss, config.objective)

    def _build_model(self) -> NoteLLM2:
        from notellm.models.multimodal import build_notellm2

        cfg = self.cfg
        dtype = "bfloat16" if (self.bf16 and cfg.lora.enabled) else "float32"
        model = build_notellm2(cfg.model, cfg.multimodal, dtype=dtype, seed=cfg.seed)
        model.proj.float()
        if cfg.lora.enabled:
            torch.manual_seed(cfg.seed)  # adapters drawn alike whatever drew from the RNG before
            apply_multimodal_lora(model, cfg.lora)
            adapters_in_float32(model.lm, under_autocast=dtype == "bfloat16")
        if cfg.gradient_checkpointing:
            model.lm.gradient_checkpointing_enable()
            if cfg.lora.enabled:
                model.lm.enable_input_require_grads()
        return model

    def collate(self, indices: list[int], epoch: int) -> dict[str, Any]:
        prompts = []
        for index in indices:
            for side, note_id in enumerate(item_notes(self.items[index])):
                note = self.store[note_id]
                if self.cfg.objective == "gcl":  # no generation target: the compression prompt, as at inference
                    task, target = TASK_EMBED, None
                else:
                    task, target = assign_task(note, self.cfg.seed, epoch, 2 * index + side, self.cfg.topic_rate,
                                               self.cfg.hashtag_target)
                prompts.append(self.model.prompt_for(note, task, target))
        batch = self.model.encode_prompts(prompts, with_answers=self.cfg.objective != "gcl")
        batch["note_keys"] = self.note_keys(indices)
        return batch

    def _optimizer(self):
        """AdamW; the vision side (tower, connector, fusion) gets `multimodal.vision_lr` when set."""
        vision = {id(p) for p in self.model.vision_parameters()} if self.cfg.multimodal.vision_lr else set()
        rest = [p for p in self.module.parameters() if p.requires_grad and id(p) not in vision]
        groups = [{"params": rest}]
        if vision:
            groups.append({"params": [p for p in self.model.vision_parameters()], "lr": self.cfg.multimodal.vision_lr})
        return torch.optim.AdamW(groups, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def image_report(self) -> dict[str, Any]:
        reader = self.model.reader
        return reader.summary() if reader is not None else {"images_skipped": 0, "notes_affected": 0, "problems": []}

    def _finish(self, module, optimizer, scheduler, position, last, started) -> dict[str, Any]:
        from notellm.io import write_json

        report = self.image_report()
        if report["images_skipped"] and self.accelerator.is_main_process:
            write_json(report, self.out / "image_problems.json")
            self._log({"event": "images_skipped", "images": report["images_skipped"],
                       "notes": report["notes_affected"], "details": str(self.out / "image_problems.json")})
        summary = super()._finish(module, optimizer, scheduler, position, last, started)
        summary["images_skipped"] = report["images_skipped"]
        return summary
