"""A seeded synthetic note set where the decisive detail is only in the image: object shape and count.

Unlike `synthetic_mm` (where colour, which any model picks up first, tells most clusters apart), here:
- a cluster is (topic, shape, count): 4 shapes (circle, square, triangle, cross) x 1-3 objects = 12 visual
  classes per topic;
- the text (title, content, hashtags, category) comes from the topic's vocabulary and never names a shape,
  a number of objects or a colour: it narrows a partner down to its topic, 1 in `n_topics` of the pool;
- the image shows `count` objects of the cluster's shape, all of one colour drawn at random per NOTE (a
  nuisance: colour says nothing about the cluster), of random size, placed in random cells of a 3 x 3 grid
  on a noisy light background;
- so notes of one topic differ only in the image's shape and count, and notes of one visual class differ
  only in their text. The test pool (one partner per cluster) holds, for every query, 11 hard negatives of
  its topic that differ from the partner only in the image, and `n_topics - 1` of its visual class that
  differ only in the text. A perfect text-only model has R@1 ~ 1/12 (R@12 ~ 1), a perfect image-only one
  R@1 ~ 1/n_topics; R@1 = 1 needs both.

Split by note, as `synthetic_mm`: each cluster's notes are shuffled, the last `test_notes` are test notes (one
test pair each 2), the rest train pairs. Image paths are absolute. `extra` holds topic, shape, count, colour.

    python -m notellm.data.synthetic_mm_detail runs/mmd/data
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from notellm.data.schema import empty_note
from notellm.data.synthetic_mm import COLOURS, SHAPES, TOPICS, _note_text, draw_shape, write_synthetic_set

COUNTS = (1, 2, 3)


@dataclass
class DetailMMConfig:
    n_topics: int = 6              # <= 8
    n_shapes: int = 4              # <= 4
    n_counts: int = 3              # <= 3 (1, 2 or 3 objects)
    notes_per_cluster: int = 8     # clusters = n_topics x n_shapes x n_counts
    test_notes: int = 2            # per cluster (even): one test pair per 2
    image_size: int = 112
    seed: int = 0


def draw_objects(shape: str, count: int, colour: tuple[int, int, int], size: int, rng: np.random.Generator):
    """A PIL image: `count` objects of `shape` and (jittered) `colour`, one per random cell of a 3 x 3 grid."""
    from PIL import Image, ImageDraw

    background = rng.integers(200, 250, size=3)
    pixels = np.clip(background[None, None, :] + rng.normal(0, 10, size=(size, size, 3)), 0, 255)
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    fill = tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in colour)
    cell = size / 3
    radius = rng.uniform(0.30, 0.42) * cell  # one size per image: size does not tell the count
    for index in rng.choice(9, size=count, replace=False):
        row, col = divmod(int(index), 3)
        slack = cell / 2 - radius
        cx = (col + 0.5) * cell + rng.uniform(-slack, slack)
        cy = (row + 0.5) * cell + rng.uniform(-slack, slack)
        draw_shape(draw, shape, cx, cy, radius, fill)
    return image


def generate_detail_mm(out_dir: str | Path, cfg: DetailMMConfig | None = None) -> dict[str, Path]:
    """Write notes.parquet, train_pairs.parquet, test_pairs.parquet and images/*.png under `out_dir`."""
    cfg = cfg or DetailMMConfig()
    for name, value, limit in (("n_topics", cfg.n_topics, len(TOPICS)), ("n_shapes", cfg.n_shapes, len(SHAPES)),
                               ("n_counts", cfg.n_counts, len(COUNTS))):
        if not 1 <= value <= limit:
            raise ValueError(f"{name} must be in 1..{limit}, got {value}")
    if cfg.test_notes < 2 or cfg.test_notes % 2 or cfg.notes_per_cluster < cfg.test_notes + 2:
        raise ValueError("test_notes must be even and >= 2, with at least 2 train notes per cluster left")
    out = Path(out_dir).resolve()
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    colours = list(COLOURS.items())
    notes, train_pairs, test_pairs = [], [], []
    for t, topic in enumerate(list(TOPICS)[: cfg.n_topics]):
        for shape in SHAPES[: cfg.n_shapes]:
            for count in COUNTS[: cfg.n_counts]:
                cluster = f"t{t}-{shape}-{count}"
                ids = []
                for k in range(cfg.notes_per_cluster):
                    note_id = f"{cluster}-{k:03d}"
                    colour_name, colour = colours[int(rng.integers(len(colours)))]
                    path = out / "images" / f"{note_id}.png"
                    draw_objects(shape, count, colour, cfg.image_size, rng).save(path)
                    note = empty_note(note_id)
                    note.update(_note_text(topic, rng), image_paths=[str(path)], author_id=cluster,
                                extra=json.dumps({"topic": topic, "shape": shape, "count": count,
                                                  "colour": colour_name}, ensure_ascii=False))
                    notes.append(note)
                    ids.append(note_id)
                ids = [ids[i] for i in rng.permutation(len(ids))]
                train, test = ids[:-cfg.test_notes], ids[-cfg.test_notes:]
                train_pairs += [(train[i], train[i + 1]) for i in range(0, len(train) - 1, 2)]
                test_pairs += [(test[i], test[i + 1]) for i in range(0, len(test) - 1, 2)]
    return write_synthetic_set(out, notes, train_pairs, test_pairs)


if __name__ == "__main__":
    written = generate_detail_mm(sys.argv[1] if len(sys.argv) > 1 else "runs/mmd/data")
    print("\n".join(f"{k}: {v}" for k, v in written.items()))
