"""Figure 2 (validation top-1 against paper steps) and the learning-rate comparison, drawn."""

from itertools import cycle
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402

from bn_repro import paper  # noqa: E402
from bn_repro.report.runs import Run, update_label  # noqa: E402
from bn_repro.report.tables import (  # noqa: E402
    LrPoint,
    Targets,
    by_row,
    figure2_runs,
    recipe_label,
)


def figure2(runs: list[Run], aims: Targets, out: Path) -> list[str]:
    """Every run's curve at its variant's paper learning rate, one colour per row of Figure 3
    (a variant at one update); a marker where each first reaches the target: the data set's, or
    else its seed's Inception maximum (the line: their mean). The legend's labels."""
    rows = by_row(figure2_runs(runs))
    figure, axes = plt.subplots(figsize=(7, 4.5))
    updates = {update for _, _, update in rows}
    names = [name for name, _ in {(name, recipe) for name, recipe, _ in rows}]
    for (key, group), colour in zip(rows.items(), cycle(plt.cm.tab10.colors)):
        name, recipe, update = key
        label = name if names.count(name) == 1 else f"{name}, {recipe_label(recipe)}"
        label += f" ({update_label(update)})" if len(updates) > 1 else ""
        for index, run in enumerate(group):
            steps = [e["paper_steps"] for e in run.evals]
            top1 = [e["top1"] for e in run.evals]
            axes.plot(steps, top1, color=colour, label=label if index == 0 else None, lw=1.4)
            target = aims.fixed if aims.fixed is not None else aims.of_seed(run)
            reached = run.steps_to(target) if target is not None else None
            if reached is not None:
                axes.plot(reached, target, marker="o", color=colour, ms=6)
    line = aims.fixed if aims.fixed is not None else aims.mean_inception_max
    if line is not None:
        what = "target" if aims.fixed is not None else "Inception's maximum"
        axes.axhline(line, color="grey", ls="--", lw=1, label=f"{what} {100 * line:.1f}%")
    axes.set_xlabel("training steps of 32 images (paper steps)")
    axes.set_ylabel("validation top-1 (single crop)")
    axes.set_title("Figure 2: validation accuracy against training steps")
    axes.grid(alpha=0.3)
    labels = axes.get_legend_handles_labels()[1]
    if labels:  # none where no run was evaluated: nothing drawn
        axes.legend(fontsize=8)
    figure.tight_layout()
    save(figure, out, "figure2")
    return labels


def save(figure, out: Path, stem: str) -> None:
    """The figure as PNG and SVG, the same bytes for the same runs: the SVG without its date,
    and its element ids hashed with a fixed salt (matplotlib draws a random one)."""
    with plt.rc_context({"svg.hashsalt": "bn-repro"}):
        figure.savefig(out / f"{stem}.png", dpi=150)
        figure.savefig(out / f"{stem}.svg", dpi=150, metadata={"Date": None})
    plt.close(figure)


def lr_plot(points: list[LrPoint], out: Path) -> None:
    """Maximum top-1 and steps to the Inception maximum against the multiplier, a line per
    recipe at one update; a cross on the axis for each multiplier whose runs all diverged."""
    figure, (accuracy, steps) = plt.subplots(1, 2, figsize=(10, 4))
    lines = list(dict.fromkeys((p.recipe, p.update) for p in points))  # in the table's order
    updates = {update for _, update in lines}
    for (recipe, update), colour in zip(lines, cycle(plt.cm.tab10.colors)):
        mine = [p for p in points if (p.recipe, p.update) == (recipe, update)]
        label = recipe_label(recipe)
        label += f" ({update_label(update)})" if len(updates) > 1 else ""
        good = [p for p in mine if p.max_top1]
        accuracy.plot(
            [p.lr_multiplier for p in good],
            [p.max_top1.mean for p in good],
            "o-",
            color=colour,
            label=label,
        )
        lost = [p.lr_multiplier for p in mine if p.diverged == p.runs]
        accuracy.plot(
            lost,
            [0] * len(lost),
            "x",
            color=colour,
            ms=10,
            mew=2,
            label=f"{label}: diverged" if lost else None,
        )
        reached = [p for p in mine if p.to_inception_max.steps]
        steps.plot(
            [p.lr_multiplier for p in reached],
            [p.to_inception_max.steps.mean for p in reached],
            "o-",
            color=colour,
            label=label,
        )
    multipliers = sorted({p.lr_multiplier for p in points})
    for axes, title in ((accuracy, "maximum top-1"), (steps, "paper steps to Inception's max")):
        axes.set_xscale("log")
        axes.set_xticks(multipliers, [f"{m:g}" for m in multipliers])
        axes.minorticks_off()
        axes.set_xlabel(f"learning-rate multiplier (x {paper.BASE_LR})")
        axes.set_title(title)
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:  # no recipe ran at two rates: nothing drawn
            axes.legend(fontsize=8)
    figure.tight_layout()
    save(figure, out, "lr_multipliers")
