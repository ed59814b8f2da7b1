"""int8 embedding (`notellm embed --int8`): quantized decoder, vectors close to float32, clear errors."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from helpers.toy import write_toy
from notellm.errors import ConfigError
from notellm.inference.embed import Embedder, embed_table, read_embeddings
from notellm.inference.quantize import (INT8_RECIPE, PerTokenInt8Linear, _fold_into_norm, activation_maxima,
                                        check_quantize, count_int8_layers, quantize_int8, smooth_decoder)

MODEL = "zero-shot:tiny-qwen3"


@pytest.fixture(scope="module")
def notes(tmp_path_factory):
    return str(write_toy(tmp_path_factory.mktemp("toy"))["notes"])


def test_int8_quantizes_every_decoder_projection_and_keeps_vectors_close(notes):
    rows = pq.read_table(notes).to_pylist()
    fp32, int8 = Embedder(MODEL, bf16=False), Embedder(MODEL, quantize="int8")
    # tiny-qwen3: 2 layers x 7 projections (q, k, v, o, gate, up, down), each with per-token activation
    # scales; the tied LM head is left alone
    assert count_int8_layers(int8.model) == 14 and count_int8_layers(fp32.model) == 0
    assert sum(isinstance(m, PerTokenInt8Linear) for m in int8.model.modules()) == 14
    assert int8.meta["quantize"] == "int8" and int8.meta["bf16"] is False and int8.meta["int8"] == INT8_RECIPE
    a, b = fp32.encode(rows), int8.encode(rows)
    assert a.shape == b.shape
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    cosine = (a * b).sum(axis=1)
    assert cosine.min() > 0.99
    assert not np.allclose(a, b, atol=1e-6)  # it did run other kernels


def test_embed_table_int8_records_the_quantization(tmp_path, notes):
    ids, vectors, meta = read_embeddings(embed_table(notes, MODEL, str(tmp_path / "e"), shard_size=16,
                                                     quantize="int8"))
    assert meta["quantize"] == "int8" and vectors.shape == (32, 64) and len(ids) == 32
    assert meta["int8"]["keep_float"] == [] and meta["int8"]["activation_scale"] == "per_token"


def test_per_token_scales_make_a_vector_independent_of_its_batch_mates(notes):
    """torch's dynamic int8 scales a whole batch by one number, so a note's vector moved with the notes
    beside it; with one scale per token the same note gives the same vector in any batch."""
    rows = pq.read_table(notes).to_pylist()
    one_scale, per_token = _float_model(), _float_model()
    quantize_int8(one_scale.model, per_token=False, calibration=rows)
    quantize_int8(per_token.model, calibration=rows)
    loud = [dict(r, content=r["content"] + " ！！！ " * 20) for r in rows[8:16]]  # other batch-mates
    a, b = per_token.encode(rows[:8]), per_token.encode(rows[:1] + loud)
    np.testing.assert_allclose(a[0], b[0], atol=1e-5)
    a, b = one_scale.encode(rows[:8]), one_scale.encode(rows[:1] + loud)
    assert not np.allclose(a[0], b[0], atol=1e-5)  # what the per-token scale removes


def test_per_token_linear_matches_float_with_a_bias():
    torch.manual_seed(0)
    lin = torch.nn.Linear(32, 8)
    x = torch.randn(5, 32) * torch.tensor([1.0, 100.0, 0.01, 1.0, 3.0])[:, None]  # rows of very different size
    model = torch.nn.Sequential(lin)
    reference = model(x).detach()
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    from notellm.inference.quantize import _scale_per_token, int8_engine

    torch.backends.quantized.engine = int8_engine()
    quantize_dynamic(model, {"0": per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    _scale_per_token(model)
    assert isinstance(model[0], PerTokenInt8Linear)
    out = model(x)
    # each row's error is relative to that row's own size, small rows included
    rel = ((out - reference).norm(dim=1) / (reference - lin.bias.detach()).norm(dim=1).clamp(min=1e-6))
    assert float(rel.max()) < 0.05, rel


def _float_model():
    return Embedder(MODEL, bf16=False)


def test_smoothing_folds_exactly_into_the_decoder(notes):
    """Smoothing changes the weights (q/k/v/gate/up columns, norm gains, v/up rows) but not the function."""
    rows = pq.read_table(notes).to_pylist()
    e = _float_model()
    before = e.encode(rows)
    q_before = e.model.lm.get_decoder().layers[0].self_attn.q_proj.weight.detach().clone()
    smoothed = smooth_decoder(e.model, activation_maxima(e.model, rows), alpha=0.5)
    # per layer: q, k, v (input norm) + gate, up (MLP norm) + o (via v_proj, 4 query heads over 2 kv heads)
    # + down (via up_proj)
    assert smoothed == 2 * 7
    assert not torch.allclose(q_before, e.model.lm.get_decoder().layers[0].self_attn.q_proj.weight)
    np.testing.assert_allclose(e.encode(rows), before, atol=2e-5)


@pytest.mark.parametrize("norm_class", ["Qwen3RMSNorm", "Gemma3RMSNorm"])
def test_a_norm_gain_takes_the_division_whether_it_is_w_or_one_plus_w(norm_class):
    import importlib

    module = importlib.import_module(f"transformers.models.{norm_class[:-7].lower()}.modeling_{norm_class[:-7].lower()}")
    norm = getattr(module, norm_class)(8, eps=1e-6)
    torch.manual_seed(0)
    with torch.no_grad():
        norm.weight.normal_()
    x, s = torch.randn(3, 8), torch.rand(8) + 0.5
    expected = norm(x) / s
    assert _fold_into_norm(norm, s)
    torch.testing.assert_close(norm(x), expected, rtol=1e-5, atol=1e-6)


def _with_outlier_channel(e, factor: float = 300.0):
    """The same function, but one channel of every attention input is `factor` times larger (and q/k/v read
    it `factor` times weaker), as Gemma's real activations are."""
    with torch.no_grad():
        for layer in e.model.lm.get_decoder().layers:
            layer.input_layernorm.weight[5] *= factor
            for name in ("q_proj", "k_proj", "v_proj"):
                getattr(layer.self_attn, name).weight[:, 5] /= factor
    return e


def test_smoothing_recovers_the_cosine_an_outlier_channel_costs(notes):
    rows = pq.read_table(notes).to_pylist()
    reference = _with_outlier_channel(_float_model()).encode(rows)

    def min_cosine(**recipe):
        e = _with_outlier_channel(_float_model())
        quantize_int8(e.model, **recipe)
        return float((e.encode(rows) * reference).sum(axis=1).min())

    plain = min_cosine(smooth_alpha=None, keep_float=(), per_token=False)
    smooth = min_cosine(calibration=rows)
    assert smooth > 0.99 and smooth > plain + 0.01, (plain, smooth)


def test_quantize_settings_are_checked():
    assert check_quantize(None) == "none" and check_quantize("INT8") == "int8"
    with pytest.raises(ConfigError, match="quantize must be one of"):
        check_quantize("int4")
    with pytest.raises(ConfigError, match="drop --bf16"):
        Embedder(MODEL, bf16=True, quantize="int8")


def test_fused_rms_norms_match_transformers_and_leave_training_alone():
    import copy

    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

    from notellm.models.backbone import fuse_rms_norms

    torch.manual_seed(0)
    x = torch.randn(4, 7, 16)
    for cls in (Gemma3RMSNorm, Qwen3RMSNorm):
        plain, fast = cls(16, eps=1e-6), cls(16, eps=1e-6)
        with torch.no_grad():
            plain.weight.normal_()
        fast.load_state_dict(plain.state_dict())
        assert fuse_rms_norms(torch.nn.Sequential(fast)) == 1
        with torch.no_grad():
            torch.testing.assert_close(fast(x), plain(x), rtol=1e-6, atol=1e-6)
        copied = copy.deepcopy(fast)  # its own weights, also on the training path
        with torch.no_grad():
            copied.weight.add_(1.0)
        x_grad = x.clone().requires_grad_(True)
        torch.testing.assert_close(fast(x_grad), plain(x_grad))  # grad enabled: transformers' own code
        assert fast(x_grad).grad_fn is not None
        assert not torch.allclose(copied(x_grad), fast(x_grad))
