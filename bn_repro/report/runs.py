"""The runs a report covers, read from their metrics.jsonl and summary.json only. A file that
cannot be read as a run's (corrupt, cut short, from another tool) is skipped with a warning that
names it; it never stops the report. A run counts once, by its identity."""

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from bn_repro.errors import UserError
from bn_repro.files import read_jsonl

log = logging.getLogger(__name__)

# A preempted run resumes when requeued: for a report it is still running.
STATUS = {
    "finished": "finished",
    "diverged": "diverged",
    "preempted": "running",
    "running": "running",
    "stopped": "stopped",  # by the user (Ctrl-C): the same command resumes it
}
# What a report reads of every summary.json (the trainer writes more).
SUMMARY_KEYS = ("name", "seed", "lr_multiplier", "recipe", "batch_per_rank", "data", "status")
SUMMARY_TYPES = {
    "name": str,
    "seed": int,
    "lr_multiplier": (int, float),
    "recipe": dict,
    "batch_per_rank": int,
    "data": str,
    "status": str,
}
# and of what newer trainers add; null or absent where it was not recorded
OPTIONAL_TYPES = {"global_batch": int, "bn_batch": int, "precision": str, "synthetic": dict}
RECIPE_KEYS = ("norm", "activation", "sec_4_2_1")
RECORD_KEYS = ("kind", "step", "paper_steps")
EVAL_KEYS = ("top1", "top5", "count")


class ReportError(UserError, ValueError):
    pass


@dataclass(frozen=True)
class Run:
    path: Path
    summary: dict
    evals: list[dict]  # evaluations with BN's running averages (or without BN), in order
    # the final evaluation: with Algorithm 2's population statistics, or a finished network's
    # last one where it has no BN; None before
    final: dict | None

    @property
    def name(self) -> str:
        return self.summary["name"]

    @property
    def seed(self) -> int:
        return self.summary["seed"]

    @property
    def status(self) -> str:
        return STATUS.get(self.summary["status"], "running")

    @property
    def recipe(self) -> tuple:
        """What the run trains apart from its seed, as a key: norm, activation, Sec. 4.2.1."""
        recipe = self.summary["recipe"]
        return recipe["norm"], recipe["activation"], recipe["sec_4_2_1"]

    @property
    def bn_batch(self) -> int | None:
        """The images BN normalizes over; None without BN. A summary written before it had
        its own field normalized over each rank's batch."""
        if self.summary["recipe"]["norm"] == "none":
            return None
        return self.summary.get("bn_batch", self.summary["batch_per_rank"])

    @property
    def update(self) -> tuple:
        """What one optimizer step is: images per update (the global batch), BN's batch (None
        without BN) and the arithmetic ("bf16" autocast or "fp32"); None where the summary
        predates the field."""
        return self.summary.get("global_batch"), self.bn_batch, self.summary.get("precision")

    @property
    def setting(self) -> tuple:
        """The update as a network without BN has it: global batch and precision."""
        global_batch, _, precision = self.update
        return global_batch, precision

    @property
    def identity(self) -> tuple:
        """What makes two runs one: the recipe at its rate, the update and the seed."""
        return self.recipe, self.summary["lr_multiplier"], self.update, self.seed

    @property
    def data_set(self) -> str:
        """The data the run trained on: a prepared set's root, or what a synthetic set is made
        of, its own seed included (data.synthetic.seed: two seeds draw two sets)."""
        data, synthetic = self.summary["data"], self.summary.get("synthetic")
        if data != "synthetic":
            return data
        if not isinstance(synthetic, dict):
            return "synthetic (its sizes and seed not recorded)"
        return f"synthetic ({', '.join(f'{k} {v}' for k, v in sorted(synthetic.items()))})"

    @property
    def best(self) -> dict | None:
        """The evaluation with the maximum top-1 (the first, on a tie)."""
        return max(self.evals, key=lambda r: r["top1"], default=None)

    def steps_to(self, target: float) -> float | None:
        """Paper steps of the first evaluation at or above the target."""
        return next((r["paper_steps"] for r in self.evals if r["top1"] >= target), None)


def summaries(paths: list[Path]) -> list[tuple[Path, dict]]:
    """Every summary.json under the given run or sweep directories once, with what it holds;
    one that is not a JSON object is left out with a warning that names it."""
    found, seen = [], set()
    for path in paths:
        for summary_path in sorted(path.rglob("summary.json")):
            if summary_path.resolve() in seen:  # under two of the paths given
                continue
            seen.add(summary_path.resolve())
            try:
                summary = json.loads(summary_path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
                summary = error
            if isinstance(summary, dict):
                found.append((summary_path, summary))
            else:
                log.warning("%s cannot be read (%s): that run is left out", summary_path, summary)
    return found


def find_runs(paths: list[Path]) -> list[Run]:
    """Every readable run of `bn-repro train` under the given run or sweep directories."""
    return trainer_runs(summaries(paths))


def trainer_runs(found: list[tuple[Path, dict]]) -> list[Run]:
    """The runs of `bn-repro train` among the summaries (those of `bn-repro figure1`, marked
    with a "study", are Figure 1's: bn_repro/figure1/report.py)."""
    runs = [read_run(path, summary) for path, summary in found if "study" not in summary]
    return [run for run in runs if run is not None]


def read_run(summary_path: Path, summary: dict) -> Run | None:
    """The run, or None with a line that says why it is skipped."""
    metrics = summary_path.parent / "metrics.jsonl"
    why = unreadable(summary) or (None if metrics.is_file() else "it has no metrics.jsonl")
    if why:
        log.warning("%s: skipped: %s", summary_path.parent, why)
        return None
    evals, final = [], None
    for number, record in enumerate(read_jsonl(metrics), start=1):
        if any(key not in record for key in RECORD_KEYS):
            log.warning("%s, record %d lacks one of %s; skipped", metrics, number, RECORD_KEYS)
        elif record["kind"] != "eval":
            continue
        elif lacks := [key for key in EVAL_KEYS if not _number(record.get(key))]:
            log.warning(
                "%s, record %d: skipped: an evaluation without %s",
                metrics,
                number,
                ", ".join(lacks),
            )
        elif record.get("bn_stats") == "population":
            final = record
        else:
            evals.append(record)
    no_bn = summary["recipe"]["norm"] == "none"
    if final is None and no_bn and summary["status"] == "finished" and evals:
        final = evals[-1]
    return Run(summary_path.parent, summary, evals, final)


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def unreadable(summary: dict) -> str | None:
    """What keeps a summary from being a bn-repro run's, or None."""
    missing = [key for key in SUMMARY_KEYS if key not in summary]
    if missing:
        return f"its summary.json lacks {', '.join(missing)} (not a bn-repro run's)"
    wrong = [key for key, kind in SUMMARY_TYPES.items() if not isinstance(summary[key], kind)]
    wrong += [
        key
        for key, kind in OPTIONAL_TYPES.items()
        if summary.get(key) is not None and not isinstance(summary[key], kind)
    ]
    if wrong:
        found = ", ".join(f"{key} is {json.dumps(summary[key])}" for key in wrong)
        return f"in its summary.json {found} (not what bn-repro train writes)"
    lacking = [key for key in RECIPE_KEYS if not isinstance(summary["recipe"].get(key), str)]
    if lacking:
        return f"its summary.json's recipe lacks {', '.join(lacking)}"
    return None


def one_per_identity(runs: list[Run]) -> list[Run]:
    """Each run once: a copy of a run (the same summary and records) counts once; two different
    runs of one identity are refused, by name, as neither can stand for the other."""
    kept: dict[tuple, Run] = {}
    conflicts: dict[tuple, list[Run]] = {}
    for run in runs:
        first = kept.setdefault(run.identity, run)
        if first is not run and _records(first) != _records(run):
            conflicts.setdefault(run.identity, [first]).append(run)
    if conflicts:
        listed = "; ".join(
            " and ".join(str(r.path) for r in group) + f" ({identity_label(group[0])})"
            for group in conflicts.values()
        )
        raise ReportError(
            f"{listed}: different runs of one identity (recipe and rate, global batch, BN"
            " batch, precision, seed), and a run counts once: give the report one of each, e.g."
            " name the run directories to report instead of their sweeps"
        )
    return list(kept.values())


def _records(run: Run) -> tuple[bytes, bytes]:
    return (run.path / "summary.json").read_bytes(), (run.path / "metrics.jsonl").read_bytes()


def identity_label(run: Run) -> str:
    return (
        f"{run.name} at x{run.summary['lr_multiplier']:g}, {update_label(run.update)},"
        f" seed {run.seed}"
    )


def update_label(update: tuple) -> str:
    global_batch, bn_batch, precision = update
    return (
        f"global batch {global_batch or 'unknown'},"
        f" {'no BN' if bn_batch is None else f'BN batch {bn_batch}'},"
        f" {precision or 'precision unknown'}"
    )


def setting_label(setting: tuple) -> str:
    global_batch, precision = setting
    return f"global batch {global_batch or 'unknown'}, {precision or 'precision unknown'}"


def sortable(values: tuple) -> tuple:
    """A sort key for tuples that may hold None (not recorded): after the known values."""
    return tuple((value is None, 0 if value is None else value) for value in values)
