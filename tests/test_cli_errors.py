"""Every usage or config error is one line on stderr with exit code 2, never a traceback."""

import subprocess
import sys

import pytest

from notellm import __version__
from notellm.cli import app
from notellm.cli.common import run_cli

CASES = [
    (["trian"], "did you mean 'train'"),
    (["embed", "notes.parquet", "--ouput", "x"], "did you mean --out"),
    (["embed", "notes.parquet", "--model", "m"], "--out"),                      # a missing required option
    (["data", "demo", "--notes", "abc"], "--notes"),
    (["train", "configs/notellm_demo.yaml", "lrr=1"], "command line: unknown key 'lrr'; did you mean 'lr'"),
    (["train", "configs/notellm_demo.yaml", "objective=contrastive"], "objective must be one of"),
    (["config", "show", "trian"], "did you mean 'train'"),
    (["compact-writes", "--write-log", "w.log"], "--backend faiss needs --index"),
    (["compact-writes", "--write-log", "w.log", "--backend", "milvus", "--milvus-uri", "m.db", "--index", "i"],
     "--index is for --backend faiss"),
]


@pytest.mark.parametrize("args,expected", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_usage_and_config_errors_are_one_line_exit_2(args, expected, capsys):
    code = run_cli(app, args)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ") and expected.lower() in lines[0].lower()
    assert "Traceback" not in captured.err + captured.out


def test_version_and_a_real_process_exit_code():
    run = [sys.executable, "-m", "notellm"]
    version = subprocess.run(run + ["--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.strip() == f"notellm {__version__}"
    typo = subprocess.run(run + ["trian"], capture_output=True, text=True)
    assert typo.returncode == 2 and typo.stderr.count("\n") == 1 and "did you mean 'train'" in typo.stderr.lower()


def test_a_group_without_a_command_prints_its_help(capsys):
    assert run_cli(app, ["data"]) == 0
    assert "demo" in capsys.readouterr().out
