"""Figure 2 (validation top-1 against paper steps) and the learning-rate comparison, drawn."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402

from bn_repro import paper  # noqa: E402
from bn_repro.report.runs import Run  # noqa: E402
from bn_repro.report.tables import (  # noqa: E402
    ORDER,
    LrPoint,
    Targets,
    figure2_runs,
    recipe_label,
)


def figure2(runs: list[Run], aims: Targets, out: Path) -> None:
    """Every run's curve at its variant's paper learning rate, one colour per variant; a marker
    where each first reaches the target: the data set's, or else its seed's Inception maximum
    (the line: their mean)."""
    runs = figure2_runs(runs)
    figure, axes = plt.subplots(figsize=(7, 4.5))
    names = sorted({r.name for r in runs}, key=lambda n: (ORDER.index(n) if n in ORDER else 99, n))
    colours = dict(zip(names, plt.cm.tab10.colors, strict=False))
    for name in names:
        for index, run in enumerate(r for r in runs if r.name == name):
            steps = [e["paper_steps"] for e in run.evals]
            top1 = [e["top1"] for e in run.evals]
            axes.plot(steps, top1, color=colours[name], label=name if index == 0 else None, lw=1.4)
            target = aims.fixed if aims.fixed is not None else aims.of_seed(run)
            reached = run.steps_to(target) if target is not None else None
            if reached is not None:
                axes.plot(reached, target, marker="o", color=colours[name], ms=6)
    line = aims.fixed if aims.fixed is not None else aims.mean_inception_max
    if line is not None:
        what = "target" if aims.fixed is not None else "Inception's maximum"
        axes.axhline(line, color="grey", ls="--", lw=1, label=f"{what} {100 * line:.1f}%")
    axes.set_xlabel("training steps of 32 images (paper steps)")
    axes.set_ylabel("validation top-1 (single crop)")
    axes.set_title("Figure 2: validation accuracy against training steps")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    for suffix in ("png", "svg"):
        figure.savefig(out / f"figure2.{suffix}", dpi=150)
    plt.close(figure)


def lr_plot(points: list[LrPoint], out: Path) -> None:
    """Maximum top-1 and steps to the Inception maximum against the multiplier, a line per
    recipe; a cross on the axis for each multiplier whose runs all diverged."""
    figure, (accuracy, steps) = plt.subplots(1, 2, figsize=(10, 4))
    recipes = sorted({p.recipe for p in points})
    for recipe, colour in zip(recipes, plt.cm.tab10.colors, strict=False):
        mine = [p for p in points if p.recipe == recipe]
        label = recipe_label(recipe)
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
    for suffix in ("png", "svg"):
        figure.savefig(out / f"lr_multipliers.{suffix}", dpi=150)
    plt.close(figure)
