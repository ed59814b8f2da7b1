"""YAML configs with key=value overrides into dataclasses; unknown keys are errors."""

import pytest

from notellm.config import load_config
from notellm.errors import ConfigError
from notellm.training.notellm_trainer import TrainConfig


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1.0e-4\nmodel:\n  dim: 64\n  prompt:\n    language: en\nlora:\n  r: 8\n")
    cfg = load_config(TrainConfig, path, ["lr=3e-5", "model.pooling=mean", "lora.enabled=false", "max_minutes=2.5"])
    assert cfg.lr == 3e-5 and cfg.model.dim == 64 and cfg.model.pooling == "mean"
    assert cfg.model.prompt.language == "en" and cfg.lora.r == 8 and cfg.lora.enabled is False
    assert cfg.max_minutes == 2.5 and cfg.batch_pairs == 16  # untouched default


def test_unknown_key_is_an_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config(TrainConfig, None, ["learning_rate=1"])
    with pytest.raises(ConfigError, match=r"model\.: unknown key\(s\) \['dimm'\]"):
        load_config(TrainConfig, None, ["model.dimm=3"])


def test_bad_values_and_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(TrainConfig, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(TrainConfig, None, ["lr"])
    with pytest.raises(ValueError, match="pooling"):
        load_config(TrainConfig, None, ["model.pooling=sideways"])


def test_shipped_configs_load():
    from pathlib import Path

    for path in sorted(Path(__file__).resolve().parents[1].glob("configs/notellm_*.yaml")):
        cfg = load_config(TrainConfig, path)
        assert cfg.model.backbone
