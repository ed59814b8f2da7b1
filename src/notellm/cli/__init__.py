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



def _print_version(value: bool) -> None:
    if value:
        from notellm import __version__

        print(f"notellm {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    """LLM note embeddings, hashtag/category generation and popularity prediction for content platforms."""


# Sub-command groups, and the modules whose commands fill them (None: top-level commands).
_GROUP_HELP = {
    "data": "Import notes into the Note table, make the demo corpus, split.",
    "models": "List and prepare backbones (the offline default, any HF id or folder).",
    "index": "Build and query vector indexes of note embeddings.",
    "eval": "Evaluate models and baselines exactly as the papers measure.",
    "popularity": "Predict a note's popularity (RedNoob): train, predict, eval.",
    "coldstart": "Cold-start popularity from a user's past posts (MultiSmpLLM, IDPOP): sft, align, eval.",
    "export": "Export to the ecosystem: sentence-transformers, Parquet/Arrow embeddings, FAISS.",
    "config": "Show every config key of a trainer with its default and meaning.",
}
_MODULES = [
    ("quickstart", None), ("data", "data"), ("demo", "data"), ("split", "data"), ("pairs", None),
    ("models", "models"), ("train", None), ("embed", None), ("index", "index"), ("recommend", None),
    ("eval_recall", "eval"), ("eval_generation", "eval"), ("tag", None), ("popularity", "popularity"),
    ("coldstart", "coldstart"), ("serve", None), ("plot", None), ("config_show", "config"), ("export", "export"),
]

_groups: dict[str, typer.Typer] = {}
for module_name, group in _MODULES:
    try:
        module = importlib.import_module(f"notellm.cli.{module_name}")
    except ModuleNotFoundError as exc:  # a job whose module is not there yet
        if exc.name != f"notellm.cli.{module_name}":
            raise
        continue
    if group is None:
        target = app
    elif group not in _groups:
        target = _groups[group] = typer.Typer(no_args_is_help=True)
        app.add_typer(target, name=group, help=_GROUP_HELP[group])
    else:
        target = _groups[group]
    target.registered_commands.extend(module.app.registered_commands)


def main() -> None:
    sys.exit(run_cli(app))
