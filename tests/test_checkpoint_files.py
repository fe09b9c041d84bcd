"""Checkpoint files as the disk and the user leave them: a full disk during a write (torch.save
reports it as a RuntimeError, not an OSError) and files in checkpoints/ that hold no weights."""

import errno
import io
import json
import os
import pathlib

import pytest
import torch

from bn_repro.errors import explain_os_error
from bn_repro.evaluate.members import EvaluateError, Settings, load_member
from bn_repro.train import checkpoint


def payload(values: int) -> dict:
    return {key: {} for key in checkpoint.PAYLOAD_KEYS} | {"model": {"w": torch.ones(values)}}


class FullDisk(io.FileIO):
    """A file on a disk with `room` bytes left, failing as a full disk does once they are used."""

    room = 0

    def write(self, data) -> int:
        if len(data) > FullDisk.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        FullDisk.room -= len(data)
        return super().write(data)


@pytest.fixture
def full_disk(monkeypatch):
    """Checkpoints written to a disk with 100 kB left (other files as they are)."""
    monkeypatch.setattr(FullDisk, "room", 100_000)
    real_open = pathlib.Path.open

    def opening(path, mode="r", *args, **kwargs):
        if path.name.endswith(".pt.tmp") and "w" in mode:
            return FullDisk(path, "wb")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", opening)


def test_torch_save_reports_a_full_disk_as_a_runtime_error(tmp_path):
    """What the write must see through: the OSError is only the RuntimeError's context."""
    FullDisk.room = 1_000
    with pytest.raises(RuntimeError) as caught, FullDisk(tmp_path / "x", "wb") as file:
        torch.save(payload(10_000), file)
    assert isinstance(caught.value.__context__, OSError)


def test_a_full_disk_names_the_checkpoint_and_the_room_it_needs_and_keeps_the_older(
    tmp_path, full_disk
):
    older = checkpoint.save(tmp_path, 1, payload(1_000), keep=3)  # 4 kB: fits
    with pytest.raises(OSError) as caught:
        checkpoint.save(tmp_path, 2, payload(1_000_000), keep=3)  # 4 MB: does not
    message = explain_os_error(caught.value)
    assert message.startswith(f"{tmp_path / 'checkpoints' / 'step_0000000002.pt.tmp'}: No space")
    assert "this checkpoint needs about 4.0 MB" in message and "MB are free there" in message
    assert "(step_0000000001.pt)" in message and "(the disk is full: free space there" in message
    assert checkpoint.checkpoints(tmp_path) == [older] and checkpoint.read(older)[1] is None
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))
    with pytest.raises(OSError, match="this checkpoint needs about 4.0 MB"):
        checkpoint.save_best(tmp_path, payload(1_000_000))


@pytest.mark.parametrize("content", [[1, 2, 3], {"config": {}, "progress": {}}])
def test_evaluate_of_a_checkpoint_without_weights_says_so(tmp_path, content):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({}))
    torch.save(content, run / "checkpoints" / "other.pt")
    with pytest.raises(EvaluateError, match="other.pt holds no weights"):
        load_member(run, "other.pt", Settings())
