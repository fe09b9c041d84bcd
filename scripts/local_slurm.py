"""A single-node SLURM on the host, to try hydra/launcher=slurm and slurm/ without a cluster;
the SLURM tests run on it too. As root (apt-get, and daemons that start jobs as any user):

    python scripts/local_slurm.py start /tmp/slurm   # then: the two exports it prints
    python scripts/local_slurm.py stop /tmp/slurm

`start` installs Debian's slurm-wlm and munge when they are missing, writes a configuration with
the host's CPUs and memory under the folder, starts munged, slurmctld and slurmd there, and
waits until the node is idle. `stop` cancels every job, stops the three daemons and kills what
is left of the jobs. Nothing outside the folder changes but the installed packages.

Without slurmdbd there is no accounting, and a plain `sacct` fails; submitit reads its jobs'
states with it, and without them waits forever for a job that died before writing its result.
The cluster logs ended jobs (jobcomp/filetxt) and puts a `sacct` first on PATH (FOLDER/bin)
that reads that log (sacct --completion): a job's state once it has ended, none while it runs.
"""

import argparse
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("slurmd", "slurmctld", "munged")  # in the order they stop
INSTALL_LOCK = Path(tempfile.gettempdir()) / "bn-repro-slurm-install.lock"
# submitit's sacct calls, answered from the job completion log
SACCT = """#!/bin/sh
exec {sacct} --completion "$@"
"""


class SlurmError(RuntimeError):
    """The local SLURM could not start or stop; the message says why, and where to look."""


class LocalSlurm:
    def __init__(self, root: Path):
        self.root = root.resolve()
        self.conf = self.root / "slurm.conf"
        self.socket = self.root / "munge" / "munge.socket"

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def env(self) -> dict:
        """This process's environment, pointing SLURM's commands at this cluster."""
        path = f"{self.bin}:{os.environ['PATH']}"
        return {**os.environ, "SLURM_CONF": str(self.conf), "PATH": path}

    def pid_file(self, daemon: str) -> Path:
        return self.root / f"{daemon}.pid"

    def pid_files(self) -> dict[Path, str]:
        """Each daemon's pid file, and the daemon's command name."""
        return {self.pid_file(daemon): daemon for daemon in DAEMONS}

    def start(self, timeout_s: float = 60) -> None:
        install()
        # munged refuses a socket in a folder that not everyone may enter
        (self.root / "munge").mkdir(parents=True, exist_ok=True)
        for folder in (self.root, self.root / "munge"):
            folder.chmod(0o755)
        for folder in ("state", "spool"):
            (self.root / folder).mkdir(exist_ok=True)
        self.conf.write_text(self.configuration())
        self.bin.mkdir(exist_ok=True)
        # SLURM's own sacct, not this one (PATH may hold this folder already)
        elsewhere = [p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != self.bin]
        sacct = self.bin / "sacct"
        sacct.write_text(SACCT.format(sacct=shutil.which("sacct", path=os.pathsep.join(elsewhere))))
        sacct.chmod(0o755)
        key = self.root / "munge" / "munge.key"
        if not key.exists():
            run(["mungekey", "--create", f"--keyfile={key}"])
        run(
            [
                "munged",
                f"--socket={self.socket}",
                f"--key-file={key}",
                f"--pid-file={self.pid_file('munged')}",
                f"--log-file={self.root / 'munged.log'}",
                f"--seed-file={self.root / 'munge' / 'munged.seed'}",
            ]
        )
        run(["slurmctld", "-f", str(self.conf)], env=self.env)
        self.start_nodes()
        self.wait_until_idle(timeout_s)

    def start_nodes(self) -> None:
        run(["slurmd", "-f", str(self.conf)], env=self.env)

    def configuration(self) -> str:
        # slurmd -C: the host's node line (name, CPUs, sockets, cores, memory in MB)
        node = run(["slurmd", "-C"], capture=True).splitlines()[0]
        host = socket.gethostname()
        try:  # jobs meet their other ranks at the node's name
            socket.gethostbyname(host)
        except OSError:
            message = f"the host's name {host} does not resolve: add it to /etc/hosts"
            raise SlurmError(message) from None
        nodes = f"{node} NodeAddr=127.0.0.1 State=UNKNOWN"
        return self.common_configuration("127.0.0.1", "", nodes)

    def common_configuration(self, controller_address: str, per_node: str, nodes: str) -> str:
        """The cluster's slurm.conf: per_node goes into the names of each slurmd's files (%n,
        the node's name, where several slurmd share the folder)."""
        host = socket.gethostname()
        controller, node_daemon = free_ports(2)
        root = self.root
        return f"""\
# A local cluster, written by scripts/local_slurm.py
ClusterName=bnrepro
SlurmctldHost={host}({controller_address})
SlurmctldPort={controller}
SlurmdPort={node_daemon}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: also how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket={self.socket},cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool{per_node}
SlurmctldPidFile={self.pid_file("slurmctld")}
SlurmdPidFile={root}/slurmd{per_node}.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd{per_node}.log
# No cgroups: processes are tracked through their parents, and tasks are not bound to CPUs.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/builtin
# Look at pending jobs every 2 s (not 60): a requeued job starts again soon after cred_expire.
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# Ended jobs, for sacct --completion (FOLDER/bin/sacct)
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.log
{nodes}
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""

    def wait_until_idle(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        state = ""
        while time.monotonic() < deadline:
            probe = subprocess.run(
                ["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, env=self.env
            )
            state = probe.stdout.strip()
            if state == "idle":
                return
            time.sleep(0.2)
        logs = ", ".join(str(self.root / f"{d}.log") for d in DAEMONS)
        raise SlurmError(
            f"the node is {state or 'not reachable'} after {timeout_s:.0f} s: see {logs}"
        )

    def stop(self, grace_s: float = 20) -> None:
        """Cancel every job, stop the daemons, then kill any process still holding this
        cluster's configuration in its environment (job steps whose daemon is gone)."""
        if shutil.which("scancel") and self.pid_file("slurmctld").exists():
            subprocess.run(["scancel", "--full", "--partition=local"], env=self.env, check=False)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and self.jobs():
                time.sleep(0.2)
        for pid in self.daemons():
            end(pid, grace_s)
        for pid in self.job_processes():
            end(pid, 0)
        left = [pid for pid in self.daemons() + self.job_processes() if running(pid)]
        if left:
            raise SlurmError(f"processes {left} still run after SIGKILL")

    def daemons(self) -> list[int]:
        pids = [(read_pid(path), daemon) for path, daemon in self.pid_files().items()]
        # a pid file outlives its daemon, and the pid may be another process's by now
        return [pid for pid, daemon in pids if pid is not None and command_name(pid) == daemon]

    def jobs(self) -> list[str]:
        listing = subprocess.run(
            ["squeue", "--noheader", "--format=%i"], capture_output=True, text=True, env=self.env
        )
        return listing.stdout.split()

    def job_processes(self) -> list[int]:
        mark = f"SLURM_CONF={self.conf}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:  # gone, or not ours to read
                continue
            if mark in environ:
                found.append(int(entry.name))
        return found


def installed() -> bool:
    return all(shutil.which(command) for command in ("slurmctld", "slurmd", "munged", "sbatch"))


def install() -> None:
    if installed():
        return
    if os.geteuid() != 0:
        raise SlurmError(f"SLURM is not installed: run as root, or apt-get install {PACKAGES}")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with INSTALL_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two clusters started at once: one apt-get, not two
        if installed():
            return
        run(["apt-get", "update", "--quiet"], env=environment)
        run(
            ["apt-get", "install", "--quiet", "--yes", "--no-install-recommends", *PACKAGES],
            env=environment,
        )


def run(command: list[str], env: dict | None = None, capture: bool = False) -> str:
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode:
        raise SlurmError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr}")
    if not capture:
        sys.stderr.write(result.stdout)
    return result.stdout


def free_ports(count: int) -> list[int]:
    probes = [socket.socket() for _ in range(count)]
    for probe in probes:
        probe.bind(("127.0.0.1", 0))
    ports = [probe.getsockname()[1] for probe in probes]
    for probe in probes:
        probe.close()
    return ports


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"  # a zombie has ended


def end(pid: int, grace_s: float) -> None:
    """SIGTERM, then SIGKILL if the process still runs after grace_s."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and running(pid):
            time.sleep(0.1)
        if not running(pid):
            return


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("folder", type=Path, help="configuration, state and logs")
    args = parser.parse_args()
    cluster = LocalSlurm(args.folder)
    try:
        if args.action == "start":
            cluster.start()
            print(f"export SLURM_CONF={cluster.conf} PATH={cluster.bin}:$PATH")
        else:
            cluster.stop()
    except SlurmError as error:
        print(f"local_slurm {args.action}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
