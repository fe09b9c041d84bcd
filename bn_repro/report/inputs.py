"""The input distributions the trainer records at every evaluation (train/probe.py: the 15th,
50th and 85th percentiles of one channel's input to the nonlinearity, per probed layer), drawn
for Inception against BN-Baseline and the sigmoid Inception against BN-x5-Sigmoid as Fig. 1
(b, c) draws the MNIST network's: input_distributions.png, and every run's numbers in
input_distributions.csv."""

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402

from bn_repro import paper  # noqa: E402
from bn_repro.files import read_jsonl  # noqa: E402
from bn_repro.report.runs import Run  # noqa: E402
from bn_repro.report.tables import at_paper_rate  # noqa: E402

# Without BN, then with it: each pair differs in BN alone (configs/experiment/).
COLUMNS = ("inception", "bn_baseline", "inception_sigmoid", "bn_x5_sigmoid")
DRAWN = ("conv2", "3b", "4c", "5b")  # early, middle and late layers; the CSV has all
QS = [f"p{q}" for q in paper.FIGURE_1_PERCENTILES]


def input_records(run: Run) -> list[dict]:
    return [r for r in read_jsonl(run.path / "metrics.jsonl") if r.get("kind") == "inputs"]


def layers_of(records: list[dict]) -> list[str]:
    return list(dict.fromkeys(k.split("/")[0] for r in records for k in r if k.endswith("/p50")))


def write_input_distributions(runs: list[Run], out: Path) -> list[Path]:
    """The CSV of every run that recorded inputs, and the figure of the COLUMNS runs at their
    paper learning rate (the lowest seed of each); nothing when no run recorded them."""
    recorded = [(run, records) for run in runs if (records := input_records(run))]
    if not recorded:
        return []
    rows = [
        {
            "variant": run.name,
            "seed": run.summary["seed"],
            "lr_multiplier": run.summary["lr_multiplier"],
            "paper_steps": r["paper_steps"],
            "layer": layer,
            **{q: r[f"{layer}/{q}"] for q in QS},
        }
        for run, records in recorded
        for r in records
        for layer in layers_of([r])
    ]
    csv_path = out / "input_distributions.csv"
    with csv_path.open("w", newline="") as file:
        writer = csv.DictWriter(file, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    drawn = {}
    for run, records in sorted(recorded, key=lambda pair: pair[0].summary["seed"]):
        if run.name in COLUMNS and at_paper_rate(run):
            drawn.setdefault(run.name, records)
    return [csv_path, *([_plot(drawn, out)] if drawn else [])]


def _plot(drawn: dict[str, list[dict]], out: Path) -> Path:
    names = [n for n in COLUMNS if n in drawn]
    layers = [layer for layer in DRAWN if any(f"{layer}/p50" in r[0] for r in drawn.values())]
    layers = layers or layers_of(next(iter(drawn.values())))[-1:]
    figure, grid = plt.subplots(
        len(layers), len(names), figsize=(3.2 * len(names), 2.4 * len(layers)), squeeze=False
    )
    for row, layer in enumerate(layers):
        for column, name in enumerate(names):
            axes, records = grid[row][column], drawn[name]
            steps = [r["paper_steps"] for r in records]
            for q, style in zip(QS, (":", "-", ":"), strict=True):
                values = [r.get(f"{layer}/{q}") for r in records]
                axes.plot(steps, values, style, color="k", lw=1, label=q if row == 0 else None)
            axes.set_title(f"{name}: {layer}", fontsize=9)
            axes.grid(alpha=0.3)
            if row == len(layers) - 1:
                axes.set_xlabel("paper steps")
        grid[row][0].set_ylabel("input to the nonlinearity")
    grid[0][0].legend(fontsize=7, title="percentile", title_fontsize=7)
    figure.suptitle("Input to the nonlinearity:\none channel, fixed training images", fontsize=9)
    figure.tight_layout()
    path = out / "input_distributions.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
