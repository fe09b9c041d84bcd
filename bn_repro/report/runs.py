"""The runs a report covers, read from their metrics.jsonl and summary.json only."""

import json
from dataclasses import dataclass
from pathlib import Path

from bn_repro.train.records import read_metrics

# A preempted run resumes when requeued: for a report it is still running.
STATUS = {
    "finished": "finished",
    "diverged": "diverged",
    "preempted": "running",
    "running": "running",
}


@dataclass(frozen=True)
class Run:
    path: Path
    summary: dict
    evals: list[dict]  # evaluation records, in order

    @property
    def name(self) -> str:
        return self.summary["name"]

    @property
    def status(self) -> str:
        return STATUS[self.summary.get("status", "running")]

    @property
    def best(self) -> dict | None:
        """The evaluation with the maximum top-1 (the first, on a tie)."""
        return max(self.evals, key=lambda r: r["top1"], default=None)

    def steps_to(self, target: float) -> float | None:
        """Paper steps of the first evaluation at or above the target."""
        return next((r["paper_steps"] for r in self.evals if r["top1"] >= target), None)


def find_runs(paths: list[Path]) -> list[Run]:
    """Every run of `bn-repro train` under the given run or sweep directories: a folder with a
    summary.json (those of `bn-repro figure1`, marked with a "study", are Figure 1's)."""
    runs = []
    for path in paths:
        for summary_path in sorted(path.rglob("summary.json")):
            summary = json.loads(summary_path.read_text())
            if "study" in summary:
                continue
            evals = [r for r in read_metrics(summary_path.parent) if r["kind"] == "eval"]
            runs.append(Run(summary_path.parent, summary, evals))
    return runs
