"""`notellm train CONFIG.yaml [key=value ...]`: NoteLLM training (GCL + CSFT), resumable."""

from __future__ import annotations

from typing import List, Optional

import typer

from notellm.cli.common import console

app = typer.Typer()


@app.command("train")
def train(
    config: str = typer.Argument(..., help="YAML config (see configs/notellm_*.yaml)"),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. lr=5e-5 model.dim=64"),
) -> None:
    """Train NoteLLM: contrastive learning on co-occurring note pairs + hashtag/category generation.

    Runs again with the same output_dir resume from the last checkpoint. For several GPUs or machines:
    `accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml -m notellm.cli train ...`;
    several CPU processes: `torchrun --nproc_per_node 2 -m notellm.cli train ...`.
    """
    from notellm.config import load_config
    from notellm.training.notellm_trainer import NoteLLMTrainer, TrainConfig

    config_cls, trainer_cls = TrainConfig, NoteLLMTrainer
    # NoteLLM-2 (issue 7): a `multimodal:` section (in the file or an override) trains the image + text model
    from notellm.training.multimodal_trainer import is_multimodal_config

    if is_multimodal_config(config, overrides or []):
        from notellm.training.multimodal_trainer import MultimodalTrainConfig as config_cls
        from notellm.training.multimodal_trainer import MultimodalTrainer as trainer_cls
    cfg = load_config(config_cls, config, overrides or [])
    trainer = trainer_cls(cfg)
    console.print(f"[bold]training[/] {cfg.objective} on {len(trainer.items)} items, "
                  f"{trainer.total_steps()} steps, backbone {cfg.model.backbone}, "
                  f"{'LoRA' if cfg.lora.enabled else 'full'}, bf16={trainer.bf16}")
    summary = trainer.train()
    console.print(f"[green]saved[/] {cfg.output_dir}/model  ({summary['steps']} steps, {summary['seconds']:.0f} s)")
    if "validation" in summary:
        console.print({k: round(v, 4) for k, v in summary["validation"].items()})
