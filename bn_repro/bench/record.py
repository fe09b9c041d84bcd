"""A benchmark's record: its numbers with the machine, versions and command that produced them,
as JSON under results/bench/."""

import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from bn_repro.bench.device import describe_gpu
from bn_repro.files import write_json
from bn_repro.train.environment import git_revision, versions


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _lines("/proc/cpuinfo")
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory_kb = next(
        (int(line.split()[1]) for line in _lines("/proc/meminfo") if line.startswith("MemTotal")), 0
    )
    gpu = describe_gpu(torch.cuda.current_device()) if torch.cuda.is_available() else None
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kb / 2**20, 1),
        "gpu": gpu,
    }


def _lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def write_record(path: Path, settings: dict, results: dict) -> dict:
    record = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": ["bn-repro", *sys.argv[1:]],
        "machine": machine(),
        "versions": versions(),
        "git": git_revision(),
        "settings": settings,
        "results": results,
    }
    write_json(path, record)
    return record
