import atexit
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import pytest
import torch
from torch import nn

from bn_repro.compose import compose, to_object
from bn_repro.data import Share
from bn_repro.data.make_mini import MiniSpec, make_mini
from bn_repro.data.prepare import PrepareOptions, prepare
from bn_repro.models import build_model
from bn_repro.schema import RunConfig
from bn_repro.train.checkpoint import checkpoints

BIN = Path(sys.executable).parent  # the environment's bn-repro and torchrun
TIMING = ("images_per_s", "data_wait", "probe_s")
# 40 paper steps of 32 images in optimizer steps of 8: 160 steps of a 16-pixel Inception.
TINY = [
    "data=synthetic",
    "data.synthetic.train_size=256",
    "data.synthetic.val_size=101",  # odd, so two ranks split it unevenly
    "data.image_size=16",  # 1x1 maps from 3c on: a step costs two thirds of one at 32 pixels
    "trainer.batch_per_rank=8",
    "trainer.bn_batch=8",  # BN over each rank's 8 images (the paper's 32 would not divide it)
    "trainer.max_paper_steps=40",
    "trainer.eval_every_paper_steps=10",
    "trainer.log_every_paper_steps=5",
    "trainer.checkpoint_every_paper_steps=10",
    "trainer.control_every_steps=1",
    "trainer.population_batches=4",
    "trainer.deterministic=true",
]


def share(
    batch: int,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    gpu: int | None = None,
    val_batch: int | None = None,
) -> Share:
    """A rank's share of the data: `batch` images a step (and an evaluation batch, unless
    val_batch), on the CPU or the GPU numbered gpu."""
    device = torch.device("cpu") if gpu is None else torch.device("cuda", gpu)
    return Share(rank, world_size, batch, val_batch or batch, seed, device)


def run_config(experiment: str, *overrides: str) -> RunConfig:
    return to_object(compose([f"experiment={experiment}", *overrides]))


def model_of(experiment: str, *overrides: str, num_classes: int = 1000) -> nn.Module:
    cfg = run_config(experiment, *overrides)
    return build_model(cfg.model, num_classes, cfg.data.image_size)


# `bn-repro` as a process of its own, as users start it (its environment, working directory, exit
# status and output), forked from a server process that imported the package once: each command
# skips the seconds that importing torch, torchvision, DALI and Hydra take. The forkserver forks
# from a process of one thread, as fork needs; the test process runs xdist's threads.
FORKS = multiprocessing.get_context("forkserver")
# The commands' modules, and what each imports when it runs: the loaders' (torchvision, DALI),
# and torch._dynamo, which DDP imports at its first use (train/distributed.py).
FORKS.set_forkserver_preload(
    [
        "torch._dynamo",
        "bn_repro.cli",
        "bn_repro.train.main",
        "bn_repro.evaluate.run",
        "bn_repro.bench.train",
        "bn_repro.bench.loader",
        "bn_repro.data.torch_loader",
        "bn_repro.data.dali_loader",
        "tests.helpers",
    ]
)


def bn_repro(
    *args, cwd: Path | None = None, env: dict | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess:
    """subprocess.run([BIN / "bn-repro", *args], capture_output=True, text=True, ...), forked
    from the preloaded server. Commands that torchrun, srun or a signal must reach as a new
    interpreter (several ranks, a killed run) start the console script instead."""
    args = [str(arg) for arg in args]
    environ = dict(os.environ if env is None else env)
    with tempfile.TemporaryDirectory() as folder:
        streams = (Path(folder, "stdout"), Path(folder, "stderr"))
        child = FORKS.Process(target=_command, args=(args, cwd, environ, streams))
        child.start()
        child.join(timeout)
        if child.exitcode is None:
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired(["bn-repro", *args], timeout)
        output, errors = (path.read_text() for path in streams)
    return subprocess.CompletedProcess(["bn-repro", *args], child.exitcode, output, errors)


def _command(args: list[str], cwd: Path | None, environ: dict, streams: tuple) -> None:
    """The console script's work in the forked child, through the interpreter's exit: the exit
    status as sys.exit gives it, an uncaught exception's traceback, the atexit functions."""
    from bn_repro.cli import main

    os.environ.clear()
    os.environ.update(environ)
    if cwd is not None:
        os.chdir(cwd)
    for fd, path in zip((1, 2), streams, strict=True):
        file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(file, fd)
        os.close(file)
    sys.argv = [str(BIN / "bn-repro"), *args]
    try:
        status = main(args)
    except SystemExit as exit:
        status = exit.code
    except BaseException:
        traceback.print_exc()
        status = 1
    if status is not None and not isinstance(status, int):
        print(status, file=sys.stderr)
        status = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status or 0)


def kill_after_first_checkpoint(command: list, run_dir: Path) -> None:
    """Start a training command and SIGKILL it (no chance to save anything) once it has saved
    its first checkpoint."""
    process = subprocess.Popen(command, cwd=run_dir.parent, stderr=subprocess.DEVNULL)
    while not checkpoints(run_dir) and process.poll() is None:
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    process.kill()
    process.wait()


def assert_same_records(got: list[dict], expected: list[dict]) -> None:
    """The same records but for timings, with float tolerance."""
    assert len(got) == len(expected)
    for mine, theirs in zip(got, expected, strict=True):
        assert mine.keys() == theirs.keys()
        for key in mine.keys() - set(TIMING):
            expected_value = theirs[key]
            if isinstance(expected_value, float):
                expected_value = pytest.approx(expected_value, rel=1e-5)
            assert mine[key] == expected_value, (theirs, key)


def prepared_set(
    tmp_path_factory, name: str, spec: MiniSpec, workers: int = 2, shard_size: int = 20
) -> Path:
    """A generated set written as ILSVRC2012's archives, then prepared in both formats."""
    archives = tmp_path_factory.mktemp(f"{name}-archives")
    make_mini(archives, spec, workers=workers)
    out = tmp_path_factory.mktemp(name)
    prepare(archives, out, PrepareOptions(("folder", "shards"), workers, shard_size, 0))
    return out


def on_small_set(root: Path) -> list[str]:
    """Overrides that train bn_x5 on conftest's prepared_small set at root: its 6 classes in
    32-pixel crops, 8 images per rank."""
    return [
        "experiment=bn_x5",
        "data=mini",
        f"data.root={root}",
        "data.num_classes=6",
        "data.image_size=32",
        "trainer.batch_per_rank=8",
        "trainer.bn_batch=8",
    ]


def first_visible_gpu(environ: dict) -> str:
    """The first GPU a process with this environment sees, as CUDA_VISIBLE_DEVICES names it (an
    index or a UUID): where a test run was given GPU 3, its child processes must use GPU 3."""
    return environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]


# The environment of a submitit task: rank 3 of 4, two nodes, local rank 1.
SUBMITIT_TASK = {
    "SUBMITIT_EXECUTOR": "slurm",
    "SLURM_JOB_ID": "1234",
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "1",
    "SLURM_NTASKS": "4",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_NODEID": "1",
    "SLURM_JOB_NODELIST": "gpu[07-08]",
}
