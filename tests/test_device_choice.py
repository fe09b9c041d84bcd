"""Each rank's device, from its launcher's variables and the CUDA devices the process sees: the
local rank's GPU where every GPU of the node is visible, device 0 where the scheduler binds one
GPU to each task (srun --gpus-per-task, cgroups), the CPU where there is none."""

import os

import pytest
import torch

from bn_repro.schema import Backend, ConfigError, Device
from bn_repro.train.distributed import launch_env, pick_backend, pick_device
from tests.helpers import SUBMITIT_TASK, first_visible_gpu

TORCHRUN = {  # rank 11 of 16: the fourth process on the second node
    "RANK": "11",
    "WORLD_SIZE": "16",
    "LOCAL_RANK": "3",
    "MASTER_ADDR": "n1",
    "MASTER_PORT": "29500",
}
SRUN = {  # task 6 of 8, the third on its node
    "SLURM_STEP_NUM_TASKS": "8",
    "SLURM_PROCID": "6",
    "SLURM_LOCALID": "2",
    "SLURM_JOB_ID": "1234",
    "SLURM_STEP_NODELIST": "n[1-2]",
    "MASTER_ADDR": "n1",
}


def device_of(environ: dict, visible: int, choice: Device = Device.auto) -> torch.device:
    return pick_device(choice, launch_env(environ).local_rank, visible)


def test_torchrun_ranks_take_their_local_ranks_gpu():
    assert device_of(TORCHRUN, visible=4) == torch.device("cuda", 3)


def test_srun_without_gpu_binding_takes_the_local_ranks_gpu():
    assert device_of(SRUN, visible=4) == torch.device("cuda", 2)


def test_srun_with_one_gpu_bound_to_each_task_takes_the_one_it_sees():
    # srun --gpus-per-task=1 (or cgroup-limited GPUs): each task sees its own GPU as device 0,
    # so cuda:2 would not exist
    assert device_of(SRUN, visible=1) == torch.device("cuda", 0)
    assert device_of(TORCHRUN, visible=1) == torch.device("cuda", 0)


@pytest.mark.parametrize(("visible", "index"), [(1, 0), (4, 1)])
def test_submitit_tasks_with_and_without_gpu_binding(monkeypatch, visible, index):
    for name, value in SUBMITIT_TASK.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    assert device_of(dict(os.environ), visible) == torch.device("cuda", index)


def test_a_plain_process_takes_the_first_gpu_or_the_cpu():
    assert device_of({}, visible=8) == torch.device("cuda", 0)
    assert device_of({}, visible=0) == torch.device("cpu")
    assert device_of(TORCHRUN, visible=4, choice=Device.cpu) == torch.device("cpu")


def test_cuda_without_a_visible_gpu_is_refused():
    with pytest.raises(ConfigError, match="no CUDA device is visible"):
        device_of(SRUN, visible=0, choice=Device.cuda)


def test_more_processes_than_visible_gpus_are_refused_with_what_to_do():
    # two GPUs visible to each task but four tasks a node: cuda:2 would not exist
    with pytest.raises(ConfigError, match="local rank 2 but this process sees 2 GPUs.*one GPU"):
        device_of(SRUN, visible=2)


@pytest.mark.parametrize(
    "choice, device, backend",
    [
        (Backend.auto, "cuda", "nccl"),
        (Backend.auto, "cpu", "gloo"),
        (Backend.gloo, "cuda", "gloo"),  # two ranks on one GPU, which NCCL refuses
        (Backend.nccl, "cuda", "nccl"),
    ],
)
def test_the_backend_is_nccl_on_gpus_unless_gloo_is_asked_for(choice, device, backend):
    assert pick_backend(choice, torch.device(device)) == backend


def test_nccl_without_a_gpu_is_refused():
    with pytest.raises(ConfigError, match="trainer.backend=nccl runs on GPUs, and this rank has"):
        pick_backend(Backend.nccl, torch.device("cpu"))


@pytest.mark.parametrize(
    "visible, first",
    [(None, "0"), ("3", "3"), ("2,5", "2"), ("GPU-8a1c,GPU-77f0", "GPU-8a1c")],
)
def test_a_test_process_takes_the_first_gpu_its_parent_was_given(visible, first):
    environ = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    assert first_visible_gpu(environ) == first
