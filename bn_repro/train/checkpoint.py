"""Checkpoints: written atomically by rank 0, the last few kept, loaded as plain data only; the
one a run resumes from is rank 0's choice, on every rank (load_agreed).

Only the trainer's own names, step_<10 digits>.pt, are checkpoints to resume from; best.pt holds
the best evaluation's weights, for `bn-repro evaluate`; any other file in checkpoints/ (a copy,
an editor's backup) is left alone."""

import errno
import logging
import os
import pickle
import re
import shutil
from contextlib import suppress
from pathlib import Path

import torch
import torch.distributed as dist

from bn_repro.errors import UserError, explain_os_error
from bn_repro.files import naming

log = logging.getLogger(__name__)

NAME = re.compile(r"step_\d{10}\.pt")
BEST = "best.pt"  # the best evaluation's weights (save_best), never resumed from
TEMPORARY = re.compile(r"(step_\d{10}|best)\.pt\.tmp")  # a save under way, or one killed
# What save() puts in every checkpoint, beside the caller's extras.
PAYLOAD_KEYS = {"model", "optimizer", "progress", "rng", "loader", "config"}


class CheckpointError(UserError):
    pass


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def checkpoint_name(step: int) -> str:
    return f"step_{step:010d}.pt"


def checkpoints(run_dir: Path) -> list[Path]:
    """The trainer's checkpoints, oldest first; a temporary file of a save that did not finish
    is not one, nor any file the trainer did not name."""
    directory = checkpoint_dir(run_dir)
    if not directory.is_dir():
        return []
    own = [path for path in directory.iterdir() if NAME.fullmatch(path.name) and path.is_file()]
    return sorted(own)  # ten digits: in the order of their steps


def strangers(run_dir: Path) -> list[Path]:
    """The files in checkpoints/ that are neither the trainer's checkpoints nor temporaries."""
    directory = checkpoint_dir(run_dir)
    if not directory.is_dir():
        return []
    own = (NAME, TEMPORARY)
    return sorted(
        p
        for p in directory.iterdir()
        if p.name != BEST and not any(n.fullmatch(p.name) for n in own)
    )


def save(run_dir: Path, step: int, payload: dict, keep: int) -> Path:
    """A step checkpoint (_write); the older ones go only once the new one is complete."""
    directory = checkpoint_dir(run_dir)
    path = directory / checkpoint_name(step)
    _write(path, payload)
    for old in checkpoints(run_dir)[:-keep]:
        old.unlink()
    for unfinished in directory.iterdir():  # of saves killed before: this run owns run_dir
        if TEMPORARY.fullmatch(unfinished.name):
            unfinished.unlink()
    return path


def best_path(run_dir: Path) -> Path:
    """The checkpoint of the run's best evaluation so far (Trainer.save_best); no step
    checkpoint, so resuming never starts from it."""
    return checkpoint_dir(run_dir) / BEST


def save_best(run_dir: Path, payload: dict) -> Path:
    path = best_path(run_dir)
    _write(path, payload)
    return path


def _write(path: Path, payload: dict) -> None:
    """Write under a temporary name, then rename: a reader, or a resume after a crash or a full
    disk, sees the older file or the new one whole; a write that fails leaves no temporary
    file, and one that fails for want of space says how much it needs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".pt.tmp")
    try:
        with naming(temporary), temporary.open("wb") as file:
            _save(payload, file)
            file.flush()
            os.fsync(file.fileno())  # NFS reports a full disk here, if not before
        os.replace(temporary, path)
    except BaseException as error:
        with suppress(OSError):
            temporary.unlink()
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _no_room(path, payload, error) from None
        raise


def _save(payload: dict, file) -> None:
    """torch.save, with the OSError of a write that failed: torch reports it as a RuntimeError
    ("enforce fail at inline_container.cc"), the OSError only its context."""
    try:
        torch.save(payload, file)
    except RuntimeError as error:
        cause = error.__context__
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__context__
        if cause is None:
            raise
        raise cause from None


def _no_room(path: Path, payload: dict, error: OSError) -> OSError:
    """The error of a full disk, saying what the user needs: how much room the checkpoint
    takes, how much there is, and that the older checkpoints stay."""
    free = shutil.disk_usage(path.parent).free
    kept = ", ".join(p.name for p in checkpoints(path.parent.parent)) or "none yet"
    return OSError(
        error.errno,
        f"{error.strerror}: this checkpoint needs about {_tensor_bytes(payload) / 1e6:,.1f} MB,"
        f" {free / 1e6:,.1f} MB are free there; the checkpoints written before stay ({kept}),"
        " and the same command resumes from the newest",
        error.filename,
    )


def _tensor_bytes(value) -> int:
    """The bytes of the tensors in a payload: nearly all of a checkpoint's size."""
    if isinstance(value, torch.Tensor):
        return value.nelement() * value.element_size()
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return sum(_tensor_bytes(item) for item in value)
    return 0


def load_latest(run_dir: Path) -> dict | None:
    """The newest checkpoint that reads as one of this trainer's, or None for a fresh run; one
    that does not is reported in a warning and the one before it tried. Only tensors and plain
    data are read (weights_only), never code a file holds."""
    found = newest_readable(run_dir)
    return None if found is None else found[1]


def newest_readable(run_dir: Path) -> tuple[Path, dict] | None:
    """load_latest's checkpoint, and its path."""
    if strangers(run_dir):
        names = ", ".join(path.name for path in strangers(run_dir))
        log.info("left alone in %s (not named by this trainer): %s", checkpoint_dir(run_dir), names)
    found, problems = checkpoints(run_dir), []
    for path in reversed(found):
        payload, problem = read(path)
        if problem is None:
            log.info("resuming from %s", path)
            return path, payload
        log.warning("checkpoint %s %s; trying the one before it", path, problem)
        problems.append(f"{path.name} {problem}")
    if found:
        raise CheckpointError(
            f"none of the {len(found)} checkpoints in {checkpoint_dir(run_dir)} can be resumed"
            f" from ({'; '.join(problems)}): move them away to train this run_dir from the start"
        )
    return None


def load_agreed(run_dir: Path) -> dict | None:
    """load_latest on every rank of the process group, of the one checkpoint rank 0 chose:
    ranks that each listed run_dir would resume from different steps where their listings
    differ (an NFS attribute cache a checkpoint behind, a run_dir that is not shared). Every
    rank stops, with rank 0's CheckpointError or the reason a rank cannot read rank 0's choice."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return load_latest(run_dir)
    choice: list = [None]
    payload = None
    if dist.get_rank() == 0:
        try:
            found = newest_readable(run_dir)
        except CheckpointError as error:
            choice[0] = error
        else:
            if found is not None:
                choice[0], payload = found[0].name, found[1]
    dist.broadcast_object_list(choice, src=0)
    if isinstance(choice[0], CheckpointError):
        raise choice[0]
    if choice[0] is None:
        return None
    problem = None
    if payload is None:
        payload, problem = read(checkpoint_dir(run_dir) / choice[0])
    problems: list = [None] * dist.get_world_size()
    dist.all_gather_object(problems, problem)
    unread = [(rank, why) for rank, why in enumerate(problems) if why is not None]
    if unread:
        rank, why = unread[0]
        raise CheckpointError(
            f"rank 0 resumes from {checkpoint_dir(run_dir) / choice[0]}; on rank {rank} that"
            f" file {why}: run_dir must be one folder that every node sees (a shared file"
            " system), not a folder of each node's own"
        )
    return payload


def read(path: Path) -> tuple[dict | None, str | None]:
    """A checkpoint's payload, or None and why it is not one of this trainer's."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:
        return None, f"cannot be read: {explain_os_error(error)}"
    except pickle.UnpicklingError:
        # torch's message would advise weights_only=False: running whatever the file holds
        return None, "holds more than tensors and plain data: not a checkpoint of this trainer"
    except Exception:  # noqa: BLE001 - a zip cut short or damaged: each fails in its own way
        return None, "is damaged or cut short"
    if not isinstance(payload, dict) or not payload.keys() >= PAYLOAD_KEYS:
        return None, "holds no trainer state: not a checkpoint of this trainer"
    return payload, None
