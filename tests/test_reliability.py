"""Reliability and safety of the embedding and index commands: no file is ever unpickled, a resumed embed
never mixes shards of another run, outputs appear whole, and bad input or arguments are one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.toy import write_toy
from notellm.cli import app
from notellm.cli.common import run_cli

MODEL = "zero-shot:tiny-qwen3"


def run(*args: str) -> int:
    return run_cli(app, [str(a) for a in args])


def one_line_error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]


@pytest.fixture()
def notes(tmp_path):
    return write_toy(tmp_path)["notes"]


class _Evil:
    """Unpickling this runs `touch MARKER`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_planted_pickle_shard_is_refused_and_nothing_runs(tmp_path, notes, capsys):
    out = tmp_path / "e"
    (out / "shards").mkdir(parents=True)
    marker = tmp_path / "pwned"
    # an .npz shard whose ids array is a pickled object (np.savez pickles object arrays)
    with open(out / "shards" / "shard-00000.npz", "wb") as f:
        np.savez(f, ids=np.array([_Evil(marker)], dtype=object), vectors=np.zeros((1, 64), np.float32))
    capsys.readouterr()
    assert run("embed", notes, "-m", MODEL, "-o", out, "--shard-size", 16, "--fp32") == 2
    line = one_line_error(capsys)
    assert "shard-00000.npz" in line and "never unpickled" in line
    assert not marker.exists()
    assert not (out / "embeddings.npy").exists()


@pytest.fixture()
def cached_models(monkeypatch):
    """Each `notellm embed` below loads the same tiny models: load each once (the fingerprints still hash the
    model folders on disk, so a changed folder is still seen)."""
    from notellm.inference import embed as embed_mod

    cache, load = {}, embed_mod.load_model_for_embedding

    def cached(model, bf16, pooling=None):
        key = (model, bf16, pooling)
        if key not in cache:
            cache[key] = load(model, bf16, pooling)
        return cache[key]

    monkeypatch.setattr(embed_mod, "load_model_for_embedding", cached)


def _kill_after_merge_of(out, kept_shards: int) -> None:
    """What a kill leaves: the first `kept_shards` shards, no merged files."""
    for shard in sorted((out / "shards").glob("shard-*.npz"))[kept_shards:]:
        shard.unlink()
    for name in ("embeddings.npy", "note_ids.txt", "meta.json"):
        (out / name).unlink()


def test_embed_resume_with_another_shard_size_or_input_is_refused_and_restart_starts_fresh(
        tmp_path, notes, capsys, cached_models):
    from notellm.inference.embed import read_embeddings

    out = tmp_path / "e"
    assert run("embed", notes, "-m", MODEL, "-o", out, "--shard-size", 10, "--fp32") == 0
    _kill_after_merge_of(out, kept_shards=3)
    capsys.readouterr()
    # main wrote 30 of 32 notes here (shards 0-2 of size 10 kept, shard 4 of size 7 added), exit 0
    assert run("embed", notes, "-m", MODEL, "-o", out, "--shard-size", 7, "--fp32") == 2
    line = one_line_error(capsys)
    assert "shard_size: 10 -> 7" in line and "--restart" in line and "different embedding run" in line
    assert not (out / "embeddings.npy").exists()
    # another input under the same path: rows and ids changed
    import pyarrow.parquet as pq

    original = notes.read_bytes()
    pq.write_table(pq.read_table(notes).slice(0, 20), notes)
    assert run("embed", notes, "-m", MODEL, "-o", out, "--shard-size", 10, "--fp32") == 2
    line = one_line_error(capsys)
    assert "input.rows: 32 -> 20" in line and "input.ids_sha256" in line
    # pooling is a prompt setting; --bf16 the dtype
    notes.write_bytes(original)
    assert run("embed", notes, "-m", MODEL, "-o", out, "--shard-size", 10, "--pooling", "mean", "--fp32") == 2
    assert "prompt.pooling: 'before_emb' -> 'mean'" in one_line_error(capsys)
    assert run("embed", notes, "-m", MODEL, "-o", out, "--shard-size", 10, "--bf16") == 2
    assert "dtype: 'float32' -> 'bfloat16'" in one_line_error(capsys)
    # the same table rewritten (new mtime, same bytes) resumes: only the content is compared
    assert run("embed", notes, "-m", MODEL, "-o", out, "--shard-size", 10, "--fp32") == 0
    ids, resumed, meta = read_embeddings(out)
    assert len(ids) == 32 and meta["fingerprint"]["shard_size"] == 10
    # --restart discards the shards: every note embedded again in shards of the new size
    assert run("embed", notes, "-m", MODEL, "-o", out, "--shard-size", 7, "--fp32", "--restart") == 0
    ids7, restarted, meta7 = read_embeddings(out)
    assert ids7 == ids and meta7["fingerprint"]["shard_size"] == 7
    assert sorted(p.name for p in (out / "shards").iterdir()) == [f"shard-{k:05d}.npz" for k in range(5)]
    np.testing.assert_allclose(restarted, resumed, atol=1e-5)  # other batches, the same vectors


def test_embed_resume_with_a_changed_model_folder_is_refused(tmp_path, notes, capsys, cached_models):
    from safetensors.torch import load_file, save_file

    from notellm.models.notellm import NoteLLMConfig, build_notellm

    model_dir = tmp_path / "model"
    build_notellm(NoteLLMConfig(backbone="tiny-qwen3", dim=16)).save(model_dir)
    out = tmp_path / "e"
    assert run("embed", notes, "-m", model_dir, "-o", out, "--shard-size", 10, "--fp32") == 0
    _kill_after_merge_of(out, kept_shards=2)
    # "another model" in the same folder: other projection weights
    head = next(model_dir.glob("*.safetensors"))
    tensors = load_file(head)
    save_file({k: v + 1 for k, v in tensors.items()}, str(head))
    capsys.readouterr()
    assert run("embed", notes, "-m", model_dir, "-o", out, "--shard-size", 10, "--fp32") == 2
    line = one_line_error(capsys)
    assert "model.sha256: sha256" in line and "--restart" in line


@pytest.mark.parametrize("flag, value", [("--shard-size", -5), ("--shard-size", 0), ("--batch-size", 0),
                                          ("--batch-size", -1)])
def test_embed_sizes_must_be_positive(tmp_path, notes, capsys, flag, value):
    out = tmp_path / "e"
    assert run("embed", notes, "-m", MODEL, "-o", out, flag, value) == 2
    assert f"{flag} must be a whole number of notes >= 1, got {value}" in one_line_error(capsys)
    assert not out.exists()


def test_embed_output_replaces_the_folder_whole_and_refuses_a_foreign_one(tmp_path, notes, capsys, cached_models,
                                                                          monkeypatch):
    out = tmp_path / "e"
    assert run("embed", notes, "-m", MODEL, "-o", out, "--fp32") == 0
    first = (out / "embeddings.npy").stat().st_ino
    # what a kill during the merge leaves: a temp folder beside --out and a temp shard inside it
    (tmp_path / ".e.123.tmp").mkdir()
    (tmp_path / ".e.123.tmp" / "embeddings.npy").write_bytes(b"half")
    (out / "shards" / ".shard-00000.npz.abc.npz.tmp").write_bytes(b"half")
    assert run("embed", notes, "-m", MODEL, "-o", out, "--fp32") == 0
    assert (out / "embeddings.npy").stat().st_ino != first  # a new folder, not files rewritten in place
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    leftovers += [p.name for p in (out / "shards").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    # killed between the merge's two renames: --out moved aside, the new one not yet in place; the rerun puts
    # the old folder back and reuses its shards (nothing is embedded again)
    import os
    import subprocess
    import sys

    from notellm.inference import embed as embed_mod

    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                  text=True).stdout)
    os.replace(out, tmp_path / f".e.pid{dead_pid}.123.old.tmp")
    encoded = []
    original = embed_mod.Embedder.encode
    monkeypatch.setattr(embed_mod.Embedder, "encode",
                        lambda self, notes, on_batch=None: encoded.append(len(notes)) or original(self, notes, on_batch))
    assert run("embed", notes, "-m", MODEL, "-o", out, "--fp32") == 0
    assert encoded == [] and (out / "embeddings.npy").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    # --out . (or any folder holding other things) would be replaced whole: refused
    project = tmp_path / "project"
    project.mkdir()
    (project / "thesis.tex").write_text("years of work")
    capsys.readouterr()
    assert run("embed", notes, "-m", MODEL, "-o", project, "--fp32") == 2
    assert "is not an embeddings output" in one_line_error(capsys)
    assert (project / "thesis.tex").read_text() == "years of work"


def test_a_non_parquet_file_given_to_embed_is_a_one_line_error(tmp_path, capsys):
    for name, data in (("notes.csv", b"note_id,title\n1,a\n"), ("notes.parquet", b"PAR1 not really PAR1"),
                       ("empty.parquet", b"")):
        (tmp_path / name).write_bytes(data)
        assert run("embed", tmp_path / name, "-m", MODEL, "-o", tmp_path / "e") == 2
        line = one_line_error(capsys)
        assert name in line and "Parquet" in line


# ---- index folders ----------------------------------------------------------------------------------------
def _embeddings(folder, ids, seed):
    from notellm.inference.embed import write_embeddings

    x = np.random.default_rng(seed).standard_normal((len(ids), 8)).astype(np.float32)
    return write_embeddings(ids, x / np.linalg.norm(x, axis=1, keepdims=True), {"model": f"m{seed}"}, folder)


def test_a_crash_while_saving_an_index_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from notellm.inference.embed import read_embeddings
    from notellm.inference.index import build_index, load_index

    old_ids, new_ids = [f"a{i}" for i in range(20)], [f"b{i}" for i in range(20)]
    ids, x, meta = read_embeddings(_embeddings(tmp_path / "old", old_ids, 1))
    notes = pa.table({"note_id": old_ids + new_ids, "title": ["t"] * 40, "category": [["c"]] * 40})
    build_index(ids, x, meta, notes=notes).save(tmp_path / "index")
    ids2, x2, meta2 = read_embeddings(_embeddings(tmp_path / "new", new_ids, 2))
    rebuilt = build_index(ids2, x2, meta2, notes=notes)

    def crash(*args, **kwargs):
        raise OSError("disk full")  # dies after index.faiss is written, before the ids

    monkeypatch.setattr(pq, "write_table", crash)
    with pytest.raises(OSError):
        rebuilt.save(tmp_path / "index")
    monkeypatch.undo()
    # main: the new index.faiss beside the old index.json, loaded without a word (old ids, new vectors)
    loaded = load_index(tmp_path / "index")
    assert loaded.ids == old_ids
    np.testing.assert_allclose(loaded.vector_of("a3"), x[3], atol=1e-6)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_an_index_whose_ids_do_not_match_its_vectors_is_a_one_line_error(tmp_path, capsys):
    import json

    emb = _embeddings(tmp_path / "emb", [f"n{i}" for i in range(10)], 0)
    assert run("index", "build", emb, "--out", tmp_path / "index") == 0
    meta = json.loads((tmp_path / "index" / "index.json").read_text())
    meta["ids"] = meta["ids"][:-1]
    (tmp_path / "index" / "index.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert run("index", "info", tmp_path / "index") == 2
    assert "holds 10 vectors but 9 note ids" in one_line_error(capsys)
    (tmp_path / "index" / "index.faiss").write_bytes(b"not faiss")
    assert run("index", "info", tmp_path / "index") == 2
    assert "damaged index folder" in one_line_error(capsys)


def test_index_build_into_a_folder_that_is_not_an_index_is_refused(tmp_path, capsys):
    emb = _embeddings(tmp_path / "emb", [f"n{i}" for i in range(10)], 0)
    before = sorted(p.name for p in emb.iterdir())
    capsys.readouterr()
    assert run("index", "build", emb, "--out", emb) == 2  # main: wrote the index files into the embeddings
    assert "is a folder that is not an index" in one_line_error(capsys)
    assert sorted(p.name for p in emb.iterdir()) == before


# ---- bad images and bad arguments -------------------------------------------------------------------------
def _png_header_only(path, width: int, height: int):
    """A PNG that claims width x height pixels in a few bytes (the decompression bomb's shape)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return str(path)


def test_a_decompression_bomb_is_a_counted_skip_never_zeros(tmp_path, monkeypatch):
    from PIL import Image

    from notellm.data.images import ImageReader, ResizeNormalize
    from notellm.errors import DataError

    good = tmp_path / "good.png"
    Image.new("RGB", (12, 12), (200, 10, 10)).save(good)
    bomb = _png_header_only(tmp_path / "bomb.png", 30_000, 30_000)  # 900 M pixels in 45 bytes
    reports = []
    reader = ImageReader(ResizeNormalize(8), on_error="skip", report=reports.append)
    [(readable, images)] = reader.read([("n1", [bomb, str(good)])])  # main: DecompressionBombError traceback
    assert readable == [str(good)] and len(images) == 1
    assert reader.summary()["images_skipped"] == 1 and "decompression bomb" in reports[0]
    # between MAX_IMAGE_PIXELS and twice that PIL only warns (and would decode it): refused as well
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    warned = ImageReader(ResizeNormalize(8), on_error="skip", report=reports.append)
    [(readable, images)] = warned.read([("n2", [str(good)])])  # 144 pixels
    assert readable == [] and images == [] and warned.summary()["notes_affected"] == 1
    with pytest.raises(DataError, match="decompression bomb"):
        ImageReader(ResizeNormalize(8), on_error="error").read([("n3", [str(good)])])


def test_eval_recall_ks_must_be_positive(tmp_path, capsys):
    files = write_toy(tmp_path)
    for ks in ("0,-1", "10,0", "-5"):
        assert run("eval", "recall", "--notes", files["notes"], "--pairs", files["pairs"], "--baseline", "tfidf-word",
                   "--ks", ks) == 2
        assert f"--ks must be whole numbers >= 1 (how many neighbours count), got '{ks}'" in one_line_error(capsys)


@pytest.mark.parametrize("k", [0, -1])
def test_recommend_k_must_be_positive(tmp_path, capsys, k):
    emb = _embeddings(tmp_path / "emb", [f"n{i}" for i in range(10)], 0)
    assert run("index", "build", emb, "--out", tmp_path / "index") == 0
    capsys.readouterr()
    assert run("recommend", "--index", tmp_path / "index", "--note-id", "n1", "-k", k, "--json") == 2  # main: [] exit 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"error: -k must be a whole number of notes >= 1, got {k}" in captured.err.splitlines()


# ---- temps of killed writers ------------------------------------------------------------------------------
def test_a_write_cleans_the_temps_a_killed_writer_left_but_not_a_live_writers(tmp_path):
    import os
    import subprocess
    import sys

    from notellm.io import atomic_dir, write_json

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # exited and reaped: the pid of a killed writer
    stale = tmp_path / f".out.json.pid{dead_pid}.abc.tmp"
    legacy = tmp_path / ".out.json.xyz.tmp"  # written before temps carried a pid
    live = tmp_path / f".out.json.pid{os.getpid()}.def.tmp"  # a writer that is still running
    other = tmp_path / f".other.json.pid{dead_pid}.ghi.tmp"
    for path in (stale, legacy, live, other):
        path.write_text("half")
    write_json({"a": 1}, tmp_path / "out.json")  # main: every temp stayed for ever
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out.json", live.name, other.name])
    # a folder moved aside by a writer killed between its two renames is put back by the next writer
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "x").write_text("old")
    os.replace(tmp_path / "folder", tmp_path / f".folder.pid{dead_pid}.123.old.tmp")
    with atomic_dir(tmp_path / "folder") as tmp:
        assert (tmp_path / "folder" / "x").read_text() == "old"
        (tmp / "x").write_text("new")
    assert (tmp_path / "folder" / "x").read_text() == "new"
