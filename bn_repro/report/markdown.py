"""The report's text: the Figure 3 table (Markdown and CSV) with the paper's claims judged, the
learning-rate comparison, and a README naming every run."""

import csv
import json
from pathlib import Path

from bn_repro import paper
from bn_repro.report.claims import Verdict
from bn_repro.report.runs import Run
from bn_repro.report.tables import LrPoint, Reach, Row, Stat, Targets, recipe_label

COLUMNS = (
    "variant",
    "runs",
    "steps_to_target",
    "steps_to_target_spread",
    "steps_to_target_reached",
    "speedup_to_target",
    "steps_to_inception_max",
    "steps_to_inception_max_spread",
    "steps_to_inception_max_reached",
    "speedup_to_inception_max",
    "max_top1",
    "max_top1_spread",
    "top5_at_max",
    "final_top1",
    "final_top1_spread",
    "final_top5",
    "bn_batch_per_rank",
    "status",
    "paper_steps_to_target",
    "paper_max_top1",
)


def _number(value: float | None, digits: int = 0) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def _percent(stat: Stat | None) -> str:
    if stat is None:
        return "-"
    return f"{100 * stat.mean:.2f}%" + (f" ± {100 * stat.spread:.2f}" if stat.n > 1 else "")


def _steps(reach: Reach) -> str:
    if reach.steps is None:
        return f"not reached (0/{reach.runs})"
    spread = f" ± {reach.steps.spread:,.0f}" if reach.steps.n > 1 else ""
    return f"{reach.steps.mean:,.0f}{spread} ({reach.reached}/{reach.runs})"


def _data(runs: list[Run]) -> str:
    """What the runs trained and were evaluated on, as their records say."""
    counts = sorted({e["count"] for r in runs for e in r.evals})
    classes = runs[0].summary.get("num_classes")
    chance = f"; chance is 1/{classes} = {100 / classes:.1f}%" if classes else ""
    return (
        f"Data: {runs[0].summary['data']}; each evaluation counts"
        f" {' or '.join(f'{c:,}' for c in counts) or 'no'} validation images{chance}."
    )


def _targets(aims: Targets) -> list[str]:
    fixed = (
        f"{100 * aims.fixed:.1f}% top-1, the data set's (Inception's maximum in the paper's Fig. 3)"
        if aims.fixed is not None
        else "none: this data set has no target of its own (ILSVRC2012's is 72.2%)"
    )
    maxima = ", ".join(f"seed {s}: {100 * v:.2f}%" for s, v in sorted(aims.inception_max.items()))
    own = (
        f"Fig. 3's definition applied to these runs: each run is timed to the maximum top-1 of"
        f" the Inception run of its seed ({maxima}; a seed without one: their mean,"
        f" {100 * aims.mean_inception_max:.2f}%)"
        if aims.inception_max
        else "none: these runs hold no evaluated Inception run at the paper's rate"
    )
    return [f"- Fixed target: {fixed}.", f"- Inception's maximum: {own}."]


def figure3(rows: list[Row], aims: Targets, runs: list[Run], verdicts: list[Verdict]) -> str:
    fixed = aims.fixed is not None
    lines = [
        "# Figure 3, reproduced",
        "",
        _data(runs),
        "",
        "Steps are paper steps (32 images): mean ± sample standard deviation over the runs that",
        "reached the target (reached/runs), and the speed-up over Inception's mean.",
        *_targets(aims),
        "",
        "Accuracy: *max top-1* is the best evaluation with BN's running averages during",
        "training, the accuracy the paper tracks in Figures 2 and 3 (Sec. 3.1), so the paper's",
        "columns compare with it; *final top-1* is the last evaluation with Algorithm 2's",
        "population statistics (networks without BN: their last evaluation), as the paper's",
        "final network. Mean ± sample standard deviation over all runs.",
        "",
        "| variant |"
        + (" steps to fixed target | speed-up |" if fixed else "")
        + " steps to Inception's max | speed-up | max top-1 | top-5 there | final top-1"
        " | status | paper: steps | paper: max |",
        "| --- " * (9 + 2 * fixed) + "|",
    ]
    marked = False
    for r in rows:
        mark = " †" if r.batch_per_rank else ""
        marked = marked or bool(mark)
        to_fixed = (
            f" {_steps(r.to_target)} | {_number(r.to_target.speedup, 1)} |" if r.to_target else ""
        )
        never = r.paper_max_top1 and r.paper_steps is None
        lines.append(
            f"| {r.variant}{mark} |{to_fixed} {_steps(r.to_inception_max)}"
            f" | {_number(r.to_inception_max.speedup, 1)} | {_percent(r.max_top1)}"
            f" | {_percent(r.top5_at_max)} | {_percent(r.final_top1)} | {r.status}"
            f" | {'never' if never else _number(r.paper_steps)}"
            f" | {_number(r.paper_max_top1 and 100 * r.paper_max_top1, 1)} |"
        )
    if marked:
        lines += [
            "",
            f"† BN normalizes over another batch than the paper's {paper.BATCH_SIZE} images per"
            " rank (trainer.batch_per_rank): "
            + "; ".join(f"{r.variant}: {r.batch_per_rank}" for r in rows if r.batch_per_rank),
        ]
    return "\n".join(lines + ["", *_claims(verdicts)]) + "\n"


def _claims(verdicts: list[Verdict]) -> list[str]:
    lines = [
        "## The paper's claims on these runs",
        "",
        "Holds *beyond the spread* when the mean ± standard deviation intervals of two runs or",
        "more a side do not overlap; *by the means only* when only the means are in order.",
        "",
        "| claim | paper | here | verdict |",
        "| --- | --- | --- | --- |",
    ]
    for v in verdicts:
        lines.append(f"| {v.claim} | {v.paper} | {v.evidence} | {v.verdict} |")
    return lines


def write_csv(path: Path, rows: list[Row]) -> None:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(COLUMNS)
        for r in rows:
            best, top5, final = r.max_top1, r.top5_at_max, r.final_top1
            writer.writerow(
                [
                    r.variant,
                    r.runs,
                    *_reach_columns(r.to_target),
                    *_reach_columns(r.to_inception_max),
                    best and best.mean,
                    best and best.spread,
                    top5 and top5.mean,
                    final and final.mean,
                    final and final.spread,
                    r.final_top5 and r.final_top5.mean,
                    " ".join(map(str, r.batch_per_rank)),
                    r.status,
                    r.paper_steps,
                    r.paper_max_top1,
                ]
            )


def _reach_columns(reach: Reach | None) -> list:
    if reach is None:
        return [None, None, None, None]
    steps = reach.steps
    return [steps and steps.mean, steps and steps.spread, reach.reached, reach.speedup]


def lr_multipliers(points: list[LrPoint], aims: Targets) -> str:
    lines = [
        "# Learning-rate multipliers",
        "",
        "Each recipe (normalization, nonlinearity, Sec. 4.2.1's changes) at the multipliers it was",
        "trained with: runs that differ in nothing but the rate. Multipliers of Inception's",
        f"{paper.BASE_LR}; steps to the Inception maximum of each run's seed (figure3.md).",
        "",
        "| recipe | multiplier | runs | diverged | steps to Inception's max | max top-1 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for p in points:
        lines.append(
            f"| {recipe_label(p.recipe)} | {p.lr_multiplier:g} | {p.runs} | {p.diverged}"
            f" | {_steps(p.to_inception_max)} | {_percent(p.max_top1)} |"
        )
    if not points:
        lines.append("| no recipe was trained at two multipliers | | | | | |")
    return "\n".join(lines) + "\n"


def readme(runs: list[Run], paths: list[Path], verdicts: list[Verdict]) -> str:
    """What the report was made from, run by run, and which of the paper's claims hold on it."""
    lines = [
        "# Report",
        "",
        f"Made by `bn-repro report {' '.join(map(str, paths))}` from these runs' metrics.jsonl and",
        "summary.json; code, versions and hardware as each run's environment.json recorded them.",
        "",
        *_claims(verdicts),
        "",
        "## The runs",
        "",
        "| run | variant | seed | lr x | BN batch | status | paper steps | code | hardware |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in runs:
        start = _last_start(run.path)
        git = start.get("git") or {}
        code = (git.get("commit", "")[:10] + (" (dirty)" if git.get("dirty") else "")) or "-"
        hardware = f"{start.get('world_size', '?')} x {start.get('device', '?')}" if start else "-"
        s = run.summary
        lines.append(
            f"| {run.path} | {run.name} | {s['seed']} | {s['lr_multiplier']:g}"
            f" | {s['batch_per_rank']} | {run.status} | {s.get('paper_steps', 0):,.0f} | {code}"
            f" | {hardware} |"
        )
    versions = _last_start(runs[0].path).get("versions", {})
    lines += [
        "",
        "Versions (first run): " + ", ".join(f"{k} {v}" for k, v in versions.items() if v),
    ]
    return "\n".join(lines) + "\n"


def _last_start(run_dir: Path) -> dict:
    path = run_dir / "environment.json"
    try:
        return json.loads(path.read_text())[-1] if path.exists() else {}
    except (json.JSONDecodeError, IndexError, KeyError):
        return {}
