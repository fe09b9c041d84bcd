"""RUN_DIR/evaluations.jsonl: one JSON line per evaluation of the run by `bn-repro evaluate`,
alone or in an ensemble, appended. The file is never rewritten, and metrics.jsonl stays the
trainer's alone."""

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

FILE = "evaluations.jsonl"


def append(run_dir: Path, records: list[dict]) -> None:
    """Appends the records in one write to a file opened for appending: evaluations of the same
    run written at once (two ensembles sharing a member) never lose or split a line."""
    data = "".join(json.dumps(record) + "\n" for record in records).encode()
    descriptor = os.open(run_dir / FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        while data:  # a regular file takes it in one write, unless the disk fills
            data = data[os.write(descriptor, data) :]
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def read(run_dir: Path) -> list[dict]:
    """The run's evaluation records; a line cut short by a killed process is dropped."""
    path = run_dir / FILE
    records = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("dropping an incomplete line of %s", path)
    return records
