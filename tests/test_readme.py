"""The README runs as written: its ```bash and ```python blocks, in order, on a fresh copy of the configs.

What the test changes, so that the whole README runs in CI time, is only the model's size: the quick start
itself (covered by test_quickstart.py) runs on the tiny random backbone, the configs' `gemma-3-270m` becomes
`tiny-qwen3` (LoRA on all its 2 layers: `top_layers: 0`), training commands stop after 2 steps (`max_steps=2`),
and cold-start alignment is left out (a random model writes no numbers to build preference pairs from). Every other word of every command
runs as a user would paste it, in a folder holding nothing but `configs/`; a failing command fails the test
with its output.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_QUICKSTART = "notellm quickstart --backbone tiny-qwen3 --notes 400 --train-minutes 0.05 --batch-size 4"
TRAINING = re.compile(r"^notellm (train|popularity train|coldstart sft|coldstart align) ")


def readme_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every ```bash / ```python block, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"```(bash|python)\n(.*?)```", text, re.S)]


def shrink(line: str, port: int) -> str:
    """The README line as the test runs it (see the module doc)."""
    line = line.replace("gemma-3-270m", "tiny-qwen3")
    if line.strip() == "bash scripts/quickstart.sh":
        return TINY_QUICKSTART
    if line.strip() == "source .venv/bin/activate":
        return ":"
    if line.startswith("notellm coldstart align "):
        # a random tiny model writes no numbers, so there are no preference pairs to sample (test_coldstart.py
        # trains alignment on hand-made pairs); the evaluation then scores the SFT model alone
        return ":"
    if line.startswith("notellm coldstart eval "):
        line = line.replace("eval.models=[sft,align-idpop]", "eval.models=[sft]")
    if TRAINING.match(line):
        return f"{line} max_steps=2"
    if line.startswith("notellm serve "):
        return f"serve_briefly {port} {line[len('notellm '):]} --port {port}"
    return line


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PRELUDE = r"""
set -euo pipefail
notellm() { "$PY" -m notellm "$@"; }
serve_briefly() {  # start the server, wait until its page answers, stop it
  local port=$1; shift
  "$PY" -m notellm "$@" & local pid=$!
  for _ in $(seq 1 240); do
    if "$PY" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/', timeout=2)" 2>/dev/null; then
      kill $pid; wait $pid || true; echo "served on $port"; return 0
    fi
    kill -0 $pid 2>/dev/null || { echo "server exited"; return 1; }
    sleep 0.5
  done
  kill $pid; return 1
}
"""


def readme_script(tmp: Path) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    port = _free_port()
    lines = [PRELUDE]
    for i, (language, body) in enumerate(readme_blocks(text)):
        if language == "python":
            path = tmp / f"readme_{i}.py"
            path.write_text(body.replace("gemma-3-270m", "tiny-qwen3"), encoding="utf-8")
            lines.append(f'echo "+ python {path.name}"; "$PY" {path.name}')
            continue
        for line in body.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                run = shrink(line, port)
                lines.append(f"echo {_quote('+ ' + run)}")
                lines.append(run)
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def test_readme_has_no_placeholders_and_a_measured_quick_start():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = "\n".join(body for _, body in readme_blocks(text))
    assert "<id>" not in blocks and "[--" not in blocks and "../shared" not in blocks
    assert "notellm data split" in blocks and blocks.index("notellm data split") < blocks.index("notellm eval recall")
    assert re.search(r"measured", text) and "QUICKSTART-TIME" not in text


@pytest.mark.long  # about 4 minutes: every README command on demo data, in CI (scripts/test.sh)
def test_readme_commands_run_in_order(tmp_path):
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    for config in (tmp_path / "configs").glob("*.yaml"):
        text = config.read_text(encoding="utf-8").replace("gemma-3-270m", "tiny-qwen3")
        config.write_text(text.replace("top_layers: 6", "top_layers: 0"), encoding="utf-8")  # tiny has 2 layers
    script = tmp_path / "readme.sh"
    script.write_text(readme_script(tmp_path), encoding="utf-8")
    env = {**os.environ, "PY": sys.executable, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    run = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=1800)
    assert run.returncode == 0, (run.stdout[-6000:], run.stderr[-6000:])
    out = run.stdout
    assert "served on" in out
    # the recommend line printed neighbours of a real note; the Python example printed (2, dim) vectors
    assert re.search(r"\(2, \d+\)", out)
    for produced in ("runs/demo_emb/embeddings.npy", "runs/tags.parquet", "runs/popularity_demo/model/notellm.json",
                     "runs/export/st/modules.json", "runs/export/notes.parquet", "runs/export/notes.faiss",
                     "runs/demo_dim64/model/notellm.json"):
        assert (tmp_path / produced).exists(), produced
