"""One distributed set-up for every launcher: a plain process, torchrun, srun and submitit.

A single process is the same code with world size 1. NCCL on GPUs, gloo on CPU.
"""

import functools
import itertools
import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from bn_repro.schema import Backend, ConfigError, Device


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
        )
    if "SUBMITIT_EXECUTOR" in environ:  # set in the jobs submitit writes
        return _submitit_env()
    # SLURM_STEP_NUM_TASKS exists only inside an srun step, so a batch script that runs the
    # trainer without srun is one process, not rank 0 of a group that never comes.
    if int(environ.get("SLURM_STEP_NUM_TASKS", 1)) > 1:
        job = int(environ["SLURM_JOB_ID"])
        return LaunchEnv(
            int(environ["SLURM_PROCID"]),
            int(environ["SLURM_STEP_NUM_TASKS"]),
            int(environ["SLURM_LOCALID"]),
            environ.get("MASTER_ADDR") or _first_host(environ["SLURM_STEP_NODELIST"]),
            int(environ.get("MASTER_PORT") or 20000 + job % 20000),  # the same after a requeue
            "slurm",
        )
    return LaunchEnv(0, 1, 0, "127.0.0.1", 0, "single")  # no rendezvous: no port


def _submitit_env() -> LaunchEnv:
    # submitit reads SLURM's variables of the job (or its local executor's) and derives the
    # rendezvous port from the job id, so a requeued job meets at the same address.
    from submitit.helpers import TorchDistributedEnvironment

    env = TorchDistributedEnvironment()
    return LaunchEnv(
        env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port, "submitit"
    )


def _first_host(nodelist: str) -> str:
    hosts = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
    )
    return hosts.stdout.split()[0]


def pick_device(choice: Device, local_rank: int, visible: int) -> torch.device:
    """This process's device, from the CUDA devices it sees (`visible`): with one, that one,
    whatever the local rank (srun --gpus-per-task, cgroup-bound GPUs: each process sees its own
    GPU as device 0); with several, the local rank's (torchrun, srun without GPU binding)."""
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
def distributed(choice: Device, backend: Backend = Backend.auto) -> Iterator[Dist]:
    env = launch_env(os.environ)
    device = pick_device(choice, env.local_rank, torch.cuda.device_count())
    launched = {
        "MASTER_ADDR": env.master_addr,
        "MASTER_PORT": str(env.master_port),
        "RANK": str(env.rank),
        "WORLD_SIZE": str(env.world_size),
        "LOCAL_RANK": str(env.local_rank),
    }
    before = {name: os.environ.get(name) for name in launched}
    os.environ.update(launched)  # for what reads torchrun's variables within the group
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = pick_backend(backend, device)
    # Every group gets its own key prefix in the one store of the process: a Hydra sweep run
    # under torchrun or srun sets up one group per job, and destroy_process_group restarts
    # torch's own group numbering, so without the prefix the third job finds the first job's
    # keys and hangs.
    store = dist.PrefixStore(f"bn-repro-group{next(_groups)}", _store(env))
    dist.init_process_group(backend, store=store, rank=env.rank, world_size=env.world_size)
    try:
        yield Dist(env.rank, env.world_size, env.local_rank, device, env.launcher)
    finally:
        dist.destroy_process_group()
        _restore(before)  # a second run in this process is launched as this one was


def _restore(environ: dict[str, str | None]) -> None:
    for name, value in environ.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


_groups = itertools.count()


@functools.cache
def _store(env: LaunchEnv) -> dist.Store:
    """The process's rendezvous store, for the life of the process: in memory for one process,
    else a client of the one torchrun's agent serves, else served by rank 0 at MASTER_PORT."""
    if env.world_size == 1:
        return dist.HashStore()
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    return dist.TCPStore(
        env.master_addr,
        env.master_port,
        env.world_size,
        is_master=env.rank == 0 and not agent,
        timeout=timedelta(minutes=30),
        wait_for_workers=False,
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
