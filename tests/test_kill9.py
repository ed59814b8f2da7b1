"""kill -9 at random points of `data import`, `pairs`, `embed`, `index build` and `train`: the output after a
rerun equals the uninterrupted output, no temp file is left behind, and a reader polling the output while the
killed runs write it finds nothing, the older output they replace, or the new one whole, never a half-written
one or a mix. Kill points are seeded: random times, and random steps among the run's fsyncs and renames (a
time-based kill of a short run rarely lands inside its writes).

Each run is a fork of one forkserver that has already imported torch, transformers, duckdb and notellm (a
fresh interpreter would spend seconds on imports alone), killed with SIGKILL at a seeded random moment."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from helpers.methods import model_tensors, setup
from helpers.toy import write_toy

SEED = 16


TESTS = Path(__file__).resolve().parent


def _preloaded(queue) -> None:
    queue.put("helpers.commands" in sys.modules and "torch" in sys.modules)


@pytest.fixture(scope="module")
def forkserver():
    import notellm

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["helpers.commands"])
    # Python 3.11's forkserver ignores the parent's sys.path: it finds the preloaded module through PYTHONPATH
    paths = [str(TESTS), str(Path(notellm.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
        queue = ctx.Queue()
        probe = ctx.Process(target=_preloaded, args=(queue,))
        probe.start()
        probe.join(300)
    assert queue.get(timeout=5), "the forkserver did not preload helpers.commands (each run would import all)"
    return ctx


def start(ctx, args: list[str], **kwargs):
    from helpers.commands import notellm_main

    proc = ctx.Process(target=notellm_main, args=([str(a) for a in args],), kwargs=kwargs, daemon=True)
    proc.start()
    return proc


def finished(ctx, args, count_to: Path | None = None) -> float:
    """Run to the end; the seconds it took."""
    began = time.perf_counter()
    proc = start(ctx, args, count_to=str(count_to) if count_to else None)
    proc.join(300)
    assert proc.exitcode == 0, (args, proc.exitcode)
    return time.perf_counter() - began


def killed(ctx, args, look, after: float = 300.0, at_step: int | None = None) -> int:
    """Start, poll the output with `look`; SIGKILL it after `after` seconds or just before its `at_step`-th
    write step (or let it finish first)."""
    proc = start(ctx, args, kill_at_step=at_step)
    deadline = time.perf_counter() + after
    while time.perf_counter() < deadline and proc.is_alive():
        look()
        time.sleep(0.005)
    proc.kill()
    proc.join(60)
    look()
    return proc.exitcode


def temps(folder: Path) -> list[str]:
    return [str(p.relative_to(folder)) for p in folder.rglob("*.tmp")]


# ---- each command: its arguments, its output's reader (None: not there) and the comparison ----------------
def table_or_none(path: Path):
    # one open, then parse from memory: pq.read_table(path) opens the file again for its pages, and a rename
    # landing between the two opens pairs the old file's footer with the new file's bytes (a torn read of the
    # reader's own making, not a half-written file)
    import pyarrow as pa

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return pq.read_table(pa.BufferReader(data))


def _folder_snapshot(path: Path, read):
    """`read(path)` of a folder that a writer may swap whole at any moment: each file is opened by path, so a
    swap between two opens would mix two versions; a read during which the folder's inode changed is retried
    (None: no folder, or the instant between the swap's two renames)."""
    for _ in range(100):
        try:
            before = os.stat(path).st_ino
            value = read(path)
            if os.stat(path).st_ino == before:
                return value
        except FileNotFoundError:
            return None
    raise AssertionError(f"{path} kept changing while it was read")


def embeddings_or_none(path: Path):
    from notellm.errors import DataError
    from notellm.inference.embed import read_embeddings

    def read(folder):
        try:
            ids, vectors, _ = read_embeddings(folder)
        except DataError:  # no folder yet
            raise FileNotFoundError(folder) from None
        return ids, vectors
    return _folder_snapshot(path, read)


def index_or_none(path: Path):
    from notellm.errors import DataError
    from notellm.inference.index import load_index

    def read(folder):
        try:
            index = load_index(folder)
        except DataError:
            raise FileNotFoundError(folder) from None
        return index.ids, index.index.reconstruct_n(0, len(index)), index.titles()
    return _folder_snapshot(path, read)


def model_or_none(path: Path):
    def read(folder):
        if not (folder / "notellm.json").exists():
            raise FileNotFoundError(folder)
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    return _folder_snapshot(path, read)


def same_embeddings(a, b) -> bool:
    return a[0] == b[0] and np.allclose(a[1], b[1], atol=1e-6)


def same_index(a, b) -> bool:
    return a[0] == b[0] and np.allclose(a[1], b[1], atol=1e-6) and a[2] == b[2]


def scenario(name: str, work: Path, variant: int = 0):
    """(args, output path, reader, equal) of one command on tiny data; another `variant` gives other input."""
    from helpers.commands import write_events, write_notes_csv

    work.mkdir(parents=True, exist_ok=True)
    if name == "import":
        src = write_notes_csv(work / "notes.csv", variant=variant)
        out = work / "notes.parquet"
        return ["data", "import", "csv", src, "--out", out], out, table_or_none, lambda a, b: a.equals(b)
    if name == "pairs":
        events = write_events(work / "events.parquet", variant=variant)
        out = work / "pairs.parquet"
        return ["pairs", events, "--out", out], out, table_or_none, lambda a, b: a.equals(b)
    notes = write_toy(work)["notes"]
    if name == "embed":
        embed = ["embed", notes, "-m", "zero-shot:tiny-qwen3", "-o", work / "emb", "--shard-size", 8, "--fp32"]
        return embed, work / "emb", embeddings_or_none, same_embeddings
    if name == "index":  # hand-made embeddings of the toy notes (an index build needs no model)
        from notellm.inference.embed import write_embeddings

        ids = pq.read_table(notes, columns=["note_id"]).column("note_id").to_pylist()
        x = np.random.default_rng(variant).standard_normal((len(ids), 16)).astype(np.float32)
        write_embeddings(ids, x, {"model": f"hand-made-{variant}"}, work / "emb")
        out = work / "index"
        return ["index", "build", work / "emb", "--out", out, "--notes", notes], out, index_or_none, same_index
    command = setup("notellm", work, max_steps=2, save_every=1)
    return command.args, command.model_dir, model_or_none, lambda a, b: a == b


# (kills at a random time, kills at a random write step); REPLACES: the killed runs replace an older output
# of other input (embed and train refuse to mix runs, so they start from nothing)
KILLS = {"import": (1, 3), "pairs": (1, 3), "embed": (1, 1), "index": (1, 3), "train": (0, 1)}
REPLACES = ("import", "pairs", "index")


@pytest.mark.parametrize("name", list(KILLS))
def test_a_run_killed_at_random_points_and_rerun_ends_with_the_uninterrupted_output(tmp_path, forkserver, name):
    rng = random.Random(f"{SEED}-{name}")
    args, out, read, equal = scenario(name, tmp_path / "reference")
    seconds = finished(forkserver, args, count_to=tmp_path / "steps")
    steps = int((tmp_path / "steps").read_text())
    reference = read(out)
    assert reference is not None and steps > 0
    older = None
    if name in REPLACES:
        old_args, old_out, _, _ = scenario(name, tmp_path / "killed", variant=1)
        finished(forkserver, old_args)
        older = read(old_out)
        assert not equal(older, reference)
    args, out, read, equal = scenario(name, tmp_path / "killed")
    seen = {"absent": 0, "older": 0, "new": 0}

    def look():
        now = read(out)
        state = "absent" if now is None else "new" if equal(now, reference) else "older" \
            if older is not None and equal(now, older) else "half-written or wrong"
        assert state != "half-written or wrong", f"{name}: a reader saw a half-written or wrong output"
        seen[state] += 1

    by_time, by_step = KILLS[name]
    codes = [killed(forkserver, args, look, after=rng.uniform(i / by_time, (i + 1) / by_time) * seconds)
             for i in range(by_time)]  # train: its kill at a fixed step is test_engine's; one at a write step here
    at_steps = sorted(rng.sample(range(1, steps + 1), min(by_step, steps)))
    codes += [killed(forkserver, args, look, at_step=k) for k in at_steps]
    assert all(code in (-9, 0) for code in codes), codes
    finished(forkserver, args)
    assert equal(read(out), reference)
    assert temps(out.parent) == []
    if name == "train":  # the weights themselves, not only the file list
        want, have = model_tensors(tmp_path / "reference" / "run" / "model"), model_tensors(out)
        for key in want:
            np.testing.assert_allclose(have[key].float().numpy(), want[key].float().numpy(), rtol=1e-5, atol=1e-6)
    print(json.dumps({"command": name, "write_steps": steps, "killed_at_steps": at_steps, "exit_codes": codes,
                      "reads": seen, "run_s": round(seconds, 2)}))
