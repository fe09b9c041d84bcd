"""`bn-repro bench cost`: training throughput per GPU and what Figure 3 costs in GPU-hours.
The rates come from the records of `bn-repro bench train` (results/bench/train-*.json), and a
variant's GPU-hours are the images it trains over its images/s per GPU. Every measured rate comes
from a record; a rate that was not measured (a target, a projection) is given on the command line
and shown as stated, apart."""

import json
from dataclasses import dataclass
from pathlib import Path

from bn_repro import paper
from bn_repro.schema import ConfigError

PAPER_SIZE = 224  # Fig. 5's input crops: rates at other sizes are other amounts of work


# How a step runs: trainer.compile and trainer.cuda_graph, as bench train's table names them
MODES = ("eager", "compiled", "graphed", "compiled+graphed")


@dataclass(frozen=True)
class Rate:
    device: str
    experiment: str
    data: str  # synthetic | dali | torch
    images_per_s: float  # per GPU
    mfu: float | None
    record: str  # the record's path, or "stated" for a rate given on the command line
    configuration: str = "not recorded"  # images a step and BN batch (configuration())
    mode: str = "eager"  # MODES


def mode_of(compile_mode: str | None, cuda_graph: bool) -> str:
    return MODES[bool(compile_mode) + 2 * bool(cuda_graph)]


def configuration(batch: int | None, bn_batch: int | None, processes: int = 1) -> str:
    """A way of training on one GPU: images a step, the BN batch, processes sharing the GPU."""
    if batch is None:
        return "not recorded"
    bn_batch = bn_batch or batch
    images = f"{batch} a step" + (
        f", BN over {batch}" if bn_batch == batch else f" in BN groups of {bn_batch}"
    )
    return images if processes == 1 else f"{processes} processes of {images}"


def record_configuration(settings: dict) -> tuple[str, str]:
    """A bench train record's configuration and mode; records written before bench train
    recorded them normalized over the whole batch, in one process."""
    trainer = settings.get("config", {}).get("trainer", {})
    batch = settings.get("batch_per_gpu")
    processes = settings.get("processes_per_gpu", 1)
    mode = settings.get("mode") or mode_of(trainer.get("compile"), trainer.get("cuda_graph"))
    return configuration(batch, settings.get("bn_batch", batch), processes), mode


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
                    *record_configuration(settings),
                )
            )
    return rates, left_out


def stated_rate(text: str) -> Rate:
    """A rate not measured, given as CONFIGURATION=IMAGES_PER_S (per GPU)."""
    label, _, number = text.rpartition("=")
    try:
        rate = float(number.replace(",", ""))
    except ValueError:
        rate = 0.0
    if not label or not rate > 0:
        raise ConfigError(f"--stated {text}: give CONFIGURATION=IMAGES_PER_S, a positive rate")
    return Rate("stated", "-", "-", rate, None, "stated", label, "-")


def training_rate(rates: list[Rate], device: str, experiment: str) -> Rate | None:
    """The rate a run trains at: the fastest with real data (the loader included), else the
    fastest on synthetic data (the model alone: a bound)."""
    mine = [r for r in rates if r.device == device and r.experiment == experiment]
    real = [r for r in mine if r.data != "synthetic"]
    return max(real or mine, key=lambda r: r.images_per_s, default=None)


def cost_report(
    rates: list[Rate],
    run_paper_steps: dict[str, float],
    sweep: tuple[str, list[str]] | None = None,
    stated: tuple[Rate, ...] = (),
) -> str:
    """Markdown: every rate, then (given a sweep's name and each of its runs' experiments) the
    sweep's GPU-hours at each configuration's measured rate and at each stated one, then per
    GPU model the GPU-hours of each Figure 3 variant to the paper's steps-to-72.2% and for a
    default run of run_paper_steps[experiment], at its fastest measured rate."""
    lines = ["| experiment | GPU | data | images/s per GPU | MFU | record |", "|---" * 6 + "|"]
    for r in sorted(rates, key=lambda r: (r.device, r.experiment, r.data, -r.images_per_s)):
        mfu = "-" if r.mfu is None else f"{100 * r.mfu:.1f}%"
        lines.append(
            f"| {r.experiment} | {r.device} | {r.data} | {r.images_per_s:,.0f} | {mfu} |"
            f" {Path(r.record).name} |"
        )
    if not rates:
        lines.append("| not measured yet: no GPU record at 224 pixels | | | | | |")
    if sweep is not None:
        lines += ["", *sweep_table(rates, stated, sweep, run_paper_steps)]
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


def sweep_table(
    rates: list[Rate], stated: tuple[Rate, ...], sweep: tuple[str, list[str]], run_paper_steps
) -> list[str]:
    """The sweep's GPU-hours, every run at one rate: each configuration's (per GPU, mode,
    experiment measured and data: the fastest), then each stated one."""
    name, experiments = sweep
    images = sum(run_paper_steps[e] for e in experiments) * paper.BATCH_SIZE
    lines = [
        f"sweep={name}, {len(experiments)} runs of {images / 1e9:,.2f} G images in all, in"
        " GPU-hours with every run at one configuration's rate:",
        "",
        "| GPU | configuration | mode | measured with | data | images/s per GPU | rate |"
        " GPU-hours |",
        "|---" * 8 + "|",
    ]
    fastest: dict[tuple, Rate] = {}
    for r in rates:
        key = (r.device, r.configuration, r.mode, r.experiment)
        if key not in fastest or _better(r, fastest[key]):
            fastest[key] = r
    for (device, config, mode, experiment), r in sorted(fastest.items()):
        lines.append(
            f"| {device} | {config} | {mode} | {experiment} | {r.data} | {r.images_per_s:,.0f} |"
            f" measured ({Path(r.record).name}) | {images / r.images_per_s / 3600:,.1f} |"
        )
    for r in stated:
        lines.append(
            f"| - | {r.configuration} | - | - | - | {r.images_per_s:,.0f} | stated |"
            f" {images / r.images_per_s / 3600:,.1f} |"
        )
    if not fastest and not stated:
        lines.append("| no GPU record at 224 pixels, no stated rate | | | | | | | |")
    return lines


def _better(rate: Rate, other: Rate) -> bool:
    """Real data (the loader included) before synthetic, then the faster."""
    real, other_real = rate.data != "synthetic", other.data != "synthetic"
    return (real, rate.images_per_s) > (other_real, other.images_per_s)


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
