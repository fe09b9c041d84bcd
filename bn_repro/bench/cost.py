"""`bn-repro bench cost`: training throughput per GPU and what Figure 3 costs in GPU-hours.
The rates come from the records of `bn-repro bench train` (results/bench/train-*.json), and a
variant's GPU-hours are the images it trains over its images/s per GPU. Every rate comes from a
record; none is typed in here."""

import json
from dataclasses import dataclass
from pathlib import Path

from bn_repro import paper

PAPER_SIZE = 224  # Fig. 5's input crops: rates at other sizes are other amounts of work


@dataclass(frozen=True)
class Rate:
    device: str
    experiment: str
    data: str  # synthetic | dali | torch
    images_per_s: float  # per GPU
    mfu: float | None
    record: str


def read_rates(paths: list[Path]) -> tuple[list[Rate], list[str]]:
    """The GPU rates at the paper's crop size, and why each other record was left out."""
    rates, left_out = [], []
    for path in paths:
        record = json.loads(path.read_text())
        settings, results = record.get("settings", {}), record.get("results", {})
        if "images_per_s_per_gpu" not in results:
            left_out.append(f"{path}: not a record of bn-repro bench train")
        elif results["device"] == "cpu":
            left_out.append(f"{path}: measured on a CPU")
        elif settings["image_size"] != PAPER_SIZE:
            left_out.append(f"{path}: {settings['image_size']}-pixel images, not {PAPER_SIZE}")
        else:
            rates.append(
                Rate(
                    results["device"],
                    settings["experiment"],
                    settings["data"],
                    results["images_per_s_per_gpu"],
                    results["mfu"],
                    str(path),
                )
            )
    return rates, left_out


def training_rate(rates: list[Rate], device: str, experiment: str) -> Rate | None:
    """The rate a run trains at: the fastest with real data (the loader included), else the
    fastest on synthetic data (the model alone: a bound)."""
    mine = [r for r in rates if r.device == device and r.experiment == experiment]
    real = [r for r in mine if r.data != "synthetic"]
    return max(real or mine, key=lambda r: r.images_per_s, default=None)


def cost_report(rates: list[Rate], run_paper_steps: dict[str, float]) -> str:
    """Markdown: every rate, then per GPU model the GPU-hours of each Figure 3 variant to the
    paper's steps-to-72.2% and for a default run of run_paper_steps[experiment]."""
    lines = ["| experiment | GPU | data | images/s per GPU | MFU | record |", "|---" * 6 + "|"]
    for r in sorted(rates, key=lambda r: (r.device, r.experiment, r.data, -r.images_per_s)):
        mfu = "-" if r.mfu is None else f"{100 * r.mfu:.1f}%"
        lines.append(
            f"| {r.experiment} | {r.device} | {r.data} | {r.images_per_s:,.0f} | {mfu} |"
            f" {Path(r.record).name} |"
        )
    if not rates:
        lines.append("| not measured yet: no GPU record at 224 pixels | | | | | |")
    for device in sorted({r.device for r in rates}) or [None]:
        lines += ["", *_cost_table(rates, device, run_paper_steps)]
    return "\n".join(lines)


def _cost_table(rates: list[Rate], device: str | None, run_paper_steps: dict) -> list[str]:
    target = f"{100 * paper.TARGET_TOP1:.1f}%"
    lines = [
        f"GPU-hours on one {device or 'GPU (not measured yet)'}:",
        "",
        f"| variant | paper steps to {target} | images | images/s per GPU | GPU-hours to"
        f" {target} | default run | GPU-hours, default run |",
        "|---" * 7 + "|",
    ]
    to_target, whole_runs = 0.0, 0.0
    for row in paper.FIGURE_3:
        steps, run_steps = row.steps_to_target, run_paper_steps[row.experiment]
        rate = training_rate(rates, device, row.experiment) if device else None
        hours = _hours(steps, rate)
        run_hours = _hours(run_steps, rate)
        if steps is not None:  # a variant that never reaches the target adds nothing to it
            to_target = _add(to_target, hours)
        whole_runs = _add(whole_runs, run_hours)
        reached = f"{steps / 1e6:.1f} M" if steps else f"never (max {100 * row.max_top1:.1f}%)"
        images = "-" if steps is None else f"{steps * paper.BATCH_SIZE / 1e6:,.1f} M"
        lines.append(
            f"| {row.label} | {reached} | {images} | {_rate(rate)} | {_number(hours)} |"
            f" {run_steps / 1e6:g} M paper steps | {_number(run_hours)} |"
        )
    lines.append(f"| total | | | | {_number(to_target)} | | {_number(whole_runs)} |")
    return lines


def _hours(paper_steps: float | None, rate: Rate | None) -> float | None:
    if paper_steps is None or rate is None:
        return None
    return paper_steps * paper.BATCH_SIZE / rate.images_per_s / 3600


def _add(total: float | None, hours: float | None) -> float | None:
    return None if total is None or hours is None else total + hours


def _rate(rate: Rate | None) -> str:
    return "not measured" if rate is None else f"{rate.images_per_s:,.0f} ({rate.data})"


def _number(hours: float | None) -> str:
    return "-" if hours is None else f"{hours:,.1f}"
