"""`bn-repro train`'s work, without Hydra: one run trained to its end in run_dir (resumed from
its checkpoints), or until a signal stops it; run_dir held by this run while it trains."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from bn_repro.errors import UserError
from bn_repro.schema import RunConfig
from bn_repro.train import lock
from bn_repro.train.build import build_trainer
from bn_repro.train.distributed import Dist, distributed_for
from bn_repro.train.metrics import setup_logging

log = logging.getLogger(__name__)


def train(cfg: RunConfig, stop_signal: list) -> dict:
    """Train one run to its end, resuming from run_dir if it holds checkpoints, or until a signal
    arrives in stop_signal (signals.stop_on_signals fills it); the summary."""
    run_dir = Path(cfg.run_dir)
    with (
        distributed_for(cfg.trainer) as dist,
        holding_run_dir(run_dir, dist),
    ):
        setup_logging(run_dir, dist.rank)
        trainer, progress = build_trainer(cfg, dist, stop_signal)
        log.info(
            "training %s for %s paper steps in %s",
            cfg.name,
            f"{trainer.plan.max_paper_steps:,.0f}",
            run_dir,
        )
        status = trainer.fit(progress)
        final = trainer.finish(progress) if status == "finished" else None
        summary = trainer.summary(progress, status, final)
        if status != "diverged":  # a diverged run already wrote its summary
            trainer.records.write_file("summary.json", summary)
        trainer.records.close()
        log.info("%s: %s", run_dir, status)
        if status == "stopped":
            log.info("stopped on Ctrl-C with a checkpoint: the same command resumes the run")
    return summary


@contextmanager
def holding_run_dir(run_dir: Path, dist: Dist) -> Iterator[None]:
    """Rank 0 takes run_dir for this run until it ends (lock.py), before anything is written
    there; every rank stops with rank 0's reason if it cannot: another training owns it, or the
    path cannot be written."""
    held, refusal = None, None
    if dist.is_main:
        try:
            held = lock.acquire(run_dir)
        except (UserError, OSError) as error:
            refusal = error
    shared = [refusal]
    try:
        torch.distributed.broadcast_object_list(shared, src=0)
        if shared[0] is not None:
            raise shared[0]
        yield
    finally:
        if held is not None:
            held.release()
