"""A seeded synthetic multimodal note set: what links two notes is split between their images and their text.

Every note belongs to a cluster (topic, colour, shape):
- its text (title, content, hashtags, category) is drawn from the topic's vocabulary and templates and never
  names a colour or a shape;
- its image is a small PNG: a shape (circle, square, triangle) of the cluster's colour, of random size and
  position and jittered hue, on a noisy light background. It never shows the topic.
Pairs link two notes of the same cluster, so text alone can narrow a partner down to its topic (1 in
`n_topics` of the pool), the image alone to its colour x shape (1 in 24 by default), and only both to its
cluster. With the defaults (192 clusters of 8 notes, 2 test notes each) the test pool holds one partner per
cluster: a perfect model has R@1 = 1, a perfect text-only model R@10 of about 10/24, a perfect image-only one
R@1 of about 1/8.

Split by note: each cluster's notes are shuffled and the last `test_share` of them are test notes (new notes,
never seen in training); train pairs join consecutive train notes of a cluster, test pairs consecutive test
notes. Image paths are absolute (as the readers write them).

    python -m notellm.data.synthetic_mm runs/mm/data      # notes.parquet, train_pairs/test_pairs.parquet, images/
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from notellm.data.schema import empty_note, notes_to_table, write_notes
from notellm.io import write_parquet

TOPICS = {
    "美食": ["火锅", "烧烤", "甜品", "面条", "咖啡", "早餐", "小吃", "烘焙"],
    "旅行": ["海边", "古镇", "雪山", "草原", "露营", "自驾", "民宿", "徒步"],
    "穿搭": ["衬衫", "裙子", "外套", "牛仔", "毛衣", "西装", "卫衣", "风衣"],
    "宠物": ["猫咪", "狗狗", "兔子", "仓鼠", "鹦鹉", "金鱼", "柯基", "布偶"],
    "健身": ["跑步", "瑜伽", "撸铁", "跳绳", "普拉提", "游泳", "骑行", "拉伸"],
    "家居": ["收纳", "沙发", "绿植", "灯具", "厨房", "卧室", "书桌", "窗帘"],
    "学习": ["考研", "英语", "笔记", "背单词", "刷题", "网课", "读书", "编程"],
    "美妆": ["口红", "粉底", "眼影", "护肤", "面膜", "香水", "防晒", "腮红"],
}
TEMPLATES = [
    "今天分享一下{a}和{b}，真的太喜欢了",
    "关于{a}的一点心得，{b}也很重要",
    "最近迷上了{a}，顺便聊聊{b}",
    "{a}新手必看，{b}的经验都在这里",
    "周末的{a}日常，还有{b}",
]
TITLES = ["{a}分享", "{a}日记", "我的{a}", "{a}攻略", "{a}合集", "聊聊{a}"]
FILLER = ["记录", "生活", "日常", "推荐", "真的", "超级", "宝藏", "必看", "好物", "心情"]
COLOURS = {"红": (215, 45, 45), "绿": (45, 165, 70), "蓝": (45, 85, 215), "黄": (225, 195, 40),
           "紫": (145, 60, 195), "橙": (240, 130, 30)}
SHAPES = ("circle", "square", "triangle", "cross")


@dataclass
class SyntheticMMConfig:
    n_topics: int = 8              # <= 8
    n_colours: int = 6             # <= 6 (red, green, blue, yellow, purple, orange; hues jittered)
    n_shapes: int = 4              # <= 4 (circle, square, triangle, cross)
    notes_per_cluster: int = 8     # clusters = n_topics x n_colours x n_shapes
    test_share: float = 0.25       # of each cluster's notes (at least 2: one test pair per cluster)
    image_size: int = 32
    seed: int = 0


def draw_image(colour: tuple[int, int, int], shape: str, size: int, rng: np.random.Generator):
    """A PIL image: one shape of (jittered) `colour` at a random place and size on a noisy light background."""
    from PIL import Image, ImageDraw

    background = rng.integers(200, 250, size=3)
    pixels = np.clip(background[None, None, :] + rng.normal(0, 10, size=(size, size, 3)), 0, 255)
    image = Image.fromarray(pixels.astype(np.uint8))
    fill = tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in colour)
    radius = rng.uniform(0.25, 0.36) * size
    cx, cy = rng.uniform(radius, size - radius, size=2)
    draw = ImageDraw.Draw(image)
    draw_shape(draw, shape, cx, cy, radius, fill)
    return image


def draw_shape(draw, shape: str, cx: float, cy: float, radius: float, fill) -> None:
    """One filled circle, square, cross or triangle of `radius` centred at (cx, cy) on an ImageDraw."""
    if shape == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    elif shape == "square":
        half = radius * 0.85
        draw.rectangle([cx - half, cy - half, cx + half, cy + half], fill=fill)
    elif shape == "cross":
        arm = radius * 0.35
        draw.rectangle([cx - radius, cy - arm, cx + radius, cy + arm], fill=fill)
        draw.rectangle([cx - arm, cy - radius, cx + arm, cy + radius], fill=fill)
    else:
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius * 0.8), (cx + radius, cy + radius * 0.8)],
                     fill=fill)


def _note_text(topic: str, rng: np.random.Generator) -> dict:
    words = TOPICS[topic]
    a, b = rng.choice(words, size=2, replace=False)
    filler = rng.choice(FILLER, size=2, replace=False)
    title = str(rng.choice(TITLES)).format(a=a)
    content = str(rng.choice(TEMPLATES)).format(a=a, b=b) + f"，{filler[0]}{filler[1]}"
    return {"title": title, "content": content, "hashtags": [str(a), topic], "category": [topic, str(a)]}


def generate_synthetic_mm(out_dir: str | Path, cfg: SyntheticMMConfig | None = None) -> dict[str, Path]:
    """Write notes.parquet, train_pairs.parquet, test_pairs.parquet and images/*.png under `out_dir`."""
    cfg = cfg or SyntheticMMConfig()
    for name, value, limit in (("n_topics", cfg.n_topics, len(TOPICS)), ("n_colours", cfg.n_colours, len(COLOURS)),
                               ("n_shapes", cfg.n_shapes, len(SHAPES))):
        if not 1 <= value <= limit:
            raise ValueError(f"{name} must be in 1..{limit}, got {value}")
    out = Path(out_dir).resolve()
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    notes, train_pairs, test_pairs = [], [], []
    n_test = max(2, int(round(cfg.notes_per_cluster * cfg.test_share)))
    for topic in list(TOPICS)[: cfg.n_topics]:
        for colour_name, colour in list(COLOURS.items())[: cfg.n_colours]:
            for shape in SHAPES[: cfg.n_shapes]:
                cluster = f"{topic}-{colour_name}-{shape}"
                ids = []
                for k in range(cfg.notes_per_cluster):
                    note_id = f"{cluster}-{k:03d}"
                    path = out / "images" / f"{note_id}.png"
                    draw_image(colour, shape, cfg.image_size, rng).save(path)
                    note = empty_note(note_id)
                    note.update(_note_text(topic, rng), image_paths=[str(path)], author_id=cluster,
                                extra=f'{{"topic": "{topic}", "colour": "{colour_name}", "shape": "{shape}"}}')
                    notes.append(note)
                    ids.append(note_id)
                ids = [ids[i] for i in rng.permutation(len(ids))]
                train, test = ids[:-n_test], ids[-n_test:]
                train_pairs += [(train[i], train[i + 1]) for i in range(0, len(train) - 1, 2)]
                test_pairs += [(test[i], test[i + 1]) for i in range(0, len(test) - 1, 2)]
    return write_synthetic_set(out, notes, train_pairs, test_pairs)


def write_synthetic_set(out: Path, notes: list[dict], train_pairs: list[tuple[str, str]],
                        test_pairs: list[tuple[str, str]]) -> dict[str, Path]:
    """The Note table and the train/test pair tables of a generated set (its images are already in out/images)."""
    write_notes(notes_to_table(notes, source=str(out / "notes.parquet")), out / "notes.parquet")
    paths = {"notes": out / "notes.parquet", "images": out / "images"}
    for name, pairs in (("train_pairs", train_pairs), ("test_pairs", test_pairs)):
        table = pa.table({"note_a": [a for a, _ in pairs], "note_b": [b for _, b in pairs],
                          "score": [1.0] * len(pairs)})
        paths[name] = write_parquet(table, out / f"{name}.parquet")
    return paths


if __name__ == "__main__":
    written = generate_synthetic_mm(sys.argv[1] if len(sys.argv) > 1 else "runs/mm/data")
    print("\n".join(f"{k}: {v}" for k, v in written.items()))
