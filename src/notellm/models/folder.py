"""The one model-folder protocol for every model kind.

A model folder holds a card, `notellm.json`, beside the weights:

    {"format": "notellm/2", "kind": "notellm" | "notellm2" | "popularity" | "coldstart",
     "backbone": <id the backbone reloads from>, "backbone_seed": <int>, ...what that kind needs to rebuild it}

and is written whole: `saving(folder)` yields a temporary folder that replaces `folder` in one rename when
the block succeeds, so a kill while saving leaves the previous model (or none), never a half-written one. Folders
written before this protocol (popularity's `popularity_model.json`, cold start's `notellm_coldstart.json`, a
`notellm.json` without `kind`) are still read. Each kind's loader lives beside its model class
(`models.notellm`, `models.multimodal`, `models.regression`, `models.coldstart`); `load_model` dispatches.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from notellm.errors import NotellmError
from notellm.io import atomic_dir, read_json, write_json

CARD = "notellm.json"
FORMAT = "notellm/2"
KINDS = ("notellm", "notellm2", "popularity", "coldstart")
_LEGACY_CARDS = {"popularity_model.json": "popularity", "notellm_coldstart.json": "coldstart"}


class ModelFolderError(NotellmError):
    """A folder that is not a notellm model, or not of the kind asked for."""


def write_card(folder: str | Path, kind: str, card: dict[str, Any]) -> Path:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return write_json({"format": FORMAT, "kind": kind, **{k: v for k, v in card.items() if k not in ("format", "kind")}},
                      Path(folder) / CARD)


def read_card(folder: str | Path) -> dict[str, Any]:
    """The card of a model folder, with its `kind` (legacy folders included)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"model folder {folder} does not exist" if not folder.exists()
                               else f"{folder} is a file, not a model folder")
    path = folder / CARD
    if path.is_file():
        card = _read(path)
        card.setdefault("kind", "notellm2" if "multimodal" in card else "notellm")
        return card
    for name, kind in _LEGACY_CARDS.items():
        if (folder / name).is_file():
            return {"kind": kind, "format": "legacy", **_read(folder / name)}
    raise ModelFolderError(f"{folder} is not a notellm model folder (no {CARD})")


def _read(path: Path) -> dict[str, Any]:
    try:
        card = read_json(path)
    except (OSError, ValueError) as exc:
        raise ModelFolderError(f"{path} is damaged: {exc}") from None
    if not isinstance(card, dict):
        raise ModelFolderError(f"{path} is not a model card (a JSON object)")
    return card


def training_notes(folder: str | Path) -> str | None:
    """The Note table a NoteLLM folder was trained on (`notes` of its run's train_config.json), where it still
    exists: the default category set of `notellm tag`. A NoteLLM folder with a popularity head
    (`model.kind=notellm-head`) answers for its base folder, whose files it holds: the head's run trained on
    popularity notes, not on the base's pairs."""
    folder = Path(folder)
    head = (read_card(folder).get("popularity_head") or {}) if (folder / CARD).is_file() else {}
    if head:
        source = head.get("base_notes")  # recorded at training; older folders: the base folder, if still there
        base = (head.get("config") or {}).get("model", {}).get("backbone", "")
        if source is None and base and (Path(base) / CARD).is_file() and Path(base).resolve() != folder.resolve():
            return training_notes(base)
    else:
        config = folder.parent / "train_config.json"
        source = read_json(config).get("notes") if config.is_file() else None
    return str(source) if source and Path(source).exists() else None


def model_kind(folder: str | Path) -> str:
    return read_card(folder)["kind"]


def expect_kind(folder: str | Path, *kinds: str) -> dict[str, Any]:
    """The card, or a clear error when the folder holds another kind of model."""
    card = read_card(folder)
    if card["kind"] not in kinds:
        raise ModelFolderError(f"{folder} holds a {card['kind']} model; this needs a {' or '.join(kinds)} model")
    return card


@contextmanager
def saving(folder: str | Path) -> Iterator[Path]:
    """A temp folder to write a model into; it replaces `folder` whole when the block succeeds."""
    with atomic_dir(folder) as tmp:
        yield tmp


def load_model(folder: str | Path, **kwargs: Any):
    """Load any model folder with its kind's loader (returns what that loader returns)."""
    kind = model_kind(folder)
    if kind == "notellm":
        from notellm.models.notellm import load_notellm

        return load_notellm(folder, **kwargs)
    if kind == "notellm2":
        from notellm.models.multimodal import load_notellm2

        return load_notellm2(folder, **kwargs)
    if kind == "popularity":
        from notellm.models.regression import load_regressor

        return load_regressor(folder, **kwargs)
    from notellm.models.coldstart import load_coldstart_model

    return load_coldstart_model(folder, **kwargs)
