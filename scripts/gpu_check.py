"""`make gpu-check`: a new GPU machine checked and measured in minutes, from the project root:

    .venv/bin/python scripts/gpu_check.py --preflight   # torch, CUDA and DALI only, at once
    .venv/bin/python scripts/gpu_check.py               # after make has made the data

It stops at once, saying what to do, where torch sees no CUDA device or DALI's wheel does not fit
the driver; else it runs the tests marked gpu, `bench train` of bn_x5 on synthetic images and
through the GPU DALI pipeline on ImageNet-sized JPEGs, the GPU loader benchmark, and a short
data=mini run on CUDA resumed from its checkpoint, each within its share of a time budget, then
prints one table in which any step that did not pass, a skipped one too, is a failure. Its
records go under results/bench/, named by the GPU; the steps' logs and the run under
runs/gpu-check/<gpu>/. A repository script: it runs pytest and writes into the checkout."""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from bn_repro.errors import UserError

RESULTS = Path("results/bench")
LOGS = Path("runs/gpu-check")
# Of the 8 minutes the check takes on one H100/H200 with 16 cores once set-up and data are done;
# the preflight and the table take the rest.
BUDGET_S = 450
MINI_STEPS = 40  # paper steps of the short run, then as many again after the resume


class MachineError(UserError):
    """The machine cannot run the check: what is missing and what to do."""


@dataclass(frozen=True)
class Driver:
    """What nvidia-smi says: the GPUs, the driver and the newest CUDA it runs."""

    gpus: list[str]
    version: str
    cuda: str  # e.g. "12.4"


@dataclass(frozen=True)
class Step:
    name: str
    command: list[str]
    share: float  # of the budget: its time limit, with what the steps before it left unused
    record: Path | None = None  # the benchmark record it writes
    after: str | None = None  # the step it needs to have passed (else skipped: a failure)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/gpu_check.py",
        description="Stop at once where torch sees no GPU or DALI's wheel does not fit the"
        " driver; else run the tests marked gpu, bench train of bn_x5 on synthetic images and"
        " through the GPU DALI pipeline, the GPU loader benchmark and a short data=mini run on"
        " CUDA resumed from its checkpoint, then print one table: images/s, data wait, MFU,"
        " peak memory, host synchronizations in a step, failures. Run it from the project root;"
        " make gpu-check makes the data first.",
    )
    parser.add_argument(
        "--preflight", action="store_true", help="only check torch, CUDA and DALI, at once"
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("data/bench/prepared"),
        help="ImageNet-sized JPEGs, prepared (default data/bench/prepared, the Makefile's)",
    )
    parser.add_argument(
        "--mini-root",
        type=Path,
        default=Path("data/mini/prepared"),
        help="the generated benchmark of data=mini (default data/mini/prepared)",
    )
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count(), help="DALI threads (default: all cores)"
    )
    parser.add_argument(
        "--budget", type=int, default=BUDGET_S, help=f"seconds for the steps (default {BUDGET_S})"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        run_gpu_check(args)
    except UserError as error:
        print(f"gpu-check: {error}", file=sys.stderr)
        return 2
    return 0


def run_gpu_check(args: argparse.Namespace) -> None:
    machine = preflight()
    print(machine)
    if args.preflight:
        return
    for root in (args.root, args.mini_root):
        if not (root / "manifest.json").is_file():
            raise MachineError(
                f"{root} holds no prepared set: make gpu-check makes it (make {root}/manifest.json)"
            )
    slug = gpu_slug()
    logs = LOGS / slug
    logs.mkdir(parents=True, exist_ok=True)
    run_dir = logs / "mini_bn_x5"
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, then its resume
    steps = plan(slug, args.root, args.mini_root, args.workers, run_dir)
    rows = run_steps(steps, args.budget, logs)
    val_size = json.loads((args.mini_root / "manifest.json").read_text())["splits"]["val"]
    check_resumed_run(rows[-1], run_dir, 2 * MINI_STEPS, val_size)
    print(f"\n{machine}\n\n{table(rows)}")
    failed = [row["step"] for row in rows if row["status"] != "pass"]
    write_summary(RESULTS / f"gpu-check-{slug}.json", args, machine, rows, failed)
    if failed:
        raise MachineError(
            f"{len(failed)} of {len(rows)} steps failed ({', '.join(failed)}):"
            f" their logs are in {logs}/"
        )


def preflight() -> str:
    """One line on the machine, or a MachineError that says what to do."""
    import torch

    driver = nvidia_smi()
    problems = machine_problems(
        torch.cuda.is_available(), torch.__version__, torch.version.cuda, driver, dali_wheels()
    )
    if problems:
        raise MachineError(" ".join(problems))
    import nvidia.dali

    return (
        f"{torch.cuda.get_device_name(0)} ({len(driver.gpus)} GPUs), driver {driver.version}"
        f" (CUDA {driver.cuda}); torch {torch.__version__}, DALI {nvidia.dali.__version__},"
        f" {os.cpu_count()} cores"
    )


def machine_problems(
    cuda: bool, torch_version: str, torch_cuda: str | None, driver: Driver | None, dali: list[str]
) -> list[str]:
    """What stops the machine it runs on from running the GPU paths, each with what to do."""
    problems = []
    if not cuda:
        problems.append(_no_cuda(torch_version, torch_cuda, driver))
    if not dali:
        problems.append("DALI is not installed: make setup installs it (Linux, x86-64).")
    for wheel in dali:
        needs = dali_wheel_cuda(wheel)
        if driver and needs and needs > _major(driver.cuda):
            problems.append(
                f"DALI's wheel {wheel} (pyproject.toml's) needs a driver for CUDA {needs}, and"
                f" this driver ({driver.version}) runs CUDA {driver.cuda} at most: install"
                f" DALI's CUDA {_major(driver.cuda)} build (.venv/bin/pip uninstall -y {wheel}"
                f" && .venv/bin/pip install nvidia-dali-cuda{_major(driver.cuda)}0), or update"
                " the driver."
            )
    return problems


def _no_cuda(torch_version: str, torch_cuda: str | None, driver: Driver | None) -> str:
    if driver is None:
        return (
            "torch sees no CUDA device and nvidia-smi finds no NVIDIA driver: run the GPU check"
            " on a machine with an NVIDIA GPU (on this one, make test checks the CPU paths)."
        )
    if torch_cuda is None:
        return f"torch {torch_version} is built without CUDA: install a CUDA build into .venv."
    if _major(torch_cuda) > _major(driver.cuda):
        return (
            f"torch {torch_version} is built for CUDA {torch_cuda}, and this driver"
            f" ({driver.version}) runs CUDA {driver.cuda} at most, so torch sees no GPU: update"
            f" the driver, or install a torch built for CUDA {_major(driver.cuda)} into .venv."
        )
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
    return (
        f"torch sees no CUDA device, though nvidia-smi lists {', '.join(driver.gpus)}: check"
        f" CUDA_VISIBLE_DEVICES ({visible!r}) and that this process may use the GPUs."
    )


def _major(version: str) -> int:
    return int(version.split(".")[0])


def dali_wheel_cuda(wheel: str) -> int | None:
    """The CUDA major version a DALI wheel is built for: nvidia-dali-cuda130 -> 13."""
    found = re.fullmatch(r"nvidia-dali-cuda(\d+)0", wheel)
    return int(found.group(1)) if found else None


def dali_wheels() -> list[str]:
    names = {dist.metadata["Name"] for dist in metadata.distributions()}
    return sorted(name for name in names if name and name.startswith("nvidia-dali-cuda"))


def nvidia_smi() -> Driver | None:
    try:
        table, gpus = (
            subprocess.run(["nvidia-smi", *query], capture_output=True, text=True, check=True)
            for query in ([], ["--query-gpu=name,driver_version", "--format=csv,noheader"])
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return parse_nvidia_smi(table.stdout, gpus.stdout)


def parse_nvidia_smi(table: str, gpus: str) -> Driver | None:
    """From nvidia-smi's table (its header names the newest CUDA the driver runs) and its
    name,driver_version query."""
    rows = [line.rsplit(",", 1) for line in gpus.strip().splitlines() if "," in line]
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", table)
    if not rows or cuda is None:
        return None
    return Driver([name.strip() for name, _ in rows], rows[0][1].strip(), cuda.group(1))


def gpu_slug() -> str:
    import torch

    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-")


# bench loader as for the GPU: shards, batches of 256, the accelerated networks' distortion
LOADER = "--loaders dali,dali-bare --batch 256 --warmup 5 --batches 20 --rounds 1"
LOADER_DATA = "data.dali_device=gpu data.format=shards data.photometric=reduced"


def plan(slug: str, root: Path, mini_root: Path, workers: int, run_dir: Path) -> list[Step]:
    """The steps, in order; each runs as its own process. bench train keeps its defaults (batch
    256, 30 + 100 steps) and record names: the records are make bench-train's."""
    bn_repro = str(Path(sys.executable).with_name("bn-repro"))
    synthetic = RESULTS / f"train-{slug}-bn_x5-synthetic.json"
    dali = RESULTS / f"train-{slug}-bn_x5-dali.json"
    loader = RESULTS / f"loader-{slug}-reduced.json"
    threads = f"data.workers={workers}"
    train = [bn_repro, "train", "experiment=bn_x5", "data=mini", f"data.root={mini_root}"]
    train += ["data.workers=4", "trainer=mini", "trainer.device=cuda", f"run_dir={run_dir}"]
    train += [f"trainer.eval_every_paper_steps={MINI_STEPS // 2}"]
    train += [f"trainer.checkpoint_every_paper_steps={MINI_STEPS}"]
    tests = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"]
    bench = [bn_repro, "bench"]
    real = ["--data", "dali", "--root", str(root), "--out", str(dali), threads]
    loading = ["--root", str(root), *LOADER.split(), "--out", str(loader)]
    first, resumed = MINI_STEPS, 2 * MINI_STEPS
    return [
        Step("tests", tests, 0.52),
        Step("bench train, synthetic", [*bench, "train", "--out", str(synthetic)], 0.1, synthetic),
        Step("bench train, GPU DALI", [*bench, "train", *real], 0.12, dali),
        Step(
            "bench loader, GPU DALI",
            [*bench, "loader", *loading, *LOADER_DATA.split(), threads],
            0.08,
            loader,
        ),
        Step("train data=mini", [*train, f"trainer.max_paper_steps={first}"], 0.08),
        Step(
            "resume data=mini",
            [*train, f"trainer.max_paper_steps={resumed}"],
            0.1,
            after="train data=mini",
        ),
    ]


def run_steps(steps: list[Step], budget: int, logs: Path) -> list[dict]:
    """Each step under its limit: its share of the budget, with what the steps before it left
    unused, so that a slow step can never starve the ones after it. A step whose prerequisite
    did not pass is skipped. A row a step: its status, seconds and numbers."""
    start, rows = time.monotonic(), []
    caps = [step.share * budget for step in steps]
    for k, step in enumerate(steps):
        passed = {row["step"] for row in rows if row["status"] == "pass"}
        if step.after is not None and step.after not in passed:
            rows.append(step_row(step.name, "skipped", 0, f"{step.after} did not pass"))
            continue
        limit = budget - (time.monotonic() - start) - sum(caps[k + 1 :])
        print(f"== {step.name} (at most {limit:.0f} s): {' '.join(step.command)}", flush=True)
        log = logs / f"{re.sub(r'[^a-z0-9]+', '-', step.name.lower()).strip('-')}.log"
        began, clock = time.time(), time.monotonic()
        status = _run(step.command, log, limit)
        row = step_row(step.name, status, time.monotonic() - clock, _last_line(log))
        if status == "pass" and _written_since(step.record, began):
            row |= record_numbers(json.loads(step.record.read_text())["results"])
        print(f"   {status} in {row['seconds']} s: {row['note']}", flush=True)
        rows.append(row)
    return rows


def _written_since(record: Path | None, began: float) -> bool:
    # this run's record, not an earlier one's
    return record is not None and record.is_file() and record.stat().st_mtime >= began


def _run(command: list[str], log: Path, limit: float) -> str:
    # A session of its own, so that a timeout ends what the step started too (pytest's trainers)
    with log.open("w") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            return "timeout"
        finally:
            if process.poll() is None:
                os.killpg(process.pid, 9)
                process.wait()
    return "pass" if code == 0 else f"fail (exit {code})"


def _last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    return next((line for line in reversed(lines) if line), "")[:160]


def step_row(step: str, status: str, seconds: float, note: str) -> dict:
    return {
        "step": step,
        "status": status,
        "seconds": round(seconds),
        "images_per_s": None,
        "data_wait": None,
        "mfu": None,
        "peak_memory_gib": None,
        "host_syncs": None,
        "note": note,
    }


def record_numbers(results: dict) -> dict:
    """The table's numbers from a bench train or bench loader record's results."""
    if "images_per_s_per_gpu" in results:
        syncs, resolved = results["host_syncs_in_a_step"], results["resolved"]
        return {
            "images_per_s": results["images_per_s_per_gpu"],
            "data_wait": results["data_wait"],
            "mfu": results["mfu"],
            "peak_memory_gib": results["peak_memory_gib"],
            "host_syncs": None if syncs is None else len(syncs),
            "note": ", ".join(f"{key} {value}" for key, value in resolved.items()),
        }
    rates = results["images_per_s"]
    others = ", ".join(f"{name} {rate:,.0f}" for name, rate in rates.items() if name != "dali")
    return {"images_per_s": rates.get("dali"), "note": f"the DALI loader; {others} images/s"}


def check_resumed_run(row: dict, run_dir: Path, steps: int, val_size: int) -> None:
    """The resumed data=mini run's row: failed unless it resumed on CUDA, finished at `steps`
    and counted every validation image once in each evaluation; its images/s and data wait."""
    if row["status"] != "pass":
        return
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    starts = json.loads((run_dir / "environment.json").read_text())
    counts = sorted({r["count"] for r in records if r["kind"] == "eval"})
    problems = []
    if (summary["status"], summary["step"]) != ("finished", steps):
        problems.append(f"{summary['status']} at step {summary['step']}, not finished at {steps}")
    if f"resumed at optimizer step {steps // 2}" not in (run_dir / "train.log").read_text():
        problems.append(f"it did not resume at step {steps // 2}")
    if counts != [val_size]:
        problems.append(f"evaluations counted {counts} images, not {val_size}")
    if len(starts) != 2 or any(start["device"] == "cpu" for start in starts):
        problems.append(f"started on {[start['device'] for start in starts]}")
    last = [r for r in records if r["kind"] == "train"][-1]
    row |= {"images_per_s": round(last["images_per_s"], 1), "data_wait": last["data_wait"]}
    if problems:
        row |= {"status": "fail", "note": "; ".join(problems)}
    else:
        row["note"] = f"resumed at step {steps // 2}, finished at {steps}, {val_size} images"


def table(rows: list[dict]) -> str:
    lines = [
        "| step | status | s | images/s | data wait | MFU | peak GiB | host syncs | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [
            row["step"],
            row["status"],
            str(row["seconds"]),
            _number(row["images_per_s"], "{:,.0f}"),
            _number(row["data_wait"], "{:.1%}"),
            _number(row["mfu"], "{:.1%}"),
            _number(row["peak_memory_gib"], "{:.1f}"),
            _number(row["host_syncs"], "{}"),
            row["note"].replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    failed = sum(row["status"] != "pass" for row in rows)
    lines.append(f"\n{failed} of {len(rows)} steps failed.")
    return "\n".join(lines)


def _number(value, form: str) -> str:
    return "-" if value is None else form.format(value)


def write_summary(
    path: Path, args: argparse.Namespace, machine: str, rows: list[dict], failed: list[str]
) -> None:
    from bn_repro.bench.record import write_record

    settings = {
        "machine": machine,
        "budget_s": args.budget,
        "workers": args.workers,
        "root": str(args.root),
        "mini_root": str(args.mini_root),
    }
    write_record(path, settings, {"steps": rows, "failed": failed})
    print(f"written to {path}")


if __name__ == "__main__":
    sys.exit(main())
