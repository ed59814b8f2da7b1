"""`notellm train`: NoteLLM, Generative Contrastive Learning + Collaborative SFT (LoRA or full), as a recipe of the
shared engine (`training.engine`):

    items:  co-occurring note pairs (objective notellm | gcl) or single notes (csft)
    batch:  each note's Note Compression Prompt, with a hashtag or category task drawn per (seed, epoch, slot)
    loss:   (L_cl + a L_gen) / (1 + a), GCL over the pairs' [EMB] vectors, CSFT on the answers (`losses/`)
    save:   the model folder (LoRA adapter or full weights, projection, feature statistics, notellm.json)

`grad_cache_chunk` > 0 runs GradCache (contrastive batches larger than fit in memory at once).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from notellm.data.store import NoteStore, read_pairs
from notellm.device import weights_dtype
from notellm.errors import ConfigError
from notellm.losses import NoteLLMLoss
from notellm.models.lora import LoraConfig, adapters_in_float32, apply_lora
from notellm.models.notellm import NoteLLM, NoteLLMConfig
from notellm.models.prompts import TASK_CATEGORY, TASK_EMBED, TASK_HASHTAG, NotePrompt, build_prompt
from notellm.training.engine import Engine, Recipe, TrainingArgs

OBJECTIVES = ("notellm", "gcl", "csft")
HASHTAG_TARGETS = ("removed", "sample")


@dataclass
class NoteLLMTrainConfig(TrainingArgs):
    notes: str = ""                     # Note table (Parquet)
    train_pairs: str = ""               # pairs (note_a, note_b[, score]); unused by objective=csft
    val_pairs: str | None = None        # validation pairs: loss and Recall@K during training
    output_dir: str = "runs/notellm"
    model: NoteLLMConfig = field(default_factory=NoteLLMConfig)
    objective: str = "notellm"          # notellm = GCL + CSFT | gcl | csft (generation only)
    gen_weight: float = 0.01            # a in L = (L_cl + a L_gen) / (1 + a)
    topic_rate: float = 0.4             # share of notes given the hashtag task (the rest: category)
    csft_rate: float = 1.0              # share of note occurrences given a generation task at all; the rest read
                                        # the full compression prompt, as at inference. A task removes what it
                                        # asks for from the input (a tag, or the category), so on notes with
                                        # few fields at 1.0 most training embeddings see less than test ones do
    hashtag_target: str = "removed"     # removed: one tag taken out of the input is the answer (reference code)
                                        # sample: j random tags are, the input has none (paper; `notellm tag`)
    init_log_scale: float = 3.0         # GCL's learnable log-scale starts here (scale e^3 ~ 20)
    max_scale: float = 100.0            # the scale is clamped at this
    lr: float = 1e-4
    head_lr: float | None = 2e-3        # projection + temperature; None: lr. A fresh random projection of
                                        # hidden states dominated by a few massive dimensions keeps little of
                                        # their signal, and at the backbone's lr it takes hundreds of steps to fix
    scale_lr: float | None = None       # the contrastive log-scale; None: head_lr; 0: fixed at init_log_scale.
                                        # Data whose pairs are only weakly related want a far lower scale than
                                        # the initial 20, and reach it only if it moves faster than the weights
    batch_size: int = 16                # pairs per process per micro-step (2x notes); csft: notes
    grad_cache_chunk: int = 0           # > 0: GradCache with chunks of this many notes (huge in-batch negatives)
    hard_negatives: str = "none"        # none | bm25 | an embeddings folder (notellm embed): one mined negative
                                        # per pair, an extra column of every row's GCL softmax
    hard_negative_depth: int = 30       # each anchor's negative is drawn per epoch from its top N mined notes
    hard_negative_skip: int = 0         # leave out the N best-ranked (the likeliest unlabelled positives)
    false_negative_margin: float | None = None  # mask negatives whose cosine exceeds the positive's + this
    cache_frozen_layers: bool = False   # with lora.top_layers: compute the frozen bottom layers once per distinct
                                        # prompt and train only the top (models/frozen_cache.py)
    frozen_cache_gb: float = 4.0        # memory for those cached hidden states (least recently used dropped)
    eval_every: int = 0                 # Recall@K on val_pairs every N steps (0: only at the end)
    eval_ks: list[int] = field(default_factory=lambda: [10, 50, 100])

    renamed: ClassVar[dict[str, str]] = {**TrainingArgs.renamed}
    resumable_changes: ClassVar[tuple[str, ...]] = (*TrainingArgs.resumable_changes, "eval_every", "eval_ks",
                                                    "cache_frozen_layers", "frozen_cache_gb",
                                                    "val_pairs")

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.model, dict):
            self.model = NoteLLMConfig(**self.model)
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {list(OBJECTIVES)}, not {self.objective!r}")
        if self.hashtag_target not in HASHTAG_TARGETS:
            raise ConfigError(f"hashtag_target must be one of {list(HASHTAG_TARGETS)}, not {self.hashtag_target!r}")
        if not (0 <= self.topic_rate <= 1 and 0 <= self.csft_rate <= 1) or self.gen_weight < 0:
            raise ConfigError("topic_rate and csft_rate must be in [0, 1] and gen_weight >= 0")
        if any(v is not None and v < 0 for v in (self.head_lr, self.scale_lr)):
            raise ConfigError("head_lr and scale_lr must be >= 0")
        if self.grad_cache_chunk < 0 or self.eval_every < 0:
            raise ConfigError("grad_cache_chunk and eval_every must be >= 0")
        if any(k < 1 for k in self.eval_ks):
            raise ConfigError(f"eval_ks must be positive, got {self.eval_ks}")
        if self.cache_frozen_layers and (self.gradient_checkpointing or not self.lora.enabled):
            raise ConfigError("cache_frozen_layers needs LoRA (with lora.top_layers) and no gradient_checkpointing")
        if self.hard_negatives != "none" and (self.objective == "csft" or self.grad_cache_chunk):
            raise ConfigError("hard_negatives needs a contrastive objective without grad_cache_chunk")


# ---- data ------------------------------------------------------------------------------------------------
def assign_task(note: dict[str, Any], seed: int, epoch: int, slot: int, topic_rate: float,
                hashtag_target: str = "removed") -> tuple[str, int | tuple[int, ...] | None]:
    """Task for one note occurrence and its hashtag target (build_prompt's `tag_target`): the hashtag task with
    probability topic_rate, else the category task. Drawn from (seed, epoch, slot), so it is resampled every
    epoch and identical on resume. hashtag_target "removed": one tag removed from the input is the answer
    (reference code); "sample": j of the note's tags, j uniform in 1..all, are the answer and the input has
    none (the paper's template, and what `notellm tag` asks)."""
    rng = np.random.default_rng([seed, epoch, slot])
    tags, category = note.get("hashtags") or [], note.get("category") or []
    wants_tags = rng.random() < topic_rate
    if tags and (wants_tags or not category):
        if hashtag_target == "sample":
            j = int(rng.integers(1, len(tags) + 1))
            return TASK_HASHTAG, tuple(sorted(int(i) for i in rng.choice(len(tags), j, replace=False)))
        return TASK_HASHTAG, int(rng.integers(len(tags)))
    if category:
        return TASK_CATEGORY, None
    return TASK_EMBED, None


def item_notes(item: str | tuple[str, str]) -> tuple[str, ...]:
    """The note ids of one training item: a pair (notellm, gcl) or a single note (csft)."""
    return (item,) if isinstance(item, str) else tuple(item)


def standardizer_ids(note_ids: set[str], seed: int, n: int = 256) -> list[str]:
    """The notes whose pooled states fit the standardizer: the first n of a fixed permutation of the training
    notes (the same on every run and resume, and for the zero-shot baseline that uses the same statistics)."""
    ids = sorted(note_ids)
    return [ids[i] for i in np.random.default_rng([seed, 11]).permutation(len(ids))[:n]]


def fix_scale_if_asked(loss: nn.Module, scale_lr: float | None) -> nn.Module:
    """scale_lr 0: every contrastive log-scale of `loss` stays at its initial value (a fixed temperature)."""
    if scale_lr == 0:
        for name, p in loss.named_parameters():
            if name.endswith("log_scale"):
                p.requires_grad_(False)
    return loss


# ---- the module trained ----------------------------------------------------------------------------------
class TrainModule(nn.Module):
    """Model + loss in one module, so DDP / DeepSpeed / FSDP see every trainable parameter (incl. the scale)."""

    def __init__(self, model: NoteLLM, loss: NoteLLMLoss, objective: str, false_negative_margin: float | None = None):
        super().__init__()
        self.model, self.loss, self.objective = model, loss, objective
        self.false_negative_margin = false_negative_margin

    def forward(self, input_ids, attention_mask, emb_pos, labels, note_keys=None, negative_keys=None,
                n_negatives: int = 0) -> dict[str, torch.Tensor]:
        out = self.model(input_ids, attention_mask, emb_pos, labels if self.objective != "gcl" else None)
        if self.objective == "csft":
            l_gen = self.loss.generative(out["answer_logits"], out["answer_labels"])
            return {"loss": l_gen, "generative": l_gen.detach(), "contrastive": torch.zeros(()),
                    "scale": self.loss.contrastive.scale.detach()}
        emb = out["embeddings"]
        pairs = emb.shape[0] - n_negatives  # rows: a0, b0, a1, b1, ..., then the mined negatives
        terms = self.loss(emb[0:pairs:2], emb[1:pairs:2], out.get("answer_logits"), out.get("answer_labels"),
                         note_keys, emb[pairs:] if n_negatives else None, negative_keys, self.false_negative_margin)
        cache = getattr(self.model, "frozen_cache", None)
        if cache is not None:
            terms["cache_hit_rate"] = torch.tensor(cache.stats()["cache_hit_rate"])
        return terms


def add_notellm_lora(model: NoteLLM, settings: LoraConfig, token_ids: list[int] | None = None) -> None:
    """LoRA on the LLM (`settings.train_emb_token`: the special tokens' input rows train too)."""
    tokens = (token_ids or [model.emb_token_id]) if settings.train_emb_token else None
    model.lm = apply_lora(model.lm, settings, task_type="CAUSAL_LM", trainable_token_indices=tokens)


def enable_gradient_checkpointing(lm, lora: bool) -> None:
    lm.gradient_checkpointing_enable()
    if lora:
        lm.enable_input_require_grads()


# ---- the recipe ------------------------------------------------------------------------------------------
class NoteLLMRecipe(Recipe):
    """NoteLLM on the shared engine. `model` may be given (tests, benchmarks); otherwise it is built from the
    config's backbone."""

    kind = "notellm"
    input_keys = ("notes", "train_pairs")

    def __init__(self, args: NoteLLMTrainConfig, model: NoteLLM | None = None):
        self.args = args
        self.rows_per_item = 1 if args.objective == "csft" else 2
        self._given_model = model
        self.store: NoteStore | None = None
        self.items: list = []
        self.model: NoteLLM | None = None
        self.bf16 = False

    # setup
    def read_items(self) -> None:
        self.store = NoteStore(self.args.notes)
        self.items = list(self.store.rows) if self.args.objective == "csft" else read_pairs(self.args.train_pairs,
                                                                                            self.store)
        self.negatives: dict[str, list[str]] = {}
        if self.args.hard_negatives != "none":
            from notellm.training.negatives import mine_hard_negatives

            a = self.args
            self.negatives = mine_hard_negatives(self.items, self.store.rows, a.hard_negatives,
                                                 a.hard_negative_depth, a.hard_negative_skip)
            self._negative_fallback = sorted({n for pair in self.items for n in pair})

    def build(self, engine: Engine | None = None) -> nn.Module:
        self.bf16 = engine.bf16 if engine is not None else False
        self.read_items()
        self.model = self._given_model or self.build_model()
        if self.args.cache_frozen_layers and not self.model.use_frozen_cache(self.args.frozen_cache_gb):
            import logging

            logging.getLogger(__name__).warning("cache_frozen_layers: the lowest decoder layer trains "
                                                "(set lora.top_layers), so nothing is cached")
        self.loss_fn = self.make_loss()
        self.module = TrainModule(self.model, self.loss_fn, self.args.objective, self.args.false_negative_margin)
        return self.module

    def make_loss(self) -> nn.Module:
        a = self.args
        return fix_scale_if_asked(NoteLLMLoss(a.gen_weight, a.init_log_scale, a.max_scale), a.scale_lr)

    def build_model(self) -> NoteLLM:
        from notellm.models.notellm import build_notellm

        args = self.args
        # LoRA on bf16 hardware: frozen base weights in bf16, trainable weights in fp32 (stable, ~3x faster)
        dtype = weights_dtype(self.bf16, trains_all_weights=not args.lora.enabled)
        model = build_notellm(args.model, dtype=dtype, seed=args.seed)
        model.proj.float()
        if args.model.standardize and args.model.dim > 0:
            model.fit_standardizer(self.standardizer_sample())
        self.adapt(model, dtype)
        return model

    def adapt(self, model, dtype: str, token_ids: list[int] | None = None) -> None:
        """LoRA (adapters in float32 over the frozen weights) and gradient checkpointing, as configured."""
        args = self.args
        if args.lora.enabled:
            torch.manual_seed(args.seed)  # adapters drawn alike whatever drew from the RNG before
            add_notellm_lora(model, args.lora, token_ids)
            adapters_in_float32(model.lm, under_autocast=dtype == "bfloat16")
        if args.gradient_checkpointing:
            enable_gradient_checkpointing(model.lm, args.lora.enabled)

    def standardizer_sample(self) -> list[dict[str, Any]]:
        ids = {i for item in self.items for i in item_notes(item)}
        return [self.store[i] for i in standardizer_ids(ids, self.args.seed)]

    def num_items(self) -> int:
        return len(self.items)

    # batches
    def task_for(self, note: dict[str, Any], index: int, side: int, epoch: int) -> tuple[str, Any]:
        """The task of one note occurrence: the compression prompt alone (as at inference) under objective gcl
        and for the 1 - csft_rate share, else a generation task (assign_task)."""
        a, slot = self.args, 2 * index + side
        # its own random stream, so csft_rate 1.0 draws exactly the tasks it drew before the option existed
        if a.objective == "gcl" or np.random.default_rng([a.seed, epoch, slot, 1]).random() >= a.csft_rate:
            return TASK_EMBED, None
        return assign_task(note, a.seed, epoch, slot, a.topic_rate, a.hashtag_target)

    def prompt(self, note: dict[str, Any], index: int, side: int, epoch: int) -> NotePrompt:
        task, target = self.task_for(note, index, side, epoch)
        return build_prompt(note, task, self.args.model.prompt, tag_target=target)

    def collate(self, indices: list[int], epoch: int) -> dict[str, Any]:
        prompts = [self.prompt(self.store[note_id], index, side, epoch)
                   for index in indices for side, note_id in enumerate(item_notes(self.items[index]))]
        negatives = self.draw_negatives(indices, epoch)
        prompts += [build_prompt(self.store[n], TASK_EMBED, self.args.model.prompt) for n in negatives]
        batch = self.model.encode_prompts(prompts, with_answers=self.args.objective != "gcl")
        if self.args.objective != "csft":
            batch["note_keys"] = self.note_keys(indices)
        if negatives:
            batch["negative_keys"] = torch.tensor([self.store.keys[n] for n in negatives], dtype=torch.long)
            batch["n_negatives"] = len(negatives)
        return batch

    def draw_negatives(self, indices: list[int], epoch: int) -> list[str]:
        """One mined negative per pair (drawn per epoch, the same on resume)."""
        if self.args.hard_negatives == "none":
            return []
        from notellm.training.negatives import draw_negative

        return [draw_negative(self.negatives.get(self.items[i][0], []), self._negative_fallback, self.args.seed,
                              epoch, int(i)) for i in indices]

    def note_keys(self, indices: list[int]) -> torch.Tensor:
        """One integer per note of the batch, in row order: the loss masks other copies of a note."""
        ids = [n for i in indices for n in item_notes(self.items[i])]
        return torch.tensor([self.store.keys[n] for n in ids], dtype=torch.long)

    def backward(self, engine: Engine, module: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if self.args.grad_cache_chunk and self.args.objective != "csft":
            from notellm.training.gradcache import grad_cache_backward

            acc = engine.accelerator
            return grad_cache_backward(module, batch, self.args.grad_cache_chunk, 1.0 / self.args.grad_accum,
                                       no_sync=acc.no_sync if acc.num_processes > 1 else None,
                                       autocast=engine.autocast)
        return super().backward(engine, module, batch)

    def param_groups(self, module: nn.Module) -> list[dict[str, Any]]:
        """Body at lr; the projection at head_lr; the contrastive log-scale at scale_lr."""
        head, scale, body = [], [], []
        for name, p in module.named_parameters():
            if p.requires_grad:
                group = scale if name.startswith("loss.") else head if name.startswith("model.proj.") else body
                group.append(p)
        head_lr = self.args.lr if self.args.head_lr is None else self.args.head_lr
        scale_lr = head_lr if self.args.scale_lr is None else self.args.scale_lr
        groups = [{"params": body, "lr": self.args.lr}]
        if head:
            groups.append({"params": head, "lr": head_lr})
        if scale:
            groups.append({"params": scale, "lr": scale_lr})
        return groups

    def saved_parameters(self, module: nn.Module) -> list[nn.Parameter]:
        return [p for p in module.model.parameters() if p.requires_grad or not self.args.lora.enabled]

    # results
    def save(self, module: nn.Module, folder: Path, summary: dict[str, Any]) -> None:
        module.model.write_to(folder, extra={"backbone_seed": self.args.seed, "train": summary,
                                             "objective": self.args.objective,
                                             "hashtag_target": self.args.hashtag_target})

    @torch.no_grad()
    def validate(self, engine: Engine, module: nn.Module) -> dict[str, float]:
        """Recall@K on the validation pairs (the DESIGN.md protocol) with the current weights."""
        if not self.args.val_pairs:
            return {}
        from notellm.data.schema import read_table_with
        from notellm.evaluation.recall import evaluate_recall
        from notellm.inference.embed import embed_notes

        model = module.model
        model.eval()
        pairs = read_table_with(self.args.val_pairs, "pair", ["note_a", "note_b"])
        ids = sorted(set(pairs["note_a"].to_pylist()) | set(pairs["note_b"].to_pylist()))
        self.store.check_ids(ids, self.args.val_pairs, "note_a/note_b")
        phase = engine.phase("validation: Recall@K", len(ids), "notes")
        vectors = embed_notes(model, [self.store[i] for i in ids], batch_size=32, bf16=engine.bf16,
                              on_batch=phase.advance)
        report = evaluate_recall(None, pairs, (ids, vectors), ks=self.args.eval_ks, buckets=False)
        model.train()
        return {f"val_R@{k}": v for k, v in report.overall.recall.items()}
