"""Submit a sweep as one SLURM job a run, each running slurm/train.sbatch, for clusters where
Hydra's submitit launcher (hydra/launcher=slurm) is not wanted:

    python slurm/submit_sweep.py [SBATCH_OPTION ...] -- OVERRIDE ...
    python slurm/submit_sweep.py --gpus-per-node=1 --time=24:00:00 -- sweep=figure3 \\
        data=imagenet data.root=/data/ilsvrc2012-prepared

The overrides are those of `bn-repro train -m`, presets (configs/sweep/) and sweep syntax
included. Every run's settings are checked, and run directories must differ, before anything
is submitted. Each job logs to RUN_DIR/slurm-JOBID.out.
"""

import subprocess
import sys
from pathlib import Path

from bn_repro.compose import compose, sweep_jobs
from bn_repro.schema import ConfigError

TEMPLATE = Path(__file__).resolve().parent / "train.sbatch"


def plan(overrides: list[str]) -> list[tuple[list[str], dict]]:
    """Each job's overrides and its composed config; ConfigError if any job is wrong."""
    jobs = [(job, compose(job)) for job in sweep_jobs(overrides)]
    run_dirs: dict[str, list[str]] = {}
    for job, cfg in jobs:
        run_dirs.setdefault(cfg.run_dir, []).append(" ".join(job))
    shared = {run_dir: js for run_dir, js in run_dirs.items() if len(js) > 1}
    if shared:
        run_dir, js = next(iter(shared.items()))
        raise ConfigError(
            f"{len(js)} jobs would share run_dir {run_dir} ({'; '.join(js)}): put the swept"
            " keys into run_dir, e.g. 'run_dir=runs/lr/${name}/x${optim.lr_multiplier}'"
        )
    return jobs


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print(__doc__, file=sys.stderr)
        return 2
    split = argv.index("--")
    sbatch_options, overrides = argv[:split], argv[split + 1 :]
    try:
        jobs = plan(overrides)
    except ConfigError as error:
        print(f"submit_sweep: {error}", file=sys.stderr)
        return 2
    for job, cfg in jobs:
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)  # SLURM writes the log there
        command = [
            "sbatch",
            "--parsable",
            f"--job-name={cfg.name}",
            f"--output={cfg.run_dir}/slurm-%j.out",
            *sbatch_options,
            str(TEMPLATE),
            *job,
        ]
        submitted = subprocess.run(command, capture_output=True, text=True)
        if submitted.returncode:
            print(f"submit_sweep: {' '.join(command)}: {submitted.stderr}", file=sys.stderr)
            return 1
        print(f"{submitted.stdout.strip()}\t{cfg.run_dir}\t{' '.join(job)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
