"""Runs across two SLURM nodes on one machine (scripts/local_nodes.py: network namespaces, as
root), one gloo rank on each node's CPU: the sbatch template, Hydra's submitit launcher and
torchrun by hand each end with the records of two ranks on one node; a rank killed after a
checkpoint ends its job within a minute and the same command resumes it; a rank gone silent
ends the run after the collective timeout, named; a node whose name resolves to a loopback
address is refused at once, and GLOO_SOCKET_IFNAME makes it work. One cluster serves them all."""

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bn_repro.train.checkpoint import checkpoints
from bn_repro.train.metrics import read_metrics
from scripts.local_nodes import NODE_INTERFACE, LocalNodes
from scripts.local_slurm import SlurmError
from tests.helpers import BIN, TINY, assert_same_records, bn_repro

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

SLURM = Path(__file__).resolve().parent.parent / "slurm"
# TINY, 4 paper steps long: 8 optimizer steps of 2 ranks x 8 images, a checkpoint every 2 and
# three evaluations of 21 images (11 + 10 a rank), the last one Algorithm 2's.
RUN = [
    *TINY,
    "experiment=bn_x5",
    "data.synthetic.val_size=21",
    "trainer.max_paper_steps=4",
    "trainer.eval_every_paper_steps=2",
    "trainer.log_every_paper_steps=1",
    "trainer.checkpoint_every_paper_steps=1",
    "trainer.population_batches=1",
]
SUBMITIT = [
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.nodes=2",
    "hydra.launcher.tasks_per_node=1",
    "hydra.launcher.cpus_per_task=1",  # its setup exports OMP_NUM_THREADS=1 (env)
    "hydra.launcher.timeout_min=60",
]
SBATCH = ["--nodes=2", "--gpus-per-node=0", "--cpus-per-task=2"]
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}
WAIT_S = 300  # a run's limit here, so that a broken one fails rather than hangs
ENDS_WITHIN_S = 60  # a job whose rank was killed
SILENT_TIMEOUT_MINUTES = 0.25  # trainer.collective_timeout_minutes of the silent-rank run
# What a rank gone silent may add to the collective timeout before the run has ended: the
# others' check-in (distributed.CHECK_IN_S), torchrun stopping its worker, a loaded machine.
SILENT_MARGIN_S = 30
RENDEZVOUS_PORTS = itertools.count(29400)  # one a torchrun pair, each free on a fresh start


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        pytest.skip("two local nodes need root: network namespaces, and daemons that run jobs")
    missing = [tool for tool in ("ip", "nsenter", "unshare") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"two local nodes need {', '.join(missing)} (iproute2, util-linux)")
    nodes = LocalNodes(Path(tempfile.gettempdir()) / "bn-repro-nodes")
    try:
        started = time.monotonic()
        try:
            nodes.start()
        except SlurmError as error:
            pytest.skip(f"two local nodes cannot start here: {error}")
        print(f"two nodes idle after {time.monotonic() - started:.1f} s", file=sys.stderr)
        yield nodes
    finally:
        stopping = time.monotonic()
        nodes.stop()
        shutil.rmtree(nodes.root, ignore_errors=True)
        print(f"two nodes removed after {time.monotonic() - stopping:.1f} s", file=sys.stderr)


@pytest.fixture(scope="module")
def env(cluster) -> dict:
    """For commands and jobs: this cluster, this environment's bn-repro, one rank a node, one
    thread a rank: torchrun's default for the one-node run, whose records these must match
    (another thread count sums in another order, and training amplifies the difference)."""
    return {
        **cluster.env,
        "PATH": f"{BIN}:{cluster.env['PATH']}",
        "RANKS_PER_NODE": "1",
        "OMP_NUM_THREADS": "1",
    }


@pytest.fixture(scope="module")
def one_node(tmp_path_factory) -> Path:
    """The same two ranks on one node: the records every two-node run must end with."""
    run_dir = tmp_path_factory.mktemp("one-node") / "run"
    train = [BIN / "bn-repro", "train", *RUN, f"run_dir={run_dir}"]
    command = [BIN / "torchrun", "--standalone", "--nproc_per_node=2", "--no-python", *train]
    result = subprocess.run(command, capture_output=True, text=True, timeout=WAIT_S)
    assert result.returncode == 0, result.stderr
    return run_dir


def starts(run_dir: Path) -> list[tuple]:
    records = json.loads((run_dir / "environment.json").read_text())
    return [(start["launcher"], start["world_size"], start["host"]) for start in records]


def resumed_at(run_dir: Path) -> int:
    (step,) = re.findall(r"resumed at optimizer step (\d+)", (run_dir / "train.log").read_text())
    return int(step)


def job_state(job_id: str, env: dict) -> str:
    shown = subprocess.run(
        ["scontrol", "--oneliner", "show", "job", job_id],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return re.search(r"JobState=(\S+)", shown.stdout)[1]


def wait_for_job(job_id: str, env: dict, limit_s: float = WAIT_S) -> str:
    deadline = time.monotonic() + limit_s
    while (state := job_state(job_id, env)) not in FINAL_STATES:
        assert time.monotonic() < deadline, f"job {job_id} still {state} after {limit_s} s"
        time.sleep(0.2)
    return state


def wait_for_checkpoint(run_dir: Path, *processes: subprocess.Popen) -> None:
    deadline = time.monotonic() + WAIT_S
    while not checkpoints(run_dir):
        assert time.monotonic() < deadline, f"no checkpoint in {run_dir} after {WAIT_S} s"
        assert all(p.poll() is None for p in processes), "the run ended before a checkpoint"
        time.sleep(0.05)


def rank_process(cluster: LocalNodes, node: int, variable: str) -> int:
    """The trainer on the node whose environment holds variable (RANK=1: torchrun's worker,
    SLURM_PROCID=1: submitit's task)."""
    for pid in cluster.network.processes(node):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:  # ended meanwhile
            continue
        if variable.encode() in environ and b"torchrun" not in command:
            return pid
    raise AssertionError(f"no process with {variable} on node{node}")


def sbatch(run_dir: Path, env: dict, *overrides: str) -> str:
    submitted = subprocess.run(
        [
            "sbatch",
            "--parsable",
            f"--output={run_dir}/slurm-%j.out",
            *SBATCH,
            SLURM / "train.sbatch",
            *RUN,
            f"run_dir={run_dir}",
            *overrides,
        ],
        capture_output=True,
        text=True,
        cwd=run_dir.parent,
        env=env,
        check=True,
    )
    return submitted.stdout.strip()


def log_of(run_dir: Path) -> str:
    return "".join(path.read_text() for path in sorted(run_dir.glob("slurm-*.out")))


def torchrun_on_nodes(cluster, env, run_dir: Path, *overrides: str) -> list[subprocess.Popen]:
    """One torchrun a node, meeting at node1 (c10d rendezvous), no SLURM; each in a process
    group of its own with its worker (end_all)."""
    train = [BIN / "bn-repro", "train", *RUN, f"run_dir={run_dir}", *overrides]
    torchrun = [
        BIN / "torchrun",
        "--nnodes=2",
        "--nproc_per_node=1",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint=node1:{next(RENDEZVOUS_PORTS)}",
        f"--rdzv_id={run_dir.parent.name}",
        "--no-python",
        *train,
    ]
    return [
        subprocess.Popen(
            cluster.network.on(node, torchrun),
            env=env,
            cwd=run_dir.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for node in (1, 2)
    ]


def end_all(torchruns: list[subprocess.Popen]) -> None:
    """Kill what is left of torchrun_on_nodes' processes (a stopped worker too)."""
    for torchrun in torchruns:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(torchrun.pid, signal.SIGKILL)
        torchrun.wait()


def test_an_sbatch_job_across_two_nodes_ends_soon_after_a_rank_is_killed_and_resumes(
    cluster, env, one_node, tmp_path
):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    job_id = sbatch(run_dir, env)
    wait_for_checkpoint(run_dir)
    os.kill(rank_process(cluster, 2, "RANK=1"), signal.SIGKILL)
    killed = time.monotonic()
    assert wait_for_job(job_id, env, ENDS_WITHIN_S) == "FAILED", log_of(run_dir)
    print(f"killed rank's job ended after {time.monotonic() - killed:.1f} s", file=sys.stderr)
    again = sbatch(run_dir, env)
    assert wait_for_job(again, env) == "COMPLETED", log_of(run_dir)
    assert 0 < resumed_at(run_dir) < 8
    assert starts(run_dir) == [("torchrun", 2, "node1")] * 2
    assert_same_records(read_metrics(run_dir), read_metrics(one_node))


def test_a_submitit_job_across_two_nodes_keeps_the_records_of_one(env, one_node, tmp_path):
    run_dir = tmp_path / "run"
    result = bn_repro(
        "train",
        "-m",
        *RUN,
        f"run_dir={run_dir}",
        f"hydra.sweep.dir={tmp_path}/sweep",
        *SUBMITIT,
        cwd=tmp_path,
        env=env,
        timeout=WAIT_S,
    )
    assert result.returncode == 0, result.stderr
    assert starts(run_dir) == [("submitit", 2, "node1")]
    assert_same_records(read_metrics(run_dir), read_metrics(one_node))


def test_the_submitit_launcher_fails_when_a_rank_of_its_job_is_killed(cluster, env, tmp_path):
    # Without job states from sacct, submitit waited for ever for the killed task's result.
    run_dir = tmp_path / "run"
    command = [BIN / "bn-repro", "train", "-m", *RUN, f"run_dir={run_dir}"]
    sweep = [f"hydra.sweep.dir={tmp_path}/sweep", *SUBMITIT]
    launcher = subprocess.Popen(
        [*command, *sweep], stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env
    )
    try:
        wait_for_checkpoint(run_dir, launcher)
        os.kill(rank_process(cluster, 2, "SLURM_PROCID=1"), signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = launcher.communicate(timeout=WAIT_S)
    finally:
        launcher.kill()
    print(f"launcher returned after {time.monotonic() - killed:.1f} s", file=sys.stderr)
    assert launcher.returncode != 0
    assert "task: 1" in stderr and "has not produced any output (state: FAILED)" in stderr


def test_torchrun_across_two_nodes_keeps_the_records_of_one(cluster, env, one_node, tmp_path):
    # As on Debian's and Ubuntu's nodes: each node's own name at 127.0.1.1, and the interface
    # the nodes meet on named for gloo (README, Multi-node)
    run_dir = tmp_path / "run"
    cluster.network.write_hosts(loopback=True)
    nodes = torchrun_on_nodes(cluster, {**env, "GLOO_SOCKET_IFNAME": NODE_INTERFACE}, run_dir)
    try:
        outputs = [node.communicate(timeout=WAIT_S)[0] for node in nodes]
    finally:
        cluster.network.write_hosts(loopback=False)
        end_all(nodes)
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert starts(run_dir) == [("torchrun", 2, "node1")]
    assert_same_records(read_metrics(run_dir), read_metrics(one_node))


def test_a_rank_gone_silent_ends_the_run_after_the_collective_timeout_naming_it(
    cluster, env, tmp_path
):
    run_dir = tmp_path / "run"
    timeout = f"trainer.collective_timeout_minutes={SILENT_TIMEOUT_MINUTES}"
    nodes = torchrun_on_nodes(cluster, env, run_dir, timeout)
    try:
        wait_for_checkpoint(run_dir, *nodes)
        silent = rank_process(cluster, 2, "RANK=1")
        os.kill(silent, signal.SIGSTOP)  # alive, its sockets open, and silent
        stopped = time.monotonic()
        output, _ = nodes[0].communicate(timeout=WAIT_S)
        ended_s = time.monotonic() - stopped
    finally:
        end_all(nodes)
    print(f"silent rank's run ended after {ended_s:.1f} s", file=sys.stderr)
    assert nodes[0].returncode != 0
    assert ended_s < SILENT_TIMEOUT_MINUTES * 60 + SILENT_MARGIN_S
    assert "rank 0 of 2 (node1)" in output and "rank(s) 1 stopped answering" in output


def test_a_node_whose_name_resolves_to_loopback_is_refused_at_once(cluster, env, tmp_path):
    run_dir = tmp_path / "run"
    cluster.network.write_hosts(loopback=True)
    nodes = torchrun_on_nodes(cluster, env, run_dir)
    try:
        outputs = [node.communicate(timeout=WAIT_S)[0] for node in nodes]
    finally:
        cluster.network.write_hosts(loopback=False)
        end_all(nodes)
    for name, node, output in zip(("node1", "node2"), nodes, outputs, strict=True):
        assert node.returncode != 0
        assert f"bn-repro train: this node's name {name} resolves to 127.0.1.1" in output, output
        assert "Set GLOO_SOCKET_IFNAME" in output
    assert not list(run_dir.iterdir())  # refused before anything was written
