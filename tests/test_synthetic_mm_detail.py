"""The synthetic set whose decisive detail is only in the image (shape and count): what the text and the
images carry, the split and the pairs."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from notellm.data.schema import read_notes
from notellm.data.synthetic_mm import SHAPES
from notellm.data.synthetic_mm_detail import DetailMMConfig, draw_objects, generate_detail_mm


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    cfg = DetailMMConfig(n_topics=2, n_shapes=2, n_counts=3, notes_per_cluster=4, test_notes=2, image_size=42)
    return generate_detail_mm(tmp_path_factory.mktemp("mmd"), cfg)


def test_text_never_names_the_image_detail_and_clusters_split_into_pairs(data):
    notes = read_notes(data["notes"]).to_pylist()
    assert len(notes) == 2 * 2 * 3 * 4
    words = {"圆", "方", "三角", "十字", "一个", "两个", "三个", "1", "2", "3", "红", "绿", "蓝", "黄", "紫", "橙"}
    for row in notes:
        text = row["title"] + row["content"] + "".join(row["hashtags"]) + "".join(row["category"])
        assert not [w for w in words if w in text], text
        extra = json.loads(row["extra"])
        assert row["note_id"].split("-")[1:3] == [extra["shape"], str(extra["count"])]
    by_id = {r["note_id"]: json.loads(r["extra"]) for r in notes}
    train, test = pq.read_table(data["train_pairs"]).to_pylist(), pq.read_table(data["test_pairs"]).to_pylist()
    assert len(train) == 12 and len(test) == 12  # one train and one test pair per cluster
    for pair in train + test:
        a, b = by_id[pair["note_a"]], by_id[pair["note_b"]]
        assert (a["topic"], a["shape"], a["count"]) == (b["topic"], b["shape"], b["count"])
    train_notes = {n for p in train for n in (p["note_a"], p["note_b"])}
    assert not train_notes & {n for p in test for n in (p["note_a"], p["note_b"])}  # test notes are new notes
    # colour is drawn per note (a nuisance), not per cluster
    clusters: dict = {}
    for n, x in by_id.items():
        clusters.setdefault((x["topic"], x["shape"], x["count"]), set()).add(x["colour"])
    assert max(len(colours) for colours in clusters.values()) > 1


@pytest.mark.parametrize("count", [1, 2, 3])
def test_the_image_shows_count_separate_objects(count):
    from scipy import ndimage

    image = np.asarray(draw_objects(SHAPES[0], count, (45, 85, 215), 84, np.random.default_rng(count)))
    objects = image[..., 2].astype(int) - image[..., 0].astype(int) > 60  # blue ink on a grey background
    assert ndimage.label(objects)[1] == count
