"""benchmarks/gpu_check.py: its CPU dry run (a cheap subset) writes the JSON and the Markdown table, and its
FLOP accounting and peak table say what they should."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_check  # noqa: E402


def test_peak_table_and_matmul_parameter_count():
    assert gpu_check.peak_tflops("NVIDIA H200") == 989.0 and gpu_check.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_check.peak_tflops("NVIDIA L4") == 121.0 and gpu_check.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu_check.peak_tflops("some new chip") is None
    assert gpu_check.share_of_peak(98.9e12, 989.0) == pytest.approx(10.0)
    from notellm.models.backbone import TINY_QWEN3, load_backbone

    lm, _ = load_backbone("tiny-qwen3")
    h, i, layers = TINY_QWEN3["hidden_size"], TINY_QWEN3["intermediate_size"], TINY_QWEN3["num_hidden_layers"]
    q = TINY_QWEN3["num_attention_heads"] * TINY_QWEN3["head_dim"]
    kv = TINY_QWEN3["num_key_value_heads"] * TINY_QWEN3["head_dim"]
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * i  # q, k, v, o, gate, up, down; no norms, no embeddings
    assert gpu_check.matmul_parameters(lm) == layers * per_layer


def test_dry_run_embed_and_train_sections_write_json_and_markdown(tmp_path):
    report = gpu_check.main(["--dry-run", "--only", "embed,train", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["dry_run"] is True and saved["sections"] == ["embed", "train"]
    assert [e["model"] for e in saved["embed"]] == ["tiny-qwen3"] and saved["embed"][0]["notes_per_s"] > 0
    assert [t["grad_cache"] for t in saved["train"]] == [False, True]
    assert all(t["pairs_per_s"] > 0 and t["tokens_per_s"] > 0 for t in saved["train"])
    table = (tmp_path / "gpu_check.md").read_text()
    assert "DRY RUN" in table and table.count("| train GCL + CSFT") == 2 and "GradCache chunk 4" in table
    assert report["total_seconds"] > 0
