"""One distributed set-up for every launcher: a plain process, torchrun, srun and submitit.

A single process is the same code with world size 1. NCCL on GPUs, gloo on CPU. Every wait on
another rank is bounded (the collective timeout): a rank that died or went silent stops the
others, which name it (PeerLost).
"""

import atexit
import gc
import importlib
import ipaddress
import itertools
import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from bn_repro.schema import Backend, ConfigError, Device, TrainerConfig

log = logging.getLogger(__name__)

# torch's own defaults where the caller gives no timeout: gloo's (NCCL's is 10 minutes)
DEFAULT_TIMEOUT = timedelta(minutes=30)
# How gloo reports a peer that died (its sockets closed) or went silent (the timeout).
PEER_ERRORS = ("Connection closed by peer", "Connection reset by peer", "Timed out waiting")
# After a peer error, how long the ranks still alive wait for each other to say so.
CHECK_IN_S = 5.0


class PeerLost(RuntimeError):
    """Another rank died, stopped, or became unreachable: the message names it. Not a UserError:
    the run fails (a submitit job too), and the same command resumes it."""


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    launcher: str  # single | torchrun | submitit | slurm

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class LaunchEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str
    local_world_size: int = 1  # the ranks on this node: fewer than world_size across nodes


def launch_env(environ: Mapping[str, str]) -> LaunchEnv:
    """Where this process stands, from torchrun's variables, submitit's job environment (the
    hydra/launcher=slurm tasks), SLURM's (srun), or none (a plain process: world size 1)."""
    if "RANK" in environ and "WORLD_SIZE" in environ:
        return LaunchEnv(
            int(environ["RANK"]),
            int(environ["WORLD_SIZE"]),
            int(environ.get("LOCAL_RANK", 0)),
            environ["MASTER_ADDR"],
            int(environ["MASTER_PORT"]),
            "torchrun",
            int(environ.get("LOCAL_WORLD_SIZE", environ["WORLD_SIZE"])),
        )
    if "SUBMITIT_EXECUTOR" in environ:  # set in the jobs submitit writes
        return _submitit_env()
    # SLURM_STEP_NUM_TASKS exists only inside an srun step, so a batch script that runs the
    # trainer without srun is one process, not rank 0 of a group that never comes.
    if int(environ.get("SLURM_STEP_NUM_TASKS", 1)) > 1:
        job, tasks = int(environ["SLURM_JOB_ID"]), int(environ["SLURM_STEP_NUM_TASKS"])
        return LaunchEnv(
            int(environ["SLURM_PROCID"]),
            tasks,
            int(environ["SLURM_LOCALID"]),
            environ.get("MASTER_ADDR") or _first_host(environ["SLURM_STEP_NODELIST"]),
            int(environ.get("MASTER_PORT") or 20000 + job % 20000),  # the same after a requeue
            "slurm",
            tasks // int(environ.get("SLURM_STEP_NUM_NODES", 1)),
        )
    return LaunchEnv(0, 1, 0, "127.0.0.1", 0, "single")  # no rendezvous: no port


def _submitit_env() -> LaunchEnv:
    # submitit reads SLURM's variables of the job (or its local executor's) and derives the
    # rendezvous port from the job id, so a requeued job meets at the same address.
    from submitit.helpers import TorchDistributedEnvironment

    env = TorchDistributedEnvironment()
    return LaunchEnv(
        env.rank,
        env.world_size,
        env.local_rank,
        env.master_addr,
        env.master_port,
        "submitit",
        env.local_world_size,
    )


def _first_host(nodelist: str) -> str:
    hosts = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
    )
    return hosts.stdout.split()[0]


def pick_device(choice: Device, local_rank: int, visible: int) -> torch.device:
    """This process's device, from the number of CUDA devices it sees (`visible`). With one it
    takes that one, whatever the local rank, since srun --gpus-per-task and cgroup-bound GPUs
    show each process its own GPU as device 0. With several it takes the local rank's (torchrun,
    srun without GPU binding)."""
    if choice is Device.cuda and visible == 0:
        raise ConfigError("trainer.device=cuda but no CUDA device is visible: use device=auto")
    if choice is Device.cpu or visible == 0:
        return torch.device("cpu")
    if visible == 1:
        return torch.device("cuda", 0)
    if local_rank >= visible:
        raise ConfigError(
            f"local rank {local_rank} but this process sees {visible} GPUs"
            f" (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}):"
            " start one process per GPU, or give each task one GPU (srun --gpus-per-task=1)"
        )
    return torch.device("cuda", local_rank)


def pick_backend(choice: Backend, device: torch.device) -> str:
    if choice is Backend.nccl and device.type != "cuda":
        raise ConfigError(
            f"trainer.backend=nccl runs on GPUs, and this rank has {device}: use auto"
        )
    if choice is Backend.auto:
        return "nccl" if device.type == "cuda" else "gloo"
    return choice.value


@contextmanager
def distributed(
    choice: Device, backend: Backend = Backend.auto, timeout: timedelta | None = None
) -> Iterator[Dist]:
    """The process group of this process's launcher, for the body of the with statement.
    timeout bounds every collective and rendezvous (torch's defaults when None); past it, or
    when a peer's connection closes, the body's collective raises PeerLost, which names the
    ranks that stopped answering. The launcher's variables are as before afterwards."""
    env = launch_env(os.environ)
    device = pick_device(choice, env.local_rank, torch.cuda.device_count())
    backend = pick_backend(backend, device)
    if backend == "gloo" and env.world_size > env.local_world_size:
        check_gloo_address(os.environ)
    before = {name: os.environ.get(name) for name in EXPORTED}
    export(env)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # DDP imports torch._dynamo on first use; imported while a group exists, dynamo keeps
    # references to it, and the group's gloo threads outlive destroy_process_group (_release).
    importlib.import_module("torch._dynamo")
    # Every group gets its own key prefix in the one store of the process: a Hydra sweep run
    # under torchrun or srun sets up one group per job, and destroy_process_group restarts
    # torch's own group numbering, so without the prefix the third job finds the first job's
    # keys and hangs.
    store = dist.PrefixStore(f"bn-repro-group{next(_groups)}", _store(env, timeout))
    dist.init_process_group(
        backend, store=store, rank=env.rank, world_size=env.world_size, timeout=timeout
    )
    try:
        yield Dist(env.rank, env.world_size, env.local_rank, device, env.launcher)
    except RuntimeError as error:
        if env.world_size == 1 or not peer_error(error):
            raise
        message = lost_peers_message(store, env, timeout or DEFAULT_TIMEOUT, error)
        log.error("%s", message)
        raise PeerLost(message) from error
    finally:
        _ended.append(dist.group.WORLD)
        dist.destroy_process_group()
        _restore(before)  # a second run in this process is launched as this one was


def distributed_for(trainer: TrainerConfig):
    """distributed() as a run's trainer settings ask: device, backend and collective timeout."""
    timeout = timedelta(minutes=trainer.collective_timeout_minutes)
    return distributed(trainer.device, trainer.backend, timeout)


_groups = itertools.count()
_ended: list = []  # destroyed groups, until _release


@atexit.register
def _release() -> None:
    """End the destroyed groups' threads while the interpreter is whole. A gloo thread that
    drops the last reference to a tensor Python made needs the GIL; during interpreter shutdown
    that thread is stopped instead, and the process aborts ("terminate called without an active
    exception", SIGABRT) after a run that finished. The caller's objects that held a group
    (DDP's reducer) are garbage by now; collected first, they leave each group's last
    reference here, whose destructor releases the GIL and joins gloo's threads."""
    gc.collect()
    _ended.clear()


# What export sets, and _restore puts back.
EXPORTED = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING",
)


def _restore(environ: dict[str, str | None]) -> None:
    for name, value in environ.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def export(env: LaunchEnv) -> None:
    """Where this process stands, in torch's variables (env:// and torchrun's names)."""
    os.environ.update(
        MASTER_ADDR=env.master_addr,
        MASTER_PORT=str(env.master_port),
        RANK=str(env.rank),
        WORLD_SIZE=str(env.world_size),
        LOCAL_RANK=str(env.local_rank),
        LOCAL_WORLD_SIZE=str(env.local_world_size),
    )
    # NCCL: a collective past the timeout, or a failed one, aborts the communicators and ends
    # the process (TearDown), as torch's documentation advises, rather than leaving the
    # trainer blocked; torchrun sets the same for its workers.
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")


_stores: dict[LaunchEnv, dist.Store] = {}


def _store(env: LaunchEnv, timeout: timedelta | None) -> dist.Store:
    """The process's rendezvous store, for the life of the process: in memory for one process,
    else a client of the one torchrun's agent serves, else served by rank 0 at MASTER_PORT.
    Its waits (the rendezvous) time out as the collectives do."""
    timeout = timeout or DEFAULT_TIMEOUT
    if env not in _stores:
        if env.world_size == 1:
            _stores[env] = dist.HashStore()
        else:
            agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
            _stores[env] = dist.TCPStore(
                env.master_addr,
                env.master_port,
                env.world_size,
                is_master=env.rank == 0 and not agent,
                timeout=timeout,
                wait_for_workers=False,
            )
    _stores[env].set_timeout(timeout)
    return _stores[env]


def peer_error(error: RuntimeError) -> bool:
    """Whether a collective failed on another rank, not on this one."""
    return isinstance(error, dist.DistError) or any(text in str(error) for text in PEER_ERRORS)


def lost_peers_message(
    store: dist.Store, env: LaunchEnv, timeout: timedelta, error: RuntimeError
) -> str:
    """What this rank says when a collective failed on a peer: which ranks did not check in
    at the store within CHECK_IN_S (those that died, stopped, or cannot be reached)."""
    where = f"rank {env.rank} of {env.world_size} ({socket.gethostname()})"
    cause = f"gloo: {str(error).splitlines()[0]}"
    missing = missing_ranks(
        store, env.rank, env.world_size, min(timeout.total_seconds(), CHECK_IN_S)
    )
    if missing is None:
        who = (
            f"the rendezvous store at {env.master_addr}:{env.master_port} cannot be reached"
            " either: this node lost its connection to the others"
        )
    else:
        listed = ", ".join(str(rank) for rank in missing) or "none (all checked in)"
        who = (
            f"rank(s) {listed} stopped answering: their process died or stopped, or their"
            " node is unreachable"
        )
    return (
        f"{where}: a collective failed after at most {timeout.total_seconds():.0f} s ({cause});"
        f" {who}. The run stops; the same command resumes it from its last checkpoint"
    )


def missing_ranks(store: dist.Store, rank: int, world_size: int, wait_s: float) -> list[int] | None:
    """The ranks that have not set their key in the store wait_s after this one set its own;
    None where the store cannot be reached."""
    try:
        store.set_timeout(timedelta(seconds=wait_s))
        store.set(f"lost-peers/{rank}", "here")
        deadline = time.monotonic() + wait_s
        while True:
            missing = [r for r in range(world_size) if not store.check([f"lost-peers/{r}"])]
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.2)
    except (RuntimeError, dist.DistError):  # the store's host is gone too
        return None


def check_gloo_address(environ: Mapping[str, str]) -> None:
    """Across nodes gloo offers the other ranks the address this node's name resolves to; where
    that is a loopback address (Debian and Ubuntu write 127.0.1.1 into /etc/hosts) the ranks
    never meet, and gloo fails only after its timeout. GLOO_SOCKET_IFNAME names the interface
    to use instead."""
    if environ.get("GLOO_SOCKET_IFNAME"):
        return
    host = socket.gethostname()
    try:
        address = socket.gethostbyname(host)
    except OSError:
        return  # gloo falls back to an address of its own
    if ipaddress.ip_address(address).is_loopback:
        raise ConfigError(
            f"this node's name {host} resolves to {address}, a loopback address (/etc/hosts):"
            " gloo would offer it to the ranks on other nodes, which cannot reach it. Set"
            " GLOO_SOCKET_IFNAME to the network interface the nodes reach each other on"
            " (`ip -brief address` lists them), e.g. export GLOO_SOCKET_IFNAME=eth0 in the job"
        )


def all_reduce(values: list[float], device: torch.device, op=dist.ReduceOp.SUM) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=op)
    return tensor.tolist()


@torch.no_grad()
def average_bn_statistics(model: nn.Module, world_size: int) -> None:
    """Each rank normalizes over its own batch and keeps its own running statistics (DDP with
    broadcast_buffers=False); before evaluating or saving, they are averaged over ranks."""
    if world_size == 1:
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            for buffer in (module.running_mean, module.running_var):
                dist.all_reduce(buffer)
                buffer /= world_size
