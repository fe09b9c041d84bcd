"""`bn-repro report`: the Figure 3 table with the paper's claims judged, the Figure 2 curves,
the learning-rate comparison and the layers' input distributions from runs' records, beside the
paper's numbers; Figure 1 and Santurkar et al.'s measurements from `bn-repro figure1` runs."""

from pathlib import Path

from bn_repro.figure1.report import write_figure1_report
from bn_repro.report import markdown
from bn_repro.report.claims import judge
from bn_repro.report.figure4 import write_figure4
from bn_repro.report.figures import figure2, lr_plot
from bn_repro.report.inputs import write_input_distributions
from bn_repro.report.runs import ReportError, Run, one_per_identity, summaries, trainer_runs
from bn_repro.report.tables import Row, figure3, lr_multipliers, targets


def write_report(paths: list[Path], out: Path) -> list[Row]:
    found = summaries(paths)
    readable = trainer_runs(found)
    _check_one_data_set(readable)
    runs = one_per_identity(readable)
    figure1 = write_figure1_report(found, out)  # the runs of `bn-repro figure1`, if any
    if not readable and not figure1:
        where = ", ".join(map(str, paths))
        raise ReportError(
            f"none of the {len(found)} runs under {where} can be read (the lines above say why)"
            if found
            else f"no runs (folders with a summary.json) under {where}"
        )
    if not runs:
        return []
    out.mkdir(parents=True, exist_ok=True)
    aims = targets(runs)
    rows = figure3(runs, aims)
    points = lr_multipliers(runs, aims)
    markdown.write_csv(out / "figure3.csv", rows)
    verdicts = judge(runs, aims)
    (out / "figure3.md").write_text(markdown.figure3(rows, aims, runs, verdicts))
    (out / "lr_multipliers.md").write_text(markdown.lr_multipliers(points, aims))
    figure2(runs, aims, out)
    lr_plot(points, out)
    write_input_distributions(runs, out)
    # when the runs have evaluation records (bn-repro evaluate); a copy of a run may hold some
    write_figure4(readable, out)
    (out / "README.md").write_text(markdown.readme(runs, paths, verdicts))
    return rows


def _check_one_data_set(runs: list[Run]) -> None:
    """One report compares runs of one data set: steps and accuracy on two sets do not average."""
    sets: dict[str, list[Run]] = {}
    for run in runs:
        sets.setdefault(run.data_set, []).append(run)
    if len(sets) > 1:
        listed = "; ".join(
            f"{data}: {group[0].path}" + (f" and {len(group) - 1} more" if len(group) > 1 else "")
            for data, group in sorted(sets.items())
        )
        raise ReportError(
            f"these runs trained on {len(sets)} data sets ({listed}): report the runs of each"
            " data set on their own, e.g. bn-repro report RUN_DIRS_OF_ONE_SET --out DIR"
        )
