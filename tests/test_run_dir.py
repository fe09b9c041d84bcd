"""A run keeps its records when a file goes missing under it, leaves no half-written checkpoint
and no foreign one in its way, and names the file that a full disk stopped."""

import errno
import json
import os
from pathlib import Path

import pytest
import torch

from bn_repro.errors import explain_os_error
from bn_repro.train import checkpoint
from bn_repro.train.checkpoint import CheckpointError, checkpoints, load_latest, save
from bn_repro.train.records import Records, read_metrics


def train_record(step: int) -> dict:
    return {"kind": "train", "step": step, "paper_steps": step, "epoch": 0, "loss": 1.0}


def test_a_metrics_file_removed_or_replaced_during_the_run_is_written_again_whole(tmp_path, caplog):
    records = Records(tmp_path, 0, enabled=True)
    records.write(train_record(1))
    (tmp_path / "metrics.jsonl").unlink()
    records.write(train_record(2))
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    assert "removed or replaced during the run: written again with the run's 1 records" in (
        caplog.text
    )
    stranger = tmp_path / "other.jsonl"
    stranger.write_text("not this run's\n")
    stranger.replace(tmp_path / "metrics.jsonl")
    records.write(train_record(3))
    records.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    (aside,) = tmp_path.glob("metrics.jsonl.replaced-*")
    assert aside.read_text() == "not this run's\n"


class FullDisk:
    """A file whose writes find the disk full."""

    def __init__(self, file):
        self.file = file

    def __getattr__(self, name):
        return getattr(self.file, name)

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_names_the_file_it_stopped(tmp_path):
    records = Records(tmp_path, 0, enabled=True)
    records.write(train_record(1))
    records.metrics = FullDisk(records.metrics)
    with pytest.raises(OSError) as full:
        records.write(train_record(2))
    assert full.value.filename == str(tmp_path / "metrics.jsonl")
    assert "the disk is full" in explain_os_error(full.value)
    records.metrics = records.metrics.file
    records.close()


def test_a_full_disk_leaves_no_half_written_file(tmp_path, monkeypatch):
    records = Records(tmp_path, 0, enabled=True)
    records.write_file("summary.json", {"status": "running"})

    def fill(path, data):
        with open(path, "wb") as file:
            file.write(data[:3])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", fill)
    with pytest.raises(OSError) as full:
        records.write_file("summary.json", {"status": "finished"})
    monkeypatch.undo()
    records.close()
    assert full.value.filename == str(tmp_path / "summary.json.tmp")
    assert json.loads((tmp_path / "summary.json").read_text()) == {"status": "running"}
    assert not (tmp_path / "summary.json.tmp").exists()


PAYLOAD = {
    "model": {"w": torch.ones(3)},
    "optimizer": {},
    "progress": {"step": 10},
    "rng": [],
    "loader": [],
    "config": {},
}


def test_only_the_trainers_own_names_are_checkpoints_and_the_others_are_left_alone(
    tmp_path, caplog
):
    save(tmp_path, 10, PAYLOAD, keep=1)
    directory = tmp_path / "checkpoints"
    strangers = ["step_0000000010 (copy).pt", "step_0000000010.pt~", "best.pt"]
    for name in strangers:
        (directory / name).write_bytes((directory / "step_0000000010.pt").read_bytes())
    (directory / "step_0000000015.pt.tmp").write_bytes(b"a save killed half way")
    caplog.set_level("INFO")
    assert load_latest(tmp_path)["progress"] == {"step": 10}
    assert "left alone" in caplog.text and all(name in caplog.text for name in strangers)
    save(tmp_path, 20, PAYLOAD, keep=1)
    assert checkpoints(tmp_path) == [directory / "step_0000000020.pt"]
    assert sorted(p.name for p in directory.iterdir()) == sorted(["step_0000000020.pt", *strangers])


class Foreign:
    """An object a weights-only load refuses."""


def test_a_foreign_or_damaged_checkpoint_is_reported_in_our_words_and_an_older_one_used(
    tmp_path, caplog
):
    save(tmp_path, 10, PAYLOAD, keep=5)
    directory = tmp_path / "checkpoints"
    whole = (directory / "step_0000000010.pt").read_bytes()
    torch.save({"model": Foreign()}, directory / "step_0000000020.pt")
    (directory / "step_0000000030.pt").write_bytes(whole[: len(whole) // 2])
    torch.save({"w": torch.ones(3)}, directory / "step_0000000040.pt")  # a bare state_dict
    assert load_latest(tmp_path)["progress"] == {"step": 10}
    assert "weights_only" not in caplog.text
    for name, problem in (
        ("step_0000000020.pt", "holds more than tensors and plain data"),
        ("step_0000000030.pt", "is damaged or cut short"),
        ("step_0000000040.pt", "holds no trainer state"),
    ):
        assert f"{name} {problem}" in caplog.text
    (directory / "step_0000000010.pt").unlink()
    with pytest.raises(CheckpointError, match="none of the 3 checkpoints") as none:
        load_latest(tmp_path)
    assert "weights_only" not in str(none.value)


@pytest.mark.parametrize("fails_in", ["torch.save", "fsync"])
def test_a_checkpoint_that_finds_the_disk_full_leaves_the_older_ones_whole(
    tmp_path, monkeypatch, fails_in
):
    save(tmp_path, 10, PAYLOAD, keep=1)
    before = (tmp_path / "checkpoints" / "step_0000000010.pt").read_bytes()

    def half_then_full(payload, file):
        file.write(before[: len(before) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if fails_in == "torch.save":
        monkeypatch.setattr(checkpoint.torch, "save", half_then_full)
    else:
        monkeypatch.setattr(checkpoint.os, "fsync", full)
    with pytest.raises(OSError) as failed:
        save(tmp_path, 20, PAYLOAD, keep=1)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_0000000010.pt"]
    assert failed.value.errno == errno.ENOSPC
    assert failed.value.filename == str(tmp_path / "checkpoints" / "step_0000000020.pt.tmp")
    assert (tmp_path / "checkpoints" / "step_0000000010.pt").read_bytes() == before
