"""NoteLLM: a causal LM that compresses a note (its Note Compression Prompt) into one token.

The note's embedding is the last-layer hidden state at the position just before `[EMB]` (the opening quote,
as the reference code; `pooling="emb"` takes `[EMB]` itself, `"last"` the last prompt token, `"mean"` the mean
over the prompt), projected by Linear(hidden, dim, bias=False) and L2-normalised. The same forward pass feeds
the generation (CSFT) loss on the answer tokens that follow.

A NoteLLM may also carry a popularity head (`add_popularity_head`): Linear(hidden, 1) on the same standardized
pooled state, in the score's units, so one forward pass gives a note's embedding and its predicted popularity,
and `lm.generate` on a hashtag / category prompt gives its tags: one folder for the three answers a platform
asks about a note. The head is saved in its own file beside the projection, so folders without it are unchanged.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from notellm.models import packing
from notellm.models.prompts import EMB_TOKEN, TASK_EMBED, NotePrompt, PromptConfig, build_prompt

POOLINGS = ("before_emb", "emb", "last", "mean")
HEAD_FILE = "head.safetensors"
SCORE_HEAD_FILE = "score_head.safetensors"


@dataclass
class NoteLLMConfig:
    backbone: str = "gemma-3-270m"
    dim: int = 128                  # projection size (paper 128; reference code 64); 0 = no projection
    pooling: str = "before_emb"
    max_length: int = 140           # tokens, prompt + answer
    standardize: bool = True        # z-score pooled features (stats from training notes) before projecting
    prompt: PromptConfig = field(default_factory=PromptConfig)

    def __post_init__(self):
        if isinstance(self.prompt, dict):
            self.prompt = PromptConfig(**self.prompt)
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got '{self.pooling}'")


def add_emb_token(model, tokenizer, token: str = EMB_TOKEN) -> int:
    """Add `token` to the tokenizer; its input row starts at the mean of the existing embeddings."""
    if token in tokenizer.get_vocab():
        return tokenizer.convert_tokens_to_ids(token)
    tokenizer.add_special_tokens({"additional_special_tokens": [token]}, replace_extra_special_tokens=False) \
        if _accepts_replace(tokenizer) else tokenizer.add_special_tokens({"additional_special_tokens": [token]})
    token_id = tokenizer.convert_tokens_to_ids(token)
    old = model.get_input_embeddings().weight
    mean = old.detach().float().mean(dim=0)
    if token_id >= old.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight[token_id] = mean.to(old.dtype)
    return token_id


def _accepts_replace(tokenizer) -> bool:
    import inspect

    return "replace_extra_special_tokens" in inspect.signature(tokenizer.add_special_tokens).parameters


class PopularityHead(nn.Module):
    """score = (w . x + b) * target_std + target_mean on the standardized pooled state x: the linear layer
    learns a z-scored target, the score comes out in the target's own units."""

    def __init__(self, hidden: int, target_mean: float = 0.0, target_std: float = 1.0):
        super().__init__()
        if not target_std > 0:
            raise ValueError(f"target_std must be > 0, got {target_std}")
        self.linear = nn.Linear(hidden, 1)
        self.register_buffer("target_mean", torch.tensor(float(target_mean)), persistent=False)
        self.register_buffer("target_std", torch.tensor(float(target_std)), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # float32 even under bf16 autocast: a bf16 score steps by 1/32 at a WLAES of 4, coarser than the
        # differences between notes that the head is trained to rank
        with torch.autocast(features.device.type, enabled=False):
            return self.linear(features.float()).squeeze(-1) * self.target_std + self.target_mean

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"weight": self.linear.weight.detach().float().contiguous(),
                "bias": self.linear.bias.detach().float().contiguous(),
                "target_mean": self.target_mean.float().reshape(1), "target_std": self.target_std.float().reshape(1)}


class NoteLLM(nn.Module):
    """Backbone LM + projection. `lm` may be a PEFT model (LoRA)."""

    def __init__(self, lm, tokenizer, config: NoteLLMConfig, emb_token_id: int | None = None):
        super().__init__()
        self.lm = lm
        self.tokenizer = tokenizer
        self.config = config
        self.emb_token_id = emb_token_id if emb_token_id is not None else add_emb_token(lm, tokenizer)
        hidden = lm.config.get_text_config().hidden_size if hasattr(lm.config, "get_text_config") else lm.config.hidden_size
        # dim 0: the raw hidden state (zero-shot baselines: an untrained projection would only distort it)
        self.proj = nn.Linear(hidden, config.dim, bias=False) if config.dim > 0 else nn.Identity()
        self.dim = config.dim or hidden
        # Per-feature mean/std of pooled states. LLM hidden states are dominated by a few massive dimensions,
        # so a projection of the raw state (random at first) keeps little of what tells notes apart.
        self.register_buffer("feat_mean", torch.zeros(hidden), persistent=False)
        self.register_buffer("feat_std", torch.ones(hidden), persistent=False)
        self.score_head: PopularityHead | None = None

    def add_popularity_head(self, target_mean: float = 0.0, target_std: float = 1.0, seed: int = 0) -> PopularityHead:
        """Attach a popularity head (zero-initialised weight: it predicts target_mean until trained)."""
        head = PopularityHead(self.feat_mean.numel(), target_mean, target_std)  # the pooled state's size
        with torch.no_grad():
            head.linear.weight.zero_()
            head.linear.bias.zero_()
        self.score_head = head.to(self.device)
        return self.score_head

    @property
    def device(self) -> torch.device:
        return self.lm.get_input_embeddings().weight.device

    # ---- tokenisation ----------------------------------------------------------------------------------
    def encode_prompts(self, prompts: Sequence[NotePrompt], with_answers: bool = True) -> dict[str, torch.Tensor]:
        """Token ids (right-padded), attention mask, answer labels (-100 elsewhere) and the [EMB] positions."""
        return self.pad(*self.tokenize(prompts, with_answers))

    def tokenize(self, prompts: Sequence[NotePrompt], with_answers: bool = True) -> tuple[list, list]:
        """Per prompt: token ids (prefix + answer + eos) and labels (-100 on the prefix)."""
        tok = self.tokenizer
        eos = tok.eos_token_id
        rows, labels = [], []
        for p in prompts:
            prefix = self._fit_prefix(tok(p.prefix, add_special_tokens=True)["input_ids"])
            answer = tok(p.answer, add_special_tokens=False)["input_ids"] + [eos] if (with_answers and p.answer) else []
            answer = answer[: max(0, self.config.max_length - len(prefix))]
            rows.append(prefix + answer)
            labels.append([-100] * len(prefix) + answer)
        return rows, labels

    def _fit_prefix(self, ids: list[int]) -> list[int]:
        """Keep the prompt within max_length by dropping note tokens just before the compression sentence."""
        budget = self.config.max_length - 8  # room for at least a few answer tokens
        if len(ids) <= budget:
            return ids
        emb = ids.index(self.emb_token_id)
        tail_start = max(1, emb - 8)  # the compression sentence's opening ('，压缩为一个词：“') stays
        drop = len(ids) - budget
        return ids[: max(1, tail_start - drop)] + ids[tail_start:]

    def pad(self, rows: list[list[int]], labels: list[list[int]]) -> dict[str, torch.Tensor]:
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        lab = torch.full((len(rows), width), -100, dtype=torch.long)
        emb_pos = torch.zeros(len(rows), dtype=torch.long)
        for i, (r, l) in enumerate(zip(rows, labels)):
            input_ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
            lab[i, : len(l)] = torch.tensor(l)
            if self.emb_token_id not in r:
                raise ValueError("the prompt lost its [EMB] token; raise max_length")
            emb_pos[i] = r.index(self.emb_token_id)
        return {"input_ids": input_ids, "attention_mask": mask, "labels": lab, "emb_pos": emb_pos}

    def prompts_for(self, notes: Sequence[dict[str, Any]], task: str = TASK_EMBED) -> list[NotePrompt]:
        return [build_prompt(n, task, self.config.prompt) for n in notes]

    # ---- forward ---------------------------------------------------------------------------------------
    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last-layer hidden states, without computing vocabulary logits.

        When training has set a `frozen_cache` (models/frozen_cache.py), the frozen bottom layers' part comes
        from it. Otherwise, on CPUs a right-padded batch runs padding-free (models/packing.py: its real tokens
        as one packed row, attention alone in the padded layout), or where packing does not apply, when its rows
        differ much in length, as a few length-sorted chunks, each cut to its own longest row (`length_chunks`):
        the same states for every real token (padding never reaches them: the attention is causal and padding
        sits on the right), fewer padding tokens computed. The padded positions of the result are zeros. On GPUs
        the batch runs whole (padding costs less there, and under FSDP / ZeRO-3 each decoder call would gather the
        weights again)."""
        cache = getattr(self, "frozen_cache", None)
        if cache is not None and not torch.is_inference_mode_enabled():  # inference tensors cannot be cached
            return cache.last_hidden_state(input_ids, attention_mask)
        decoder = self.lm.get_decoder()
        if packing.packs(decoder, input_ids, attention_mask):
            return packing.packed_forward(decoder, input_ids, attention_mask)
        lengths = attention_mask.sum(1)
        chunks = length_chunks(lengths.tolist()) if input_ids.is_cpu and packing.right_padded(attention_mask) else None
        if chunks is None:
            return decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        parts, order = [], []
        for rows, width in chunks:
            index = torch.tensor(rows, device=input_ids.device)
            parts.append(decoder(input_ids=input_ids[index, :width],
                                 attention_mask=attention_mask[index, :width]).last_hidden_state)
            order.extend(rows)
        width = input_ids.shape[1]
        padded = torch.cat([F.pad(h, (0, 0, 0, width - h.shape[1])) for h in parts])
        inverse = torch.empty(len(order), dtype=torch.long, device=padded.device)
        inverse[torch.tensor(order, device=padded.device)] = torch.arange(len(order), device=padded.device)
        return padded[inverse]

    def use_frozen_cache(self, max_gb: float = 4.0) -> bool:
        """Cache the frozen bottom layers' hidden states per prompt (LoRA in the top layers only); False when
        the lowest layer trains, so there is nothing to cache."""
        from notellm.models.frozen_cache import FrozenLayerCache, frozen_bottom_layers

        decoder = self.lm.get_decoder()
        frozen = frozen_bottom_layers(decoder)
        # a plain attribute, not a submodule: never part of the state dict, never saved
        object.__setattr__(self, "frozen_cache", FrozenLayerCache(decoder, frozen, int(max_gb * 2**30))
                           if frozen else None)
        return bool(frozen)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor, emb_pos: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        pooling = self.config.pooling
        if pooling == "before_emb":
            return hidden[rows, emb_pos - 1]
        if pooling == "emb":
            return hidden[rows, emb_pos]
        if pooling == "last":
            return hidden[rows, attention_mask.sum(1) - 1]
        upto = (torch.arange(hidden.shape[1], device=hidden.device)[None, :] <= emb_pos[:, None]).to(hidden.dtype)
        return (hidden * upto[..., None]).sum(1) / upto.sum(1, keepdim=True)

    def standardized(self, pooled: torch.Tensor) -> torch.Tensor:
        """The pooled state as the projection and the popularity head read it."""
        pooled = pooled.to(self.proj.weight.dtype) if isinstance(self.proj, nn.Linear) else pooled.float()
        if self.config.standardize:  # a no-op until fit_standardizer runs (mean 0, std 1)
            pooled = (pooled - self.feat_mean.to(pooled.dtype)) / self.feat_std.to(pooled.dtype)
        return pooled

    def embed_hidden(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(self.standardized(pooled)).float(), dim=-1)

    @torch.no_grad()
    def fit_standardizer(self, notes: Sequence[dict[str, Any]], batch_size: int = 16) -> None:
        """Per-feature mean/std of the pooled states of `notes` (embedding prompts, current weights)."""
        was_training = self.training
        self.eval()
        pooled = []
        for start in range(0, len(notes), batch_size):
            b = self.encode_prompts(self.prompts_for(notes[start:start + batch_size]), with_answers=False)
            b = {k: v.to(self.device) for k, v in b.items()}
            h = self.hidden_states(b["input_ids"], b["attention_mask"])
            pooled.append(self.pool(h, b["attention_mask"], b["emb_pos"]).float())
        x = torch.cat(pooled)
        self.feat_mean.copy_(x.mean(0))
        # floor at the median spread: a near-constant feature (Gemma has some) divided by its tiny std would turn
        # the small common shift that fine-tuning gives it into the largest coordinate of every note, and
        # training would collapse all notes onto that one direction
        std = x.std(0)
        self.feat_std.copy_(std.clamp(min=std.median().item() + 1e-6))
        self.train(was_training)

    def forward(self, input_ids, attention_mask, emb_pos, labels=None) -> dict[str, torch.Tensor]:
        """Embeddings of every row, its popularity score when the model has a head, and, when labels are given,
        logits at the answer positions only."""
        hidden = self.hidden_states(input_ids, attention_mask)
        features = self.standardized(self.pool(hidden, attention_mask, emb_pos))
        out = {"embeddings": F.normalize(self.proj(features).float(), dim=-1)}
        if self.score_head is not None:
            out["score"] = self.score_head(features)
        if labels is not None:
            # position k predicts token k+1: keep only positions whose next token is an answer token
            next_labels = labels[:, 1:]
            keep = next_labels != -100
            head = self.lm.get_output_embeddings()
            logits = head(hidden[:, :-1][keep])
            softcap = getattr(self.lm.config, "final_logit_softcapping", None)
            if softcap:
                logits = torch.tanh(logits / softcap) * softcap
            out["answer_logits"] = logits
            out["answer_labels"] = next_labels[keep]
        return out

    @torch.inference_mode()
    def embed_notes(self, notes: Sequence[dict[str, Any]]) -> torch.Tensor:
        batch = self.encode_prompts(self.prompts_for(notes), with_answers=False)
        return self(batch["input_ids"], batch["attention_mask"], batch["emb_pos"])["embeddings"]

    @torch.inference_mode()
    def embed_and_score(self, notes: Sequence[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings, popularity scores) of `notes` from one forward pass."""
        if self.score_head is None:
            raise ValueError("this NoteLLM has no popularity head (add_popularity_head, or a folder saved with one)")
        batch = {k: v.to(self.device) for k, v in
                 self.encode_prompts(self.prompts_for(notes), with_answers=False).items()}
        out = self(batch["input_ids"], batch["attention_mask"], batch["emb_pos"])
        return out["embeddings"], out["score"]

    # ---- saving ----------------------------------------------------------------------------------------
    kind = "notellm"

    def card(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"backbone": self.config.backbone, "config": asdict(self.config), "emb_token": EMB_TOKEN,
                **(extra or {})}

    def save(self, out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """A self-describing folder (notellm.json, the LoRA adapter or full weights, the head, the tokenizer),
        written whole: a kill while saving leaves the previous folder."""
        from notellm.models.folder import saving

        with saving(out_dir) as tmp:
            self.write_to(tmp, extra)
        return Path(out_dir)

    def write_to(self, out: Path, extra: dict[str, Any] | None = None) -> None:
        """Write the model folder's files into `out` (an empty folder; `save` renames it into place)."""
        from safetensors.torch import save_file

        from notellm.models.folder import write_card

        is_peft = hasattr(self.lm, "peft_config")
        if is_peft:
            # not the resized embedding matrix (vocabulary x hidden, ~650 MB for Gemma): loading adds [EMB] again
            # with the same mean-initialised row; a trained [EMB] row is saved as peft trainable tokens
            self.lm.save_pretrained(out / "adapter", save_embedding_layers=False)
        else:
            self.lm.save_pretrained(out / "backbone")
        self.tokenizer.save_pretrained(out / "tokenizer")
        head = {k: v.detach().float().contiguous() for k, v in self.proj.state_dict().items()}
        head.update(feat_mean=self.feat_mean.float().contiguous(), feat_std=self.feat_std.float().contiguous())
        save_file(head, str(out / HEAD_FILE))
        info = {"weights": "lora" if is_peft else "full", **(extra or {})}
        if self.score_head is not None:
            save_file(self.score_head.tensors(), str(out / SCORE_HEAD_FILE))
            # what training said about the head (target, held-out error) is kept; the tensors' numbers win
            info["popularity_head"] = {**info.get("popularity_head", {}), "file": SCORE_HEAD_FILE,
                                       "input": "standardized pooled state",
                                       "target_mean": float(self.score_head.target_mean),
                                       "target_std": float(self.score_head.target_std)}
        write_card(out, self.kind, self.card(info))


CHUNK_OVERHEAD_TOKENS = 256  # what one more decoder call costs on a CPU, in padded tokens (measured order)


def length_chunks(lengths: Sequence[int], overhead: int = CHUNK_OVERHEAD_TOKENS,
                  max_chunks: int = 4) -> list[tuple[list[int], int]] | None:
    """Split a batch's rows, sorted by length, into at most `max_chunks` contiguous groups that minimise the
    tokens computed (rows x longest row, summed over groups) plus `overhead` per group. Returns [(row indices,
    width)] longest first, or None when one group is best (the batch then runs as it is)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    sizes = [lengths[i] for i in order]
    n = len(sizes)
    if n < 2 or sizes[0] * n - sum(sizes) <= overhead:
        return None
    # best[k][j]: the least cost of the first j rows in k groups (a group's width is its first row's length)
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(max_chunks + 1)]
    cut = [[0] * (n + 1) for _ in range(max_chunks + 1)]
    best[0][0] = 0.0
    for k in range(1, max_chunks + 1):
        for j in range(1, n + 1):
            for i in range(k - 1, j):
                cost = best[k - 1][i] + sizes[i] * (j - i) + overhead
                if cost < best[k][j]:
                    best[k][j], cut[k][j] = cost, i
    k = min(range(1, max_chunks + 1), key=lambda m: best[m][n])
    if k == 1:
        return None
    bounds, j = [], n
    for m in range(k, 0, -1):
        bounds.append((cut[m][j], j))
        j = cut[m][j]
    return [(order[i:j], sizes[i]) for i, j in reversed(bounds)]


def build_notellm(config: NoteLLMConfig, dtype: str = "float32", seed: int = 0) -> NoteLLM:
    """A fresh NoteLLM on `config.backbone` (projection initialised with `seed`)."""
    from notellm.models.backbone import load_backbone

    lm, tokenizer = load_backbone(config.backbone, dtype=dtype, seed=seed)
    model = NoteLLM(lm, tokenizer, config)
    if isinstance(model.proj, nn.Linear):
        # nn.Linear's own init, U(+-1/sqrt(fan_in)), from a generator of its own: whatever drew from the global
        # RNG before (e.g. resizing the embeddings under DeepSpeed ZeRO-3) leaves the head the same
        bound = 1.0 / math.sqrt(model.proj.in_features)
        with torch.no_grad():
            model.proj.weight.uniform_(-bound, bound, generator=torch.Generator().manual_seed(seed))
    return model


def load_head(model: NoteLLM, model_dir: Path) -> None:
    """Projection weights and feature statistics from a model folder's head file."""
    from safetensors.torch import load_file

    head = load_file(str(model_dir / HEAD_FILE))
    if isinstance(model.proj, nn.Linear):
        model.proj.load_state_dict({"weight": head["weight"]})
        model.proj.float()
    if "feat_mean" in head:
        model.feat_mean.copy_(head["feat_mean"])
        model.feat_std.copy_(head["feat_std"])
    if (model_dir / SCORE_HEAD_FILE).is_file():
        from notellm.models.folder import ModelFolderError

        tensors = load_file(str(model_dir / SCORE_HEAD_FILE))
        size = model.feat_mean.numel()
        if tuple(tensors["weight"].shape) != (1, size):
            raise ModelFolderError(f"{model_dir / SCORE_HEAD_FILE}: popularity head of shape "
                                   f"{tuple(tensors['weight'].shape)}, the backbone's pooled state has {size}")
        score = model.add_popularity_head(float(tensors["target_mean"]), float(tensors["target_std"]))
        score.linear.load_state_dict({"weight": tensors["weight"], "bias": tensors["bias"]})


def load_card_lm(model_dir: Path, card: dict[str, Any], config: NoteLLMConfig, dtype: str, merge_lora: bool,
                 add_tokens) -> tuple[Any, Any]:
    """The (causal LM, tokenizer) of a saved model folder: full weights, or the backbone + its LoRA adapter
    (`add_tokens(lm, tokenizer)` first adds the special tokens the adapter was trained with)."""
    if card.get("weights") == "full":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir / "tokenizer")
        lm = AutoModelForCausalLM.from_pretrained(model_dir / "backbone", dtype=getattr(torch, dtype))
        return lm, tokenizer
    from peft import PeftModel

    from notellm.models.backbone import load_backbone

    lm, tokenizer = load_backbone(config.backbone, dtype=dtype, seed=card.get("backbone_seed", 0))
    add_tokens(lm, tokenizer)
    lm = PeftModel.from_pretrained(lm, model_dir / "adapter")
    return (lm.merge_and_unload() if merge_lora else lm), tokenizer


def load_notellm(model_dir: str | Path, dtype: str = "float32", merge_lora: bool = True) -> NoteLLM:
    """Load a folder written by `NoteLLM.save` (or by `notellm train`)."""
    from notellm.models.folder import expect_kind

    model_dir = Path(model_dir)
    card = expect_kind(model_dir, "notellm")
    config = NoteLLMConfig(**card["config"])
    lm, tokenizer = load_card_lm(model_dir, card, config, dtype, merge_lora, add_emb_token)
    model = NoteLLM(lm, tokenizer, config, emb_token_id=tokenizer.convert_tokens_to_ids(EMB_TOKEN))
    load_head(model, model_dir)
    model.card_data = card
    return model.eval()
