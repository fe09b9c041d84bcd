"""Where a process stands, from the variables of each launcher."""

import os

from bn_repro.schema import Device
from bn_repro.train.distributed import distributed, launch_env
from tests.helpers import SUBMITIT_TASK


def test_torchrun():
    env = launch_env(
        {
            "RANK": "3",
            "WORLD_SIZE": "8",
            "LOCAL_RANK": "1",
            "MASTER_ADDR": "n1",
            "MASTER_PORT": "29500",
        }
    )
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port) == (
        3,
        8,
        1,
        "n1",
        29500,
    )
    assert env.launcher == "torchrun"


def test_srun_and_submitit_tasks():
    env = launch_env(
        {
            "SLURM_STEP_NUM_TASKS": "4",
            "SLURM_PROCID": "2",
            "SLURM_LOCALID": "0",
            "SLURM_JOB_ID": "1234",
            "SLURM_STEP_NODELIST": "n[1-2]",
            "MASTER_ADDR": "n1",
        }
    )
    assert (env.rank, env.world_size, env.local_rank, env.master_addr) == (2, 4, 0, "n1")
    assert env.master_port == 20000 + 1234 and env.launcher == "slurm"


def test_a_batch_script_without_srun_is_one_process():
    env = launch_env({"SLURM_NTASKS": "4", "SLURM_PROCID": "0", "SLURM_JOB_ID": "7"})
    assert (env.rank, env.world_size, env.launcher) == (0, 1, "single")


def test_submitit_tasks_take_their_rank_from_submitit(monkeypatch):
    for name, value in SUBMITIT_TASK.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    env = launch_env(os.environ)
    assert (env.rank, env.world_size, env.local_rank, env.master_addr) == (3, 4, 1, "gpu07")
    assert env.launcher == "submitit"
    # the port follows from the job id, so the ranks of a requeued job meet again
    assert launch_env(os.environ).master_port == env.master_port


def test_a_run_leaves_the_process_as_it_found_it(monkeypatch):
    # a second run in the same process (a test, a notebook) is a plain process again, not rank
    # 0 of a torchrun, and a launcher's own variables come back
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "gpu07")
    with distributed(Device.cpu) as first:
        assert os.environ["WORLD_SIZE"] == "1"
    assert "RANK" not in os.environ and os.environ["MASTER_ADDR"] == "gpu07"
    assert launch_env(os.environ).launcher == first.launcher == "single"
