"""The write-ahead log of note writes: a write is acknowledged only once it is on disk, and a restart replays it.

    log = WriteLog("runs/writes.log")
    for op in log.replay(): ...                 # at start: every acknowledged write, in order
    log.append([put_op, delete_op])             # one write + flush + fsync per batch of requests, then ack

One JSON object per line: `{"op": "put", "id", "vector" (base64 float32), "title", "category", "seq"}` or
`{"op": "delete", "id", "seq"}`. Vectors are logged, so replay needs no model and gives bit-identical state.
Puts and deletes are last-writer-wins per id, so replaying the log over a base that already holds some of
it (after a compaction killed before it truncated the log) ends in the same state. A kill during `append`
leaves at most a partial last line, never acknowledged: replay drops it and truncates the file there. A bad
line anywhere else is a DataError naming the line.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from notellm.errors import DataError


def encode_vector(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def decode_vector(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").copy()


class WriteLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.seq = 0
        self._file = None

    def replay(self) -> Iterator[dict[str, Any]]:
        """Every complete record, in order; a torn last line (killed mid-append) is cut off the file."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        good_end, lines = 0, data.split(b"\n")
        for number, line in enumerate(lines, 1):
            last = number == len(lines)
            if not line.strip():
                good_end += len(line) + (0 if last else 1)
                continue
            try:
                record = json.loads(line)
                if record.get("op") not in ("put", "delete") or not isinstance(record.get("id"), str):
                    raise ValueError("not a put or delete record")
            except (ValueError, AttributeError) as exc:
                if last:  # the partial line of a killed append: never acknowledged
                    break
                raise DataError(f"unreadable write-log record ({exc})", file=str(self.path), row=number) from exc
            if last:  # a complete record without its newline: keep it, end the file properly
                self.seq = max(self.seq, int(record.get("seq", 0)))
                yield record
                good_end = len(data)
                break
            self.seq = max(self.seq, int(record.get("seq", 0)))
            good_end += len(line) + 1
            yield record
        if good_end < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
                f.flush()
                os.fsync(f.fileno())
        elif data and not data.endswith(b"\n"):
            with open(self.path, "ab") as f:
                f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())

    def append(self, records: list[dict[str, Any]]) -> None:
        """Write the records, then flush and fsync: when this returns they survive kill -9 and power loss."""
        if not records:
            return
        if self._file is None:
            self._file = open(self.path, "ab")
        lines = []
        for record in records:
            self.seq += 1
            lines.append(json.dumps({**record, "seq": self.seq}, ensure_ascii=False, separators=(",", ":")))
        self._file.write(("\n".join(lines) + "\n").encode("utf-8"))
        self._file.flush()
        os.fsync(self._file.fileno())

    def truncate(self) -> None:
        """Empty the log (after a compaction made its records part of the base)."""
        self.close()
        with open(self.path, "wb") as f:
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(self.path.parent)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
