"""`notellm train` for NoteLLM-2: the NoteLLM recipe on the multimodal model, with the mICL loss.

    L_cl = (w_m * GCL(multimodal vectors) + w_v * GCL(image vectors)) / (w_m + w_v)    (w_m 9, w_v 1; mICL)
    L    = (L_cl + a * L_gen) / (1 + a)                                                 (objective notellm)

NoteLLM-2 trains contrastively only (objective `gcl`, the default here); `notellm` adds CSFT as in NoteLLM.
A config file with a `multimodal:` section selects this recipe in `notellm train`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from notellm.config import read_yaml
from notellm.device import weights_dtype
from notellm.errors import ConfigError
from notellm.losses import MultimodalLoss
from notellm.models.multimodal import MultimodalSettings, NoteLLM2
from notellm.training.engine import Engine
from notellm.training.notellm import NoteLLMRecipe, NoteLLMTrainConfig, TrainModule, fix_scale_if_asked, item_notes


@dataclass
class MultimodalTrainConfig(NoteLLMTrainConfig):
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
        if self.hard_negatives != "none" or self.false_negative_margin is not None or self.cache_frozen_layers:
            raise ConfigError("hard_negatives, false_negative_margin and cache_frozen_layers are not supported "
                              "for the multimodal model yet")


def is_multimodal_config(path: str | None, overrides: Sequence[str] = ()) -> bool:
    """A training config selects NoteLLM-2 by a `multimodal:` section (in the file or as overrides)."""
    if any(o.split("=", 1)[0].strip().split(".")[0] == "multimodal" for o in overrides):
        return True
    if path is None or not Path(path).is_file():
        return False
    return "multimodal" in read_yaml(path)


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


class MultimodalRecipe(NoteLLMRecipe):
    """NoteLLM's recipe with the NoteLLM-2 model, prompts and loss; writes `image_problems.json` when images
    were skipped."""

    kind = "notellm2"
    args: MultimodalTrainConfig

    def build(self, engine: Engine | None = None) -> nn.Module:
        super().build(engine)
        self.module = MultimodalTrainModule(self.model, self.loss_fn, self.args.objective)
        return self.module

    def make_loss(self) -> nn.Module:
        a, mm = self.args, self.args.multimodal
        return fix_scale_if_asked(MultimodalLoss(a.gen_weight if a.objective == "notellm" else 0.0, a.init_log_scale,
                                                 a.max_scale, mm.multimodal_weight, mm.image_weight), a.scale_lr)

    def build_model(self) -> NoteLLM2:
        from notellm.models.multimodal import build_notellm2

        args = self.args
        dtype = weights_dtype(self.bf16, trains_all_weights=not args.lora.enabled)
        model = build_notellm2(args.model, args.multimodal, dtype=dtype, seed=args.seed)
        model.proj.float()
        # LoRA on the LLM only (the tower trains in full or is frozen); [EMB] and [IMG_EMB] rows may train
        self.adapt(model, dtype, token_ids=[model.emb_token_id, model.img_emb_token_id])
        return model

    def collate(self, indices: list[int], epoch: int) -> dict[str, Any]:
        prompts = []
        for index in indices:
            for side, note_id in enumerate(item_notes(self.items[index])):
                note = self.store[note_id]
                task, target = self.task_for(note, index, side, epoch)
                prompts.append(self.model.prompt_for(note, task, target))
        batch = self.model.encode_prompts(prompts, with_answers=self.args.objective != "gcl")
        batch["note_keys"] = self.note_keys(indices)
        return batch

    def param_groups(self, module: nn.Module) -> list[dict[str, Any]]:
        """The vision side (tower, connector, fusion) gets `multimodal.vision_lr` when set."""
        vision = {id(p) for p in self.model.vision_parameters()} if self.args.multimodal.vision_lr else set()
        rest = [p for p in module.parameters() if p.requires_grad and id(p) not in vision]
        groups = [{"params": rest, "lr": self.args.lr}]
        if vision:
            groups.append({"params": list(self.model.vision_parameters()), "lr": self.args.multimodal.vision_lr})
        return groups

    def image_report(self) -> dict[str, Any]:
        reader = self.model.reader
        return reader.summary() if reader is not None else {"images_skipped": 0, "notes_affected": 0, "problems": []}

    def save(self, module: nn.Module, folder: Path, summary: dict[str, Any]) -> None:
        from notellm.io import write_json

        report = self.image_report()
        summary["images_skipped"] = report["images_skipped"]
        if report["images_skipped"]:
            write_json(report, Path(self.args.output_dir) / "image_problems.json")
        super().save(module, folder, summary)
