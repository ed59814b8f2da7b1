"""`notellm train` launched as 2 CPU processes trains exactly like one process over the same global batch: the
same logged losses and the same weights after the steps. Plain data parallel runs under torchrun (gloo):
`accelerate launch` starts plain CPU jobs through mpirun only. DeepSpeed ZeRO-2/3 run under `accelerate launch`
with the shipped configs, on DeepSpeed's CPU accelerator (gloo), when deepspeed is installed."""

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from helpers.methods import logged_losses
from helpers.toy import write_toy

# each run starts 2-3 Python processes that import torch: minutes in all (run by `bash scripts/test.sh --all`)
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def train_config(tmp: Path, out: Path, batch_size: int) -> Path:
    files = write_toy(tmp)
    cfg = {"notes": str(files["notes"]), "train_pairs": str(files["pairs"]), "output_dir": str(out),
           "model": {"backbone": "tiny-qwen3", "dim": 16, "max_length": 64},
           "lora": {"r": 4, "alpha": 8, "dropout": 0.0},  # no dropout: the two runs draw different masks
           "batch_size": batch_size, "max_steps": 2, "lr": 2e-3, "warmup_ratio": 0.0, "log_every": 1,
           "save_every": 0, "bf16": "false", "gen_weight": 0.5}
    path = tmp / f"train_{batch_size}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# one thread per process; the venv's bin on PATH (DeepSpeed's op build runs its ninja)
ENV = {"OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(Path.home())}


def accelerate_launch(config: Path, *args: str) -> list[str]:
    """`accelerate launch` of `notellm` on 2 processes with an accelerate config file."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes", "2",
            "--main_process_port", str(free_port()), *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# per-process batch of each method's 2-process run (the 1-process run takes twice as many items per step)
HALF_BATCH = {"notellm": 2, "notellm2": 2, "popularity": 2, "sft": 1, "align": 1}


def method_run(method: str, tmp: Path, batch_size: int, **extra):
    from helpers.methods import prepare_alignment, setup

    if method == "align":
        prepare_alignment(tmp)
    return setup(method, tmp, batch_size=batch_size, max_steps=2, save_every=0,
                 lora={"r": 4, "alpha": 8, "dropout": 0.0}, **extra)


def assert_same_training(two, one) -> None:
    from helpers.methods import model_tensors

    two_losses, one_losses = logged_losses(two.output_dir), logged_losses(one.output_dir)
    assert sorted(two_losses) == [1, 2]  # one log: the processes trained together, not each alone
    for step in (1, 2):
        assert two_losses[step] == pytest.approx(one_losses[step], rel=1e-4), step
    saved_two, saved_one = model_tensors(two.model_dir), model_tensors(one.model_dir)
    assert saved_two.keys() == saved_one.keys() and saved_one
    for name in saved_one:
        if name.endswith("k_proj.bias"):
            # a key bias shifts every logit of a query alike, so softmax ignores it: its true gradient is 0, the
            # computed one rounding noise that Adam scales up to full steps, differently in each summation order
            continue
        assert saved_two[name].allclose(saved_one[name], atol=5e-5), name  # lr 2e-3: 2.5% of a step


@pytest.mark.parametrize("method", list(HALF_BATCH))
def test_two_cpu_processes_equal_one_process(tmp_path, method):
    """Every method on the shared engine: 2 torchrun processes (gloo) take the same steps as 1 process over the
    same global batch: the same logged losses and the same saved weights."""
    half = HALF_BATCH[method]
    two, one = method_run(method, tmp_path / "two", half), method_run(method, tmp_path / "one", 2 * half)
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
              "-m", "notellm.cli", *two.args]
    done = subprocess.run(launch, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stderr[-3000:]
    done = subprocess.run([sys.executable, "-m", "notellm.cli", *one.args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_training(two, one)


def needs_deepspeed() -> None:
    pytest.importorskip("deepspeed")
    if not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("DeepSpeed's CPU accelerator compiles its shared-memory op on first use: no C++ compiler")


def partitioning_zero3_config(tmp: Path) -> Path:
    """ZeRO-3 that partitions even the tiny model's parameters (the shipped config keeps parameters under 1e5
    elements whole on every process, so a real model's big projection is partitioned but the tiny one's not)."""
    ds = {"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}, "gradient_clipping": 1.0,
          "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto"}
    (tmp / "ds.json").write_text(json.dumps(ds))
    acc = yaml.safe_load((ROOT / "configs" / "accelerate" / "deepspeed_zero3.yaml").read_text())
    acc["deepspeed_config"] = {"deepspeed_config_file": str(tmp / "ds.json"), "zero3_init_flag": False}
    acc.pop("mixed_precision", None)
    (tmp / "zero3_partitioned.yaml").write_text(yaml.safe_dump(acc))
    return tmp / "zero3_partitioned.yaml"


@pytest.mark.parametrize("zero", ["deepspeed_zero2", "deepspeed_zero3", "zero3_partitioned"])
def test_deepspeed_configs_on_two_cpu_processes_equal_one_process(tmp_path, zero):
    needs_deepspeed()
    two, one = tmp_path / "two", tmp_path / "one"
    config = partitioning_zero3_config(tmp_path) if zero == "zero3_partitioned" else \
        ROOT / "configs" / "accelerate" / f"{zero}.yaml"
    precision = [] if zero == "zero3_partitioned" else ["--mixed_precision", "no"]  # a config file's own setting
    launch = accelerate_launch(config, *precision, "-m", "notellm.cli", "train",
                               str(train_config(tmp_path, two, batch_size=2)))
    done = subprocess.run(launch, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    subprocess.run([sys.executable, "-m", "notellm.cli", "train", str(train_config(tmp_path, one, batch_size=4))],
                   cwd=ROOT, env=ENV, check=True, capture_output=True, timeout=300)

    two_losses, one_losses = logged_losses(two), logged_losses(one)
    assert sorted(two_losses) == [1, 2]  # one log: the processes trained together, not each alone
    for step in (1, 2):
        assert two_losses[step] == pytest.approx(one_losses[step], rel=1e-4)
    # the saved model holds the trained weights (ZeRO-3 partitions them: they are gathered for saving)
    for part in ("head.safetensors", "adapter/adapter_model.safetensors"):
        saved_two, saved_one = load_file(str(two / "model" / part)), load_file(str(one / "model" / part))
        assert saved_two.keys() == saved_one.keys()
        for name in saved_one:
            assert saved_two[name].allclose(saved_one[name], atol=5e-5), (part, name)  # lr 2e-3: 2.5% of a step


def test_popularity_under_deepspeed_zero2_equals_one_process(tmp_path):
    needs_deepspeed()
    two, one = method_run("popularity", tmp_path / "two", 2), method_run("popularity", tmp_path / "one", 4)
    launch = accelerate_launch(ROOT / "configs" / "accelerate" / "deepspeed_zero2.yaml", "--mixed_precision", "no",
                               "-m", "notellm.cli", *two.args)
    done = subprocess.run(launch, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    done = subprocess.run([sys.executable, "-m", "notellm.cli", *one.args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_training(two, one)


def test_deepspeed_run_resumes_from_its_sharded_checkpoint(tmp_path):
    """Stopped after step 2 and started again for 3 steps, a ZeRO-2 run takes the same step 3 as one plain
    process that never stopped: accelerate's sharded checkpoint restores adapters, optimizer and data position."""
    needs_deepspeed()
    resumed, plain = tmp_path / "resumed", tmp_path / "plain"
    # a constant schedule: the stopped run's schedule spans 2 steps, the others' 3
    common = ["scheduler=constant", "save_every=1"]
    launch = accelerate_launch(ROOT / "configs" / "accelerate" / "deepspeed_zero2.yaml", "--mixed_precision", "no",
                               "-m", "notellm.cli", "train", str(train_config(tmp_path, resumed, batch_size=2)),
                               *common)
    for steps in (2, 3):
        done = subprocess.run([*launch, f"max_steps={steps}"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    subprocess.run([sys.executable, "-m", "notellm.cli", "train", str(train_config(tmp_path, plain, batch_size=4)),
                    *common, "max_steps=3"], cwd=ROOT, env=ENV, check=True, capture_output=True, timeout=300)
    records = [json.loads(line) for line in (resumed / "log.jsonl").read_text().splitlines()]
    assert any(r.get("event") == "resumed" and r.get("step") == 2 for r in records)
    assert logged_losses(resumed)[3] == pytest.approx(logged_losses(plain)[3], rel=1e-4)


def test_embed_over_two_cpu_processes_equals_one_process(tmp_path):
    from notellm.inference.embed import read_embeddings

    notes = write_toy(tmp_path)["notes"]
    embed = ["-m", "notellm.cli", "embed", str(notes), "--model", "zero-shot:tiny-qwen3", "--shard-size", "5", "--fp32"]
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                    str(free_port()), *embed, "--out", str(tmp_path / "two")], cwd=ROOT, env=ENV, check=True,
                   capture_output=True, timeout=300)
    subprocess.run([sys.executable, *embed, "--out", str(tmp_path / "one")], cwd=ROOT, env=ENV, check=True,
                   capture_output=True, timeout=300)
    ids_two, two, _ = read_embeddings(tmp_path / "two")
    ids_one, one, _ = read_embeddings(tmp_path / "one")
    assert list(ids_two) == list(ids_one) and len(ids_one) == 32
    assert sorted(p.name for p in (tmp_path / "two" / "shards").iterdir()) == [f"shard-{k:05d}.npz" for k in range(7)]
    assert abs(two - one).max() < 1e-5
