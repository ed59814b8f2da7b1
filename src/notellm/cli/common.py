"""Shared CLI plumbing: the console, user-facing errors, config overrides."""

from __future__ import annotations

import sys
import time

import typer
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from notellm.errors import NotellmError

console = Console(stderr=True)


def run_cli(app: typer.Typer, args: list[str] | None = None) -> int:
    """Run the app (on `args`, default sys.argv). A usage error (unknown command or flag, missing or bad value)
    and a NotellmError (bad input, bad config) print one clear line on stderr and return 2, never a traceback."""
    try:
        app(args=args, prog_name="notellm", standalone_mode=False)
    except NotellmError as exc:
        print_error(str(exc))
        return 2
    except (typer.Abort, KeyboardInterrupt):
        console.print("[yellow]interrupted[/]")
        return 130
    except Exception as exc:
        return _click_exit(exc)
    return 0


def _click_exceptions() -> tuple[type, ...]:
    """The usage-error classes of typer's own vendored click (typer >= 0.20 raises those, not click's)."""
    classes: list[type] = []
    try:
        from typer._click import exceptions as vendored

        classes.append(vendored.ClickException)
    except ImportError:  # an older typer that uses click itself
        pass
    import click

    classes.append(click.ClickException)
    return tuple(classes)


def _exit_classes() -> tuple[type, ...]:
    classes: list[type] = [typer.Exit]
    try:
        from typer._click import exceptions as vendored

        classes.append(vendored.Exit)
    except (ImportError, AttributeError):
        pass
    import click

    classes.append(click.exceptions.Exit)
    return tuple(classes)


def _click_exit(exc: Exception) -> int:
    """Exit code for what typer raised; a usage error becomes one line naming the command's --help."""
    if isinstance(exc, _exit_classes()):
        return getattr(exc, "exit_code", 0)
    if not isinstance(exc, _click_exceptions()):
        raise exc
    if type(exc).__name__ == "NoArgsIsHelpError":  # `notellm data` alone: the help is the answer
        exc.show()
        return 0
    ctx = getattr(exc, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    possible = sorted(getattr(exc, "possibilities", None) or [])
    if possible and getattr(exc, "option_name", None):  # click's "(Possible options: ...)" as a question
        message = f"no such option {exc.option_name}; did you mean {' or '.join(possible)}?"
    else:
        message = exc.format_message()
    print_error(f"{message}{hint}")
    return 2


def print_error(message: str) -> None:
    """One line on stderr, never wrapped (scripts grep it; a person can copy it)."""
    from rich.markup import escape

    message = " ".join(str(message).split())
    if console.is_terminal:
        console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
    else:
        sys.stderr.write(f"error: {message}\n")


def progress(every: float = 10.0):
    """A rich progress bar with rate and ETA, on stderr. Where stderr is a pipe or a log file (rich draws
    nothing there until the end), a plain status line per task every `every` seconds instead."""
    return LineProgress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console, every=every,
    )


class LineProgress(Progress):
    """rich's Progress, plus a throttled plain line per visible task when the console is no terminal."""

    def __init__(self, *columns, every: float = 10.0, **kwargs):
        super().__init__(*columns, **kwargs)
        self._plain, self._every, self._last = not self.console.is_terminal, every, {}

    def add_task(self, *args, **kwargs):
        task_id = super().add_task(*args, **kwargs)
        self._last[task_id] = time.monotonic()
        return task_id

    def update(self, task_id, **kwargs) -> None:
        super().update(task_id, **kwargs)
        self._line(task_id)

    def advance(self, task_id, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._line(task_id)

    def _line(self, task_id) -> None:
        if not self._plain:
            return
        task = next((t for t in self.tasks if t.id == task_id), None)
        now = time.monotonic()
        if task is None or not task.visible or now - self._last.get(task_id, now) < self._every:
            return
        self._last[task_id] = now
        done = f"{task.completed:g}/{task.total:g} ({task.percentage:.0f}%)" if task.total else f"{task.completed:g}"
        eta = f", eta {task.time_remaining:.0f} s" if task.total and task.time_remaining is not None else ""
        self.console.print(f"{task.description}: {done}, {task.elapsed or 0:.0f} s{eta}", highlight=False,
                           markup=False)


class ProgressCallback:
    """The training engine's events on the console: a bar per phase (by steps, or by time for a time-capped
    run), and the logged records as lines, so a run shows life from its first second even without a TTY."""

    def __init__(self) -> None:
        self.bar = progress()
        self.task = None
        self.started = False

    def on_phase(self, name: str, total: float | None = None, unit: str = "") -> None:
        if not self.started:
            self.bar.start()
            self.started = True
        if self.task is not None:
            self.bar.update(self.task, visible=False)
            self.bar.stop_task(self.task)
        self.task = self.bar.add_task(name, total=total)
        if not sys.stderr.isatty():
            console.print(f"[bold]{name}[/]" + (f" ({total:g} {unit})" if total else ""))

    def on_progress(self, completed: float, description: str | None = None) -> None:
        if self.task is not None:
            self.bar.update(self.task, completed=completed, **({"description": description} if description else {}))

    def on_log(self, record: dict) -> None:
        shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
                         if not isinstance(v, (dict, list)))
        console.log(shown, highlight=False)

    def on_end(self) -> None:
        if self.started:
            self.bar.stop()
            self.started = False


def load_cli_config(cls, config: str | None, overrides: list[str] | None):
    """A config class from a YAML file and key=value overrides (errors name where each key came from)."""
    from notellm.config import load_config

    return load_config(cls, config, overrides or [])
