"""int8 embedding (`notellm embed --int8`): quantized decoder, vectors close to float32, clear errors."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from helpers.toy import write_toy
from notellm.errors import ConfigError
from notellm.inference.embed import Embedder, embed_table, read_embeddings
from notellm.inference.quantize import (INT8_RECIPE, _fold_into_norm, activation_maxima, check_quantize,
                                        count_int8_layers, quantize_int8, smooth_decoder)

MODEL = "zero-shot:tiny-qwen3"


@pytest.fixture(scope="module")
def notes(tmp_path_factory):
    return str(write_toy(tmp_path_factory.mktemp("toy"))["notes"])


def test_int8_quantizes_the_decoder_projections_but_down_proj_and_keeps_vectors_close(notes):
    rows = pq.read_table(notes).to_pylist()
    fp32, int8 = Embedder(MODEL, bf16=False), Embedder(MODEL, quantize="int8")
    # tiny-qwen3: 2 layers x 7 projections (q, k, v, o, gate, up, down), down_proj kept float (the recipe);
    # the tied LM head is left alone
    assert count_int8_layers(int8.model) == 12 and count_int8_layers(fp32.model) == 0
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
    assert meta["int8"]["keep_float"] == ["down_proj"]


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

    plain = min_cosine(smooth_alpha=None, keep_float=())
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
