"""scripts/gpu_check.py (make gpu-check), on the CPU: it stops at once where there is no GPU,
says which DALI or torch build a driver needs, gives every step its time and tabulates what its
steps measured, a step it did not run as a failure."""

import argparse
import subprocess
import sys
from pathlib import Path

from bn_repro.bench.commands import add_bench
from scripts.gpu_check import (
    BUDGET_S,
    Driver,
    Step,
    machine_problems,
    parse_nvidia_smi,
    plan,
    record_numbers,
    run_steps,
    step_row,
    table,
)
from tests.helpers import BIN

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.py"

H100_CUDA_12 = Driver(["NVIDIA H100 80GB HBM3"], "550.54.15", "12.4")
H200_CUDA_13 = Driver(["NVIDIA H200"], "580.65.06", "13.0")
PINNED_DALI = ["nvidia-dali-cuda130"]


def test_without_a_gpu_it_stops_at_once_saying_so(tmp_path):
    result = subprocess.run([BIN / "python", SCRIPT], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("gpu-check: torch ")  # sees no GPU, or cannot run it
    assert list(tmp_path.iterdir()) == []  # no data, no runs, no records


def test_a_cuda_12_driver_is_told_to_install_dalis_cuda_12_build():
    (problem,) = machine_problems(True, "2.14.1+cu126", "12.6", H100_CUDA_12, PINNED_DALI)
    assert "nvidia-dali-cuda130 (pyproject.toml's) needs a driver for CUDA 13" in problem
    assert "runs CUDA 12.4 at most" in problem
    assert "pip uninstall -y nvidia-dali-cuda130 && .venv/bin/pip install nvidia-dali-cuda120" in (
        problem
    )


def test_a_torch_built_for_a_newer_cuda_than_the_driver_is_named():
    problems = machine_problems(False, "2.14.1+cu130", "13.0", H100_CUDA_12, PINNED_DALI)
    assert len(problems) == 2  # torch's and DALI's
    assert problems[0].startswith("torch 2.14.1+cu130 is built for CUDA 13.0, and this driver")


def test_a_machine_that_fits_has_no_problem():
    assert machine_problems(True, "2.14.1+cu130", "13.0", H200_CUDA_13, PINNED_DALI) == []
    (missing,) = machine_problems(True, "2.14.1+cu130", "13.0", H200_CUDA_13, [])
    assert missing.startswith("DALI is not installed")


def test_nvidia_smi_says_the_gpus_driver_and_newest_cuda():
    header = "| NVIDIA-SMI 550.54.15    Driver Version: 550.54.15    CUDA Version: 12.4     |"
    gpus = "NVIDIA H100 80GB HBM3, 550.54.15\nNVIDIA H100 80GB HBM3, 550.54.15\n"
    assert parse_nvidia_smi(header, gpus) == Driver(
        ["NVIDIA H100 80GB HBM3"] * 2, *["550.54.15", "12.4"]
    )
    assert parse_nvidia_smi("", "") is None


def test_the_table_shows_each_steps_numbers_and_counts_the_failures():
    bench_train = {
        "images_per_s_per_gpu": 9876.4,
        "data_wait": 0.031,
        "mfu": 0.1158,
        "peak_memory_gib": 21.37,
        "host_syncs_in_a_step": ["loop.py:1"],
        "resolved": {"precision": "bf16", "channels_last": True},
    }
    loader = {"images_per_s": {"dali": 7000.0, "dali-bare": 7400.0}}
    rows = [
        step_row("train", "pass", 50, "") | record_numbers(bench_train),
        step_row("loader", "pass", 20, "") | record_numbers(loader),
        step_row("resume", "timeout", 90, "stuck"),
    ]
    text = table(rows)
    assert (
        "| train | pass | 50 | 9,876 | 3.1% | 11.6% | 21.4 | 1 |"
        " precision bf16, channels_last True |" in text
    )
    assert (
        "| loader | pass | 20 | 7,000 | - | - | - | - | the DALI loader; dali-bare 7,400 images/s |"
        in text
    )
    assert text.endswith("1 of 3 steps failed.")


def test_its_bench_steps_are_command_lines_bench_accepts(tmp_path):
    parser = argparse.ArgumentParser(prog="bn-repro")
    add_bench(parser.add_subparsers(dest="command"))
    steps = plan("nvidia-h200", tmp_path / "bench", tmp_path / "mini", 16, tmp_path / "run")
    benches = {step.name: step for step in steps if step.command[1] == "bench"}
    parsed = {name: parser.parse_args(step.command[1:]) for name, step in benches.items()}
    for name, args in parsed.items():
        assert args.out == benches[name].record  # the record the table reads
    assert parsed["bench train, GPU DALI"].overrides == ["data.workers=16"]
    loader = parsed["bench loader, GPU DALI"]
    assert (loader.loaders, loader.batch) == ("dali,dali-bare", 256)
    assert loader.overrides == [
        "data.dali_device=gpu",
        "data.format=shards",
        "data.photometric=reduced",
        "data.workers=16",
    ]


def test_the_steps_shares_fit_the_budget_of_8_minutes(tmp_path):
    steps = plan("nvidia-h200", tmp_path / "bench", tmp_path / "mini", 16, tmp_path / "run")
    assert abs(sum(step.share for step in steps) - 1) < 1e-9
    assert BUDGET_S <= 8 * 60


def test_a_slow_step_cannot_starve_the_ones_after_it(tmp_path):
    python = sys.executable
    steps = [
        Step("slow", [python, "-c", "import time; time.sleep(30)"], 0.5),
        Step("quick", [python, "-c", "print('done')"], 0.5),
    ]
    slow, quick = run_steps(steps, 4, tmp_path)
    assert slow["status"] == "timeout" and slow["seconds"] <= 3
    assert (quick["status"], quick["note"]) == ("pass", "done")


def test_a_step_that_did_not_run_is_a_failure(tmp_path):
    steps = [
        Step("train", [sys.executable, "-c", "raise SystemExit(1)"], 0.5),
        Step("resume", [sys.executable, "-c", "pass"], 0.5, after="train"),
    ]
    rows = run_steps(steps, 20, tmp_path)
    assert [row["status"] for row in rows] == ["fail (exit 1)", "skipped"]
    assert table(rows).endswith("2 of 2 steps failed.")
    assert table([step_row("resume", "skipped", 0, "")]).endswith("1 of 1 steps failed.")
