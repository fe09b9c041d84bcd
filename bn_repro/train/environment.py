"""The code and machine behind a run, appended to run_dir/environment.json at every start."""

import json
import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch

from bn_repro.files import write_json
from bn_repro.train.distributed import Dist

PACKAGES = ("bn-repro", "torch", "torchvision", "nvidia-dali-cuda130", "hydra-core", "webdataset")


def versions() -> dict:
    found = {"python": platform.python_version(), "cuda": torch.version.cuda}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def git_revision() -> dict | None:
    """The commit of the code that ran, and whether the tree held uncommitted changes outside
    results/ (where the project's commands write their records)."""
    source = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(source), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        changes = git("status", "--porcelain", "--", ":(top)", ":(top,exclude)results")
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(changes)}
    except (OSError, subprocess.CalledProcessError):
        return None


def record_start(run_dir: Path, dist: Dist, enabled: bool, switches: dict | None = None) -> None:
    """This start's command, host, device, the switches as resolved on it (main.
    resolved_switches: a resume on another device may train otherwise), versions and commit."""
    if not enabled:
        return
    path = run_dir / "environment.json"
    starts = json.loads(path.read_text()) if path.exists() else []
    device = torch.cuda.get_device_name(dist.device) if dist.device.type == "cuda" else "cpu"
    starts.append(
        {
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": sys.argv,
            "host": socket.gethostname(),
            "launcher": dist.launcher,
            "world_size": dist.world_size,
            "device": device,
            "switches": switches,
            "versions": versions(),
            "git": git_revision(),
        }
    )
    write_json(path, starts)
