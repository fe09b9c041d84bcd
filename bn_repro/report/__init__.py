"""`bn-repro report`: the Figure 3 table, the Figure 2 curves and the learning-rate comparison
from runs' records, beside the paper's numbers."""

import csv
import json
from pathlib import Path

from bn_repro.errors import UserError
from bn_repro.report.figure4 import write_figure4
from bn_repro.report.figures import figure2, lr_plot
from bn_repro.report.runs import Run, find_runs
from bn_repro.report.tables import (
    LrPoint,
    Row,
    Stat,
    Target,
    choose_target,
    figure3,
    lr_multipliers,
)

COLUMNS = (
    "variant",
    "runs",
    "steps_to_target",
    "steps_spread",
    "reached",
    "speedup_over_inception",
    "max_top1",
    "max_top1_spread",
    "top5_at_max",
    "status",
    "paper_steps_to_target",
    "paper_max_top1",
)


class ReportError(UserError, ValueError):
    pass


def write_report(paths: list[Path], out: Path) -> list[Row]:
    runs = find_runs(paths)
    if not runs:
        raise ReportError(
            f"no runs (folders with a summary.json) under {', '.join(map(str, paths))}"
        )
    out.mkdir(parents=True, exist_ok=True)
    target = choose_target(runs)
    rows = figure3(runs, target)
    points = lr_multipliers(runs, target)
    _write_csv(out / "figure3.csv", rows)
    (out / "figure3.md").write_text(_figure3_markdown(rows, target, _data(runs)))
    (out / "lr_multipliers.md").write_text(_lr_markdown(points, target))
    figure2(runs, target, out)
    lr_plot(points, out)
    write_figure4(runs, out)  # when the runs have evaluation records (bn-repro evaluate)
    (out / "README.md").write_text(_readme(runs, paths))
    return rows


def _number(value: float | None, digits: int = 0) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def _percent(stat: Stat | None) -> str:
    if stat is None:
        return "-"
    return f"{100 * stat.mean:.2f}%" + (f" ± {100 * stat.spread:.2f}" if stat.n > 1 else "")


def _steps(stat: Stat | None, runs: int) -> str:
    if stat is None:
        return f"not reached (0/{runs})"
    spread = f" ± {stat.spread:,.0f}" if stat.n > 1 else ""
    return f"{stat.mean:,.0f}{spread} ({stat.n}/{runs})"


def _data(runs: list[Run]) -> str:
    """What the runs trained and were evaluated on, as their records say."""
    data = sorted({r.summary["data"] for r in runs})
    counts = sorted({e["count"] for r in runs for e in r.evals})
    return (
        f"Data: {', '.join(data)}; each evaluation counts"
        f" {' or '.join(f'{c:,}' for c in counts) or 'no'} validation images."
    )


def _figure3_markdown(rows: list[Row], target: Target, data: str) -> str:
    lines = [
        "# Figure 3, reproduced",
        "",
        data,
        "",
        f"Target: {target.how}. Steps are paper steps (32 images); mean ± sample standard",
        "deviation over the runs that reached the target (reached/runs); accuracy over all runs.",
        "",
        "| variant | steps to target | speed-up | max top-1 | top-5 there | status"
        " | paper: steps | paper: max |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        paper_steps = (
            "never" if r.paper_max_top1 and r.paper_steps is None else _number(r.paper_steps)
        )
        lines.append(
            f"| {r.variant} | {_steps(r.steps_to_target, r.runs)} | {_number(r.speedup, 1)}"
            f" | {_percent(r.max_top1)} | {_percent(r.top5_at_max)} | {r.status}"
            f" | {paper_steps} | {_number(r.paper_max_top1 and 100 * r.paper_max_top1, 1)} |"
        )
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, rows: list[Row]) -> None:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(COLUMNS)
        for r in rows:
            steps, best, top5 = r.steps_to_target, r.max_top1, r.top5_at_max
            writer.writerow(
                [
                    r.variant,
                    r.runs,
                    steps and steps.mean,
                    steps and steps.spread,
                    steps.n if steps else 0,
                    r.speedup,
                    best and best.mean,
                    best and best.spread,
                    top5 and top5.mean,
                    r.status,
                    r.paper_steps,
                    r.paper_max_top1,
                ]
            )


def _lr_markdown(points: list[LrPoint], target: Target) -> str:
    lines = [
        "# Learning-rate multipliers (ReLU networks)",
        "",
        f"Target: {target.how}. Multipliers of Inception's 0.0015.",
        "",
        "| BN | multiplier | runs | diverged | steps to target | max top-1 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for p in points:
        lines.append(
            f"| {'yes' if p.norm == 'batchnorm' else 'no'} | {p.lr_multiplier:g} | {p.runs}"
            f" | {p.diverged} | {_steps(p.steps_to_target, p.runs)} | {_percent(p.max_top1)} |"
        )
    return "\n".join(lines) + "\n"


def _readme(runs: list[Run], paths: list[Path]) -> str:
    lines = [
        "# Report",
        "",
        f"Made by `bn-repro report {' '.join(map(str, paths))}` from these runs' metrics.jsonl and",
        "summary.json; code, versions and hardware as each run's environment.json recorded them.",
        "",
        "| run | variant | seed | lr x | status | paper steps | code | hardware |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in runs:
        start = _last_start(run.path)
        git = start.get("git") or {}
        code = (git.get("commit", "")[:10] + (" (dirty)" if git.get("dirty") else "")) or "-"
        hardware = f"{start.get('world_size', '?')} x {start.get('device', '?')}" if start else "-"
        s = run.summary
        lines.append(
            f"| {run.path} | {run.name} | {s['seed']} | {s['lr_multiplier']:g} | {run.status}"
            f" | {s.get('paper_steps', 0):,.0f} | {code} | {hardware} |"
        )
    versions = _last_start(runs[0].path).get("versions", {})
    lines += [
        "",
        "Versions (first run): " + ", ".join(f"{k} {v}" for k, v in versions.items() if v),
    ]
    return "\n".join(lines) + "\n"


def _last_start(run_dir: Path) -> dict:
    path = run_dir / "environment.json"
    return json.loads(path.read_text())[-1] if path.exists() else {}
