"""`notellm data import` checks every input before it replaces any output, and `notellm pairs` turns bad event
files into one-line errors (issue 16 #3, #5)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from notellm.cli.common import run_cli
from notellm.errors import DataError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def invoke(*args: str):
    from notellm.cli import app

    return CliRunner().invoke(app, list(args))


def movielens(folder: Path, ratings: str) -> Path:
    write(folder / "movies.csv", "movieId,title,genres\n1,A (1995),Comedy\n2,B (1996),Drama\n")
    write(folder / "ratings.csv", "userId,movieId,rating,timestamp\n" + ratings)
    return folder


def test_bad_input_leaves_previous_outputs_byte_identical(tmp_path):
    good = write(tmp_path / "good.csv", "note_id,title,published_at\na,x,2024-01-01 10:00\n")
    out = tmp_path / "notes.parquet"
    assert invoke("data", "import", "csv", str(good), "--out", str(out)).exit_code == 0
    before = out.read_bytes()
    # on main a unix time of year -1200 replaced the good file, then the summary crashed on it
    for value in ("-99999999999", "9999-12-31 10:00"):
        bad = write(tmp_path / "bad.csv", f"note_id,title,published_at\na,x,2024-01-01\nb,y,{value}\n")
        result = invoke("data", "import", "csv", str(bad), "--out", str(out))
        assert isinstance(result.exception, DataError), result.output
        message = str(result.exception)
        assert "row 2, field 'published_at'" in message and "between 1900 and 2200" in message
        assert out.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "good.csv", "notes.parquet"]  # no temp


def test_events_that_fail_leave_the_notes_untouched(tmp_path):
    ok = movielens(tmp_path / "ok", "1,1,4.0,100\n1,2,5.0,200\n")
    notes, events = tmp_path / "n.parquet", tmp_path / "e.parquet"
    result = invoke("data", "import", "movielens", str(ok), "--out", str(notes), "--events-out", str(events))
    assert result.exit_code == 0, result.output
    before = notes.read_bytes(), events.read_bytes()
    bad = movielens(tmp_path / "bad", "1,1,4.0,100\n1,2,5.0,soon\n")
    result = invoke("data", "import", "movielens", str(bad), "--out", str(notes), "--events-out", str(events))
    assert isinstance(result.exception, DataError) and "row 2, field 'timestamp'" in str(result.exception)
    assert (notes.read_bytes(), events.read_bytes()) == before


def test_import_exit_code_and_one_line(tmp_path, capsys):
    from notellm.cli import app

    bad = write(tmp_path / "bad.csv", "note_id,likes\na,Not Found\n")
    code = run_cli(app, ["data", "import", "csv", str(bad), "--out", str(tmp_path / "o.parquet")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "row 1, field 'likes': 'Not Found' is not a count" in err[0]
    assert not (tmp_path / "o.parquet").exists()


def test_pairs_rejects_nan_times_and_non_parquet_in_one_line(tmp_path, capsys):
    from notellm.cli import app

    nan = tmp_path / "nan.parquet"
    pq.write_table(pa.table({"user_id": ["u1", "u1", "u2"], "note_id": ["a", "b", "a"],
                             "timestamp": [1.0, float("nan"), 3.0]}), nan)
    text = write(tmp_path / "events.parquet", "user_id,note_id\nu1,a\n")
    for events, expected in ((nan, "row 2, field 'timestamp': 1 event(s) have no timestamp"),
                             (text, "not a readable Parquet event table")):
        code = run_cli(app, ["pairs", str(events), "--out", str(tmp_path / "p.parquet")])
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert code == 2 and len(err) == 1 and expected in err[0], err
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"user_id": ["u1", "u1"], "note_id": ["a", "b"], "timestamp": [1.0, 2.0]}), good)
    code = run_cli(app, ["pairs", str(good), "--out", str(tmp_path / "p.parquet"), "--notes", str(text)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and "not a readable Parquet note table" in err[0]
    assert not (tmp_path / "p.parquet").exists()


def test_kill_during_import_then_rerun_gives_the_uninterrupted_output(tmp_path):
    """kill -9 at seeded random points of `notellm data import`: the output is the old one or a whole new one
    at every moment, a rerun cleans what the killed run left and writes the same bytes as a run never killed."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    src = write(tmp_path / "n.csv", "note_id,title,content,likes,published_at\n" + "".join(
        f"n{i},title {i},content {i} #tag{i % 7} text,{i},2024-06-{1 + i % 28:02d} 12:00\n" for i in range(8000)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    command = [sys.executable, "-m", "notellm", "data", "import", "csv", str(src)]
    reference = tmp_path / "reference.parquet"
    subprocess.run(command + ["--out", str(reference)], env=env, check=True, capture_output=True)
    out = tmp_path / "out" / "notes.parquet"
    out.parent.mkdir()
    out.write_bytes(b"old output")
    rng = random.Random(16)
    for _ in range(2):
        process = subprocess.Popen(command + ["--out", str(out)], env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 2.5))
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert out.read_bytes() in (b"old output", reference.read_bytes())  # never half-written
    subprocess.run(command + ["--out", str(out)], env=env, check=True, capture_output=True)
    assert out.read_bytes() == reference.read_bytes()
    assert sorted(p.name for p in out.parent.iterdir()) == ["notes.parquet"]  # temp files of killed runs gone
