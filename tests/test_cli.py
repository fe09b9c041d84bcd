"""The `bn-repro` command as a user runs it."""

import os
import subprocess

import pytest
import yaml

from bn_repro.cli import main
from tests.helpers import BIN, bn_repro


def test_describe_prints_hyperparameters_and_ends_with_the_counts():
    result = bn_repro("describe", "experiment=bn_x5")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "experiment: bn_x5"
    assert any(line.split()[:3] == ["learning", "rate", "0.0075"] for line in lines)
    assert any(line.split()[:3] == ["weight", "decay", "4e-05"] for line in lines)
    assert any("53,333.3 paper steps" in line for line in lines)
    assert lines[-2] == "parameters: 11278528"
    name, macs = lines[-1].split(": ")
    assert name == "multiply-adds" and int(macs) == pytest.approx(1.95e9, rel=0.005)


def test_describe_shows_both_batches_and_the_scaled_learning_rate_for_the_ranks(capsys):
    assert main(["describe", "experiment=bn_x30", "--world-size", "32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rate = next(line for line in lines if "learning rate" in line)
    assert rate.split()[2] == "1.44"  # 0.045 x (32 x 32)/32
    assert any(line.split()[:4] == ["batch", "per", "rank", "32"] for line in lines)
    assert any(line.split()[:3] == ["global", "batch", "1024"] for line in lines)


def test_describe_prints_the_run_length_and_its_gpu_hours(capsys):
    assert main(["describe", "experiment=bn_x30", "--images-per-s", "2000"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(
        line.split()[:5] == ["run", "length", "8,000,000", "paper", "steps"] for line in lines
    )
    hours = next(line for line in lines if line.split()[0] == "GPU-hours")
    assert hours.split()[1] == "35.6"  # 8M x 32 images / 2,000 per s / 3,600


def test_describe_cfg_prints_the_resolved_config(capsys):
    assert main(["describe", "experiment=bn_x5", "--cfg"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["name"] == "bn_x5"
    assert cfg["optim"]["l2_divisor"] == 5.0 and cfg["model"]["norm"] == "batchnorm"


@pytest.mark.parametrize("command", ["describe", "train"])
@pytest.mark.parametrize(
    "overrides, expected",
    [
        ([], "no experiment chosen: add experiment=NAME"),
        (["experiment=bn_x7"], "Could not find 'experiment/bn_x7'"),
        (["experiment=bn_x5", "optim.lr_multiplyer=5"], "Key 'lr_multiplyer' not in 'OptimConfig'"),
        (["experiment=bn_x5", "optim.base_lr=-0.0015"], "optim.base_lr must be positive"),
    ],
)
def test_user_errors_exit_2_with_a_message_not_a_traceback(command, overrides, expected):
    result = bn_repro(command, *overrides)
    assert result.returncode == 2
    assert result.stderr.startswith(f"bn-repro {command}: ")
    assert expected in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_describe_shows_the_bn_batch_apart_from_the_update(capsys):
    assert main(["describe", "experiment=bn_x5", "trainer.batch_per_rank=256"]) == 0
    lines = capsys.readouterr().out.splitlines()
    bn = next(line for line in lines if line.startswith("  BN batch"))
    assert bn.split(maxsplit=2)[2] == "32 images, 8 groups a rank (ghost BN); the paper's: 32"
    assert any(line.split()[:3] == ["global", "batch", "256"] for line in lines)
    assert main(["describe", "experiment=inception"]) == 0
    assert "  BN batch        - (no BN)" in capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("argv", [["describe", "experiment=bn_x5"], ["describe", "optim.lr=1"]])
def test_a_forked_command_ends_as_the_console_script_does(argv, tmp_path):
    # tests.helpers.bn_repro, which most tests run commands through, against the installed script
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    script = subprocess.run(
        [BIN / "bn-repro", *argv], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    forked = bn_repro(*argv, cwd=tmp_path, env=env)
    assert (forked.returncode, forked.stdout, forked.stderr) == (
        script.returncode,
        script.stdout,
        script.stderr,
    )
