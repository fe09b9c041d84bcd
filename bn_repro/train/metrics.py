"""What a run leaves behind: metrics.jsonl (the source of truth), TensorBoard scalars of the same
numbers, summary.json and the run's set-up files. Only rank 0 writes; other ranks hold a
disabled Records."""

import json
import logging
import sys
import time
from logging.handlers import WatchedFileHandler
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from bn_repro.files import naming, read_jsonl, same_file, write_bytes, write_json

log = logging.getLogger(__name__)

COUNTERS = ("step", "images_seen", "paper_steps", "epoch")


# What a resume reads of every record: which steps it covers, and its kind.
RECORD_KEYS = ("kind", "step", "paper_steps")


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of metrics.jsonl; a line cut short by a killed process, or a record without
    one of RECORD_KEYS, is dropped with a warning that names its line."""
    return read_jsonl(run_dir / "metrics.jsonl", RECORD_KEYS)


class Records:
    def __init__(self, run_dir: Path, resume_step: int, enabled: bool):
        self.run_dir, self.enabled = run_dir, enabled
        self.evals: list[dict] = []  # the evaluation records, for find
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        # A resumed run repeats the steps after its checkpoint: drop what was logged for them.
        kept = [r for r in read_metrics(run_dir) if r["step"] <= resume_step]
        self.evals = [r for r in kept if r["kind"] == "eval"]
        self.metrics_path = run_dir / "metrics.jsonl"
        write_bytes(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        self.metrics = self.metrics_path.open("a+")  # readable too: see keep_metrics_file
        # purge_step hides the events a killed run wrote after the checkpoint.
        self.tensorboard = SummaryWriter(
            run_dir / "tensorboard", purge_step=tensorboard_step(kept[-1]) + 1 if kept else None
        )

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with naming(self.metrics_path):
            self.keep_metrics_file()
            self.metrics.write(json.dumps(record) + "\n")
            self.metrics.flush()
        if record["kind"] == "eval":
            self.evals.append(record)
        step = tensorboard_step(record)
        with naming(self.run_dir / "tensorboard"):
            for key, value in record.items():
                if key not in COUNTERS and isinstance(value, int | float):
                    self.tensorboard.add_scalar(tensorboard_tag(record, key), value, step)
            self.tensorboard.flush()

    def keep_metrics_file(self) -> None:
        """A metrics.jsonl removed, moved or replaced during the run is written again whole from
        the file still open here: no record goes where nobody reads it, and none is lost."""
        if same_file(self.metrics.fileno(), self.metrics_path):
            return
        self.metrics.seek(0)
        records = self.metrics.read()
        found = ""
        if self.metrics_path.exists():  # another file put in its place: kept beside
            aside = self.metrics_path.with_name(f"metrics.jsonl.replaced-{time.time():.0f}")
            self.metrics_path.rename(aside)
            found = f" (the file found in its place is now {aside.name})"
        write_bytes(self.metrics_path, records.encode())
        self.metrics.close()
        self.metrics = self.metrics_path.open("a+")
        log.warning(
            "%s was removed or replaced during the run: written again with the run's %d records%s;"
            " the run goes on",
            self.metrics_path,
            records.count("\n"),
            found,
        )

    def find(self, **match) -> dict | None:
        """The last evaluation record whose fields equal match (on rank 0; None elsewhere)."""
        found = [r for r in self.evals if all(r.get(k) == v for k, v in match.items())]
        return found[-1] if found else None

    def write_file(self, name: str, data) -> None:
        if self.enabled:
            write_json(self.run_dir / name, data)

    def close(self) -> None:
        if self.enabled:
            self.metrics.close()
            self.tensorboard.close()


def tensorboard_tag(record: dict, key: str) -> str:
    """train/loss, eval/top1, ...; an evaluation with Algorithm 2's statistics apart from those
    with running averages at the same step: eval_population/top1."""
    group = record["kind"] + ("_population" if record.get("bn_stats") == "population" else "")
    return f"{group}/{key}"


def tensorboard_step(record: dict) -> int:
    # TensorBoard's x axis in the paper's unit, as Fig. 2's.
    return int(record["paper_steps"])


def setup_logging(run_dir: Path, rank: int) -> None:
    """Rank 0 logs progress to stderr and run_dir/train.log; other ranks only their warnings."""
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(f"%(asctime)s [rank {rank}] %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(WatchedFileHandler(run_dir / "train.log"))  # made again if removed
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
