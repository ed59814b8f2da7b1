"""`notellm train CONFIG.yaml [key=value ...]`: NoteLLM training (GCL + CSFT), resumable."""

from __future__ import annotations

from typing import List, Optional

import typer

from notellm.cli.common import ProgressCallback, console, load_cli_config

app = typer.Typer()


@app.command("train")
def train(
    config: str = typer.Argument(..., help="YAML config (see configs/notellm_*.yaml)"),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. lr=5e-5 model.dim=64"),
) -> None:
    """Train NoteLLM: contrastive learning on co-occurring note pairs + hashtag/category generation.

    A `multimodal:` section trains NoteLLM-2 (image + text). Runs again with the same output_dir resume from the
    last checkpoint; a changed config is refused (resume=force continues anyway). `notellm config show train`
    lists every key. For several GPUs or machines:
    `accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml -m notellm.cli train ...`;
    several CPU processes: `torchrun --nproc_per_node 2 -m notellm.cli train ...`.
    """
    from notellm.training.engine import Engine
    from notellm.training.multimodal import MultimodalRecipe, MultimodalTrainConfig, is_multimodal_config
    from notellm.training.notellm import NoteLLMRecipe, NoteLLMTrainConfig

    if is_multimodal_config(config, overrides or []):
        recipe = MultimodalRecipe(load_cli_config(MultimodalTrainConfig, config, overrides))
    else:
        recipe = NoteLLMRecipe(load_cli_config(NoteLLMTrainConfig, config, overrides))
    cfg = recipe.args
    console.print(f"[bold]training[/] {recipe.kind} ({cfg.objective}), backbone {cfg.model.backbone}, "
                  f"{'LoRA' if cfg.lora.enabled else 'full'} -> {cfg.output_dir}")
    summary = Engine(recipe, [ProgressCallback()]).run()
    console.print(f"[green]saved[/] {cfg.output_dir}/model  ({summary['steps']} steps, {summary['seconds']:.0f} s)")
    if "validation" in summary:
        console.print({k: round(v, 4) for k, v in summary["validation"].items()})
