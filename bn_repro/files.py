"""Atomic file writes (a reader sees the old file or the new one, whole, never half of one), and
reading JSON lines as a killed writer may have left them."""

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def write_json(path: Path, data) -> None:
    write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a JSON-lines file (none if it is missing); a line that is not one (cut
    short by a killed process, edited by hand) is dropped with a warning naming the file."""
    records = []
    if path.exists():
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                records.append(record)
            else:
                log.warning("%s, line %d: not a JSON object; skipped", path, number)
    return records
