"""Progress where stderr is a pipe or a log file: rich draws nothing there until a bar ends, so a long job
prints a plain status line per task every few seconds instead (a log shows life from the start)."""

from __future__ import annotations

import io

from rich.console import Console


def test_a_bar_on_a_pipe_prints_throttled_status_lines(monkeypatch):
    from notellm.cli import common

    out = io.StringIO()
    monkeypatch.setattr(common, "console", Console(file=out, force_terminal=False, width=200))
    clock = iter(float(t) for t in range(100))
    monkeypatch.setattr(common.time, "monotonic", lambda: next(clock))
    bar = common.progress(every=3.0)
    with bar:
        task = bar.add_task("embedding notes", total=8)       # t=0
        for _ in range(8):
            bar.advance(task, 1)                             # t=1..8
    lines = [line for line in out.getvalue().splitlines() if line.startswith("embedding notes:")]
    assert lines[:2] == [l for l in lines[:2] if "/8 (" in l] and len(lines) == 2  # at t=3 and t=6 only
    assert lines[0].startswith("embedding notes: 3/8 (38%)") and lines[1].startswith("embedding notes: 6/8 (75%)")


def test_a_bar_on_a_terminal_prints_no_status_lines(monkeypatch):
    from notellm.cli import common

    out = io.StringIO()
    monkeypatch.setattr(common, "console", Console(file=out, force_terminal=True, width=200))
    bar = common.progress(every=0.0)
    with bar:
        task = bar.add_task("embedding notes", total=2)
        bar.advance(task, 2)
    assert "embedding notes: " not in out.getvalue()
