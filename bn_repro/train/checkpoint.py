"""Checkpoints: written atomically by rank 0, the last few kept, loaded as plain data only."""

import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def _step_of(path: Path) -> int:
    return int(path.stem.removeprefix("step_"))


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first; a temporary file from a killed save is not one."""
    return sorted(checkpoint_dir(run_dir).glob("step_*.pt"), key=_step_of)


def save(run_dir: Path, step: int, payload: dict, keep: int) -> Path:
    path = checkpoint_dir(run_dir) / f"step_{step:010d}.pt"
    _write(path, payload)
    for old in checkpoints(run_dir)[:-keep]:
        old.unlink()
    return path


def best_path(run_dir: Path) -> Path:
    """The checkpoint of the run's best evaluation so far (Trainer.save_best); no step
    checkpoint, so resuming never starts from it."""
    return checkpoint_dir(run_dir) / "best.pt"


def save_best(run_dir: Path, payload: dict) -> Path:
    path = best_path(run_dir)
    _write(path, payload)
    return path


def _write(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".pt.tmp")
    with temporary.open("wb") as file:
        torch.save(payload, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)  # atomic: a reader sees the old set or the new file, whole


def load_latest(run_dir: Path) -> dict | None:
    """The newest readable checkpoint, or None for a fresh run. Only tensors and plain data are
    accepted (weights_only); an unreadable file is reported and the one before it is tried."""
    found = checkpoints(run_dir)
    for path in reversed(found):
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any failure to read means: try an older one
            log.warning("checkpoint %s is unreadable (%s); trying the one before it", path, error)
            continue
        log.info("resuming from %s", path)
        return payload
    if found:
        raise CheckpointError(
            f"none of the {len(found)} checkpoints in {checkpoint_dir(run_dir)} can be read;"
            " move them away to train this run_dir from the start"
        )
    return None


class CheckpointError(RuntimeError):
    pass
