"""`bn-repro bench train --table`: the ways a Figure 3 sweep can train on one GPU, side by side.
(a) The paper's update, 32 images a step; (b) `groups` x 32 images a step in BN groups of 32 (as
many of the paper's replicas, trainer.bn_batch); each eager, compiled, graphed (trainer.
cuda_graph) and both, on synthetic images (the model alone) and through the GPU DALI pipeline;
and the aggregate images/s of 1, 2 and 4 independent processes of (a) sharing the GPU, as a
sweep of single-GPU runs could place them. Each cell is one `bn-repro bench train` in a process
of its own (no compiled code, CUDA graph or memory pool carries over), which writes its record
under the output folder; a cell that cannot be measured on the device at hand says why."""

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bn_repro import paper
from bn_repro.bench.cost import MODES, configuration

# What each mode adds to the benchmark's config. compile=default: inductor's kernels without the
# CUDA graphs of its own (reduce-overhead's), which could not nest in the step's graph.
MODE_OVERRIDES = dict(
    zip(
        MODES,  # eager, compiled, graphed, compiled+graphed
        (
            [],
            ["trainer.compile=default"],
            ["trainer.cuda_graph=true"],
            ["trainer.compile=default", "trainer.cuda_graph=true"],
        ),
        strict=True,
    )
)
DATA = {"synthetic": "synthetic", "dali": "GPU DALI"}
# A launcher's variables: each cell's process is a run of its own, of world size 1.
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Row:
    label: str
    batch: int  # images a step, per process
    bn_batch: int
    data: str  # synthetic | dali
    processes: int = 1  # each its own run
    sharing: bool = False  # a row of processes sharing the GPU, one of them too


@dataclass(frozen=True)
class Table:
    experiment: str
    size: int
    warmup: int
    steps: int
    root: Path | None  # a prepared set, for the DALI rows
    groups: int  # BN groups of 32 a step in (b)
    modes: tuple[str, ...]
    shared: tuple[int, ...]  # processes of (a) sharing the GPU
    out_dir: Path
    device: str  # as the records' names have it: cpu, or the GPU's name
    cuda: bool


@dataclass(frozen=True)
class Cell:
    images_per_s: float | None  # per GPU: the processes' aggregate where several share it
    reason: str | None  # why it is empty
    record: Path | None = None


def rows(table: Table) -> list[Row]:
    a, b = paper.BATCH_SIZE, table.groups * paper.BATCH_SIZE
    found = []
    for data in DATA:
        found.append(Row(f"(a) {configuration(a, a)} (the paper's update)", a, a, data))
        found.append(Row(f"(b) {configuration(b, a)}", b, a, data))
    for processes in table.shared:
        label = f"(a) x {processes} process{'es' * (processes > 1)} sharing the GPU"
        found.append(Row(label, a, a, "synthetic", processes, sharing=True))
    return found


def why_empty(table: Table, row: Row, mode: str) -> str | None:
    """Why a cell cannot be measured on the device at hand (table.cuda); None if it can."""
    if table.cuda:
        if row.data == "dali" and table.root is None:
            return "give --root DIR (a prepared set) to time the GPU DALI pipeline"
        return None
    if row.sharing:
        return "processes sharing one GPU need a GPU"
    if row.data == "dali":
        return "the GPU DALI pipeline (nvJPEG decoding) needs a GPU"
    if "graphed" in mode:
        return "CUDA graphs capture CUDA kernels: they need a GPU"
    if mode == "compiled":
        return (
            "measured on GPUs only: inductor's CPU build of the network takes minutes, and its"
            " CPU rate says nothing of a GPU sweep's"
        )
    return None


def measure(table: Table) -> dict[tuple[Row, str], Cell]:
    """Every cell of the table, by row and mode."""
    cells = {}
    for row in rows(table):
        for mode in table.modes:
            reason = why_empty(table, row, mode)
            cells[row, mode] = Cell(None, reason) if reason else measure_cell(table, row, mode)
    return cells


def cell_args(table: Table, row: Row, mode: str) -> list[str]:
    """The bench train command line of one process of a cell, but for --out."""
    args = ["bench", "train", "--experiment", table.experiment, "--data", row.data]
    args += ["--batch", str(row.batch), "--bn-batch", str(row.bn_batch), "--size", str(table.size)]
    args += ["--warmup", str(table.warmup), "--steps", str(table.steps)]
    if row.data == "dali":
        args += ["--root", str(table.root), "data.dali_device=gpu"]
    return args + MODE_OVERRIDES[mode]


def record_path(table: Table, row: Row, mode: str) -> Path:
    shared = f"-x{row.processes}" if row.sharing else ""
    tag = f"{row.batch}-bn{row.bn_batch}-{mode}{shared}"
    return table.out_dir / f"train-{table.device}-{table.experiment}-{row.data}-{tag}.json"


def measure_cell(table: Table, row: Row, mode: str) -> Cell:
    """One cell: its processes started together (they meet before their timed steps), each
    writing a record; one process's record is the cell's, several are added up into one."""
    out = record_path(table, row, mode)
    with tempfile.TemporaryDirectory() as scratch:
        outs = (
            [out]
            if row.processes == 1
            else [Path(scratch, f"{k}.json") for k in range(row.processes)]
        )
        args = cell_args(table, row, mode)
        if row.processes > 1:
            args += [
                "--start-together",
                str(row.processes),
                "--meet-at",
                str(Path(scratch, "meet")),
            ]
        started = [_start([*args, "--out", str(path)]) for path in outs]
        failures = [_failure(process) for process in started]
        failed = next((failure for failure in failures if failure), None)
        if failed:
            return Cell(None, failed)
        records = [json.loads(path.read_text()) for path in outs]
    if row.processes > 1:
        write_shared(out, records)
    return Cell(json.loads(out.read_text())["results"]["images_per_s_per_gpu"], None, out)


def _start(args: list[str]) -> subprocess.Popen:
    environment = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    command = [sys.executable, "-c", "import sys; from bn_repro.cli import main; sys.exit(main())"]
    return subprocess.Popen(
        [*command, *args],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _failure(process: subprocess.Popen) -> str | None:
    """None where the process ended well; else what it said last."""
    _, stderr = process.communicate()
    if process.returncode == 0:
        return None
    last = next((line for line in reversed(stderr.splitlines()) if line.strip()), "no message")
    return f"failed (exit {process.returncode}): {last.strip()}"


def write_shared(out: Path, records: list[dict]) -> None:
    """One record for processes that shared the GPU: their images over the span from the first
    timed step's start to the last one's end (their clocks started together), and each one's
    results."""
    from bn_repro.bench.record import write_record

    results = [record["results"] for record in records]
    settings = records[0]["settings"] | {"processes_per_gpu": len(records)}
    images = len(records) * settings["steps"] * settings["batch_per_gpu"]
    span = max(r["window_unix"][1] for r in results) - min(r["window_unix"][0] for r in results)
    shared = {
        "device": results[0]["device"],
        "world_size": 1,
        "images_per_s_per_gpu": round(images / span, 1),
        "mfu": None,
        "processes": results,
        "notes": {"images_per_s_per_gpu": "the processes' images over their common span"},
    }
    write_record(out, settings, shared)


def markdown(table: Table, cells: dict[tuple[Row, str], Cell]) -> str:
    """The table: images/s per GPU, rows by configuration and data, a column a mode; the reasons
    of the empty cells below it."""
    reasons: list[str] = []
    lines = [
        f"{table.experiment} at {table.size} pixels on {table.device}: training images/s per GPU"
        f" (several processes: their aggregate), {table.steps} steps timed after {table.warmup}",
        "",
        "| configuration | data | " + " | ".join(table.modes) + " |",
        "|---" * (2 + len(table.modes)) + "|",
    ]
    for row in rows(table):
        values = []
        for mode in table.modes:
            cell = cells[row, mode]
            if cell.images_per_s is not None:
                values.append(f"{cell.images_per_s:,.1f}")
                continue
            if cell.reason not in reasons:
                reasons.append(cell.reason)
            values.append(f"- [{reasons.index(cell.reason) + 1}]")
        lines.append(f"| {row.label} | {DATA[row.data]} | " + " | ".join(values) + " |")
    lines += ["", *(f"[{k}] {reason}" for k, reason in enumerate(reasons, 1))]
    return "\n".join(lines).rstrip() + "\n"
