"""Reading and preprocessing note images for NoteLLM-2.

- A note's images are the first `max_images` entries of its `image_paths` (the cover first). Absolute paths
  are used as they are; relative ones resolve against `image_root` (default: the working directory).
- Preprocessing is deterministic (no random flip or crop, at training or inference): the vision tower's own
  Hugging Face image processor when it has one, else a resize to the tower's input size and a per-channel
  normalisation (`ResizeNormalize`).
- An image that is missing, cannot be decoded or is a decompression bomb (more pixels than PIL's
  `Image.MAX_IMAGE_PIXELS`) is never replaced by zeros. With `on_error="skip"` it is
  dropped from its note (the note keeps its other images, or becomes text-only), and the problem is counted
  and reported once per (note, file); with `on_error="error"` it raises `DataError` naming the file, the note
  and the field.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from notellm.errors import DataError

ON_ERROR = ("skip", "error")
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)  # SigLIP's normalisation


@dataclass
class ImageProblem:
    note_id: str
    path: str
    reason: str


@dataclass
class ResizeNormalize:
    """Deterministic preprocessing: RGB, bicubic resize to size x size, scale to [0, 1], (x - mean) / std."""

    size: int
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD

    def __call__(self, images: Sequence[Any]) -> torch.Tensor:
        from PIL import Image

        arrays = [np.asarray(im.convert("RGB").resize((self.size, self.size), Image.Resampling.BICUBIC),
                             dtype=np.float32) / 255.0 for im in images]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
        mean = torch.tensor(self.mean, dtype=torch.float32)[None, :, None, None]
        std = torch.tensor(self.std, dtype=torch.float32)[None, :, None, None]
        return (x - mean) / std

    def describe(self) -> dict[str, Any]:
        return {"kind": "resize_normalize", **asdict(self)}


class ProcessorPreprocess:
    """A Hugging Face image processor (CLIPImageProcessor, SiglipImageProcessor: resize, centre crop,
    normalise; none of them augments) called on a list of PIL images."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, images: Sequence[Any]) -> torch.Tensor:
        rgb = [im.convert("RGB") for im in images]
        return self.processor(images=rgb, return_tensors="pt")["pixel_values"].float()

    def describe(self) -> dict[str, Any]:
        return {"kind": "hf_processor", "class": type(self.processor).__name__}


class ImageReader:
    """Reads a batch's images once (a file used by several notes of the batch is decoded once), drops and
    reports unreadable ones (or raises, see the module doc) and preprocesses the rest in one call."""

    def __init__(self, preprocess: Callable[[Sequence[Any]], torch.Tensor], on_error: str = "skip",
                 image_root: str | None = None, report: Callable[[str], None] | None = None,
                 max_reported: int = 20):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_bad_image must be one of {ON_ERROR}, got '{on_error}'")
        self.preprocess = preprocess
        self.on_error = on_error
        self.image_root = Path(image_root) if image_root else None
        self.problems: dict[tuple[str, str], ImageProblem] = {}
        self._report = report if report is not None else _console_warning
        self._max_reported = max_reported

    def resolve(self, path: str) -> Path:
        p = Path(path)
        if p.is_absolute() or self.image_root is None:
            return p
        return self.image_root / p

    def read(self, requests: Sequence[tuple[str, Sequence[str]]]) -> list[tuple[list[str], list[Any]]]:
        """For each (note_id, paths): (the readable paths, their PIL images), in path order."""
        decoded: dict[str, Any] = {}
        failed: dict[str, str] = {}
        out = []
        for note_id, paths in requests:
            readable, images = [], []
            for path in paths:
                if path not in decoded and path not in failed:
                    try:
                        decoded[path] = self._open(path)
                    except (OSError, ValueError, SyntaxError) as exc:  # PIL's decode errors are OSError/ValueError
                        failed[path] = f"{type(exc).__name__}: {exc}"
                if path in failed:
                    self._problem(str(note_id), path, failed[path])
                else:
                    readable.append(path)
                    images.append(decoded[path])
            out.append((readable, images))
        return out

    def _open(self, path: str):
        from PIL import Image

        resolved = self.resolve(path)
        if not resolved.is_file():
            raise FileNotFoundError(f"no such file {resolved}")
        try:
            with warnings.catch_warnings():
                # PIL only warns between MAX_IMAGE_PIXELS and twice that: such an image is refused too
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(resolved) as im:
                    im.load()  # decode now: a truncated or corrupt file fails here, not later inside the model
                    rgb = im.convert("RGB")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ValueError(f"decompression bomb refused ({exc})") from None
        if rgb.width == 0 or rgb.height == 0:
            raise ValueError("image has no pixels")
        return rgb

    def _problem(self, note_id: str, path: str, reason: str) -> None:
        if self.on_error == "error":
            raise DataError(f"note '{note_id}': cannot read image: {reason}", file=path, field="image_paths")
        key = (note_id, path)
        if key in self.problems:
            return
        self.problems[key] = ImageProblem(note_id, path, reason)
        n = len(self.problems)
        if n <= self._max_reported:
            self._report(f"image skipped ({n} so far): note '{note_id}', file {path}: {reason}")
        elif n == self._max_reported + 1:
            self._report(f"more unreadable images: further ones are counted, not printed")

    def summary(self) -> dict[str, Any]:
        """Counts and the list of problems (for logs, reports and `image_problems.json`)."""
        return {"images_skipped": len(self.problems),
                "notes_affected": len({p.note_id for p in self.problems.values()}),
                "problems": [asdict(p) for p in self.problems.values()]}


def _console_warning(message: str) -> None:
    logging.getLogger("notellm.images").warning(message)
