"""Two gloo ranks on one machine at the edges of a run: they resume from the one checkpoint rank
0 chose, also where a rank's listing of run_dir is a checkpoint behind, and stop together where a
rank cannot read it; a rank gone silent is named once the collective timeout has passed; a
finished run's ranks end without an abort. And, without ranks: what the set-up reads and sets
(where a node's name resolves to a loopback address, the collective timeout, NCCL's teardown)."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from bn_repro.schema import ConfigError, Device
from bn_repro.train import checkpoint, distributed
from bn_repro.train.metrics import read_metrics
from tests.helpers import BIN, TINY, assert_same_records

WAIT_S = 180  # a run's limit, so that ranks that disagree fail rather than hang
# TINY, 4 paper steps long: 8 optimizer steps of 2 ranks x 8 images, a checkpoint every 2.
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
# bn-repro train, with rank 1 listing the checkpoints as an NFS attribute cache a checkpoint
# behind would show them.
STALE_RANK_1 = """
import os, sys
from bn_repro.train import checkpoint
if os.environ["RANK"] == "1":
    listed = checkpoint.checkpoints
    checkpoint.checkpoints = lambda run_dir: listed(run_dir)[:-1]
from bn_repro.cli import main
sys.exit(main(sys.argv[1:]))
"""
# Two ranks that resume, each from its own folder (argv: one per rank).
RESUME_APART = """
import sys
from bn_repro.schema import Device
from bn_repro.train.checkpoint import CheckpointError, load_agreed
from bn_repro.train.distributed import distributed
from pathlib import Path
with distributed(Device.cpu) as rank:
    try:
        load_agreed(Path(sys.argv[1 + rank.rank]))
    except CheckpointError as error:
        print(f"rank {rank.rank}: {error}")
        sys.exit(2)
"""
# Rank 1 stops itself (SIGSTOP) between two collectives.
SILENT_RANK_1 = """
import os, signal
from datetime import timedelta
from bn_repro.schema import Device
from bn_repro.train.distributed import all_reduce, distributed
with distributed(Device.cpu, timeout=timedelta(seconds=5)) as rank:
    all_reduce([1.0], rank.device)
    if rank.rank == 1:
        os.kill(os.getpid(), signal.SIGSTOP)
    all_reduce([1.0], rank.device)
"""
# The end of a run as the trainer's (a function's objects, DDP among them): collectives right
# before the group ends, whose tensors a gloo thread may still hold when the process exits. It
# counts gloo's threads in the run and once all else at exit has run (its handler, registered
# first, runs last).
BURST_AT_THE_END = """
import atexit
from pathlib import Path
def gloo_threads():
    return sum("gloo" in (task / "comm").read_text() for task in Path("/proc/self/task").iterdir())
atexit.register(lambda: print(f"gloo threads at exit: {gloo_threads()}", flush=True))
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from bn_repro.schema import Device
from bn_repro.train.distributed import distributed
def train():
    with distributed(Device.cpu):
        model = DistributedDataParallel(torch.nn.Linear(4, 4))
        model(torch.randn(2, 4)).sum().backward()
        for work in [dist.all_reduce(torch.ones(10), async_op=True) for _ in range(20)]:
            work.wait()
        print(f"gloo threads in the run: {gloo_threads()}", flush=True)
train()
"""
# Runs of BURST_AT_THE_END; without distributed._release, 12 of 20 ended with a SIGABRT.
ENDINGS = 2
SET_UP = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def two_ranks(*command: str | Path) -> subprocess.CompletedProcess:
    """command as two ranks under torchrun, killed with its ranks if they outlast WAIT_S."""
    torchrun = [BIN / "torchrun", "--standalone", "--nproc_per_node=2", "--no-python", *command]
    process = subprocess.Popen(
        torchrun, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=WAIT_S)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # ranks that outlived torchrun
        process.wait()
    return subprocess.CompletedProcess(torchrun, process.returncode, stdout, stderr)


def apart(program: str, *arguments: str) -> list[subprocess.Popen]:
    """Both ranks of program, each a plain process meeting at a free local port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ranks = []
    for rank in (0, 1):
        environ = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2"}
        environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        command = [sys.executable, "-c", program, *arguments]
        ranks.append(
            subprocess.Popen(
                command, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    return ranks


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    result = two_ranks(BIN / "bn-repro", "train", *RUN, f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr
    return run_dir


@pytest.mark.slow
def test_ranks_resume_from_rank_0s_checkpoint_where_a_rank_lists_one_fewer(finished, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    newest = checkpoint.checkpoints(run_dir)[-1]
    newest.unlink()  # rank 0 resumes at step 6; rank 1, by its listing, would at step 4
    python = [sys.executable, "-c", STALE_RANK_1]
    resumed = two_ranks(*python, "train", *RUN, f"run_dir={run_dir}")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at optimizer step 6" in (run_dir / "train.log").read_text()
    assert_same_records(read_metrics(run_dir), read_metrics(finished))


@pytest.mark.slow
def test_a_rank_that_cannot_read_rank_0s_checkpoint_stops_every_rank(finished, tmp_path):
    own = tmp_path / "node2"  # a run_dir of rank 1's node's own, without the checkpoints
    own.mkdir()
    ranks = apart(RESUME_APART, str(finished), str(own))
    try:
        outputs = [rank.communicate(timeout=WAIT_S)[0] for rank in ranks]
    finally:
        for rank in ranks:
            rank.kill()
            rank.wait()
    assert [rank.returncode for rank in ranks] == [2, 2], outputs
    chosen = checkpoint.checkpoints(finished)[-1].name
    for number, (output, run_dir) in enumerate(zip(outputs, (finished, own), strict=True)):
        # one run_dir on every rank but here, where each rank names the path it tried
        assert f"rank {number}: rank 0 resumes from {run_dir}/checkpoints/{chosen};" in output
        assert "on rank 1 that file cannot be read" in output
        assert "run_dir must be one folder that every node sees" in output


@pytest.mark.slow
def test_a_rank_gone_silent_is_named_once_the_collective_timeout_has_passed():
    started = time.monotonic()
    ranks = apart(SILENT_RANK_1)
    try:
        output, _ = ranks[0].communicate(timeout=WAIT_S)
    finally:
        ranks[1].kill()
        ranks[1].communicate()
    ended_s = time.monotonic() - started
    assert ranks[0].returncode != 0
    assert "PeerLost: rank 0 of 2" in output and "rank(s) 1 stopped answering" in output
    assert "Timed out waiting 5000ms" in output
    # start-up, 5 s of timeout, the check-in, and a loaded machine's margin
    assert ended_s < 5 + distributed.CHECK_IN_S + 60


@pytest.mark.slow
def test_two_rank_runs_end_without_an_abort():
    # A gloo thread that dropped a tensor's last reference during interpreter shutdown aborted
    # the process (SIGABRT, "terminate called without an active exception") after a run that
    # had written everything: the group outlived destroy_process_group, held by DDP's objects
    # (and by torch._dynamo where DDP first imported it while the group existed).
    for _ in range(ENDINGS):
        run = two_ranks(sys.executable, "-c", BURST_AT_THE_END)
        assert run.returncode == 0 and "terminate called" not in run.stderr, run.stderr
        assert "gloo threads in the run: 0" not in run.stdout  # gloo's thread names: still so
        # the cause: gloo's threads outlived the run, into the interpreter's shutdown
        assert run.stdout.count("gloo threads at exit: 0") == 2, run.stdout


def test_a_run_across_nodes_knows_it_spans_them():
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}
    torchrun |= {"MASTER_ADDR": "n1", "MASTER_PORT": "29500"}
    assert distributed.launch_env(torchrun).local_world_size == 2
    srun = {"SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_NUM_NODES": "2", "SLURM_PROCID": "2"}
    srun |= {"SLURM_LOCALID": "0", "SLURM_JOB_ID": "7", "MASTER_ADDR": "n1"}
    assert distributed.launch_env(srun).local_world_size == 2


@pytest.mark.parametrize(
    ("address", "interface", "refused"),
    [("127.0.1.1", None, True), ("127.0.1.1", "eth0", False), ("10.1.2.3", None, False)],
)
def test_gloo_across_nodes_is_refused_where_the_nodes_name_is_a_loopback_address(
    monkeypatch, address, interface, refused
):
    monkeypatch.setattr(socket, "gethostname", lambda: "gpu07")
    monkeypatch.setattr(socket, "gethostbyname", lambda host: address)
    environ = {"GLOO_SOCKET_IFNAME": interface} if interface else {}
    if not refused:
        distributed.check_gloo_address(environ)
        return
    with pytest.raises(ConfigError, match=r"gpu07 resolves to 127\.0\.1\.1, a loopback") as error:
        distributed.check_gloo_address(environ)
    assert "GLOO_SOCKET_IFNAME" in str(error.value)


def test_the_group_times_out_as_asked_and_nccl_tears_down_on_errors(monkeypatch):
    for name in (*SET_UP, "TORCH_NCCL_ASYNC_ERROR_HANDLING"):
        monkeypatch.setenv(name, "")  # so that monkeypatch removes what distributed() sets
        monkeypatch.delenv(name)
    with distributed.distributed(Device.cpu, timeout=timedelta(seconds=7)):
        gloo = dist.group.WORLD._get_backend(torch.device("cpu"))
        assert gloo.options._timeout == timedelta(seconds=7)
        assert os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"  # TearDown


@pytest.mark.gpu
def test_an_nccl_group_times_out_as_asked(monkeypatch):
    for name in (*SET_UP, "TORCH_NCCL_ASYNC_ERROR_HANDLING"):
        monkeypatch.setenv(name, "")  # so that monkeypatch removes what distributed() sets
        monkeypatch.delenv(name)
    with distributed.distributed(Device.cuda, timeout=timedelta(seconds=7)) as rank:
        nccl = dist.group.WORLD._get_backend(rank.device)
        assert nccl.options._timeout == timedelta(seconds=7)
        assert os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"  # TearDown


def test_a_peers_failure_is_told_from_this_ranks_own():
    timeout = RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 5000ms")
    closed = RuntimeError("[gloo/transport/tcp/pair.cc:561] Connection closed by peer [10.0.0.2]")
    assert distributed.peer_error(timeout) and distributed.peer_error(closed)
    assert not distributed.peer_error(RuntimeError("CUDA out of memory"))
