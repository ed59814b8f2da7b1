"""Fingerprints of what made an output, so a resumed run or a reused output never mixes two different inputs.

- `file_digest(path)`: size, modification time and sha256 of a file's bytes (a folder: of every file in it,
  by relative path). The sha256 is what is compared; size and mtime let a cache skip re-hashing.
- `describe_changes(old, new)`: the keys whose values differ between two (nested) dicts, as
  `key: old -> new` strings, for one-line errors.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterable

_CHUNK = 1 << 20
_cache: dict[tuple[str, int, int], str] = {}


def _sha256_file(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _cache:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(_CHUNK), b""):
                digest.update(block)
        _cache[key] = digest.hexdigest()
    return _cache[key]


def file_digest(path: str | os.PathLike) -> dict[str, Any]:
    """{path, bytes, sha256} of a file, or of a folder's files (sorted by relative path); a missing path
    gives {path, missing: True}."""
    path = Path(path)
    if path.is_file():
        return {"path": str(path), "bytes": path.stat().st_size, "sha256": _sha256_file(path)}
    if path.is_dir():
        digest, total = hashlib.sha256(), 0
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            rel = file.relative_to(path).as_posix()
            digest.update(rel.encode() + b"\0" + _sha256_file(file).encode())
            total += file.stat().st_size
        return {"path": str(path), "bytes": total, "sha256": digest.hexdigest()}
    return {"path": str(path), "missing": True}


def same_content(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.get("sha256") is not None and a.get("sha256") == b.get("sha256")


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists and scalars are leaves."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def _short(value: Any) -> str:
    if isinstance(value, dict) and "sha256" in value:
        return f"sha256 {value['sha256'][:12]}"
    if isinstance(value, str) and value.startswith("sha256:"):
        return f"sha256 {value[7:19]}"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe_changes(old: dict[str, Any], new: dict[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """`key: old -> new` for every key whose value differs (keys under an ignored prefix are skipped)."""
    ignore = tuple(ignore)
    a, b = flatten(old), flatten(new)
    changes = []
    for key in sorted(set(a) | set(b)):
        if any(key == p or key.startswith(p + ".") for p in ignore):
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            changes.append(f"{key}: {_short(a.get(key, '<absent>'))} -> {_short(b.get(key, '<absent>'))}")
    return changes
