"""A run's plan (its length and intervals, in paper steps of paper.BATCH_SIZE images) and where
it stands (Progress, saved in every checkpoint): plain data and arithmetic."""

import math
from dataclasses import dataclass

from bn_repro import paper


@dataclass
class Progress:
    """Where a run stands: plain data, saved in every checkpoint."""

    step: int = 0  # optimizer steps of global_batch images
    epoch: int = 0
    batch_in_epoch: int = 0
    max_top1: float | None = None
    top5_at_max_top1: float | None = None
    paper_steps_at_max_top1: float | None = None
    steps_to_target: float | None = None  # paper steps of the first evaluation >= the target
    # the training loss since the last log record, summed over ranks and images, so that a run
    # resumed between two records logs the same numbers as one never stopped
    window_loss: float = 0.0
    window_images: int = 0


@dataclass(frozen=True)
class Plan:
    """The run's length and intervals; every interval is in paper steps."""

    global_batch: int
    max_paper_steps: float
    eval_every: float
    log_every: float
    checkpoint_every: float
    checkpoint_every_minutes: float
    keep_checkpoints: int
    control_every_steps: int
    target_top1: float | None
    population_batches: int  # per rank, for Algorithm 2's statistics at the end

    @property
    def total_steps(self) -> int:
        return math.ceil(self.max_paper_steps * paper.BATCH_SIZE / self.global_batch)

    def paper_steps(self, step: int) -> float:
        return step * self.global_batch / paper.BATCH_SIZE

    def crosses(self, step: int, every: float) -> bool:
        """Whether this step passed a multiple of `every` paper steps."""
        return self.paper_steps(step) // every > self.paper_steps(step - 1) // every

    def counters(self, progress: Progress) -> dict:
        return {
            "step": progress.step,
            "images_seen": progress.step * self.global_batch,
            "paper_steps": self.paper_steps(progress.step),
            "epoch": progress.epoch,
        }


def update_best(progress: Progress, record: dict, target_top1: float | None) -> bool:
    """Counts the evaluation towards the run's best and its steps to target; whether it is the
    new best."""
    improved = progress.max_top1 is None or record["top1"] > progress.max_top1
    if improved:
        progress.max_top1 = record["top1"]
        progress.top5_at_max_top1 = record["top5"]
        progress.paper_steps_at_max_top1 = record["paper_steps"]
    reached = target_top1 is not None and record["top1"] >= target_top1
    if reached and progress.steps_to_target is None:
        progress.steps_to_target = record["paper_steps"]
    return improved
