"""Config dataclasses loaded from YAML with `key=value` overrides (TRL-style: one dataclass per trainer, all on a
shared base, `notellm.training.engine.TrainingArgs`).

    cfg = load_config(NoteLLMTrainConfig, "configs/notellm_movielens.yaml", ["lr=1e-4", "lora.r=16"])

Overrides are parsed as YAML scalars, so `lr=1e-4` is a float and `bf16=false` a bool. Nested dataclasses are
addressed with dots. Every problem is one `ConfigError` line that says where the key came from (the file or the
command line): an unknown key (with "did you mean"), a key that was renamed (with its new name), a value of the
wrong type, a value a dataclass rejects. `field_docs(cls)` gives every key's default and meaning, read from the
comment beside the field in the dataclass's source, so the code stays the one place they are written.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

from notellm.errors import ConfigError

T = TypeVar("T")
COMMAND_LINE = "command line"


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _options(tp: Any) -> tuple:
    return typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)


def _dataclass_type(tp: Any) -> type | None:
    """The dataclass inside `tp` (also inside `X | None`), if any."""
    for option in _options(tp):
        if dataclasses.is_dataclass(option):
            return option
    return None


def _type_name(tp: Any) -> str:
    names = [getattr(o, "__name__", str(o)) for o in _options(tp)]
    return " or ".join("null" if n == "NoneType" else n for n in names)


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Convert a YAML value to the field's declared type, or say plainly what was expected."""
    options = _options(tp)
    if value is None:
        if type(None) in options or tp is Any:
            return None
        raise ConfigError(f"{where}: {key} cannot be null (expected {_type_name(tp)})")
    base = [typing.get_origin(o) or o for o in options]
    if bool in base and isinstance(value, bool):
        return value
    if bool in base and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if int in base and isinstance(value, int) and not isinstance(value, bool):
        return value
    if float in base and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return float(value)  # YAML 1.1 reads `3e-5` as a string
        except ValueError:
            pass
    if int in base and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    if int in base and isinstance(value, float) and value.is_integer():
        return int(value)
    if str in base:
        if isinstance(value, bool):
            return "true" if value else "false"  # `bf16: true` for a field that also takes "auto"
        if isinstance(value, (str, int, float)):
            return str(value) if not isinstance(value, str) else value
    if list in base and isinstance(value, (list, tuple)):
        return list(value)
    if list in base and isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]  # `target_modules=q_proj,v_proj`
    if dict in base and isinstance(value, dict):
        return value
    if any(o is Any for o in options):
        return value
    raise ConfigError(f"{where}: {key} = {value!r} is not a valid value (expected {_type_name(tp)})")


def _renamed(cls: type) -> dict[str, str]:
    return dict(getattr(cls, "renamed", {}) or {})


def known_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key a config class accepts (sections included)."""
    out = []
    for name, tp in _field_types(cls).items():
        key = f"{prefix}{name}"
        out.append(key)
        sub = _dataclass_type(tp)
        if sub is not None:
            out.extend(known_keys(sub, f"{key}."))
    return out


def _suggest(key: str, candidates: Sequence[str]) -> str:
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if not close:  # the leaf alone may be right in another section
        close = [c for c in candidates if c.rsplit(".", 1)[-1] == leaf][:1]
    if not close:
        close = difflib.get_close_matches(leaf, [c.rsplit(".", 1)[-1] for c in candidates], n=1, cutoff=0.7)
        close = [c for c in candidates if close and c.rsplit(".", 1)[-1] == close[0]][:1]
    return f"; did you mean '{close[0]}'?" if close else ""


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "", prefix: str = "",
              sources: dict[str, str] | None = None, root: type | None = None) -> T:
    """Build dataclass `cls` from a (nested) dict, rejecting unknown keys. `sources` maps dotted keys to where
    they came from (for messages); `where` is the default source."""
    root = root or cls
    sources = sources or {}
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or cls.__name__} must be a section (key: value lines), "
                          f"got {data!r}")
    types_ = _field_types(cls)
    renamed = _renamed(root)
    if not prefix:
        _check_renamed(data, renamed, sources, where)
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        source = sources.get(dotted, where)
        if key not in types_:
            if dotted in renamed:
                raise ConfigError(f"{source}: key '{dotted}' is now '{renamed[dotted]}' "
                                  f"(one name for each knob across trainers)")
            raise ConfigError(f"{source}: unknown key '{dotted}'{_suggest(dotted, known_keys(root))} "
                              f"(`notellm config show` lists every key)")
        sub = _dataclass_type(types_[key])
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value, where, f"{dotted}.", sources, root)
        elif sub is not None and value is not None and not dataclasses.is_dataclass(value):
            raise ConfigError(f"{source}: {dotted} is a section; set its keys as {dotted}.<key>=value")
        elif sub is None:
            value = _coerce(value, types_[key], dotted, source)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        keys = [k for k in data if re.search(rf"\b{re.escape(k)}\b", str(exc))]
        source = sources.get(f"{prefix}{keys[0]}", where) if keys else where
        raise ConfigError(f"{source}: {prefix}{exc}" if prefix and not str(exc).startswith(prefix) else f"{source}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {prefix.rstrip('.') or cls.__name__}: {exc}") from None


def _check_renamed(data: dict[str, Any], renamed: dict[str, str], sources: dict[str, str], where: str) -> None:
    """One line naming every old key in `data` and its new name."""
    found = [k for k in _dotted(data) if k in renamed]
    found = [k for k in found if not any(other.startswith(k + ".") for other in found)]  # the keys, not sections
    if not found:
        return
    source = sources.get(found[0], where)
    moves = ", ".join(f"'{k}' -> '{renamed[k]}'" for k in found[:8])
    more = f" and {len(found) - 8} more" if len(found) > 8 else ""
    raise ConfigError(f"{source}: renamed key(s): {moves}{more} (one name for each knob across trainers)")


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """`a.b=value` strings -> a nested dict (values parsed as YAML scalars)."""
    data: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{COMMAND_LINE}: '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not p for p in key.split(".")):
            raise ConfigError(f"{COMMAND_LINE}: '{item}' has no key name")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{COMMAND_LINE}: '{item}': '{part}' is not a section")
        node[parts[-1]] = value
    return data


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` onto `base`, section by section (a copy)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    return merge(data, parse_overrides(overrides))


def _dotted(data: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in data.items():
        out.append(f"{prefix}{key}")
        if isinstance(value, dict):
            out.extend(_dotted(value, f"{prefix}{key}."))
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"config file {path} is not valid YAML: {first}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold key: value lines, not a {type(data).__name__}")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Defaults of `cls`, then the YAML file (if any), then the overrides."""
    file_data = read_yaml(path) if path is not None else {}
    cli_data = parse_overrides(overrides)
    sources = {k: COMMAND_LINE for k in _dotted(cli_data)}
    return from_dict(cls, merge(file_data, cli_data), where=str(path) if path else COMMAND_LINE, sources=sources)


def save_config(cfg: Any, path: str | Path) -> None:
    from notellm.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(to_dict(cfg), allow_unicode=True, sort_keys=False), encoding="utf-8")


# ---- documentation of every key -------------------------------------------------------------------------
_FIELD_LINE = re.compile(r"^\s+(\w+)\s*:\s*[^=#]+?(?:=\s*(.*?))?\s*(?:#\s?(.*))?$")
_COMMENT_LINE = re.compile(r"^\s+#\s?(.*)$")


def _comments(cls: type) -> dict[str, str]:
    """The comment beside each field in the class body (and the comment lines right under it)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue
        names = {f.name for f in dataclasses.fields(klass)}
        current = None
        for line in lines[1:]:
            m = _FIELD_LINE.match(line)
            if m and m.group(1) in names:
                current = m.group(1)
                if m.group(3) or current not in out:  # a subclass that changes only the default keeps the meaning
                    out[current] = (m.group(3) or "").strip()
                continue
            c = _COMMENT_LINE.match(line)
            if c and current and out.get(current) is not None and line.index("#") > 20:
                out[current] = f"{out[current]} {c.group(1).strip()}".strip()
                continue
            current = None
    return out


def field_docs(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, meaning) for every key of a config class, sections expanded."""
    rows = []
    instance = cls()
    comments = _comments(cls)
    for f in dataclasses.fields(cls):
        if f.name == "renamed":
            continue
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value):
            rows.extend(field_docs(type(value), f"{prefix}{f.name}."))
            continue
        rows.append((f"{prefix}{f.name}", yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip(),
                     comments.get(f.name, "")))
    return rows
