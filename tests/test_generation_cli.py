"""`notellm tag` and `notellm eval generation` end to end on a tiny random model and the k-NN baseline."""

import json

import pyarrow.parquet as pq
from typer.testing import CliRunner

from notellm.cli import app
from notellm.data.schema import notes_to_table, write_notes

TRAIN = [
    dict(note_id="t1", title="红烧肉的做法", content="家常红烧肉", hashtags=["红烧肉", "美食"], category=["美食", "家常菜"]),
    dict(note_id="t2", title="红烧肉教程", content="红烧肉 家常", hashtags=["红烧肉"], category=["美食", "家常菜"]),
    dict(note_id="t3", title="夏日穿搭", content="显瘦连衣裙", hashtags=["穿搭"], category=["时尚", "女装"]),
]
TEST = [
    dict(note_id="q1", title="红烧肉", content="家常做法", hashtags=["红烧肉", "下饭"], category=["美食", "家常菜"]),
    dict(note_id="q2", title="连衣裙", content="夏日穿搭", hashtags=["穿搭"], category=["时尚", "女装"]),
    dict(note_id="q3", title="无题", content="随手拍", hashtags=[], category=["时尚", "男装"]),
]


def _write(tmp_path):
    train, test = tmp_path / "train.parquet", tmp_path / "test.parquet"
    write_notes(notes_to_table([dict(r) for r in TRAIN]), train)
    write_notes(notes_to_table([dict(r) for r in TEST]), test)
    return train, test


def test_knn_tag_then_eval_gives_hand_computed_numbers(tmp_path):
    train, test = _write(tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["tag", "--model", "knn", "--train-notes", str(train), "--notes", str(test),
                              "--out", str(tmp_path / "knn.parquet"), "--k", "2", "--n-tags", "1"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["eval", "generation", "--pred", str(tmp_path / "knn.parquet"), "--notes", str(test),
                              "--out", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r.json").read_text())
    # q1 -> 红烧肉 / 美食,家常菜 (t1, t2 nearest); q2 -> 穿搭 / 时尚,女装 (t3 nearest); q3 shares no character
    # n-gram with any training note: all similarities tie at 0, so t1, t2 vote -> 美食,家常菜 (wrong)
    m = report["metrics"]
    assert report["n_notes"] == 3 and report["n_tagged"] == 2
    assert m["tag_precision"] == 1.0 and m["tag_recall"] == 2 / 3      # 2 hits of 2 predicted, 3 true tags
    assert m["cat_acc_l1"] == 2 / 3 and m["cat_acc_l2"] == 2 / 3
    assert m["ill_formed"] == 0.0          # every vote is a training path


def test_tag_with_a_tiny_model_writes_the_table_and_records_the_decoding(tmp_path):
    train, test = _write(tmp_path)
    out = tmp_path / "tags.parquet"
    res = CliRunner().invoke(app, ["tag", "--model", "zero-shot:tiny-qwen3", "--notes", str(test), "--out", str(out),
                                   "--train-notes", str(train), "--n-tags", "2", "--max-new-tokens", "4",
                                   "--fp32"])
    assert res.exit_code == 0, res.output
    table = pq.read_table(out)
    assert table["note_id"].to_pylist() == ["q1", "q2", "q3"]
    assert all(tuple(c) in {("美食", "家常菜"), ("时尚", "女装")} for c in table["category"].to_pylist())
    assert all(len(t) <= 2 for t in table["tags"].to_pylist())
    meta = json.loads(table.schema.metadata[b"notellm"])
    assert meta["category_decoding"] == "constrained" and meta["model"] == "zero-shot:tiny-qwen3"


def test_constrained_tagging_without_a_category_set_is_a_clear_error(tmp_path):
    _, test = _write(tmp_path)
    res = CliRunner().invoke(app, ["tag", "--model", "zero-shot:tiny-qwen3", "--notes", str(test),
                                   "--out", str(tmp_path / "x.parquet")])
    assert res.exit_code != 0
    assert "category set" in str(res.exception) + res.output
