"""Reliability and safety of the embedding and index commands: no file is ever unpickled, a resumed embed
never mixes shards of another run, outputs appear whole, and bad input or arguments are one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.toy import write_toy
from notellm.cli import app
from notellm.cli.common import run_cli

MODEL = "zero-shot:tiny-qwen3"


def run(*args: str) -> int:
    return run_cli(app, [str(a) for a in args])


def one_line_error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]


@pytest.fixture()
def notes(tmp_path):
    return write_toy(tmp_path)["notes"]


class _Evil:
    """Unpickling this runs `touch MARKER`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_planted_pickle_shard_is_refused_and_nothing_runs(tmp_path, notes, capsys):
    out = tmp_path / "e"
    (out / "shards").mkdir(parents=True)
    marker = tmp_path / "pwned"
    # an .npz shard whose ids array is a pickled object (np.savez pickles object arrays)
    with open(out / "shards" / "shard-00000.npz", "wb") as f:
        np.savez(f, ids=np.array([_Evil(marker)], dtype=object), vectors=np.zeros((1, 64), np.float32))
    capsys.readouterr()
    assert run("embed", notes, "-m", MODEL, "-o", out, "--shard-size", 16, "--fp32") == 2
    line = one_line_error(capsys)
    assert "shard-00000.npz" in line and "never unpickled" in line
    assert not marker.exists()
    assert not (out / "embeddings.npy").exists()
