"""`notellm plot`: the preference alignment panel (chosen / rejected log-probability shift, margin)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from notellm.cli import app
from notellm.cli.common import run_cli
from notellm.evaluation.plots import PREFERENCE_KEYS, plot_run, plot_runs, read_log, series

PANEL_PX = 6.5 * 110  # plot_run: 6.5 inches per panel at 110 dpi


def _write_log(folder: Path, records: list[dict]) -> Path:
    folder.mkdir(parents=True)
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return folder


def _alignment_log(folder: Path, chosen_slope: float) -> Path:
    """What AlignRecipe logs per step: the loss terms and the answers' shifts against the reference."""
    records = [{"event": "start"}]
    for step in range(1, 9):
        records.append({"step": step, "epoch": 0, "loss": 0.69 - 0.02 * step, "dpo": 0.69 - 0.02 * step,
                        "penalty": 0.0, "chosen_shift": chosen_slope * step, "rejected_shift": -0.5 * step,
                        "margin": 0.1 * (chosen_slope + 0.5) * step, "lr": 1e-4, "grad_norm": 1.0})
    return _write_log(folder, records)


def test_alignment_run_gets_a_logprob_panel_and_sft_run_does_not(tmp_path):
    align = _alignment_log(tmp_path / "align-dpo", chosen_slope=-0.3)
    data = series(read_log(align))
    assert data["chosen_shift"][8] == -0.3 * 8 and data["rejected_shift"][4] == -2.0
    width = Image.open(plot_run(align)).size[0]
    assert abs(width - 2 * PANEL_PX) < 5  # losses | log-probability shifts

    sft = _write_log(tmp_path / "sft", [{"step": s, "epoch": 0, "loss": 2.0 / s, "lr": 1e-4} for s in (1, 2, 3)])
    assert abs(Image.open(plot_run(sft)).size[0] - PANEL_PX) < 5  # losses only


def test_plot_several_runs_draws_one_panel_per_quantity(tmp_path, capsys):
    runs = [_alignment_log(tmp_path / name, slope) for name, slope in (("dpo", -0.3), ("idpop", 0.02))]
    out = plot_runs({"DPO": runs[0], "IDPOP": runs[1]}, tmp_path / "compare.png")
    image = Image.open(out)
    assert image.format == "PNG" and abs(image.size[0] - 5 * 110 * (1 + len(PREFERENCE_KEYS))) < 5
    assert run_cli(app, ["plot", str(runs[0]), str(runs[1]), "--out", str(tmp_path / "cli.png")]) == 0
    assert (tmp_path / "cli.png").is_file()
    assert run_cli(app, ["plot", str(runs[0]), str(runs[1])]) == 2
    assert "--out" in capsys.readouterr().err
