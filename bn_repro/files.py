"""Atomic file writes (a reader sees the old file or the new one, whole, never half of one), and
reading JSON lines as a killed writer may have left them."""

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

log = logging.getLogger(__name__)


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """An OSError raised inside names path where it names no file: a write to a full disk says
    only ENOSPC, and the user must learn where."""
    try:
        yield
    except OSError as error:
        if error.filename is None and error.errno is not None:
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise


def write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    try:
        with naming(temporary):
            temporary.write_bytes(data)
        os.replace(temporary, path)
    except BaseException:
        with suppress(OSError):  # a full disk leaves no half-written file behind
            temporary.unlink()
        raise


def same_file(fd: int, path: Path) -> bool:
    """Whether the open file is still the one at path (not removed, moved or replaced)."""
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def write_json(path: Path, data) -> None:
    write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


def read_jsonl(path: Path, keys: tuple[str, ...] = ()) -> list[dict]:
    """The JSON objects of a JSON-lines file (none if it is missing); a line that is not one (cut
    short by a killed process, edited by hand), or lacks one of `keys`, is dropped with a
    warning naming the file and the line."""
    records = []
    if path.exists():
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict):
                log.warning("%s, line %d: not a JSON object; skipped", path, number)
            elif not record.keys() >= set(keys):
                missing = ", ".join(sorted(set(keys) - record.keys()))
                log.warning(
                    "%s, line %d: a record without %s; skipped: %.200s", path, number, missing, line
                )
            else:
                records.append(record)
    return records
