"""The `notellm` command line: one Typer app, one module per job.

Each module in this package defines its commands on a Typer app and keeps heavy imports (torch,
transformers) inside the command bodies, so `notellm --help` answers at once.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from notellm.cli.common import run_cli

# OpenMP's default busy-waiting made forward passes ~6x slower on a shared 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(
    name="notellm",
    help="LLM note embeddings, hashtag/category generation and popularity prediction for content platforms.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)

# (module, sub-app name or None for top-level commands, help)
_GROUPS = [
    ("quickstart", None, None),
    ("data", "data", "Import notes into the Note table, make the demo corpus, mine pairs, split."),
    ("pairs", None, None),
    ("models", "models", "List and prepare backbones (the offline default, any HF id or folder)."),
    ("train", None, None),
    ("embed", None, None),
    ("index", "index", "Build and inspect vector indexes of note embeddings."),
    ("evaluate", "eval", "Evaluate models and baselines exactly as the papers measure."),
    ("tag", None, None),
    ("popularity", "popularity", "Predict a note's popularity (RedNoob): train, predict, eval."),
    ("coldstart", "coldstart", "Cold-start popularity from a user's past posts (MultiSmpLLM, IDPOP)."),
    ("serve", None, None),
]

for module_name, group, help_text in _GROUPS:
    try:
        module = importlib.import_module(f"notellm.cli.{module_name}")
    except ModuleNotFoundError as exc:  # a job whose module is not there yet
        if exc.name != f"notellm.cli.{module_name}":
            raise
        continue
    if group is None:
        for command in module.app.registered_commands:
            app.registered_commands.append(command)
    else:
        app.add_typer(module.app, name=group, help=help_text)


def main() -> None:
    sys.exit(run_cli(app))
