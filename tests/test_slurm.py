"""Sweeps and runs on a real single-node SLURM (scripts/local_slurm.py), each job two gloo ranks
on CPU: Hydra's submitit launcher, the sbatch template and its sweep submitter, a job stopped by
the pre-timeout signal that is requeued and resumes, and a bad job in a sweep."""

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
from scripts.local_slurm import LocalSlurm
from tests.helpers import BIN, TINY, assert_same_records, bn_repro

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

SLURM = Path(__file__).resolve().parent.parent / "slurm"
# TINY, 10 paper steps long: 40 optimizer steps of 8 images, a checkpoint every 10.
SHORT = [
    *TINY,
    "trainer.max_paper_steps=10",
    "trainer.eval_every_paper_steps=5",
    "trainer.log_every_paper_steps=2.5",
    "trainer.checkpoint_every_paper_steps=2.5",
]
# One job = one task per rank, two ranks of one CPU each, no GPU.
SUBMITIT = [
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.tasks_per_node=2",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.timeout_min=60",
]
# One job = one torchrun of two CPU ranks.
SBATCH = ["--gpus-per-node=0", "--cpus-per-task=2"]
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}
WAIT_S = 600  # a job's or sweep's limit here, so that a broken one fails rather than hangs


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        pytest.skip("a local SLURM needs root: apt-get, and daemons that run jobs")
    root = Path(tempfile.mkdtemp(prefix="bn-repro-slurm-"))
    local = LocalSlurm(root)
    try:
        local.start()
        yield local
    finally:
        local.stop()
        shutil.rmtree(root)


@pytest.fixture(scope="module")
def env(cluster) -> dict:
    """For commands and jobs: this cluster, this environment's bn-repro, CPU ranks."""
    return {**cluster.env, "PATH": f"{BIN}:{cluster.env['PATH']}", "RANKS_PER_NODE": "2"}


@pytest.fixture(scope="module")
def sweep(env, tmp_path_factory) -> Path:
    """Two variants and a bad batch (0 images per rank): four jobs."""
    work = tmp_path_factory.mktemp("sweep")
    result = bn_repro(
        "train",
        "-m",
        *SHORT,
        "experiment=bn_baseline,bn_x5",
        "trainer.batch_per_rank=8,0",
        f"run_dir={work}/${{name}}/batch${{trainer.batch_per_rank}}",
        f"hydra.sweep.dir={work}/sweep",
        *SUBMITIT,
        cwd=work,
        env=env,
        timeout=WAIT_S,
    )
    assert result.returncode == 0, result.stderr
    return work


@pytest.fixture(scope="module")
def template_run(env, tmp_path_factory) -> Path:
    """bn_x5 by slurm/train.sbatch, submitted by slurm/submit_sweep.py."""
    work = tmp_path_factory.mktemp("template")
    run_dir = work / "bn_x5"
    submitted = subprocess.run(
        [
            sys.executable,
            SLURM / "submit_sweep.py",
            *SBATCH,
            "--",
            *SHORT,
            "experiment=bn_x5",
            f"run_dir={run_dir}",
        ],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        check=True,
    )
    job_id, listed_dir, _ = submitted.stdout.split("\t")
    assert listed_dir == str(run_dir)
    assert wait_for(job_id, env)["JobState"] == "COMPLETED", log_of(run_dir)
    return run_dir


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def starts(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "environment.json").read_text())


def job_info(job_id: str, env: dict) -> dict:
    shown = subprocess.run(
        ["scontrol", "--oneliner", "show", "job", job_id],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return dict(field.split("=", 1) for field in shown.stdout.split() if "=" in field)


def wait_for(job_id: str, env: dict) -> dict:
    """The job's record once it has ended (a requeued job ends only after its last start)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        info = job_info(job_id, env)
        if info["JobState"] in FINAL_STATES:
            return info
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {info['JobState']} after {WAIT_S} s")


def running_job(env: dict) -> str:
    listing = subprocess.run(
        ["squeue", "--noheader", "--states=RUNNING", "--format=%A"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    (job_id,) = listing.stdout.split()
    return job_id


def wait_for_checkpoint(run_dir: Path, job: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + WAIT_S
    while not checkpoints(run_dir):
        assert time.monotonic() < deadline, f"no checkpoint in {run_dir} after {WAIT_S} s"
        assert job is None or job.poll() is None, "the sweep ended before its first checkpoint"
        time.sleep(0.05)


def log_of(run_dir: Path) -> str:
    return "".join(path.read_text() for path in run_dir.glob("slurm-*.out"))


def resumed_at(run_dir: Path) -> int:
    (step,) = re.findall(r"resumed at optimizer step (\d+)", (run_dir / "train.log").read_text())
    return int(step)


@pytest.mark.parametrize("experiment", ["bn_baseline", "bn_x5"])
def test_each_job_of_a_submitit_sweep_trains_two_ranks_and_keeps_its_records(sweep, experiment):
    run_dir = sweep / experiment / "batch8"
    done = summary(run_dir)
    assert done["status"] == "finished" and done["name"] == experiment
    assert done["world_size"] == 2 and done["paper_steps"] == 10
    assert [(s["launcher"], s["world_size"]) for s in starts(run_dir)] == [("submitit", 2)]
    evals = [r for r in read_metrics(run_dir) if r["kind"] == "eval"]
    assert [(r["paper_steps"], r["count"]) for r in evals] == [(5, 101), (10, 101), (10, 101)]
    for name in ("config.json", "effective_hparams.json", "train.log", "tensorboard"):
        assert (run_dir / name).exists(), name


def test_a_bad_job_fails_alone_with_its_error_in_its_log(sweep):
    error = "bn-repro train: trainer.batch_per_rank must be positive, got 0"
    logs = [path.read_text() for path in (sweep / "sweep" / ".submitit").glob("*/*_0_log.err")]
    assert len(logs) == 4  # one log of rank 0 a job
    failed = [log for log in logs if error in log]
    assert len(failed) == 2 and not any("Traceback" in log for log in failed)
    for experiment in ("bn_baseline", "bn_x5"):
        assert not (sweep / experiment / "batch0" / "summary.json").exists()
        assert summary(sweep / experiment / "batch8")["status"] == "finished"


def test_a_submitit_job_signalled_before_its_time_limit_is_requeued_and_resumes(
    sweep, env, tmp_path
):
    run_dir = tmp_path / "bn_x5"
    job = subprocess.Popen(
        [
            BIN / "bn-repro",
            "train",
            "-m",
            *SHORT,
            "experiment=bn_x5",
            f"run_dir={run_dir}",
            f"hydra.sweep.dir={tmp_path}/sweep",
            *SUBMITIT,
        ],
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    wait_for_checkpoint(run_dir, job)
    job_id = running_job(env)
    # what SLURM sends signal_delay_s before the time limit (#SBATCH --signal=USR2@...)
    subprocess.run(["scancel", f"--signal={signal.SIGUSR2.name}", job_id], env=env, check=True)
    _, stderr = job.communicate(timeout=WAIT_S)
    assert job.returncode == 0, stderr
    assert job_info(job_id, env)["Restarts"] == "1"
    assert 0 < resumed_at(run_dir) < 40
    assert summary(run_dir)["status"] == "finished" and len(starts(run_dir)) == 2
    assert_same_records(read_metrics(run_dir), read_metrics(sweep / "bn_x5" / "batch8"))


def test_the_sbatch_template_trains_two_ranks(template_run):
    assert summary(template_run)["status"] == "finished"
    assert [(s["launcher"], s["world_size"]) for s in starts(template_run)] == [("torchrun", 2)]
    assert len([r for r in read_metrics(template_run) if r["kind"] == "eval"]) == 3  # Alg. 2 last


def test_a_template_job_signalled_before_its_time_limit_is_requeued_and_resumes(
    template_run, env, tmp_path
):
    run_dir = tmp_path / "bn_x5"
    run_dir.mkdir()
    submitted = subprocess.run(
        [
            "sbatch",
            "--parsable",
            f"--output={run_dir}/slurm-%j.out",
            *SBATCH,
            SLURM / "train.sbatch",
            *SHORT,
            "experiment=bn_x5",
            f"run_dir={run_dir}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        check=True,
    )
    job_id = submitted.stdout.strip()
    wait_for_checkpoint(run_dir)
    # what SLURM sends before the time limit (#SBATCH --signal=TERM@...): every process of the
    # job's steps, the batch script aside
    subprocess.run(["scancel", "--signal=TERM", job_id], env=env, check=True)
    info = wait_for(job_id, env)
    assert (info["JobState"], info["Restarts"]) == ("COMPLETED", "1"), log_of(run_dir)
    assert f"requeueing job {job_id}" in log_of(run_dir)
    assert 0 < resumed_at(run_dir) < 40
    assert summary(run_dir)["status"] == "finished" and len(starts(run_dir)) == 2
    assert_same_records(read_metrics(run_dir), read_metrics(template_run))


def test_the_submitter_refuses_a_sweep_whose_runs_share_a_directory(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            SLURM / "submit_sweep.py",
            "--",
            "experiment=bn_baseline",
            "optim.lr_multiplier=1,5",
            f"run_dir={tmp_path}/${{name}}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert f"2 jobs would share run_dir {tmp_path}/bn_baseline" in result.stderr


FAKE_APT = """#!/bin/sh
echo "$@" >> "$APT_LOG"
[ "$1" = install ] || exit 0
/bin/sleep 1
for command in slurmctld slurmd munged sbatch; do
    echo '#!/bin/sh' > "$FAKE_BIN/$command" && /bin/chmod +x "$FAKE_BIN/$command"
done
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="installs as root only")
def test_two_clusters_started_at_once_install_slurm_once(tmp_path):
    # the two SLURM modules start their clusters on two test workers at once: on a machine
    # without SLURM, two apt-gets at once would fight over dpkg's lock
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "apt-get").write_text(FAKE_APT)
    (fake_bin / "apt-get").chmod(0o755)
    env = {**os.environ, "PATH": str(fake_bin), "FAKE_BIN": str(fake_bin)}
    env["APT_LOG"] = str(tmp_path / "apt.log")
    project = Path(__file__).resolve().parent.parent
    install = [sys.executable, "-c", "from scripts.local_slurm import install; install()"]
    starts = [subprocess.Popen(install, cwd=project, env=env) for _ in range(2)]
    assert [start.wait(timeout=60) for start in starts] == [0, 0]
    calls = (tmp_path / "apt.log").read_text().splitlines()
    assert [call.split()[0] for call in calls] == ["update", "install"], calls
