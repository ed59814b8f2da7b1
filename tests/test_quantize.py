"""int8 embedding (`notellm embed --int8`): quantized decoder, vectors close to float32, clear errors."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from helpers.toy import write_toy
from notellm.errors import ConfigError
from notellm.inference.embed import Embedder, embed_table, read_embeddings
from notellm.inference.quantize import check_quantize, count_int8_layers

MODEL = "zero-shot:tiny-qwen3"


@pytest.fixture(scope="module")
def notes(tmp_path_factory):
    return str(write_toy(tmp_path_factory.mktemp("toy"))["notes"])


def test_int8_quantizes_every_decoder_projection_and_keeps_vectors_close(notes):
    rows = pq.read_table(notes).to_pylist()
    fp32, int8 = Embedder(MODEL, bf16=False), Embedder(MODEL, quantize="int8")
    # tiny-qwen3: 2 layers x 7 projections (q, k, v, o, gate, up, down); the tied LM head is left alone
    assert count_int8_layers(int8.model) == 14 and count_int8_layers(fp32.model) == 0
    assert int8.meta["quantize"] == "int8" and int8.meta["bf16"] is False
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


def test_quantize_settings_are_checked():
    assert check_quantize(None) == "none" and check_quantize("INT8") == "int8"
    with pytest.raises(ConfigError, match="quantize must be one of"):
        check_quantize("int4")
    with pytest.raises(ConfigError, match="drop --bf16"):
        Embedder(MODEL, bf16=True, quantize="int8")
