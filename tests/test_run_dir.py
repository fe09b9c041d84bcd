"""A run owns its run_dir while it runs (train.lock), keeps its records when a file goes missing
under it, leaves no half-written checkpoint and no foreign one in its way, and says in a sentence
what the file system refused."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from bn_repro.errors import explain_os_error
from bn_repro.files import write_json
from bn_repro.train import checkpoint, lock
from bn_repro.train.checkpoint import CheckpointError, checkpoints, load_latest, save, save_best
from bn_repro.train.lock import LOCK_NAME, STALE_AFTER_S, Holder, RunDirBusy, acquire
from bn_repro.train.metrics import Records, read_metrics
from bn_repro.train.signals import PREEMPTED, STOPPED, stop_code, stop_on_signals
from tests.helpers import BIN, TINY, bn_repro

# A process that takes a run_dir and keeps it until killed.
HOLD = (
    "import sys, time; from pathlib import Path; from bn_repro.train.lock import acquire;"
    " acquire(Path(sys.argv[1])); print('held', flush=True); time.sleep(600)"
)
# A process that holds the lock file's lock but writes no record in it.
LOCK_ONLY = (
    "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT);"
    " fcntl.lockf(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(600)"
)


def start_holding(script: str, path: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", script, path], stdout=subprocess.PIPE)
    assert process.stdout.readline() == b"held\n"
    return process


def wait_until(condition: Callable[[], bool], limit_s: float = 30) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"still not so after {limit_s} s"
        time.sleep(0.01)


def test_a_run_dir_is_refused_while_its_holder_lives_and_taken_once_it_died(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    run_dir = tmp_path / "run"
    holding = start_holding(HOLD, run_dir)
    try:
        with pytest.raises(RunDirBusy) as refused:
            acquire(run_dir)
        said = str(refused.value)
        assert f"{run_dir} is in use by another training" in said
        assert f"host {socket.gethostname()}, pid {holding.pid}, no SLURM job, since" in said
        assert "give this run its own run_dir=PATH" in said and str(run_dir / LOCK_NAME) in said
    finally:
        holding.kill()  # as a crash or a node's end: no chance to give the run_dir up
        holding.wait()
    assert (run_dir / LOCK_NAME).exists()
    acquire(run_dir).release()
    assert not (run_dir / LOCK_NAME).exists()


def test_a_lock_held_without_a_record_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "RECORD_WAIT_S", 0.2)
    tmp_path.mkdir(exist_ok=True)
    holding = start_holding(LOCK_ONLY, tmp_path / LOCK_NAME)
    try:
        with pytest.raises(RunDirBusy, match="has written no record of itself"):
            acquire(tmp_path)
    finally:
        holding.kill()
        holding.wait()
    acquire(tmp_path).release()


def a_finished_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


# Holders as the lock file records them, on file systems without locks, where the record alone
# decides: whether this start takes the run_dir over.
ELSEWHERE = {"host": "node-elsewhere", "pid": 4242, "pid_start": None, "slurm_job": None}
HOLDERS = {
    "here, its process gone": (lambda: {"pid": a_finished_pid(), "pid_start": None}, True),
    "here, its process alive": (
        lambda: {"pid": os.getppid(), "pid_start": lock.process_start(os.getppid())},
        False,
    ),
    "here, its pid now another process's": (
        lambda: {"pid": os.getppid(), "pid_start": lock.process_start(os.getppid()) + 1},
        True,
    ),
    "elsewhere, beating": (lambda: {**ELSEWHERE, "heartbeat": time.time() - 5}, False),
    "elsewhere, no heartbeat for too long": (
        lambda: {**ELSEWHERE, "heartbeat": time.time() - STALE_AFTER_S - 1},
        True,
    ),
    "elsewhere, this SLURM job before its requeue": (
        lambda: {**ELSEWHERE, "slurm_job": "77", "slurm_restarts": 0},
        True,
    ),
    "elsewhere, this SLURM job, not requeued": (
        lambda: {**ELSEWHERE, "slurm_job": "77", "slurm_restarts": 1},
        False,
    ),
}


@pytest.mark.parametrize("case", HOLDERS)
def test_without_file_locks_the_record_says_whether_the_holder_lives(tmp_path, monkeypatch, case):
    def no_locks(*args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock.fcntl, "lockf", no_locks)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    changes, taken = HOLDERS[case]
    theirs = replace(Holder.this_process(), token="theirs", **changes())
    write_json(tmp_path / LOCK_NAME, asdict(theirs))
    if taken:
        held = acquire(tmp_path)
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
        held.release()
    else:
        with pytest.raises(RunDirBusy, match=f"host {theirs.host}, pid {theirs.pid}, "):
            acquire(tmp_path)
        assert json.loads((tmp_path / LOCK_NAME).read_text())["token"] == "theirs"


def test_the_holder_beats_and_writes_its_lock_file_again_if_removed(tmp_path):
    held = acquire(tmp_path, heartbeat_s=0.01)
    path = tmp_path / LOCK_NAME

    def heartbeat() -> float:
        try:
            return json.loads(path.read_text())["heartbeat"]
        except (OSError, ValueError):
            return 0.0

    try:
        first = heartbeat()
        wait_until(lambda: heartbeat() > first)
        path.unlink()
        wait_until(lambda: heartbeat() > 0)
    finally:
        held.release()
    assert not path.exists()


def test_one_process_takes_a_run_dir_again_once_given_up_but_never_twice(tmp_path):
    # A Hydra sweep runs its jobs one after another in one process.
    held = acquire(tmp_path)
    with pytest.raises(RunDirBusy, match="in use by an earlier run of this same process"):
        acquire(tmp_path)
    held.release()
    acquire(tmp_path).release()


def train_record(step: int) -> dict:
    return {"kind": "train", "step": step, "paper_steps": step, "epoch": 0, "loss": 1.0}


@pytest.mark.parametrize("lacks", ["step", "kind", "paper_steps"])
def test_a_resume_skips_a_record_without_its_step_naming_the_line(tmp_path, caplog, lacks):
    bad = {k: v for k, v in train_record(2).items() if k != lacks}
    lines = [train_record(1), bad, train_record(3), train_record(9)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    records = Records(tmp_path, resume_step=5, enabled=True)
    records.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 3]  # 9: after the checkpoint
    assert f"metrics.jsonl, line 2: a record without {lacks}; skipped: {json.dumps(bad)}" in (
        caplog.text
    )


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
    strangers = ["step_0000000010 (copy).pt", "step_0000000010.pt~", "latest.pt"]
    for name in strangers:
        (directory / name).write_bytes((directory / "step_0000000010.pt").read_bytes())
    (directory / "step_0000000015.pt.tmp").write_bytes(b"a save killed half way")
    save_best(tmp_path, {**PAYLOAD, "progress": {"step": 12}})  # the trainer's, never resumed
    caplog.set_level("INFO")
    assert load_latest(tmp_path)["progress"] == {"step": 10}
    assert "left alone" in caplog.text and all(name in caplog.text for name in strangers)
    assert "best.pt" not in caplog.text
    save(tmp_path, 20, PAYLOAD, keep=1)
    assert checkpoints(tmp_path) == [directory / "step_0000000020.pt"]
    kept = ["step_0000000020.pt", "best.pt", *strangers]
    assert sorted(p.name for p in directory.iterdir()) == sorted(kept)


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


@pytest.mark.parametrize(
    ("override", "key"),
    [("run_dir=", "run_dir"), ("data.synthetic.val_size=0", "data.synthetic.val_size")],
)
def test_an_empty_run_dir_or_no_validation_images_is_refused_before_anything_is_written(
    tmp_path, override, key
):
    result = bn_repro("train", "experiment=bn_x5", "data=synthetic", override, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"bn-repro train: {key} ")
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_asks_for_a_stop_and_a_second_one_interrupts_at_once():
    received, before = [], signal.getsignal(signal.SIGINT)
    with stop_on_signals(received):
        os.kill(os.getpid(), signal.SIGINT)
        wait_until(lambda: received == [signal.SIGINT])
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            wait_until(lambda: False)
    assert signal.getsignal(signal.SIGINT) == before
    # a Ctrl-C on any rank stops the run for good, even where another signal asks for a requeue
    assert stop_code([]) == 0 and stop_code([signal.SIGTERM]) == PREEMPTED
    assert stop_code([signal.SIGUSR2, signal.SIGINT]) == STOPPED > PREEMPTED


def train_command(run_dir: Path, *overrides: str) -> list:
    return [BIN / "bn-repro", "train", *TINY, f"run_dir={run_dir}", *overrides]


def run(command: list, cwd: Path) -> subprocess.CompletedProcess:
    # a limit, so that a start that should have been refused and trains instead fails the test
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=900)


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.slow
def test_a_second_training_in_a_run_dir_is_refused_and_ctrl_c_stops_the_first_resumably(
    tmp_path,
):
    run_dir = tmp_path / "run"
    endless = ("experiment=bn_x5", "trainer.max_paper_steps=1e6")
    first = subprocess.Popen(
        train_command(run_dir, *endless), cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    wait_until(lambda: read_metrics(run_dir) or first.poll() is not None, limit_s=600)
    second = run(train_command(run_dir, *endless), tmp_path)
    assert second.returncode == 2, second.stderr
    holder = f"host {socket.gethostname()}, pid {first.pid}, "
    assert f"bn-repro train: {run_dir} is in use by another training: {holder}" in second.stderr
    assert "Traceback" not in second.stderr
    assert len(json.loads((run_dir / "environment.json").read_text())) == 1  # the first's start

    first.send_signal(signal.SIGINT)
    _, stderr = first.communicate(timeout=600)
    assert first.returncode == 130, stderr
    assert "the same command resumes the run" in stderr and "Traceback" not in stderr
    stopped = summary(run_dir)
    assert stopped["status"] == "stopped"
    assert checkpoints(run_dir)[-1].name == f"step_{stopped['step']:010d}.pt"
    assert not (run_dir / LOCK_NAME).exists()

    resumed = run(train_command(run_dir, "experiment=bn_x5", "trainer.max_paper_steps=1"), tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed at optimizer step {stopped['step']}" in resumed.stderr
    assert summary(run_dir)["status"] == "finished"


@pytest.mark.slow
def test_a_run_dir_that_cannot_be_written_is_said_so_and_a_sweep_goes_on(tmp_path):
    (tmp_path / "seed0").write_text("a file where a run_dir would be")
    swept = run(
        [
            BIN / "bn-repro",
            "train",
            "-m",
            *TINY,
            "experiment=bn_x5",
            "trainer.max_paper_steps=2.5",
            "seed=0,1",
            f"run_dir={tmp_path}/seed${{seed}}",
            f"hydra.sweep.dir={tmp_path}/sweep",
        ],
        tmp_path,
    )
    assert swept.returncode == 0, swept.stderr
    assert f"bn-repro train: {tmp_path}/seed0: " in swept.stderr
    assert "(something is already there: remove it, or choose another path)" in swept.stderr
    assert "Traceback" not in swept.stderr
    assert summary(tmp_path / "seed1")["status"] == "finished"

    one = run(train_command(tmp_path / "seed0" / "run", "experiment=bn_x5"), tmp_path)
    assert one.returncode == 2
    assert f"bn-repro train: {tmp_path}/seed0/run: " in one.stderr
    assert "(a part of the path is a file, not a folder: choose another path)" in one.stderr
    assert "Traceback" not in one.stderr
