"""YAML configs with key=value overrides into dataclasses: one vocabulary across trainers, one-line errors that
say where a bad key came from, "did you mean", renamed keys, every key documented."""

from pathlib import Path

import pytest

from notellm.config import field_docs, load_config
from notellm.errors import ConfigError
from notellm.training.coldstart import ColdStartConfig, align_overrides
from notellm.training.notellm import NoteLLMTrainConfig
from notellm.training.popularity import PopularityConfig

ROOT = Path(__file__).resolve().parents[1]
SHARED_KEYS = ["output_dir", "max_steps", "epochs", "lr", "batch_size", "grad_accum", "warmup_steps", "warmup_ratio",
               "max_grad_norm", "seed", "time_budget_min", "bf16", "report_to", "lora.r", "lora.alpha",
               "lora.dropout", "lora.target_modules", "lora.top_layers"]


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1.0e-4\nmodel:\n  dim: 64\n  prompt:\n    language: en\nlora:\n  r: 8\n")
    cfg = load_config(NoteLLMTrainConfig, path, ["lr=3e-5", "model.pooling=mean", "lora.enabled=false",
                                                 "time_budget_min=2.5", "lora.target_modules=q_proj,v_proj"])
    assert cfg.lr == 3e-5 and cfg.model.dim == 64 and cfg.model.pooling == "mean"
    assert cfg.model.prompt.language == "en" and cfg.lora.r == 8 and cfg.lora.enabled is False
    assert cfg.time_budget_min == 2.5 and cfg.batch_size == 16  # untouched default
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]


@pytest.mark.parametrize("cls", [NoteLLMTrainConfig, PopularityConfig, ColdStartConfig])
def test_every_trainer_takes_the_shared_vocabulary(cls):
    overrides = ["output_dir=runs/x", "max_steps=3", "epochs=2", "lr=1e-3", "batch_size=2", "grad_accum=2",
                 "warmup_steps=1", "max_grad_norm=0.5", "seed=4", "time_budget_min=1", "bf16=false",
                 "report_to=none", "model.backbone=tiny-qwen3", "lora.r=4", "lora.top_layers=1"]
    cfg = load_config(cls, None, overrides)
    assert (cfg.output_dir, cfg.max_steps, cfg.lr, cfg.batch_size, cfg.grad_accum) == ("runs/x", 3, 1e-3, 2, 2)
    assert cfg.model.backbone == "tiny-qwen3" and cfg.lora.r == 4 and cfg.lora.top_layers == 1
    assert cfg.bf16 == "false" and cfg.time_budget_min == 1.0
    documented = {key for key, _, _ in field_docs(cls)}
    assert set(SHARED_KEYS) <= documented


def test_unknown_key_names_its_source_and_a_suggestion(tmp_path):
    with pytest.raises(ConfigError, match=r"^command line: unknown key 'lrr'; did you mean 'lr'\?"):
        load_config(NoteLLMTrainConfig, None, ["lrr=5e-5"])
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  dimm: 3\n")
    with pytest.raises(ConfigError, match=rf"^{path}: unknown key 'model.dimm'; did you mean 'model.dim'\?"):
        load_config(NoteLLMTrainConfig, path)
    # the same typo typed on the command line is blamed on the command line, not on the file
    with pytest.raises(ConfigError, match=r"^command line: unknown key 'model.dimm'"):
        load_config(NoteLLMTrainConfig, None, ["model.dimm=3"])


def test_old_key_names_say_the_new_one(tmp_path):
    with pytest.raises(ConfigError, match=r"'batch_pairs' -> 'batch_size'"):
        load_config(NoteLLMTrainConfig, None, ["batch_pairs=4"])
    with pytest.raises(ConfigError, match=r"'max_minutes' -> 'time_budget_min'"):
        load_config(NoteLLMTrainConfig, None, ["max_minutes=4"])
    path = tmp_path / "old.yaml"
    path.write_text("train:\n  epochs: 2\n  lr: 0.001\nmodel:\n  lora: {r: 4, top_layers: 2}\n")
    with pytest.raises(ConfigError) as err:
        load_config(PopularityConfig, path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(path))
    assert "'train.epochs' -> 'epochs'" in message and "'train.lr' -> 'lr'" in message
    with pytest.raises(ConfigError, match=r"'model.autocast' -> 'bf16'"):
        load_config(ColdStartConfig, None, ["model.autocast=bfloat16"])
    with pytest.raises(ConfigError, match=r"'sft.epochs' -> 'epochs'"):
        load_config(ColdStartConfig, None, ["sft.epochs=1"])


def test_bad_values_and_files_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(NoteLLMTrainConfig, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(NoteLLMTrainConfig, None, ["lr"])
    with pytest.raises(ConfigError, match="pooling"):
        load_config(NoteLLMTrainConfig, None, ["model.pooling=sideways"])
    with pytest.raises(ConfigError, match=r"^command line: objective must be one of"):
        load_config(NoteLLMTrainConfig, None, ["objective=contrastive"])
    with pytest.raises(ConfigError, match=r"batch_size = 'abc' is not a valid value \(expected int\)"):
        load_config(NoteLLMTrainConfig, None, ["batch_size=abc"])
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        load_config(PopularityConfig, None, ["batch_size=0"])
    (tmp_path / "bad.yaml").write_text("lr: [1, 2\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(NoteLLMTrainConfig, tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="is a section"):
        load_config(NoteLLMTrainConfig, None, ["lora=3"])
    with pytest.raises(ConfigError, match="report_to must name trackers") as info:
        load_config(NoteLLMTrainConfig, None, ["report_to=mlflow"])
    assert "\n" not in str(info.value)


def test_align_command_line_knobs_set_alignment_values():
    cfg = load_config(ColdStartConfig, None, align_overrides(["lr=1e-4", "max_steps=3", "align.loss=dpo"]))
    assert cfg.lr == 3e-4 and cfg.align.lr == 1e-4
    stage = cfg.stage("align")
    assert stage.lr == 1e-4 and stage.max_steps == 3 and stage.output_dir.endswith("align-dpo")
    assert cfg.stage("sft").lr == 3e-4 and cfg.stage("sft").max_steps == -1


def test_field_docs_read_the_comments_beside_the_fields():
    docs = {k: (default, meaning) for k, default, meaning in field_docs(NoteLLMTrainConfig)}
    assert docs["gen_weight"] == ("0.01", "a in L = (L_cl + a L_gen) / (1 + a)")
    assert docs["time_budget_min"][1].startswith("stop (and save) before")
    assert "hundreds of steps" in docs["head_lr"][1]  # continuation comment lines are joined
    assert docs["lora.top_layers"][0] == "0"


def test_shipped_configs_load():
    for path in sorted(ROOT.glob("configs/notellm_*.yaml")) + sorted(ROOT.glob("configs/csft_*.yaml")):
        assert load_config(NoteLLMTrainConfig, path).model.backbone
    for path in sorted(ROOT.glob("configs/popularity_*.yaml")):
        assert load_config(PopularityConfig, path).model.backbone
    for path in sorted(ROOT.glob("configs/coldstart_*.yaml")):
        assert load_config(ColdStartConfig, path).model.backbone
