"""Figure 1 of the paper from `bn-repro figure1` runs, and Santurkar et al.'s measurements on the
same networks: figure1.png/.csv, figure1_landscape.png/.csv and figure1.md with the numbers
behind each claim, all from the runs' metrics.jsonl and summary.json."""

import csv
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402

from bn_repro import paper  # noqa: E402
from bn_repro.files import read_jsonl  # noqa: E402

STUDY = "figure1"  # as training.py writes it into summary.json
LABELS = {"none": "without BN", "batchnorm": "with BN"}
COLOURS = {"none": "tab:orange", "batchnorm": "tab:blue"}
QS = [f"p{q}" for q in paper.FIGURE_1_PERCENTILES]


@dataclass(frozen=True)
class Figure1Run:
    path: Path
    summary: dict
    records: list[dict]

    @property
    def norm(self) -> str:
        return self.summary["norm"]

    def kind(self, kind: str, **match) -> list[dict]:
        return [
            r
            for r in self.records
            if r["kind"] == kind and all(r.get(k) == v for k, v in match.items())
        ]

    @property
    def evals(self) -> list[dict]:
        """Held-out accuracy during training (running averages, or no BN)."""
        return [r for r in self.kind("eval") if r["bn_stats"] != "population"]

    @property
    def last_hidden(self) -> str:
        """The last hidden layer the probe recorded, e.g. hidden3."""
        return sorted(k.split("/")[0] for k in self.kind("inputs")[0] if k.endswith("/p50"))[-1]


def write_figure1_report(found: list[tuple[Path, dict]], out: Path) -> list[Path]:
    """Figure 1's part of `bn-repro report`: its files in out, drawn from the runs of
    `bn-repro figure1` among the summaries (report.runs.summaries); none without such runs."""
    runs = figure1_runs(found)
    return write_figure1(runs, out) if runs else []


def figure1_runs(found: list[tuple[Path, dict]]) -> list[Figure1Run]:
    """The runs of `bn-repro figure1` among the summaries (report.runs.summaries)."""
    runs = [
        Figure1Run(path.parent, summary, read_jsonl(path.parent / "metrics.jsonl"))
        for path, summary in found
        if summary.get("study") == STUDY
    ]
    return sorted(runs, key=lambda r: (r.norm != "none", r.summary["seed"], str(r.path)))


def write_figure1(runs: list[Figure1Run], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [out / name for name in ("figure1.csv", "figure1_landscape.csv", "figure1.md")]
    _write_rows(written[0], figure1_rows(runs))
    _write_rows(written[1], landscape_rows(runs))
    written[2].write_text(figure1_markdown(runs))
    written += [figure1_plot(runs, out), landscape_plot(runs, out)]
    return written


def _layers(records: list[dict], suffix: str) -> list[str]:
    """The layers named in records' keys "<layer>/<suffix>", in order of appearance."""
    found = []
    for record in records:
        for key in record:
            layer, _, tail = key.partition("/")
            if tail == suffix and layer not in found:
                found.append(layer)
    return found


def figure1_rows(runs: list[Figure1Run]) -> list[dict]:
    """One row per run and evaluation: held-out accuracy and every probed layer's percentiles."""
    rows = []
    for run in runs:
        inputs = {r["step"]: r for r in run.kind("inputs")}
        layers = _layers(inputs.values(), "p50")
        for e in run.evals:
            row = {"norm": run.norm, "seed": run.summary["seed"], "step": e["step"]}
            row["test_accuracy"] = e["top1"]
            probe = inputs.get(e["step"], {})
            for layer in layers:
                row |= {f"{layer}_{q}": probe.get(f"{layer}/{q}") for q in QS}
            rows.append(row)
    return rows


LANDSCAPE = (
    "loss",
    "loss_min",
    "loss_max",
    "grad_change_min",
    "grad_change_max",
    "beta_smoothness",
    "grad_norm",
)


def landscape_rows(runs: list[Figure1Run]) -> list[dict]:
    """One row per run and measurement: the landscape along the gradient and each layer's ICS."""
    rows = []
    for run in runs:
        ics = {r["step"]: r for r in run.kind("ics")}
        layers = _layers(ics.values(), "l2")
        for record in run.kind("landscape"):
            row = {"norm": run.norm, "seed": run.summary["seed"], "step": record["step"]}
            row |= {key: record[key] for key in LANDSCAPE}
            shift = ics.get(record["step"], {})
            for layer in layers:
                row[f"{layer}_ics_l2"] = shift.get(f"{layer}/l2")
                row[f"{layer}_ics_cosine"] = shift.get(f"{layer}/cosine")
            rows.append(row)
    return rows


def _write_rows(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, columns)
        writer.writeheader()
        writer.writerows(rows)


@dataclass(frozen=True)
class RunNumbers:
    """What one run says about each claim."""

    norm: str
    seed: int
    steps_to_target: int | None  # first evaluation at or above the target
    max_accuracy: float
    step_at_max: int
    final_accuracy: float
    final_bn_stats: str
    unit: str  # the probed input, e.g. "hidden3 unit 0"
    median: tuple[float, float, float]  # first, last, and max - min over training
    spread: tuple[float, float, float]  # of p85 - p15, likewise
    ics_l2: dict[str, float]  # per layer, the mean over the measurements
    ics_cosine: dict[str, float]
    landscape: dict[str, float]  # loss range, largest gradient change, beta: their means


def target_accuracy(runs: list[Figure1Run]) -> float | None:
    """As Figure 3 times every network to Inception's maximum: the maximum held-out accuracy of
    the runs without BN (their mean over seeds)."""
    maxima = [max(e["top1"] for e in r.evals) for r in runs if r.norm == "none" and r.evals]
    return statistics.mean(maxima) if maxima else None


def run_numbers(run: Figure1Run, target: float | None) -> RunNumbers:
    evals, inputs = run.evals, run.kind("inputs")
    best = max(evals, key=lambda e: e["top1"])
    reached = [e["step"] for e in evals if target is not None and e["top1"] >= target]
    layer = run.last_hidden
    median = [r[f"{layer}/p50"] for r in inputs]
    spread = [r[f"{layer}/{QS[-1]}"] - r[f"{layer}/{QS[0]}"] for r in inputs]
    ics, marks = run.kind("ics"), run.kind("landscape")

    def mean(key: str, records: list[dict]) -> float:
        return statistics.mean(r[key] for r in records)

    return RunNumbers(
        norm=run.norm,
        seed=run.summary["seed"],
        steps_to_target=reached[0] if reached else None,
        max_accuracy=best["top1"],
        step_at_max=best["step"],
        final_accuracy=run.summary["final_top1"],
        final_bn_stats=run.summary["final_bn_stats"],
        unit=f"{layer} unit {run_unit(run)}",
        median=(median[0], median[-1], max(median) - min(median)),
        spread=(spread[0], spread[-1], max(spread) - min(spread)),
        ics_l2={k: mean(f"{k}/l2", ics) for k in _layers(ics, "l2")},
        ics_cosine={k: mean(f"{k}/cosine", ics) for k in _layers(ics, "l2")},
        landscape={
            "loss_range": statistics.mean(r["loss_max"] - r["loss_min"] for r in marks),
            "grad_change_max": mean("grad_change_max", marks),
            "beta_smoothness": mean("beta_smoothness", marks),
        },
    )


def run_unit(run: Figure1Run) -> int | str:
    config = run.path / "config.json"
    return json.loads(config.read_text())["train"]["probe_unit"] if config.exists() else "?"


def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def figure1_markdown(runs: list[Figure1Run]) -> str:
    target = target_accuracy(runs)
    numbers = [run_numbers(r, target) for r in runs]
    first = runs[0].summary
    lines = [
        "# Figure 1 (MNIST, Sec. 4.1), reproduced; Santurkar et al. (2018) on the same networks",
        "",
        f"Data: {first['data']}: {first['train_digits']:,} training and {first['test_digits']:,}"
        " held-out digits. Steps are Fig. 1's: one SGD update on 60 digits.",
    ]
    lines += _accuracy_lines(numbers, target) + _input_lines(numbers) + _santurkar_lines(numbers)
    return "\n".join(lines) + "\n"


def _accuracy_lines(numbers: list[RunNumbers], target: float | None) -> list[str]:
    lines = [
        "",
        "## (a) Held-out accuracy",
        "",
        f"Target: {_f(target)}, the maximum held-out accuracy of the networks without BN (as"
        " Figure 3 times every network to Inception's maximum). Final: after the last step, with"
        " BN on Algorithm 2's population statistics.",
        "",
        "| network | seed | steps to target | max accuracy (at step) | final accuracy |",
        "| --- | --- | --- | --- | --- |",
    ]
    for n in numbers:
        steps = "not reached" if n.steps_to_target is None else f"{n.steps_to_target:,}"
        lines.append(
            f"| {LABELS[n.norm]} | {n.seed} | {steps} | {_f(n.max_accuracy)}"
            f" ({n.step_at_max:,}) | {_f(n.final_accuracy)} ({n.final_bn_stats}) |"
        )
    return lines


def _input_lines(numbers: list[RunNumbers]) -> list[str]:
    lines = [
        "",
        "## (b, c) The last hidden layer's sigmoid input",
        "",
        "Its median and the spread between its 15th and 85th percentiles over the probe's fixed"
        " training digits: at the first and the last evaluation, and their range (max - min)"
        " over training.",
        "",
        "| network | seed | input | median: first, last (range) | spread: first, last (range) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for n in numbers:
        median, spread = (
            ", ".join(_f(v, 2) for v in x[:2]) + f" ({_f(x[2], 2)})" for x in (n.median, n.spread)
        )
        lines.append(f"| {LABELS[n.norm]} | {n.seed} | {n.unit} | {median} | {spread} |")
    return lines


def _santurkar_lines(numbers: list[RunNumbers]) -> list[str]:
    layers = list(dict.fromkeys(k for n in numbers for k in n.ics_l2))
    lines = [
        "",
        "## Santurkar et al.: internal covariate shift (their Definition 2.1)",
        "",
        "Means over the measurements (log-spaced over the steps: half of them in the first 1%)"
        " of ||G - G'|| (0: no shift) and cos(G, G') (1: no shift), G' after the earlier"
        " layers' update; the first layer has no earlier layer.",
        "",
        "| network | seed | " + " | ".join(f"{k}: l2, cosine" for k in layers) + " |",
        "| --- | --- | " + " | ".join("---" for _ in layers) + " |",
    ]
    for n in numbers:
        cells = [f"{_f(n.ics_l2.get(k), 4)}, {_f(n.ics_cosine.get(k))}" for k in layers]
        lines.append(f"| {LABELS[n.norm]} | {n.seed} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Santurkar et al.: the loss landscape along the gradient",
        "",
        "Means over the same measurements of the loss's range over the step sizes, the largest"
        " change of the gradient, and the effective beta-smoothness (the largest gradient change"
        " per unit of distance); smaller is smoother.",
        "",
        "| network | seed | loss range | gradient change | beta-smoothness |",
        "| --- | --- | --- | --- | --- |",
    ]
    for n in numbers:
        s = n.landscape
        lines.append(
            f"| {LABELS[n.norm]} | {n.seed} | {_f(s['loss_range'], 4)}"
            f" | {_f(s['grad_change_max'], 4)} | {_f(s['beta_smoothness'], 3)} |"
        )
    return lines


def figure1_plot(runs: list[Figure1Run], out: Path) -> Path:
    """(a) held-out accuracy of every run against steps; (b, c) the percentiles of the last
    hidden layer's probed sigmoid input over training, without and with BN (the first seed)."""
    figure, (accuracy, *inputs) = plt.subplots(1, 3, figsize=(13, 3.8))
    for run in runs:
        first = run is next(r for r in runs if r.norm == run.norm)
        accuracy.plot(
            [e["step"] for e in run.evals],
            [e["top1"] for e in run.evals],
            color=COLOURS[run.norm],
            lw=1.2 if first else 0.6,
            label=LABELS[run.norm] if first else None,
        )
    accuracy.set_ylim(0.7, 1.0)  # Fig. 1(a)'s range
    accuracy.set(title="(a) held-out accuracy", xlabel="steps of 60 digits")
    accuracy.legend(fontsize=8)
    for axes, norm, panel in zip(inputs, ("none", "batchnorm"), ("(b)", "(c)"), strict=True):
        run = next((r for r in runs if r.norm == norm), None)
        if run is not None:
            _percentile_panel(axes, run, f"{panel} {LABELS[norm]}")
    inputs[1].sharey(inputs[0])
    for axes in (accuracy, *inputs):
        axes.grid(alpha=0.3)
    figure.tight_layout()
    path = out / "figure1.png"
    figure.savefig(path, dpi=150)
    plt.close(figure)
    return path


def _percentile_panel(axes, run: Figure1Run, title: str) -> None:
    layer, inputs = run.last_hidden, run.kind("inputs")
    steps = [r["step"] for r in inputs]
    for q, style in zip(QS, (":", "-", ":"), strict=True):
        axes.plot(steps, [r[f"{layer}/{q}"] for r in inputs], style, color="k", lw=1, label=q)
    axes.set(
        title=f"{title}: {layer} unit {run_unit(run)}",
        xlabel="steps of 60 digits",
        ylabel="sigmoid input",
    )
    axes.legend(fontsize=8, title="percentile", title_fontsize=8)


def landscape_plot(runs: list[Figure1Run], out: Path) -> Path:
    """Santurkar et al.'s Fig. 3 and 4 on Figure 1's networks: the last hidden layer's ICS (l2
    and cosine), the loss and the gradient change along the gradient (the band spans the step
    sizes) and the effective beta-smoothness, with and without BN (the first seed)."""
    figure, grid = plt.subplots(2, 3, figsize=(13, 7))
    for norm in ("none", "batchnorm"):
        run = next((r for r in runs if r.norm == norm), None)
        if run is not None:
            _draw_measurements(grid, run)
    layer = runs[0].last_hidden
    titles = (
        f"ICS of {layer}: ||G - G'||",
        f"ICS of {layer}: cos(G, G')",
        "training loss",
        "loss along the gradient (range)",
        "gradient change along the gradient (range)",
        "effective beta-smoothness",
    )
    for index, (axes, title) in enumerate(zip(grid.flat, titles, strict=True)):
        # the measurements are log-spaced: most of the learning happens in the first steps
        axes.set_xscale("symlog", linthresh=1)
        axes.set(title=title, xlabel="steps of 60 digits (log scale)")
        axes.set_yscale("linear" if index == 1 else "log")
        axes.grid(alpha=0.3)
    grid[0][0].legend(fontsize=8)
    figure.tight_layout()
    path = out / "figure1_landscape.png"
    figure.savefig(path, dpi=150)
    plt.close(figure)
    return path


def _draw_measurements(grid, run: Figure1Run) -> None:
    (l2, cos, loss), (band, change, beta) = grid
    style = {"color": COLOURS[run.norm]}
    layer, ics, marks, train = (run.last_hidden, *map(run.kind, ("ics", "landscape", "train")))
    at = [r["step"] for r in ics]
    l2.plot(at, [r[f"{layer}/l2"] for r in ics], label=LABELS[run.norm], **style)
    cos.plot(at, [r[f"{layer}/cosine"] for r in ics], **style)
    loss.plot([r["step"] for r in train], [r["loss"] for r in train], **style)
    at = [r["step"] for r in marks]
    for axes, low, high in (
        (band, "loss_min", "loss_max"),
        (change, "grad_change_min", "grad_change_max"),
    ):
        axes.fill_between(at, [r[low] for r in marks], [r[high] for r in marks], alpha=0.4, **style)
    beta.plot(at, [r["beta_smoothness"] for r in marks], **style)
