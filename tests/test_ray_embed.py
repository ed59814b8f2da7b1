"""`notellm embed --engine ray`: Ray Data model actors on a local 2-CPU Ray instance give the local path's
vectors, resume from their Parquet shards, and refuse a folder made with other settings."""

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from helpers.toy import write_toy  # noqa: E402
from notellm.errors import ConfigError  # noqa: E402
from notellm.inference.embed import embed_table, read_embeddings  # noqa: E402
from notellm.inference.ray_embed import embed_table_ray, shard_file  # noqa: E402

MODEL = "zero-shot:tiny-qwen3"
pytestmark = pytest.mark.slow  # a Ray instance takes seconds to start, more on a loaded machine


@pytest.fixture(scope="module")
def local_ray():
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except Exception as exc:  # Ray gives its raylet 30 s to register: a machine under heavy load can miss it
        ray.shutdown()
        pytest.skip(f"a local Ray instance did not start here: {str(exc).splitlines()[0]}")
    yield
    ray.shutdown()


def test_ray_engine_matches_local_path_and_resumes(tmp_path, local_ray):
    notes = str(write_toy(tmp_path)["notes"])
    local_ids, local, _ = read_embeddings(embed_table(notes, MODEL, str(tmp_path / "local"), shard_size=10,
                                                      bf16=False))
    out = tmp_path / "ray"
    counts = []
    ids, vectors, meta = read_embeddings(embed_table_ray(notes, MODEL, str(out), shard_size=10, bf16=False,
                                                         workers=2, on_shard=counts.append))
    assert ids == local_ids and sorted(counts) == [2, 10, 10, 10]
    np.testing.assert_allclose(vectors, local, atol=1e-5)
    assert meta["engine"] == "ray" and meta["dim"] == 64 and meta["count"] == 32

    # a kill after three shards: the fourth and the merged files are gone; only the fourth is computed again
    shard_file(out, 3).unlink()
    (out / "embeddings.npy").unlink()
    kept = shard_file(out, 0).stat().st_mtime_ns
    counts.clear()
    ids2, vectors2, _ = read_embeddings(embed_table_ray(notes, MODEL, str(out), shard_size=10, bf16=False,
                                                        workers=2, on_shard=counts.append))
    assert counts == [2] and shard_file(out, 0).stat().st_mtime_ns == kept
    assert ids2 == ids and np.array_equal(vectors2, vectors)

    with pytest.raises(ConfigError, match="pooling: None -> 'mean'"):
        embed_table_ray(notes, MODEL, str(out), shard_size=10, bf16=False, pooling="mean")
