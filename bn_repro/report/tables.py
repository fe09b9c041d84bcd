"""The Figure 3 table and the learning-rate comparison, as numbers (pure functions of runs)."""

import statistics
from collections.abc import Callable
from dataclasses import dataclass

from bn_repro import paper
from bn_repro.report.runs import Run, sortable

PAPER_ROWS = {row.experiment: row for row in paper.FIGURE_3}
ORDER = [row.experiment for row in paper.FIGURE_3] + ["inception_sigmoid"]
INCEPTION_RECIPE = ("none", "relu", "none")  # norm, activation, Sec. 4.2.1 (runs.Run.recipe)


def at_paper_rate(run: Run) -> bool:
    """Whether the run trains at the paper's learning rate for its variant (or is no variant of
    the paper's); other multipliers belong to the learning-rate comparison."""
    standard = paper.LEARNING_RATES.get(run.name)
    return standard is None or abs(run.summary["lr_multiplier"] * paper.BASE_LR - standard) < 1e-12


def figure2_runs(runs: list[Run]) -> list[Run]:
    """The curves of Figure 2: the evaluated runs at their variant's paper learning rate."""
    return [r for r in runs if at_paper_rate(r) and r.evals]


@dataclass(frozen=True)
class Targets:
    """What steps are counted to. fixed: the data set's own target (72.2% on ILSVRC2012, the
    paper's number), None elsewhere. inception_max: Fig. 3's definition applied to this
    reproduction, the maximum top-1 of the Inception run at the paper's rate, by global batch,
    precision and seed: a run is timed to its own seed's Inception at its global batch and
    precision, so Inception's own runs always reach theirs; without one, to the mean of the
    maxima at its global batch and precision, or with none there, of all."""

    fixed: float | None
    inception_max: dict[tuple, float]  # (global batch, precision, seed) -> max top-1

    @property
    def mean_inception_max(self) -> float | None:
        return statistics.mean(self.inception_max.values()) if self.inception_max else None

    def of_seed(self, run: Run) -> float | None:
        own = self.inception_max.get((*run.setting, run.seed))
        if own is not None:
            return own
        alike = [v for key, v in self.inception_max.items() if key[:2] == run.setting]
        return statistics.mean(alike) if alike else self.mean_inception_max


def targets(runs: list[Run]) -> Targets:
    fixed = {r.summary.get("target_top1") for r in runs} - {None}
    maxima = {
        (*r.setting, r.seed): r.best["top1"]
        for r in runs
        if r.name == "inception" and r.recipe == INCEPTION_RECIPE and at_paper_rate(r) and r.best
    }
    return Targets(fixed.pop() if fixed else None, maxima)


@dataclass(frozen=True)
class Stat:
    mean: float
    spread: float  # sample standard deviation; 0 for a single value
    n: int

    @classmethod
    def of(cls, values: list[float]) -> "Stat | None":
        if not values:
            return None
        return cls(
            statistics.mean(values),
            statistics.stdev(values) if len(values) > 1 else 0.0,
            len(values),
        )


@dataclass(frozen=True)
class Reach:
    """Paper steps to a target: over the runs that reached it, how many did, and the speed-up
    over Inception's mean (to the same target)."""

    steps: Stat | None
    reached: int
    runs: int
    speedup: float | None = None


def reach(group: list[Run], target_of: Callable[[Run], float | None]) -> Reach:
    steps = []
    for run in group:
        target = target_of(run)
        reached = None if target is None else run.steps_to(target)
        if reached is not None:
            steps.append(reached)
    return Reach(Stat.of(steps), len(steps), len(group))


def _with_speedup(mine: Reach, inception: Reach | None) -> Reach:
    if inception is None or inception.steps is None or mine.steps is None:
        return mine
    return Reach(mine.steps, mine.reached, mine.runs, inception.steps.mean / mine.steps.mean)


@dataclass(frozen=True)
class Row:
    variant: str  # the experiment, with its recipe where the experiment ran with several
    global_batch: int | None  # images per update; None: not recorded
    bn_batch: int | None  # the images BN normalizes over; None without BN
    precision: str | None  # bf16 (autocast) or fp32; None: not recorded
    runs: int
    to_target: Reach | None  # to the data set's fixed target; None where it has none
    to_inception_max: Reach
    max_top1: Stat | None  # with running averages, over all runs
    top5_at_max: Stat | None
    final_top1: Stat | None  # the final evaluations (Algorithm 2's statistics with BN)
    final_top5: Stat | None
    status: str  # e.g. "2 finished, 1 diverged"
    paper_steps: float | None
    paper_max_top1: float | None

    @property
    def papers_bn_batch(self) -> bool:
        """Whether BN normalizes over the paper's mini-batch (or there is no BN)."""
        return self.bn_batch in (None, paper.BATCH_SIZE)


def by_row(runs: list[Run]) -> dict[tuple, list[Run]]:
    """The runs at their variant's paper rate, by variant, recipe and update (runs.Run.update):
    a row of Figure 3 each, in the paper's order of variants."""
    groups: dict[tuple, list[Run]] = {}
    for run in filter(at_paper_rate, runs):
        groups.setdefault((run.name, run.recipe, run.update), []).append(run)

    def order(key: tuple) -> tuple:
        name, recipe, update = key
        return (ORDER.index(name) if name in ORDER else len(ORDER), name, recipe, sortable(update))

    return {key: groups[key] for key in sorted(groups, key=order)}


def figure3(runs: list[Run], aims: Targets) -> list[Row]:
    """One row per variant at the paper's learning rate for it (other multipliers belong to the
    learning-rate comparison), its recipe, global batch, BN batch and precision: runs of one
    update only; speed-ups over the Inception row of the same global batch and precision."""
    groups = by_row(runs)
    fixed = {key: reach(g, lambda r: aims.fixed) for key, g in groups.items() if aims.fixed}
    own = {key: reach(g, aims.of_seed) for key, g in groups.items()}
    recipes: dict[str, set] = {}
    for name, recipe, _ in groups:
        recipes.setdefault(name, set()).add(recipe)
    rows = []
    for key, group in groups.items():
        name, recipe, (global_batch, bn_batch, precision) = key
        inception = ("inception", INCEPTION_RECIPE, (global_batch, None, precision))
        best = [r.best for r in group if r.best]
        final = [r.final for r in group if r.final]
        printed = PAPER_ROWS.get(name)
        several = len(recipes[name]) > 1
        rows.append(
            Row(
                variant=f"{name} ({recipe_label(recipe)})" if several else name,
                global_batch=global_batch,
                bn_batch=bn_batch,
                precision=precision,
                runs=len(group),
                to_target=_with_speedup(fixed[key], fixed.get(inception)) if fixed else None,
                to_inception_max=_with_speedup(own[key], own.get(inception)),
                max_top1=Stat.of([b["top1"] for b in best]),
                top5_at_max=Stat.of([b["top5"] for b in best]),
                final_top1=Stat.of([f["top1"] for f in final]),
                final_top5=Stat.of([f["top5"] for f in final]),
                status=status(group),
                paper_steps=printed.steps_to_target if printed else None,
                paper_max_top1=printed.max_top1 if printed else None,
            )
        )
    return rows


@dataclass(frozen=True)
class LrPoint:
    recipe: tuple  # norm, activation, Sec. 4.2.1 changes (runs.Run.recipe)
    update: tuple  # global batch, BN batch, precision (runs.Run.update)
    lr_multiplier: float
    runs: int
    diverged: int
    to_inception_max: Reach
    max_top1: Stat | None  # over the runs that did not diverge


def lr_multipliers(runs: list[Run], aims: Targets) -> list[LrPoint]:
    """Steps to the Inception maximum and the maximum accuracy against the multiplier, for each
    recipe trained at two multipliers or more at one update: runs that differ in nothing but
    the rate."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault((run.recipe, run.update, run.summary["lr_multiplier"]), []).append(run)
    lines = [(recipe, update) for recipe, update, _ in groups]
    points = []
    for (recipe, update, multiplier), group in sorted(
        groups.items(), key=lambda item: (item[0][0], sortable(item[0][1]), item[0][2])
    ):
        if lines.count((recipe, update)) < 2:
            continue
        healthy = [r for r in group if r.status != "diverged" and r.best]
        points.append(
            LrPoint(
                recipe,
                update,
                multiplier,
                len(group),
                sum(r.status == "diverged" for r in group),
                reach(group, aims.of_seed),
                Stat.of([r.best["top1"] for r in healthy]),
            )
        )
    return points


def recipe_label(recipe: tuple) -> str:
    norm, activation, changes = recipe
    label = f"{'BN' if norm == 'batchnorm' else 'no BN'}, {activation}"
    if changes == "all":
        return label + ", Sec. 4.2.1"
    return label if changes == "none" else f"{label}, Sec. 4.2.1 in part ({changes})"


def status(group: list[Run]) -> str:
    counts: dict[str, int] = {}
    for run in group:
        counts[run.status] = counts.get(run.status, 0) + 1
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
