"""Atomic file writes: a reader sees the old file or the new one, whole, never half of one."""

import json
import os
from pathlib import Path


def write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def write_json(path: Path, data) -> None:
    write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())
