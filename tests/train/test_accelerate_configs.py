"""The accelerate config files that ship in the package (src/ecgbench/resources/accelerate/), launched for
real: 2 processes over gloo on this CPU-only machine, through `accelerate launch --config_file`."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_resume import COMMON, ENV, _finish, _losses, _train

from conftest import TrainData
from ecgbench.resources import ACCELERATE_DIR
from ecgbench.train import run_dir


def _launch(config: str, *args: str) -> str:
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", config,
        "--num_processes", "2", "--main_process_port", str(29500 + random.Random().randint(0, 400)), *args,
    ]  # fmt: skip
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return _finish(process)


def test_shipped_configs_are_the_tested_ones() -> None:
    # a config added without a launch test below would ship untested
    assert sorted(p.name for p in ACCELERATE_DIR.iterdir()) == ["ddp.yaml"]


def test_ddp_config_trains_and_resumes_like_one_process_with_the_same_global_batch(
    train_data: TrainData, tmp_path: Path
) -> None:
    base = ["--max-steps", "4", "--eval-every", "2"]
    _finish(_train(train_data, tmp_path / "one", *base, "--batch-size", "8"))
    # no --multi_gpu flag: the config file alone makes the launch data-parallel
    two = ["-m", "ecgbench.cli", "train", "end2end", *train_data.args(), *COMMON, *base, "--batch-size", "4"]
    _launch(str(ACCELERATE_DIR / "ddp.yaml"), *two, "--out", str(tmp_path / "two"))
    run = json.loads((tmp_path / "two" / "run.json").read_text())
    assert run["processes"] == 2 and run["status"] == "finished"
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert [x[:2] for x in a] == [x[:2] for x in b]
    assert [x[2] for x in a] == pytest.approx([x[2] for x in b], rel=1e-4, abs=1e-5)

    # every process's state is in each checkpoint, so two processes resume where they stopped
    state = run_dir.step_dir(tmp_path / "two", 2) / "training_state"
    assert {p.name for p in state.glob("rng-*.safetensors")} == {"rng-0.safetensors", "rng-1.safetensors"}
    shutil.rmtree(run_dir.step_dir(tmp_path / "two", 4))  # as if killed after the checkpoint of update 2
    before = _losses(tmp_path / "two")
    _launch(str(ACCELERATE_DIR / "ddp.yaml"), *two, "--resume", str(tmp_path / "two"))
    after = _losses(tmp_path / "two")
    assert [x[:2] for x in after] == [x[:2] for x in before]
    assert [x[2] for x in after] == pytest.approx([x[2] for x in before], rel=1e-6, abs=1e-7)


PROBE = """
import sys
from pathlib import Path
import torch
from accelerate import Accelerator
accelerator = Accelerator(cpu=True)  # as ecgbench.train.devices.make_accelerator does without a GPU
model = accelerator.prepare(torch.nn.Linear(2, 2))
seen = f"{accelerator.distributed_type.value} {type(model).__name__}"
Path(sys.argv[1], f"rank-{accelerator.process_index}.txt").write_text(seen)
"""


def test_accelerate_trains_an_fsdp_config_as_ddp_on_cpu(tmp_path: Path) -> None:
    # Why no FSDP config ships (docs/scaling.md): accelerate 1.15 switches to FSDP only for GPU-class
    # distributed types, so on CPU an FSDP config silently trains as DDP, and no FSDP run can be tested
    # here. When this fails, accelerate shards on CPU: test and ship an FSDP config then.
    config = tmp_path / "fsdp.yaml"
    config.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: FSDP\nnum_machines: 1\nmachine_rank: 0\n"
        "mixed_precision: 'no'\nuse_cpu: false\nfsdp_config:\n  fsdp_version: 2\n"
        "  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP\n  fsdp_state_dict_type: FULL_STATE_DICT\n"
    )
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    _launch(str(config), str(probe), str(tmp_path))
    seen = [(tmp_path / f"rank-{rank}.txt").read_text() for rank in range(2)]
    assert seen == ["MULTI_CPU DistributedDataParallel"] * 2
