"""The shared LoRA wrapper: where adapters go, and FastDropout against torch's dropout."""

import pytest
import torch
from torch import nn

from notellm.models.backbone import load_backbone
from notellm.errors import ConfigError
from notellm.models.lora import FastDropout, LoraConfig, apply_lora, lora_target_regex


def test_fast_dropout_drops_the_asked_share_and_rescales_the_rest():
    torch.manual_seed(0)
    x = torch.rand(1000, 1000) + 1.0  # no zeros of its own
    y = FastDropout(0.05).train()(x)
    dropped = y == 0
    # binomial std of the share over 1e6 draws is 2.2e-4: 5 sigma
    assert dropped.float().mean().item() == pytest.approx(0.05, abs=1.1e-3)
    assert torch.allclose(y[~dropped], x[~dropped] / 0.95)
    assert y.mean().item() == pytest.approx(x.mean().item(), rel=2e-3)
    # rows and columns are not correlated: each row's share is binomial(1000, .05), std .0069
    assert dropped.float().mean(dim=1).std().item() == pytest.approx(0.0069, rel=0.1)


def test_fast_dropout_gradient_is_the_mask_times_the_scale():
    x = torch.randn(4, 7, 33, requires_grad=True)
    torch.manual_seed(1)
    y = FastDropout(0.3).train()(x)
    y.sum().backward()
    expected = (y.detach() != 0).float() / 0.7
    assert torch.allclose(x.grad, expected)


def test_fast_dropout_is_identity_in_eval_and_at_p0_and_follows_the_seed():
    x = torch.randn(3, 5)
    assert torch.equal(FastDropout(0.5).eval()(x), x)
    assert torch.equal(FastDropout(0.0).train()(x), x)
    drop = FastDropout(0.5).train()
    torch.manual_seed(7)
    first = drop(x)
    torch.manual_seed(7)
    assert torch.equal(drop(x), first)
    assert not torch.equal(drop(x), first)


def test_apply_lora_puts_fast_dropout_adapters_only_in_the_top_layers():
    lm, _ = load_backbone("tiny-qwen3")
    n_layers = len(lm.model.layers)
    cfg = LoraConfig(r=4, alpha=8, dropout=0.1, target_modules=["q_proj", "down_proj"], top_layers=1)
    peft_model = apply_lora(lm, cfg, task_type="CAUSAL_LM")
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert len(trainable) == 4 and all(f".layers.{n_layers - 1}." in n for n in trainable)  # 2 modules x A, B
    dropouts = [m for m in peft_model.modules() if isinstance(m, nn.Dropout) and m.p == 0.1]
    assert len(dropouts) == 2 and all(isinstance(m, FastDropout) for m in dropouts)


def test_lora_target_regex_rejects_more_layers_than_the_backbone_has():
    lm, _ = load_backbone("tiny-qwen3")
    with pytest.raises(ConfigError, match="top_layers must be in 0..2"):
        lora_target_regex(lm, ["q_proj"], 3)


def test_one_lora_config_checks_its_values_and_names_missing_modules():
    with pytest.raises(ConfigError, match="r >= 1"):
        LoraConfig(r=0)
    with pytest.raises(ConfigError, match="dropout"):
        LoraConfig(dropout=1.5)
    lm, _ = load_backbone("tiny-qwen3")
    with pytest.raises(ConfigError, match="^lora: "):
        apply_lora(lm, LoraConfig(target_modules=["no_such_proj"]))


def _adapted_tiny_model(dropout: float):
    lm, _ = load_backbone("tiny-qwen3")
    model = apply_lora(lm, LoraConfig(r=4, alpha=8, dropout=dropout), task_type="CAUSAL_LM")
    torch.manual_seed(3)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero, where both forms agree trivially
            nn.init.normal_(p, std=0.05)
    return model


def _lora_linears(model) -> list:
    from peft.tuners.lora.layer import Linear as LoraLinear

    return [m for m in model.modules() if type(m) is LoraLinear]


def _back_to_peft_forward(model) -> None:
    for m in _lora_linears(model):
        del m.forward  # the instance's fused forward goes; peft's class forward answers again


def _logits_and_grads(model, ids):
    model.zero_grad()
    torch.manual_seed(11)  # the same dropout masks for both forms: dropout is called the same way
    logits = model(input_ids=ids).logits
    (logits.float() ** 2).mean().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_fused_lora_forward_matches_peft_in_outputs_and_gradients(dropout):
    model = _adapted_tiny_model(dropout).train()
    ids = torch.randint(0, 1000, (3, 9))
    layers = _lora_linears(model)
    assert layers and all("forward" in vars(m) for m in layers)  # every adapted projection is fused
    fused_logits, fused_grads = _logits_and_grads(model, ids)
    _back_to_peft_forward(model)
    peft_logits, peft_grads = _logits_and_grads(model, ids)
    assert torch.allclose(fused_logits, peft_logits, atol=1e-5, rtol=1e-5)
    assert fused_grads.keys() == peft_grads.keys()
    for name, grad in peft_grads.items():
        assert grad.abs().max() > 0, name
        assert torch.allclose(fused_grads[name], grad, atol=1e-6, rtol=1e-4), name


def test_fused_lora_forward_steps_aside_when_adapters_are_disabled_or_merged():
    model = _adapted_tiny_model(0.0).eval()
    ids = torch.randint(0, 1000, (2, 5))
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
        model.merge_adapter()
        merged = model(input_ids=ids).logits
    assert not torch.allclose(adapted, base, atol=1e-4)
    assert torch.allclose(merged, adapted, atol=1e-4)


def test_fused_lora_forward_over_bf16_base_weights_follows_peft_promotion():
    model = _adapted_tiny_model(0.0).eval()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            p.data = p.data.to(torch.bfloat16)  # bf16 base, float32 adapters, no autocast
    ids = torch.randint(0, 1000, (2, 5))
    with torch.no_grad():
        fused = model(input_ids=ids).logits
        _back_to_peft_forward(model)
        plain = model(input_ids=ids).logits
    assert fused.dtype == plain.dtype and torch.equal(fused, plain)
