"""The Figure 3 table and the learning-rate comparison, as numbers (pure functions of runs)."""

import statistics
from collections.abc import Callable
from dataclasses import dataclass

from bn_repro import paper
from bn_repro.report.runs import Run

PAPER_ROWS = {row.experiment: row for row in paper.FIGURE_3}
ORDER = [row.experiment for row in paper.FIGURE_3] + ["inception_sigmoid"]


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
    reproduction, the maximum top-1 of the Inception run at the paper's rate, per seed: a run is
    timed to its own seed's Inception, so Inception's own runs always reach theirs; a seed
    without an Inception run is timed to the mean of their maxima."""

    fixed: float | None
    inception_max: dict[int, float]

    @property
    def mean_inception_max(self) -> float | None:
        return statistics.mean(self.inception_max.values()) if self.inception_max else None

    def of_seed(self, run: Run) -> float | None:
        return self.inception_max.get(run.seed, self.mean_inception_max)


def targets(runs: list[Run]) -> Targets:
    fixed = {r.summary.get("target_top1") for r in runs} - {None}
    maxima = {
        r.seed: r.best["top1"]
        for r in runs
        if r.name == "inception" and at_paper_rate(r) and r.best
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
    variant: str
    runs: int
    to_target: Reach | None  # to the data set's fixed target; None where it has none
    to_inception_max: Reach
    max_top1: Stat | None  # with running averages, over all runs
    top5_at_max: Stat | None
    final_top1: Stat | None  # the final evaluations (Algorithm 2's statistics with BN)
    final_top5: Stat | None
    batch_per_rank: list[int]  # where BN's batch is not the paper's
    status: str  # e.g. "2 finished, 1 diverged"
    paper_steps: float | None
    paper_max_top1: float | None


def by_variant(runs: list[Run]) -> dict[str, list[Run]]:
    """The runs at their variant's paper rate, by variant in the paper's order."""
    groups: dict[str, list[Run]] = {}
    for run in filter(at_paper_rate, runs):
        groups.setdefault(run.name, []).append(run)
    order = sorted(groups, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    return {name: groups[name] for name in order}


def figure3(runs: list[Run], aims: Targets) -> list[Row]:
    """One row per variant, at the paper's learning rate for it (other multipliers belong to the
    learning-rate comparison)."""
    groups = by_variant(runs)
    fixed = {
        name: reach(group, lambda r: aims.fixed) for name, group in groups.items() if aims.fixed
    }
    own = {name: reach(group, aims.of_seed) for name, group in groups.items()}
    rows = []
    for name, group in groups.items():
        best = [r.best for r in group if r.best]
        final = [r.final for r in group if r.final]
        printed = PAPER_ROWS.get(name)
        rows.append(
            Row(
                variant=name,
                runs=len(group),
                to_target=_with_speedup(fixed[name], fixed.get("inception")) if fixed else None,
                to_inception_max=_with_speedup(own[name], own.get("inception")),
                max_top1=Stat.of([b["top1"] for b in best]),
                top5_at_max=Stat.of([b["top5"] for b in best]),
                final_top1=Stat.of([f["top1"] for f in final]),
                final_top5=Stat.of([f["top5"] for f in final]),
                batch_per_rank=sorted(
                    {r.summary["batch_per_rank"] for r in group if not r.papers_bn_batch}
                ),
                status=status(group),
                paper_steps=printed.steps_to_target if printed else None,
                paper_max_top1=printed.max_top1 if printed else None,
            )
        )
    return rows


@dataclass(frozen=True)
class LrPoint:
    recipe: tuple  # norm, activation, Sec. 4.2.1 changes (runs.Run.recipe)
    lr_multiplier: float
    runs: int
    diverged: int
    to_inception_max: Reach
    max_top1: Stat | None  # over the runs that did not diverge


def lr_multipliers(runs: list[Run], aims: Targets) -> list[LrPoint]:
    """Steps to the Inception maximum and the maximum accuracy against the multiplier, for each
    recipe trained at two multipliers or more: runs that differ in nothing but the rate."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault((run.recipe, run.summary["lr_multiplier"]), []).append(run)
    compared = {recipe for recipe, _ in groups if sum(r == recipe for r, _ in groups) > 1}
    points = []
    for (recipe, multiplier), group in sorted(groups.items()):
        if recipe not in compared:
            continue
        healthy = [r for r in group if r.status != "diverged" and r.best]
        points.append(
            LrPoint(
                recipe,
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
