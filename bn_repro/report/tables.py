"""The Figure 3 table and the learning-rate comparison, as numbers (pure functions of runs)."""

import statistics
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
class Target:
    top1: float | None
    how: str


def choose_target(runs: list[Run]) -> Target:
    """DESIGN.md 4: the dataset's target where it has one (72.2% on ILSVRC2012), otherwise the
    maximum top-1 of the set's inception runs (their mean, over seeds)."""
    given = {r.summary.get("target_top1") for r in runs} - {None}
    if given:
        value = given.pop()
        return Target(
            value, f"{100 * value:.1f}% top-1, the dataset's target (Inception's maximum in Fig. 3)"
        )
    maxima = [r.best["top1"] for r in runs if r.name == "inception" and at_paper_rate(r) and r.best]
    if not maxima:
        return Target(None, "none: the set holds no evaluated inception run")
    value = statistics.mean(maxima)
    return Target(
        value,
        f"{100 * value:.2f}% top-1, the maximum of this set's inception runs"
        f" (mean of {len(maxima)})",
    )


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
class Row:
    variant: str
    runs: int
    steps_to_target: Stat | None  # over the runs that reached it
    speedup: float | None  # Inception's mean steps over this variant's
    max_top1: Stat | None
    top5_at_max: Stat | None
    status: str  # e.g. "2 finished, 1 diverged"
    paper_steps: float | None
    paper_max_top1: float | None


def figure3(runs: list[Run], target: Target) -> list[Row]:
    """One row per variant, at the paper's learning rate for it (other multipliers belong to the
    learning-rate comparison)."""
    groups: dict[str, list[Run]] = {}
    for run in filter(at_paper_rate, runs):
        groups.setdefault(run.name, []).append(run)
    steps = {name: _steps(group, target) for name, group in groups.items()}
    baseline = Stat.of(steps.get("inception", []))
    rows = []
    for name in sorted(groups, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        group, reached = groups[name], Stat.of(steps[name])
        best = [r.best for r in group if r.best]
        printed = PAPER_ROWS.get(name)
        rows.append(
            Row(
                variant=name,
                runs=len(group),
                steps_to_target=reached,
                speedup=baseline.mean / reached.mean if baseline and reached else None,
                max_top1=Stat.of([b["top1"] for b in best]),
                top5_at_max=Stat.of([b["top5"] for b in best]),
                status=_status(group),
                paper_steps=printed.steps_to_target if printed else None,
                paper_max_top1=printed.max_top1 if printed else None,
            )
        )
    return rows


@dataclass(frozen=True)
class LrPoint:
    norm: str
    lr_multiplier: float
    runs: int
    diverged: int
    steps_to_target: Stat | None
    max_top1: Stat | None  # over the runs that did not diverge


def lr_multipliers(runs: list[Run], target: Target) -> list[LrPoint]:
    """Steps to target and maximum accuracy against the multiplier, with and without BN (ReLU
    networks only: the sigmoid ones are another comparison)."""
    groups: dict[tuple[str, float], list[Run]] = {}
    for run in runs:
        if run.summary["activation"] == "relu":
            groups.setdefault((run.summary["norm"], run.summary["lr_multiplier"]), []).append(run)
    points = []
    for (norm, multiplier), group in sorted(groups.items()):
        healthy = [r for r in group if r.status != "diverged" and r.best]
        points.append(
            LrPoint(
                norm,
                multiplier,
                len(group),
                sum(r.status == "diverged" for r in group),
                Stat.of(_steps(group, target)),
                Stat.of([r.best["top1"] for r in healthy]),
            )
        )
    return points


def _steps(group: list[Run], target: Target) -> list[float]:
    if target.top1 is None:
        return []
    return [s for s in (r.steps_to(target.top1) for r in group) if s is not None]


def _status(group: list[Run]) -> str:
    counts: dict[str, int] = {}
    for run in group:
        counts[run.status] = counts.get(run.status, 0) + 1
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
