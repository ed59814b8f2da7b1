"""NoteLLM-2 training: the vision tower trains or stays frozen, the mICL loss mix, `notellm train/embed/eval`."""

import copy
import json
import math

import numpy as np
import pytest
import torch

from notellm.data.synthetic_mm import SyntheticMMConfig, generate_synthetic_mm
from notellm.models.multimodal import MultimodalSettings, NoteLLM2, add_multimodal_tokens
from notellm.models.notellm import NoteLLMConfig
from notellm.losses import GenerativeContrastiveLoss, MaskedGenerativeContrastiveLoss, MultimodalLoss
from notellm.training.multimodal import MultimodalRecipe, MultimodalTrainConfig


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """32 notes (2 topics x 2 colours x 2 shapes x 4): 8 train and 8 test pairs, their PNG images."""
    cfg = SyntheticMMConfig(n_topics=2, n_colours=2, n_shapes=2, notes_per_cluster=4, test_share=0.5)
    return generate_synthetic_mm(tmp_path_factory.mktemp("mm"), cfg)


@pytest.fixture(scope="module")
def backbone(tiny_backbone):
    """A private copy of the session's tiny-qwen3 with the special tokens added (each test copies the LM)."""
    lm, tokenizer = copy.deepcopy(tiny_backbone[0]), copy.deepcopy(tiny_backbone[1])
    add_multimodal_tokens(lm, tokenizer)
    return lm, tokenizer


@pytest.mark.parametrize("train_vision", [True, False])
def test_vision_tower_changes_after_a_step_only_when_trained(backbone, data, tmp_path, train_vision):
    lm, tokenizer = backbone
    settings = MultimodalSettings(train_vision=train_vision)
    model = NoteLLM2(copy.deepcopy(lm), tokenizer, NoteLLMConfig("tiny-qwen3", dim=16, max_length=96), settings)
    cfg = MultimodalTrainConfig(notes=str(data["notes"]), train_pairs=str(data["train_pairs"]),
                                output_dir=str(tmp_path / "run"), multimodal=settings, batch_size=4, lr=1e-2,
                                bf16="false", model=model.config)
    recipe = MultimodalRecipe(cfg, model=model)
    module = recipe.build()
    module.train()
    tower_before = copy.deepcopy(model.tower.state_dict())
    connector_before = copy.deepcopy(model.connector.state_dict())
    optimizer = torch.optim.AdamW(recipe.param_groups(module), lr=cfg.lr)
    out = module(**recipe.collate([0, 1, 2, 3], epoch=0))
    assert out["image_contrastive"] > 0  # the mICL image loss is part of the objective
    out["loss"].backward()
    optimizer.step()
    tower_changed = [k for k, v in model.tower.state_dict().items() if not torch.equal(v, tower_before[k])]
    connector_changed = [k for k, v in model.connector.state_dict().items() if not torch.equal(v, connector_before[k])]
    assert connector_changed  # the connector trains either way
    if train_vision:
        assert model.tower.training
        assert all(p.grad is not None for p in model.tower.parameters() if p.requires_grad)
        assert {"embeddings.patch_embedding.weight", "encoder.layers.0.self_attn.q_proj.weight"} <= set(tower_changed)
    else:
        assert tower_changed == [] and not model.tower.training
        assert all(p.grad is None and not p.requires_grad for p in model.tower.parameters())


def test_micl_loss_is_the_configured_mix_of_two_gcls():
    torch.manual_seed(0)
    a, b, ia, ib = (torch.randn(3, 8) for _ in range(4))
    gcl = GenerativeContrastiveLoss(init_log_scale=0.0)
    l_m, l_v = gcl(a, b).item(), gcl(ia, ib).item()
    for w_m, w_v in ((9.0, 1.0), (3.0, 1.0)):
        loss = MultimodalLoss(0.0, 0.0, 100.0, w_m, w_v)(a, b, img_a=ia, img_b=ib)
        assert loss["loss"].item() == pytest.approx((w_m * l_m + w_v * l_v) / (w_m + w_v), rel=1e-6)
        assert loss["contrastive"].item() == pytest.approx(l_m, rel=1e-6)
        assert loss["image_contrastive"].item() == pytest.approx(l_v, rel=1e-6)
    # without image vectors (no mICL) the loss is the multimodal GCL alone
    assert MultimodalLoss(0.0, 0.0)(a, b)["loss"].item() == pytest.approx(l_m, rel=1e-6)


def test_masked_gcl_leaves_out_pairs_without_two_images():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    b = torch.tensor([[0.6, 0.8], [-1.0, 0.0], [3.0, -1.0]])
    masked = MaskedGenerativeContrastiveLoss(init_log_scale=0.0)
    plain = GenerativeContrastiveLoss(init_log_scale=0.0)
    assert masked(a, b, torch.tensor([True, True, True])).item() == pytest.approx(plain(a, b).item(), rel=1e-6)
    # pair 2 invalid: exactly the hand-computed GCL over pairs 0 and 1 (tests/test_losses.py: 0.8942642)
    assert masked(a, b, torch.tensor([True, True, False])).item() == pytest.approx(0.8942642, abs=1e-6)
    assert masked(a, b, torch.tensor([False, False, False])).item() == 0.0


def test_notellm_train_embed_and_eval_recall_accept_the_multimodal_model(data, tmp_path):
    """The same commands as the text model: a `multimodal:` section selects NoteLLM-2 (LoRA here)."""
    from typer.testing import CliRunner

    from notellm.cli import app

    config = tmp_path / "mm.yaml"
    config.write_text(f"""
notes: {data['notes']}
train_pairs: {data['train_pairs']}
val_pairs: {data['test_pairs']}
eval_ks: [1, 3]
output_dir: {tmp_path / 'run'}
model: {{backbone: tiny-qwen3, dim: 16, max_length: 96}}
multimodal: {{micl: true, late_fusion: true, vision_tower: tiny-clip}}
batch_size: 4
max_steps: 2
bf16: false
save_every: 0
""", encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(config), "lr=1e-3"])
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "run" / "model" / "notellm.json").read_text())
    assert card["weights"] == "lora" and card["multimodal"]["mode"] == "micl+late"
    assert card["train"]["steps"] == 2 and card["objective"] == "gcl"
    result = runner.invoke(app, ["embed", str(data["notes"]), "-m", str(tmp_path / "run" / "model"),
                                 "-o", str(tmp_path / "emb"), "--fp32"])
    assert result.exit_code == 0, result.output
    vectors = np.load(tmp_path / "emb" / "embeddings.npy")
    assert vectors.shape == (32, 16)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    result = runner.invoke(app, ["eval", "recall", "--notes", str(data["notes"]), "--pairs", str(data["test_pairs"]),
                                 "--embeddings", str(tmp_path / "emb"), "--ks", "1,3", "--no-buckets",
                                 "--out", str(tmp_path / "recall.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "recall.json").read_text())
    assert report["n_queries"] == 8 and report["pool_size"] == 8  # one test pair per cluster
    # the reloaded model (merged LoRA) ranks exactly as the trained one did at the end of training
    validation = card["train"]["validation"]
    assert report["overall"]["recall"] == {"1": validation["val_R@1"], "3": validation["val_R@3"]}


@pytest.mark.parametrize("name", ["notellm2_synthetic.yaml", "notellm2_clip.yaml", "notellm2_offline.yaml"])
def test_shipped_configs_select_and_fill_the_multimodal_trainer(name):
    from pathlib import Path

    from notellm.config import load_config
    from notellm.training.multimodal import is_multimodal_config

    path = Path(__file__).resolve().parents[1] / "configs" / name
    assert is_multimodal_config(str(path))
    cfg = load_config(MultimodalTrainConfig, path, ["multimodal.max_images=2"])
    assert isinstance(cfg.multimodal, MultimodalSettings) and cfg.multimodal.max_images == 2
    assert cfg.multimodal.mode == "micl+late" and cfg.objective == "gcl"
    assert not is_multimodal_config(str(path.with_name("notellm_demo.yaml")))
    assert is_multimodal_config(str(path.with_name("notellm_demo.yaml")), ["multimodal.micl=false"])
