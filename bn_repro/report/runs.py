"""The runs a report covers, read from their metrics.jsonl and summary.json only. A file that
cannot be read as a run's (corrupt, cut short, from another tool) is skipped with a warning that
names it; it never stops the report."""

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from bn_repro import paper
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
RECORD_KEYS = ("kind", "step", "paper_steps")


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
    def papers_bn_batch(self) -> bool:
        """Whether BN normalizes over the paper's mini-batch (or there is no BN)."""
        no_bn = self.summary["recipe"]["norm"] == "none"
        return no_bn or self.summary["batch_per_rank"] == paper.BATCH_SIZE

    @property
    def best(self) -> dict | None:
        """The evaluation with the maximum top-1 (the first, on a tie)."""
        return max(self.evals, key=lambda r: r["top1"], default=None)

    def steps_to(self, target: float) -> float | None:
        """Paper steps of the first evaluation at or above the target."""
        return next((r["paper_steps"] for r in self.evals if r["top1"] >= target), None)


def summaries(paths: list[Path]) -> list[tuple[Path, dict]]:
    """Every summary.json under the given run or sweep directories, with what it holds; one
    that is not a JSON object is left out with a warning that names it."""
    found = []
    for path in paths:
        for summary_path in sorted(path.rglob("summary.json")):
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
    missing = [key for key in SUMMARY_KEYS if key not in summary]
    if missing:
        log.warning("%s lacks %s: not a bn-repro run's; left out", summary_path, missing)
        return None
    metrics = summary_path.parent / "metrics.jsonl"
    evals, final = [], None
    for number, record in enumerate(read_jsonl(metrics), start=1):
        if any(key not in record for key in RECORD_KEYS):
            log.warning("%s, record %d lacks one of %s; skipped", metrics, number, RECORD_KEYS)
        elif record["kind"] == "eval" and record.get("bn_stats") == "population":
            final = record
        elif record["kind"] == "eval":
            evals.append(record)
    no_bn = summary["recipe"]["norm"] == "none"
    if final is None and no_bn and summary["status"] == "finished" and evals:
        final = evals[-1]
    return Run(summary_path.parent, summary, evals, final)
