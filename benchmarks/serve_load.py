"""HTTP load on `GET /notes/{id}/similar`: requests/s and latency of the server under concurrent clients.

The server is the real app (`notellm.serving.app.create_app`) on uvicorn, 1 worker, in its own process,
listening on 127.0.0.1 only, over a flat (exact) index of `--n` random L2-normalised vectors of dimension
`--dim` (seeded; no model is needed for this endpoint). Clients: `--concurrency` httpx async clients with
keep-alive in this process, each asking for the neighbours of a random indexed note, for `--duration`
seconds (bounded; the run stops by itself). Every response is checked (200, k results, the query note not
among them): any failure counts as an error and the script exits 1.

Two runs in the same invocation: the server as shipped (index queries micro-batched: requests that arrive
while a search runs share the next one) and the baseline with batching off (`search_batch=1`: one query per
index scan, one at a time), so the table shows what batching buys on this machine.

    python benchmarks/serve_load.py                          # 100k x 128, 20 s per run, 8 clients
    python benchmarks/serve_load.py --rate 200               # offered 200 req/s: latency at that rate
    python benchmarks/serve_load.py --duration 10 --concurrency 32 --no-baseline
    python benchmarks/serve_load.py --writes 0.1 --no-baseline --fault   # issue 18: 90/10 reads/writes, kill -9

With `--writes F` a fraction F of the requests are `POST /notes` (one new note, unique id, behind a token) to
a server with a write log (each write fsynced before its 201); new notes are embedded by a hash embedder
(a seeded random unit vector per text: the benchmark measures the serving path, not a model). After the run
every acknowledged note must be stored exactly once. `--fault`: then 8 writers only, the server is killed
with SIGKILL mid-run, restarted on the same log, and acknowledged writes that did not survive are counted.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import socket
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

HOST = "127.0.0.1"  # loopback only


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def note_ids(n: int) -> list[str]:
    return [f"n{i:06d}" for i in range(n)]


TOKEN = "bench-token"


class HashEmbedder:
    """A seeded random unit vector per text (same text, same vector): writes without a model."""

    def __init__(self, dim: int):
        self.meta, self.dim = {"model": f"random-{dim}d", "dim": dim}, dim

    def encode(self, notes):
        import hashlib

        out = np.empty((len(notes), self.dim), dtype=np.float32)
        for i, note in enumerate(notes):
            seed = int.from_bytes(hashlib.sha256((note["title"] + note["content"]).encode()).digest()[:8], "little")
            out[i] = np.random.default_rng(seed).standard_normal(self.dim)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def build_app(n: int, dim: int, seed: int, search_batch: int, kind: str, write_log: str | None = None):
    from notellm.inference.index import build_index
    from notellm.serving.app import create_app
    from notellm.serving.schemas import ServingLimits

    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = build_index(note_ids(n), vectors, {"model": f"random-{dim}d"}, kind=kind)
    if write_log is None:
        return create_app(index=index, limits=ServingLimits(search_batch=search_batch))
    return create_app(index=index, embedder=HashEmbedder(dim), limits=ServingLimits(search_batch=search_batch),
                      write_log=write_log, api_key=TOKEN)


def serve(port: int, n: int, dim: int, seed: int, search_batch: int, kind: str, threads: int,
          write_log: str | None = None) -> None:
    """Child process: build the index and run uvicorn (1 worker) until terminated."""
    import faiss
    import uvicorn

    if threads:
        faiss.omp_set_num_threads(threads)
    app = build_app(n, dim, seed, search_batch, kind, write_log)
    uvicorn.run(app, host=HOST, port=port, workers=1, log_level="warning", access_log=False)


async def wait_ready(base: str, timeout: float) -> dict:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=base) as client:
        while time.monotonic() < deadline:
            try:
                response = await client.get("/health")
                if response.status_code == 200:
                    return response.json()
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"the server did not answer /health within {timeout:.0f} s")


class CpuMeter:
    """CPU seconds used by the server process and by this (client) process over the measured window: on a
    shared machine, CPU time per request says what the server costs even when other jobs slow it down."""

    def __init__(self, server_pid: int, warmup: float):
        import psutil

        self.server = psutil.Process(server_pid)
        self.marks: list[tuple[float, float]] = []

    def _now(self) -> tuple[float, float]:
        s = self.server.cpu_times()
        return s.user + s.system, time.process_time()

    def mark(self) -> None:
        self.marks.append(self._now())

    def used(self) -> tuple[float, float]:
        (s0, c0), (s1, c1) = self.marks[0], self.marks[-1]
        return s1 - s0, c1 - c0


async def load(base: str, n: int, k: int, duration: float, concurrency: int, warmup: float, seed: int,
               cpu: CpuMeter, rate: float = 0.0, writes: float = 0.0, acked: list | None = None):
    """(latencies in seconds of requests finished after warm-up, error messages, measured seconds); with
    `writes`, that fraction of requests are POST /notes, timed in `write_latencies`, their ids in `acked`."""
    import httpx

    ids = note_ids(n)
    latencies: list[float] = []
    errors: list[str] = []
    acked = acked if acked is not None else []
    write_latencies = load.write_latencies = []  # type: ignore[attr-defined]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    start = time.monotonic()
    measure_from, stop_at = start + warmup, start + warmup + duration

    interval = concurrency / rate if rate > 0 else 0.0  # each client's share of the offered rate

    async def client_loop(worker: int, client: httpx.AsyncClient) -> None:
        rng = np.random.default_rng(seed + worker)
        next_at = start + worker * interval / concurrency  # clients staggered over one interval
        while True:
            if interval:
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                next_at += interval
            now = time.monotonic()
            if now >= stop_at:
                return
            is_write = writes > 0 and rng.random() < writes
            note_id = f"w{worker}-{len(acked)}-{rng.integers(1 << 62)}" if is_write else ids[int(rng.integers(n))]
            t0 = time.perf_counter()
            try:
                if is_write:
                    response = await client.post("/notes", headers={"Authorization": f"Bearer {TOKEN}"}, json={
                        "notes": [{"note_id": note_id, "title": f"note {note_id}", "content": "written under load"}]})
                    problem = None if response.status_code == 201 else f"HTTP {response.status_code}: {response.text[:200]}"
                    if problem is None:
                        acked.append(note_id)
                else:
                    response = await client.get(f"/notes/{note_id}/similar", params={"k": k})
                    problem = check(response, note_id, k)
                elapsed = time.perf_counter() - t0
            except httpx.HTTPError as exc:
                elapsed, problem = time.perf_counter() - t0, f"{type(exc).__name__}: {exc}"
            if now >= measure_from:
                if problem:
                    errors.append(problem)
                else:
                    (write_latencies if is_write else latencies).append(elapsed)

    async def meter() -> None:
        await asyncio.sleep(max(0.0, measure_from - time.monotonic()))
        cpu.mark()
        await asyncio.sleep(max(0.0, stop_at - time.monotonic()))
        cpu.mark()

    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30.0) as client:
        await asyncio.gather(meter(), *(client_loop(w, client) for w in range(concurrency)))
    return latencies, errors, duration


def check(response, note_id: str, k: int) -> str | None:
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    results = response.json()["results"]
    if len(results) != k:
        return f"{len(results)} results instead of {k}"
    if any(r["note_id"] == note_id for r in results):
        return "the query note is among its own neighbours"
    return None


def run_one(args, search_batch: int) -> dict:
    port = free_port()
    ctx = mp.get_context("spawn")
    server = ctx.Process(target=serve, daemon=True,
                         args=(port, args.n, args.dim, args.seed, search_batch, args.kind, args.threads))
    server.start()
    base = f"http://{HOST}:{port}"
    try:
        asyncio.run(wait_ready(base, timeout=300))
        cpu = CpuMeter(server.pid, args.warmup)
        latencies, errors, seconds = asyncio.run(
            load(base, args.n, args.k, args.duration, args.concurrency, args.warmup, args.seed, cpu, args.rate))
        health = asyncio.run(wait_ready(base, timeout=10))
    finally:
        server.terminate()
        server.join(10)
    stats = health["batching"]["search"]
    ms = np.array(latencies) * 1e3 if latencies else np.array([np.nan])
    server_ms, client_ms = (1e3 * c / max(1, len(latencies)) for c in cpu.used())
    return {"batching": "on" if search_batch > 1 else "off (baseline)", "requests": len(latencies),
            "server_cpu_ms": server_ms, "client_cpu_ms": client_ms,
            "rps": len(latencies) / seconds, "p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)), "max": float(ms.max()), "errors": len(errors),
            "first_error": errors[0] if errors else "",
            "mean_batch": stats["items"] / max(1, stats["batches"]), "largest_batch": stats["largest_batch"],
            "search_cpu_ms": 1e3 * stats["cpu_seconds"] / max(1, stats["items"])}


def start_server(args, write_log: str, port: int):
    ctx = mp.get_context("spawn")
    server = ctx.Process(target=serve, daemon=True, args=(port, args.n, args.dim, args.seed, args.search_batch,
                                                          args.kind, args.threads, write_log))
    server.start()
    asyncio.run(wait_ready(f"http://{HOST}:{port}", timeout=300))
    return server


async def stored(base: str, acked: list[str]) -> tuple[int, list[str]]:
    """(store size, acknowledged ids the server does not have)."""
    import httpx

    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        count = (await client.get("/health")).json()["index"]["count"]
        missing = []
        for start in range(0, len(acked), 64):
            chunk = acked[start: start + 64]
            answers = await asyncio.gather(*(client.get(f"/notes/{i}/similar", params={"k": 1}) for i in chunk))
            missing += [i for i, r in zip(chunk, answers) if r.status_code != 200]
    return count, missing


def run_writes(args, folder: str) -> dict:
    """90/10 (or --writes) reads/writes; then every acknowledged write must be stored exactly once."""
    port, log = free_port(), os.path.join(folder, "load.log")
    server = start_server(args, log, port)
    base, acked = f"http://{HOST}:{port}", []
    try:
        cpu = CpuMeter(server.pid, args.warmup)
        latencies, errors, seconds = asyncio.run(load(base, args.n, args.k, args.duration, args.concurrency,
                                                      args.warmup, args.seed, cpu, args.rate, args.writes, acked))
        writes = load.write_latencies  # type: ignore[attr-defined]
        count, missing = asyncio.run(stored(base, acked))
    finally:
        server.terminate()
        server.join(10)
    pct = (lambda xs, q: float(np.percentile(np.array(xs) * 1e3, q)) if xs else float("nan"))
    return {"reads": len(latencies), "writes": len(writes), "read_rps": len(latencies) / seconds,
            "write_rps": len(writes) / seconds, "read_p50": pct(latencies, 50), "read_p99": pct(latencies, 99),
            "write_p50": pct(writes, 50), "write_p99": pct(writes, 99), "errors": len(errors),
            "first_error": errors[0] if errors else "", "acked": len(acked), "missing": len(missing),
            "extra": count - args.n - len(acked)}


def run_fault(args, folder: str) -> dict:
    """Writers only; SIGKILL the server after `--fault-after` s; restart on the same log; count lost acks."""
    import signal

    port, log = free_port(), os.path.join(folder, "fault.log")
    server = start_server(args, log, port)
    base, acked = f"http://{HOST}:{port}", []

    async def write_until_killed():
        import httpx

        async def writer(worker: int, client) -> None:
            for n in range(10 ** 9):
                note_id = f"f{worker}-{n}"
                try:
                    r = await client.post("/notes", headers={"Authorization": f"Bearer {TOKEN}"},
                                          json={"notes": [{"note_id": note_id, "title": f"fault {note_id}"}]})
                except httpx.HTTPError:
                    return  # killed under us: not acknowledged
                if r.status_code == 201:
                    acked.append(note_id)

        async def killer() -> None:
            await asyncio.sleep(args.fault_after)
            os.kill(server.pid, signal.SIGKILL)

        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            await asyncio.gather(killer(), *(writer(w, client) for w in range(args.concurrency)))

    asyncio.run(write_until_killed())
    server.join(10)
    server = start_server(args, log, port)
    try:
        count, missing = asyncio.run(stored(base, acked))
    finally:
        server.terminate()
        server.join(10)
    return {"acked": len(acked), "lost": len(missing), "stored_beyond_acked": count - args.n - len(acked)}


def cpu_model() -> str:
    from notellm.device import cpu_model as name

    return name()


def main_writes(args) -> int:
    import tempfile

    print(f"CPU: {cpu_model()}; load average before {os.getloadavg()[0]:.1f}", flush=True)
    failed = False
    with tempfile.TemporaryDirectory() as folder:
        r = run_writes(args, folder)
        print(f"{'requests':<10}{'count':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
        print(f"{'reads':<10}{r['reads']:>8,}{r['read_rps']:>9.1f}{r['read_p50']:>9.1f}{r['read_p99']:>9.1f}")
        print(f"{'writes':<10}{r['writes']:>8,}{r['write_rps']:>9.1f}{r['write_p50']:>9.1f}{r['write_p99']:>9.1f}")
        print(f"errors {r['errors']}; acknowledged writes {r['acked']}: missing {r['missing']}, "
              f"stored more than once or unacknowledged {r['extra']}")
        failed |= bool(r["errors"] or r["missing"] or r["extra"])
        if r["errors"]:
            print(f"ERROR: e.g. {r['first_error']}", file=sys.stderr)
        if args.fault:
            f = run_fault(args, folder)
            print(f"fault run: kill -9 after {args.fault_after:.0f} s of {args.concurrency} writers: "
                  f"{f['acked']} acknowledged, {f['lost']} lost after restart, "
                  f"{f['stored_beyond_acked']} in-flight unacknowledged writes stored")
            failed |= bool(f["lost"])
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 1 if failed else 0


def uvicorn_implementation() -> str:
    """What uvicorn picks by default: uvloop and httptools when installed, else asyncio and h11."""
    from importlib.util import find_spec

    return (f"loop {'uvloop' if find_spec('uvloop') else 'asyncio'}, "
            f"http {'httptools' if find_spec('httptools') else 'h11'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="indexed notes")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--kind", default="flat", choices=["flat", "hnsw", "ivfpq"])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients (keep-alive connections)")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="offered requests/s over all clients (0: each client sends its next request as soon "
                             "as the last one is answered)")
    parser.add_argument("--search-batch", type=int, default=64, help="most queries per index search")
    parser.add_argument("--threads", type=int, default=0, help="FAISS threads in the server (0: FAISS default, as `notellm serve`)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run with batching off")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--writes", type=float, default=0.0, help="fraction of requests that are POST /notes")
    parser.add_argument("--fault", action="store_true", help="with --writes: the kill -9 run too")
    parser.add_argument("--fault-after", type=float, default=5.0, help="seconds of writes before the kill")
    args = parser.parse_args()
    if args.writes > 0:
        return main_writes(args)

    offered = f"offered {args.rate:.0f} req/s" if args.rate > 0 else "closed loop"
    print(f"index: {args.n:,} random unit vectors x {args.dim} ({args.kind}); GET /notes/{{id}}/similar?k={args.k}; "
          f"{args.concurrency} clients ({offered}), {args.duration:.0f} s measured after {args.warmup:.0f} s warm-up; "
          f"uvicorn 1 worker on {HOST} ({uvicorn_implementation()}); {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    runs = [run_one(args, args.search_batch)]
    if not args.no_baseline:
        runs.append(run_one(args, 1))
    header = (f"{'batching':<16}{'requests':>9}{'req/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}"
              f"{'errors':>8}{'mean batch':>12}{'search CPU ms/req':>19}{'server CPU ms/req':>19}"
              f"{'client CPU ms/req':>19}")
    print(header)
    for r in runs:
        print(f"{r['batching']:<16}{r['requests']:>9,}{r['rps']:>9.1f}{r['p50']:>9.1f}{r['p90']:>9.1f}{r['p99']:>9.1f}"
              f"{r['max']:>9.1f}{r['errors']:>8}{r['mean_batch']:>12.1f}{r['search_cpu_ms']:>19.2f}"
              f"{r['server_cpu_ms']:>19.2f}"
              f"{r['client_cpu_ms']:>19.2f}")
    if len(runs) == 2 and runs[1]["rps"] > 0:
        print(f"throughput with batching / without: {runs[0]['rps'] / runs[1]['rps']:.2f}x")
    best = min(r["server_cpu_ms"] for r in runs)
    print(f"server CPU per request {best:.2f} ms: one free core serves at most ~{1e3 / best:.0f} req/s")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    failed = [r for r in runs if r["errors"]]
    for r in failed:
        print(f"ERROR ({r['batching']}): {r['errors']} failed requests, e.g. {r['first_error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
