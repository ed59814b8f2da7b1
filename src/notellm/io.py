"""Atomic output: every file and every folder notellm writes appears whole or not at all.

- `atomic_path(target)`: a temporary file beside the target; on success it is fsynced and renamed onto the
  target (and the folder entry fsynced), so a crash or a kill never leaves a half-written file where a
  finished one is expected.
- `atomic_dir(target)`: a temporary folder beside the target; on success every file in it is fsynced and
  the folder replaces the target in one rename (the previous version, if any, is moved aside first and
  removed after). A reader sees the old folder or the new one, never a mix of their files.
- `clean_stale_temps(folder)`: removes the temporary files and folders a killed run left behind (both
  writers above call it for their target first, so every rerun cleans up after the run it replaces).

Temporary names start with `.NAME.pid<PID>.` and end with `.tmp`, so they are easy to recognise, never collide
with real outputs, and a cleaner leaves the temps of a writer that is still running alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

TEMP_SUFFIX = ".tmp"
_OLD_SUFFIX = ".old.tmp"
_PID = re.compile(r"\.pid(\d+)\.")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the target's folder; fsync and rename it onto `target` only if the block
    succeeds (the temporary file is removed otherwise)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(target.parent, target.name)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=suffix + TEMP_SUFFIX, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600 files; finished outputs get normal modes
        _fsync_file(tmp_path)
        os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside `target`; when the block succeeds it replaces `target` whole.

    On POSIX a folder cannot be swapped in one rename, so the old folder is first renamed aside (a reader
    at that instant finds no folder, never a mixed one), the new one renamed into place, the old one
    deleted. A kill in between leaves `.NAME.*.old.tmp` beside an absent target: `clean_stale_temps` (run
    by every writer before it starts) renames it back.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(target.parent, target.name)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=TEMP_SUFFIX, dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        for path in tmp.rglob("*"):
            if path.is_file():
                _fsync_file(path)
        _fsync_dir(tmp)
        old = None
        if target.exists() or target.is_symlink():
            old = target.with_name(f"{_temp_prefix(target)}{time.time_ns()}{_OLD_SUFFIX}")
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        if old is not None:
            _remove(old)
    finally:
        if tmp.exists():
            _remove(tmp)


def _temp_prefix(target: Path) -> str:
    """`.NAME.pid<PID>.`: the writer's process id, so a cleaner leaves the temps of a live writer alone."""
    return f".{target.name}.pid{os.getpid()}."


def _writer_alive(temp_name: str) -> bool:
    """Whether the process that made this temp is still running (on this machine; a zombie counts as dead)."""
    match = _PID.search(temp_name)
    if match is None:
        return False  # a temp of an older notellm, without a process id
    pid = int(match.group(1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] != "Z"
    except (OSError, ValueError, IndexError):
        return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_stale_temps(folder: str | os.PathLike, name: str | None = None) -> int:
    """Remove temporary files/folders left in `folder` by a killed writer (of `name` only, if given).

    A folder that was moved aside by `atomic_dir` while its replacement never arrived is put back instead.
    Returns how many entries were cleaned."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    cleaned = 0
    prefix = f".{name}." if name else "."
    for entry in sorted(folder.iterdir()):
        if not (entry.name.startswith(prefix) and entry.name.endswith(TEMP_SUFFIX)):
            continue
        if _writer_alive(entry.name):  # another process is writing it right now
            continue
        if entry.name.endswith(_OLD_SUFFIX):
            original = folder / _original_name(entry.name)
            if not original.exists():  # killed between the two renames: the old version goes back
                os.replace(entry, original)
                cleaned += 1
                continue
        _remove(entry)
        cleaned += 1
    return cleaned


def _original_name(temp_name: str) -> str:
    """`.NAME.pid<pid>.<ns>.old.tmp` -> NAME (NAME may itself contain dots)."""
    stem = temp_name[1:-len(_OLD_SUFFIX)]
    return stem.rsplit(".", 2)[0]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_parquet(table: pa.Table, target: str | os.PathLike) -> Path:
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp)
    return Path(target)


def write_json(obj: Any, target: str | os.PathLike) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=2, default=str), encoding="utf-8")
    return Path(target)


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))
