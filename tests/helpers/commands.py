"""Tiny inputs for every command that writes an output, and the process that runs one of them so it can be
killed (`kill9`): a forkserver preloads the heavy imports once, each run is a fork of it."""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

# imported here, before any fork, so each forked run starts in a fraction of a second (no thread pool runs yet)
import duckdb  # noqa: F401
import faiss  # noqa: F401
import pyarrow.parquet  # noqa: F401
import torch  # noqa: F401
import transformers  # noqa: F401

import notellm.cli  # noqa: F401
import notellm.data.pairs  # noqa: F401
import notellm.data.readers  # noqa: F401
import notellm.inference.embed  # noqa: F401
import notellm.inference.index  # noqa: F401
import notellm.models.notellm  # noqa: F401
import notellm.training.engine  # noqa: F401
import notellm.training.notellm  # noqa: F401


_WRITE_STEPS = ("fsync", "replace", "rename")  # every atomic write is made of these; so is any mistake in one


def notellm_main(args: list[str], kill_at_step: int | None = None, count_to: str | None = None) -> None:
    """The `notellm` command in this (forked) process. `kill_at_step=N`: SIGKILL itself just before its N-th
    fsync/rename (a random point inside its writes, where a time-based kill rarely lands); `count_to`: write
    how many such steps the run made to this file."""
    import os
    import signal

    from notellm.cli import app
    from notellm.cli.common import run_cli

    steps = 0

    def counted(original):
        def step(*a, **kw):
            nonlocal steps
            steps += 1
            if steps == kill_at_step:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*a, **kw)
        return step

    for name in _WRITE_STEPS:
        setattr(os, name, counted(getattr(os, name)))
    code = run_cli(app, args)
    if count_to:
        Path(count_to).write_text(str(steps))
    sys.exit(code)


def write_notes_csv(path: Path, n: int = 400, variant: int = 0) -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["note_id", "title", "content", "hashtags"])
        for i in range(n):
            writer.writerow([f"n{i}", f"第{i + variant}篇 分享", f"今天分享第{i}个好物，" * (1 + i % 4), f"tag{i % 7}"])
    return path


def write_events(path: Path, n_users: int = 150, per_user: int = 12, n_notes: int = 60, variant: int = 0) -> Path:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(variant)
    t0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
    rows = [(f"u{u}", f"n{int(rng.integers(n_notes))}", t0 + timedelta(minutes=int(u * 100 + i)))
            for u in range(n_users) for i in range(per_user)]
    pq.write_table(pa.table({"user_id": [r[0] for r in rows], "note_id": [r[1] for r in rows],
                             "timestamp": pa.array([r[2] for r in rows], pa.timestamp("us", tz="UTC"))}), path)
    return path
