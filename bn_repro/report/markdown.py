"""The report's text: the Figure 3 table (Markdown and CSV) with the paper's claims judged, the
learning-rate comparison, and a README naming every run."""

import csv
import json
from pathlib import Path

from bn_repro import paper
from bn_repro.report.claims import Verdict
from bn_repro.report.runs import Run, setting_label, sortable
from bn_repro.report.tables import LrPoint, Reach, Row, Stat, Targets, recipe_label

COLUMNS = (
    "variant",
    "global_batch",
    "bn_batch",
    "precision",
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
        f"Data: {runs[0].data_set}; each evaluation counts"
        f" {' or '.join(f'{c:,}' for c in counts) or 'no'} validation images{chance}."
    )


def _targets(aims: Targets) -> list[str]:
    fixed = (
        f"{100 * aims.fixed:.1f}% top-1, the data set's (Inception's maximum in the paper's Fig. 3)"
        if aims.fixed is not None
        else "none: this data set has no target of its own (ILSVRC2012's is 72.2%)"
    )
    maxima = {}  # by global batch and precision
    for (*setting, seed), value in sorted(aims.inception_max.items(), key=lambda i: sortable(i[0])):
        maxima.setdefault(tuple(setting), []).append(f"seed {seed}: {100 * value:.2f}%")
    own = "none: these runs hold no evaluated Inception run at the paper's rate"
    timed = "Fig. 3's definition applied to these runs: each run is timed to the maximum top-1"
    mean = f"{100 * (aims.mean_inception_max or 0):.2f}%"
    if len(maxima) == 1:
        (seeds,) = maxima.values()
        own = f"{timed} of the Inception run of its seed ({', '.join(seeds)}; a seed without"
        own += f" one: their mean, {mean})"
    elif maxima:
        listed = "; ".join(
            f"{setting_label(key)}: {', '.join(seeds)}" for key, seeds in maxima.items()
        )
        own = (
            f"{timed} of the Inception run of its seed at its global batch and precision"
            f" ({listed}); a seed without one there: the mean of those there, or with none"
            f" there, the mean of all, {mean}"
        )
    return [f"- Fixed target: {fixed}.", f"- Inception's maximum: {own}."]


def figure3(rows: list[Row], aims: Targets, runs: list[Run], verdicts: list[Verdict]) -> str:
    fixed = aims.fixed is not None
    lines = [
        "# Figure 3, reproduced",
        "",
        _data(runs),
        "",
        "A row is one variant at one update: its global batch (images per optimizer step), BN",
        "batch (the images BN normalizes over; - without BN) and precision (bf16 autocast or",
        "fp32; unknown where a run's summary.json predates the field).",
        "",
        "Steps are paper steps (32 images): mean ± sample standard deviation over the runs that",
        "reached the target (reached/runs), and the speed-up over the mean of Inception's row of",
        "the same global batch and precision.",
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
        " | global batch | BN batch | precision | status | paper: steps | paper: max |",
        "| --- " * (12 + 2 * fixed) + "|",
    ]
    for r in rows:
        to_fixed = (
            f" {_steps(r.to_target)} | {_number(r.to_target.speedup, 1)} |" if r.to_target else ""
        )
        never = r.paper_max_top1 and r.paper_steps is None
        lines.append(
            f"| {r.variant}{'' if r.papers_bn_batch else ' †'} |{to_fixed}"
            f" {_steps(r.to_inception_max)} | {_number(r.to_inception_max.speedup, 1)}"
            f" | {_percent(r.max_top1)} | {_percent(r.top5_at_max)} | {_percent(r.final_top1)}"
            f" | {_update((r.global_batch, r.bn_batch, r.precision))} | {r.status}"
            f" | {'never' if never else _number(r.paper_steps)}"
            f" | {_number(r.paper_max_top1 and 100 * r.paper_max_top1, 1)} |"
        )
    if not all(r.papers_bn_batch for r in rows):
        lines += [
            "",
            f"† BN normalizes over another batch than the paper's {paper.BATCH_SIZE} images per"
            " rank (Sec. 4.2: each replica's batch): the BN batch column.",
        ]
    return "\n".join(lines + ["", *_claims(verdicts)]) + "\n"


def _update(update: tuple) -> str:
    """Global batch, BN batch and precision as table cells: - without BN, unknown if not
    recorded."""
    global_batch, bn_batch, precision = update
    known = ["unknown" if value is None else str(value) for value in (global_batch, precision)]
    return f"{known[0]} | {'-' if bn_batch is None else bn_batch} | {known[1]}"


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
                    r.global_batch,
                    r.bn_batch,
                    r.precision,
                    r.runs,
                    *_reach_columns(r.to_target),
                    *_reach_columns(r.to_inception_max),
                    best and best.mean,
                    best and best.spread,
                    top5 and top5.mean,
                    final and final.mean,
                    final and final.spread,
                    r.final_top5 and r.final_top5.mean,
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
        "trained with at one update (global batch, BN batch, precision): runs that differ in",
        f"nothing but the rate. Multipliers of Inception's {paper.BASE_LR}; steps to the",
        "Inception maximum of each run's seed at its global batch and precision (figure3.md).",
        "",
        "| recipe | multiplier | runs | diverged | steps to Inception's max | max top-1"
        " | global batch | BN batch | precision |",
        "| --- " * 9 + "|",
    ]
    for p in points:
        lines.append(
            f"| {recipe_label(p.recipe)} | {p.lr_multiplier:g} | {p.runs} | {p.diverged}"
            f" | {_steps(p.to_inception_max)} | {_percent(p.max_top1)} | {_update(p.update)} |"
        )
    if not points:
        lines.append("| no recipe was trained at two multipliers at one update" + " | -" * 8 + " |")
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
        *_short_runs(runs, verdicts),
        "",
        "## The runs",
        "",
        "| run | variant | seed | lr x | global batch | BN batch | precision | status"
        " | paper steps | code | hardware |",
        "| --- " * 11 + "|",
    ]
    for run in runs:
        start = _last_start(run.path)
        git = start.get("git") or {}
        code = (git.get("commit", "")[:10] + (" (dirty)" if git.get("dirty") else "")) or "-"
        hardware = f"{start.get('world_size', '?')} x {start.get('device', '?')}" if start else "-"
        s = run.summary
        lines.append(
            f"| {run.path} | {run.name} | {s['seed']} | {s['lr_multiplier']:g}"
            f" | {_update(run.update)} | {run.status} | {s.get('paper_steps', 0):,.0f} | {code}"
            f" | {hardware} |"
        )
    versions = _last_start(runs[0].path).get("versions", {})
    lines += [
        "",
        "Versions (first run): " + ", ".join(f"{k} {v}" for k, v in versions.items() if v),
    ]
    return "\n".join(lines) + "\n"


def _short_runs(runs: list[Run], verdicts: list[Verdict]) -> list[str]:
    """Where every run is shorter than the paper's fastest time to its target, what runs this
    short can and cannot show of each claim."""
    longest = max(run.summary.get("paper_steps", 0) for run in runs)
    fastest = min(row.steps_to_target for row in paper.FIGURE_3 if row.steps_to_target)
    if longest >= fastest:
        return []
    lines = [
        "",
        "## What runs this short can show",
        "",
        f"The longest of these runs is {longest:,.0f} paper steps; the paper's fastest network",
        f"reached its target after {fastest / 1e6:.1f}M. Each claim, and what runs this short can",
        "and cannot show of it:",
        "",
        "| claim | verdict | what runs this short can show |",
        "| --- | --- | --- |",
    ]
    return lines + [f"| {v.claim} | {v.verdict} | {v.short_run} |" for v in verdicts]


def _last_start(run_dir: Path) -> dict:
    path = run_dir / "environment.json"
    try:
        return json.loads(path.read_text())[-1] if path.exists() else {}
    except (json.JSONDecodeError, IndexError, KeyError):
        return {}
