"""Who trains in a run directory: a run owns its run_dir while it runs, so that two trainings
never mix their records and checkpoints there, and a run that died never blocks its own restart.

The owner holds run_dir/train.lock: a POSIX record lock (fcntl), which the kernel or the NFS
server drops when its holder dies, and in the file a record of the holder (host, pid, SLURM job,
since when) with a heartbeat that a thread of the owner refreshes. The record decides where the
lock cannot: on file systems without locks (Lustre mounted noflock, NFS with nolock, where a lock
is local to one node), and where a dead node's lock outlives it (an NFS lease takes minutes).
A start takes the run over from a holder whose process is gone (on this host), whose heartbeat
stopped (elsewhere), or that is its own SLURM job started again (a requeue).

Torch-free, so that the command line and the tests import it in no time."""

import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from bn_repro.errors import UserError
from bn_repro.files import same_file

log = logging.getLogger(__name__)

LOCK_NAME = "train.lock"
HEARTBEAT_S = 60.0
# A holder elsewhere that missed ten heartbeats is dead, not slowed by a busy shared file system.
STALE_AFTER_S = 600.0
# How long a start waits for the record of a holder that has only just created the file.
RECORD_WAIT_S = 2.0
# Where locks are missing (ENOLCK, ENOSYS: NFS with nolock, Lustre with noflock) or refused.
NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL}

_held: set[Path] = set()  # run_dirs this process owns: a POSIX lock never refuses its own process


class RunDirBusy(UserError):
    """Another training owns the run_dir."""


@dataclass(frozen=True)
class Holder:
    """A lock file's record: who owns the run_dir, and when it last said it was alive."""

    host: str
    pid: int
    pid_start: int | None  # the process's start time (clock ticks after boot): pids are reused
    slurm_job: str | None
    slurm_restarts: int  # SLURM_RESTART_COUNT: a requeued job starts again with one more
    since: str  # UTC, ISO 8601
    heartbeat: float  # seconds since the epoch, on the holder's clock
    token: str  # this start's own, to tell its record from a taker-over's

    @classmethod
    def this_process(cls) -> "Holder":
        return cls(
            host=socket.gethostname(),
            pid=os.getpid(),
            pid_start=process_start(os.getpid()),
            slurm_job=os.environ.get("SLURM_JOB_ID"),
            slurm_restarts=int(os.environ.get("SLURM_RESTART_COUNT") or 0),
            since=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            heartbeat=time.time(),
            token=uuid.uuid4().hex,
        )


def process_start(pid: int) -> int | None:
    """When the process started, in clock ticks after boot (Linux); None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22 of proc(5), after the name


def process_alive(pid: int, pid_start: int | None) -> bool:
    """Whether the process runs on this host, and is the one recorded, not a reuse of its pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    return pid_start is None or process_start(pid) in (None, pid_start)


def dead_because(
    holder: Holder, me: Holder, locked: bool | None, now: float, stale_after_s: float
) -> str | None:
    """Why the holder is dead and its run_dir may be taken over, or None while it may live.
    locked: whether this start got the file's lock (True), found it held (False), or the file
    system has no locks (None)."""
    if holder.host == me.host:
        # here the lock is the kernel's word, where there is one; else the process table's
        if holder.pid == me.pid or locked is True:
            return f"its process {holder.pid} is gone"
        if locked is None and not process_alive(holder.pid, holder.pid_start):
            return f"its process {holder.pid} is gone"
        return None
    requeued = me.slurm_job is not None and holder.slurm_job == me.slurm_job
    if requeued and me.slurm_restarts > holder.slurm_restarts:
        return f"this is its SLURM job {me.slurm_job}, started again"
    if now - holder.heartbeat > stale_after_s:
        return f"its heartbeat stopped {now - holder.heartbeat:.0f} s ago"
    return None  # elsewhere, a lock we got may be local to this node (NFS with nolock)


def busy_message(run_dir: Path, holder: Holder | None, now: float, stale_after_s: float) -> str:
    path = run_dir / LOCK_NAME
    if holder is None:
        who = "a training that has written no record of itself in its lock file"
    else:
        job = f"SLURM job {holder.slurm_job}" if holder.slurm_job else "no SLURM job"
        who = (
            f"another training: host {holder.host}, pid {holder.pid}, {job}, since"
            f" {holder.since} (its last heartbeat {now - holder.heartbeat:.0f} s ago)"
        )
    return (
        f"{run_dir} is in use by {who}. Two trainings in one run_dir would mix their records and"
        " checkpoints: wait until it ends or stop it (the same command then resumes from its"
        " checkpoint), or give this run its own run_dir=PATH. A training that died is taken"
        f" over by the next start (on another host once its heartbeat is {stale_after_s:.0f} s"
        f" old); if you know it is dead, remove {path}"
    )


def acquire(
    run_dir: Path, heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S
) -> "RunLock":
    """Take run_dir (created if missing) for this process until RunLock.release; RunDirBusy,
    naming the holder, while another training owns it."""
    key = run_dir.resolve()
    if key in _held:
        raise RunDirBusy(f"{run_dir} is in use by an earlier run of this same process")
    run_dir.mkdir(parents=True, exist_ok=True)
    path, me = run_dir / LOCK_NAME, Holder.this_process()
    deadline = time.monotonic() + RECORD_WAIT_S
    while True:
        created, fd = _open(path)
        locked = _try_lock(fd)
        holder = _read(fd)
        if not same_file(fd, path):  # its owner released (removed) it meanwhile: once more
            os.close(fd)
            continue
        # a lock held, or a file another start made, without a record: its writer is at it
        waiting = holder is None and (locked is False or (locked is None and not created))
        if waiting and time.monotonic() < deadline:
            os.close(fd)
            time.sleep(0.1)
            continue
        now = time.time()
        if holder is None:  # after the wait, only a lock still held counts
            reason = None if locked is False else "its lock file holds no record"
        else:
            reason = dead_because(holder, me, locked, now, stale_after_s)
        if reason is None:
            os.close(fd)
            raise RunDirBusy(busy_message(run_dir, holder, now, stale_after_s))
        if holder is not None:
            log.warning(
                "taking %s over from %s, pid %d: %s", run_dir, holder.host, holder.pid, reason
            )
        _write(fd, me)
        _held.add(key)
        return RunLock(key, path, fd, me, heartbeat_s)


class RunLock:
    """This process's hold on a run_dir; a thread refreshes the heartbeat until release."""

    def __init__(self, key: Path, path: Path, fd: int, me: Holder, heartbeat_s: float):
        self.key, self.path, self.fd, self.me = key, path, fd, me
        self.stopping = threading.Event()
        self.thread = threading.Thread(
            target=self._beat, args=(heartbeat_s,), name="run_dir heartbeat", daemon=True
        )
        self.thread.start()

    def _beat(self, every_s: float) -> None:
        while not self.stopping.wait(every_s):
            try:
                if not self._still_ours():
                    return
                self.me = replace(self.me, heartbeat=time.time())
                _write(self.fd, self.me)
            except OSError as error:  # a hiccup of the file system: the next beat tries again
                log.warning("%s: heartbeat not written: %s", self.path, error)

    def _still_ours(self) -> bool:
        """Whether the lock file is still this run's; one removed by hand is made again."""
        if not same_file(self.fd, self.path):
            created, fd = _open(self.path)
            if not created:
                os.close(fd)
                log.error("%s was replaced while this run owned it", self.path)
                return False
            log.warning("%s was removed while this run owned it: written again", self.path)
            _try_lock(fd)
            os.close(self.fd)  # another file: the new one's lock stays
            self.fd = fd
            return True
        holder = _read(self.fd)
        if holder is not None and holder.token != self.me.token:
            log.error("%s was taken over by %s, pid %d", self.path, holder.host, holder.pid)
            return False
        return True

    def release(self) -> None:
        """Stop the heartbeat and give the run_dir up (its lock file goes, where still ours)."""
        self.stopping.set()
        self.thread.join()
        try:
            holder = _read(self.fd)
            if same_file(self.fd, self.path) and holder and holder.token == self.me.token:
                self.path.unlink()  # before the lock goes with the descriptor: no gap
        except OSError as error:
            log.warning("%s not removed: %s", self.path, error)
        finally:
            os.close(self.fd)
            _held.discard(self.key)


def _open(path: Path) -> tuple[bool, int]:
    """The lock file's descriptor, and whether this call created it."""
    try:
        return True, os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False, os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def _try_lock(fd: int) -> bool | None:
    """Take the POSIX lock (dropped by the kernel, or the NFS server, when this process dies;
    not inherited by forked loader workers): True, False if held, None without locks here."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EACCES, errno.EAGAIN):
            return False
        if error.errno in NO_LOCKS:
            return None
        raise
    return True


def _read(fd: int) -> Holder | None:
    # Through this descriptor: closing another one of this file would drop this process's lock.
    try:
        return Holder(**json.loads(os.pread(fd, 1 << 16, 0)))
    except (ValueError, TypeError):  # empty, half written, or not ours
        return None


def _write(fd: int, holder: Holder) -> None:
    data = (json.dumps(asdict(holder)) + "\n").encode()
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))
    os.fsync(fd)  # NFS: on the server now, for a start on another node to read
