"""The pair-mining SQL on a local Spark session gives exactly the DuckDB result (pairs, order and scores)."""

from __future__ import annotations

import importlib.util
import random
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from notellm.data.pairs import PairMiningConfig, mine_pairs, mine_pairs_spark, read_report
from notellm.data.schema import PAIR_SCHEMA

pytestmark = [
    pytest.mark.spark,
    pytest.mark.skipif(importlib.util.find_spec("pyspark") is None, reason="pyspark is not installed"),
    pytest.mark.skipif(shutil.which("java") is None, reason="java is not on PATH"),
]


@pytest.fixture(scope="module")
def spark():
    from notellm.data.pairs import local_spark

    session = local_spark(threads=2, memory="1g", quick_jit=True)
    yield session
    session.stop()


@pytest.fixture(scope="module")
def event_files(tmp_path_factory):
    """Random clicks in two Parquet files: power-law notes, few distinct timestamps (many ties, broken by seq
    and then by file order), sessions."""
    rng = random.Random(11)
    notes = [f"n{i:02d}" for i in range(50)]
    weights = [1 / (i + 1) for i in range(50)]
    rows = [(f"u{rng.randrange(30)}", rng.choices(notes, weights)[0], rng.randrange(40), f"s{rng.randrange(2)}",
             rng.randrange(3)) for _ in range(2000)]
    table = pa.table({
        "user_id": [r[0] for r in rows], "note_id": [r[1] for r in rows],
        "timestamp": pa.array([r[2] for r in rows], pa.int64()).cast(pa.timestamp("s", tz="UTC")),
        "session_id": [r[3] for r in rows], "seq": pa.array([r[4] for r in rows], pa.int64()),
    })
    folder = tmp_path_factory.mktemp("events")
    pq.write_table(table.slice(0, 1200), folder / "part-0.parquet")
    pq.write_table(table.slice(1200), folder / "part-1.parquet")
    return folder


@pytest.mark.parametrize("cfg", [
    PairMiningConfig(window=4, sessions="column", min_score=0.02, top_k=3),
    PairMiningConfig(mode="session", sessions="gap", session_gap_seconds=10, directed=True, min_score=None,
                     max_score=0.5, top_k=4),
], ids=["window-sessions", "session-gap-directed"])
def test_spark_equals_duckdb(spark, event_files, tmp_path, cfg):
    out = tmp_path / "spark_pairs.parquet"
    on_spark = mine_pairs_spark(event_files, cfg, out, spark=spark)
    on_duckdb = mine_pairs(event_files, cfg)
    assert on_spark.num_rows > 100
    # identical pairs in identical order; the scores are rounded to 9 places by both engines
    for column in ("note_a", "note_b"):
        assert on_spark.column(column).to_pylist() == on_duckdb.column(column).to_pylist()
    assert on_spark.column("score").to_pylist() == pytest.approx(on_duckdb.column("score").to_pylist(), abs=1e-12)
    written = pq.read_table(out)
    assert written.schema.equals(PAIR_SCHEMA) and written.num_rows == on_spark.num_rows
    report = read_report(out)
    assert report["engine"] == "spark" and report["events"] == 2000 and report["users"] == 30
