"""Pair mining: the DuckDB SQL (notellm.data.pairs) against a straightforward pandas implementation.

    nice .venv/bin/python benchmarks/pairs.py                 # 10 million synthetic events
    .venv/bin/python benchmarks/pairs.py --events 200000      # a quick run

Synthetic events (seeded): notes grouped into topics with power-law popularity (topics and notes within a
topic), users with power-law activity, sessions of geometric length (mean 8) that mostly stay on one topic,
clicks seconds apart (equal timestamps happen; `seq` orders them). Both engines mine the default config
(window mode, W=20, per session, l=0.01, u=30, t=10) from the same Parquet file, each in its own process, so
its time and peak memory (RSS) are its own; the two pair tables must be equal. Synthetic data: this benchmark
runs without ../shared.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# ---- data -----------------------------------------------------------------------------------------------------
def _power_law(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return rng.permutation(weights / weights.sum())


def _ids(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    text = pc.utf8_lpad(pc.cast(pa.array(numbers), pa.string()), width, "0")
    return pc.binary_join_element_wise(pa.scalar(prefix), text, "")


def synthetic_events(n_events: int, seed: int = 0, topic_size: int = 100, mean_session: float = 8.0,
                     on_topic: float = 0.7) -> pa.Table:
    """A seeded click log with EVENT_SCHEMA columns plus `seq` (the log position)."""
    rng = np.random.default_rng(seed)
    n_topics = max(10, n_events // (20 * topic_size))  # about 20 clicks per note on average
    n_users = max(10, n_events // 50)
    lengths = rng.geometric(1.0 / mean_session, size=int(n_events / mean_session * 1.2) + 16)
    n_sessions = int(np.searchsorted(np.cumsum(lengths), n_events)) + 1
    lengths = lengths[:n_sessions]
    lengths[-1] -= lengths.sum() - n_events
    session_of = np.repeat(np.arange(n_sessions), lengths)

    topic_p, local_p = _power_law(n_topics, 1.0, rng), _power_law(topic_size, 1.1, rng)
    session_topic = rng.choice(n_topics, size=n_sessions, p=topic_p)
    stays = rng.random(n_events) < on_topic
    topic = np.where(stays, session_topic[session_of], rng.choice(n_topics, size=n_events, p=topic_p))
    note = topic * topic_size + rng.choice(topic_size, size=n_events, p=local_p)

    session_user = rng.choice(n_users, size=n_sessions, p=_power_law(n_users, 0.8, rng))
    start = rng.integers(1_700_000_000, 1_700_000_000 + 30 * 86400, size=n_sessions)
    gaps = rng.exponential(20.0, size=n_events).astype(np.int64)  # whole seconds: ties occur
    first = np.r_[0, np.cumsum(lengths)[:-1]]
    offset = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[first], lengths)
    ts = start[session_of] + offset
    return pa.table({
        "user_id": _ids("u", session_user[session_of], 7),
        "note_id": _ids("n", note, 8),
        "timestamp": pa.array(ts * 1_000_000, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "session_id": _ids("s", session_of, 9),
        "seq": pa.array(np.arange(n_events), pa.int64()),
    })


# ---- the pandas baselines --------------------------------------------------------------------------------------
def _read_sorted(path: str):
    import pandas as pd

    df = pd.read_parquet(path, columns=["user_id", "note_id", "timestamp", "session_id", "seq"])
    df["file_row"] = np.arange(len(df))
    return df.sort_values(["user_id", "session_id", "timestamp", "seq", "file_row"], kind="stable")


def _top_pairs(scores, min_score: float, max_score: float, top_k: int):
    scores = scores[(scores["score"] >= min_score) & (scores["score"] <= max_score)]
    scores = scores.sort_values(["note_a", "score", "note_b"], ascending=[True, False, True], kind="stable")
    return scores.groupby("note_a", sort=False).head(top_k)


def pandas_pairs(path: str, window: int = 20, min_score: float = 0.01, max_score: float = 30.0, top_k: int = 10,
                 decimals: int = 9) -> pa.Table:
    """Window mode per (user, session), written the way pandas is usually written: note ids as a categorical
    (sorted categories, so ties break in note id order as in the SQL), groupby-shift, concat, groupby-sum,
    sort, head. The same semantics as the SQL."""
    import pandas as pd

    df = _read_sorted(path)
    df["note_id"] = pd.Categorical(df["note_id"], categories=sorted(df["note_id"].unique()))
    sequences = df.groupby(["user_id", "session_id"], sort=False, observed=True)["note_id"]
    weight = 1.0 / sequences.transform("size").astype("float64")
    parts = []
    for k in range(1, window + 1):
        later = sequences.shift(-k)  # the click k places after, in the same session
        keep = later.notna() & (later != df["note_id"])
        parts.append(pd.DataFrame({"note_a": df["note_id"][keep], "note_b": later[keep], "w": weight[keep]}))
    contributions = pd.concat(parts, ignore_index=True)
    del parts
    scores = (contributions.groupby(["note_a", "note_b"], observed=True, sort=False)["w"].sum()
              .round(decimals).rename("score").reset_index())
    del contributions
    top = _top_pairs(scores, min_score, max_score, top_k)
    return pa.table({"note_a": pa.array(top["note_a"].astype(str), pa.string()),
                     "note_b": pa.array(top["note_b"].astype(str), pa.string()),
                     "score": pa.array(top["score"].to_numpy(), pa.float64())})


def numpy_pairs(path: str, window: int = 20, min_score: float = 0.01, max_score: float = 30.0, top_k: int = 10,
                decimals: int = 9) -> pa.Table:
    """A tuned baseline: note ids factorised to integers, shifts as numpy slices of the sorted arrays."""
    import pandas as pd

    df = _read_sorted(path)
    # sort=True: integer codes follow the string order of note ids, so ties break as in the SQL
    codes, uniques = pd.factorize(df["note_id"], sort=True)
    group = df.groupby(["user_id", "session_id"], sort=False).ngroup().to_numpy()
    weight = 1.0 / np.bincount(group)[group]  # 1/N, N = clicks in the click's session
    del df
    parts = []
    for k in range(1, window + 1):
        same = (group[:-k] == group[k:]) & (codes[:-k] != codes[k:])  # B is k clicks after A, same session
        parts.append(pd.DataFrame({"note_a": codes[:-k][same], "note_b": codes[k:][same], "w": weight[:-k][same]}))
    contributions = pd.concat(parts, ignore_index=True)
    del parts
    scores = contributions.groupby(["note_a", "note_b"], sort=False)["w"].sum().round(decimals)
    del contributions
    top = _top_pairs(scores.rename("score").reset_index(), min_score, max_score, top_k)
    return pa.table({"note_a": pa.array(uniques[top["note_a"].to_numpy()], pa.string()),
                     "note_b": pa.array(uniques[top["note_b"].to_numpy()], pa.string()),
                     "score": pa.array(top["score"].to_numpy(), pa.float64())})


def duckdb_pairs(path: str) -> pa.Table:
    from notellm.data.pairs import PairMiningConfig, mine_pairs

    return mine_pairs(path, PairMiningConfig(sessions="column"))


ENGINES = {"duckdb": duckdb_pairs, "pandas": pandas_pairs, "pandas+numpy": numpy_pairs}


# ---- one engine in its own process ----------------------------------------------------------------------------
def _child(engine: str, events: str, out: str) -> None:
    started = time.perf_counter()
    table = ENGINES[engine](events)
    seconds = time.perf_counter() - started
    pq.write_table(table, out)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak_kib / 1024, "pairs": table.num_rows}))


def _run_engine(engine: str, events: str, out: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", engine, events, out],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        why = (f"killed by signal {-proc.returncode} (out of memory?)" if proc.returncode < 0
               else f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:] or ''}")
        print(f"{engine} FAILED: {why}\n{proc.stderr[-2000:]}", flush=True)
        return {"failed": why}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{engine}: {result['seconds']:.1f} s, peak RSS {result['peak_rss_mib']:,.0f} MiB", flush=True)
    return result


def _compare(a: pa.Table, b: pa.Table) -> str:
    """'equal', or what differs. Scores are rounded to 9 places by both, so they must match to 1e-12."""
    if a.num_rows != b.num_rows:
        return f"DIFFERENT: {a.num_rows} vs {b.num_rows} pairs"
    if a.column("note_a").to_pylist() != b.column("note_a").to_pylist() or \
            a.column("note_b").to_pylist() != b.column("note_b").to_pylist():
        return "DIFFERENT: same count, different pairs or order"
    gap = float(np.max(np.abs(a.column("score").to_numpy() - b.column("score").to_numpy()), initial=0.0))
    return "equal" if gap <= 1e-12 else f"DIFFERENT: scores differ by up to {gap:.3g}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return 0

    with tempfile.TemporaryDirectory(prefix="notellm-bench-pairs-") as tmp:
        events_path = str(Path(tmp) / "events.parquet")
        started = time.perf_counter()
        events = synthetic_events(args.events, args.seed)
        pq.write_table(events, events_path)
        n_users = len(pc.unique(events.column("user_id")))
        n_notes = len(pc.unique(events.column("note_id")))
        n_sessions = len(pc.unique(events.column("session_id")))
        del events
        print(f"{args.events:,} events, {n_users:,} users, {n_notes:,} notes, {n_sessions:,} sessions "
              f"(generated in {time.perf_counter() - started:.1f} s); config: window W=20 per session, "
              f"l=0.01, u=30, t=10; {os.cpu_count()} CPU cores")
        results, verdicts = {}, {}
        for engine in args.engines:
            out = Path(tmp) / f"{engine}.parquet"
            results[engine] = _run_engine(engine, events_path, str(out))
            if engine != "duckdb" and "seconds" in results[engine] and "seconds" in results.get("duckdb", {}):
                verdicts[engine] = _compare(pq.read_table(Path(tmp) / "duckdb.parquet"), pq.read_table(out))

    print("\n| engine | seconds | events/s | peak RSS (MiB) | pairs | same pairs as DuckDB |")
    print("|---|---|---|---|---|---|")
    for engine, r in results.items():
        if "failed" in r:
            print(f"| {engine} | failed: {r['failed']} | | | | |")
            continue
        print(f"| {engine} | {r['seconds']:.1f} | {args.events / r['seconds']:,.0f} | {r['peak_rss_mib']:,.0f} "
              f"| {r['pairs']:,} | {verdicts.get(engine, '-')} |")
    duck = results.get("duckdb", {})
    for engine, r in results.items():
        if engine != "duckdb" and "seconds" in r and "seconds" in duck:
            print(f"DuckDB is {r['seconds'] / duck['seconds']:.1f}x faster than {engine}")
    failed = [e for e, r in results.items() if "failed" in r]
    return 1 if failed or any(v != "equal" for v in verdicts.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
