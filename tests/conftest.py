"""Shared fixtures: the shared datasets folder (skips when absent), tiny random backbones, demo data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED = Path(os.environ.get("NOTELLM_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


def pytest_collection_modifyitems(config, items):
    """Tests marked `long` run first: under `-n 2` one worker starts the minutes-long one at once while the other
    works through the rest, instead of it starting last and running alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)  # stable: the rest keep their order


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """`../shared/datasets` beside the checkout; tests that need it skip cleanly when it is absent."""
    path = SHARED / "datasets"
    if not path.is_dir():
        pytest.skip("../shared/datasets is not present")
    return path


def shared_dataset(name: str) -> Path:
    path = SHARED / "datasets" / name
    if not path.is_dir():
        pytest.skip(f"../shared/datasets/{name} is not present")
    return path


@pytest.fixture(scope="session")
def tiny_backbone():
    """(model, tokenizer): 2-layer hidden-64 Qwen3 with random weights and the real Qwen3 tokenizer."""
    from notellm.models.backbone import load_backbone

    return load_backbone("tiny-qwen3", seed=0)
