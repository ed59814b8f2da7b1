"""Config dataclasses loaded from YAML with `key=value` overrides (TRL-style: one dataclass per trainer).

    cfg = load_config(TrainConfig, "configs/notellm_movielens.yaml", ["lr=1e-4", "lora.r=16"])

Overrides are parsed as YAML scalars, so `lr=1e-4` is a float and `bf16=false` a bool. Nested dataclasses are
addressed with dots. Unknown keys are errors, so a typo never silently does nothing.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

from notellm.errors import ConfigError

T = TypeVar("T")


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _dataclass_type(tp: Any) -> type | None:
    """The dataclass inside `tp` (also inside `X | None`), if any."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """YAML reads `3e-5` as a string (YAML 1.1 wants a dot); convert scalars to the field's declared type."""
    options = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    if value is None or any(isinstance(value, o) for o in options if isinstance(o, type) and o is not float):
        return value
    for option in options:
        if option is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                return float(value)
            except ValueError:
                pass
        if option is int and isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    if float in options and isinstance(value, float):
        return value
    if any(o in (int, float) for o in options) and isinstance(value, str):
        raise ConfigError(f"{where}: expected a number, got '{value}'")
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from a (nested) dict, rejecting unknown keys."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        raise ConfigError(
            f"{where or cls.__name__}: unknown key(s) {unknown}; known keys: {sorted(types_)}"
        )
    kwargs = {}
    for key, value in data.items():
        sub = _dataclass_type(types_[key])
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value, f"{where}{key}.")
        else:
            value = _coerce(value, types_[key], f"{where}{key}")
        kwargs[key] = value
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `a.b=value` strings onto a nested dict (values parsed as YAML scalars)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
        node[parts[-1]] = value
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Defaults of `cls`, then the YAML file (if any), then the overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    data = apply_overrides(data, overrides)
    return from_dict(cls, data, where=f"{path}: " if path else "")


def save_config(cfg: Any, path: str | Path) -> None:
    from notellm.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(to_dict(cfg), allow_unicode=True, sort_keys=False), encoding="utf-8")
