"""The training loop: optimizer steps, exact evaluation, records and checkpoints, counted in the
paper's steps of paper.BATCH_SIZE images. It never sees the config: build.build_trainer passes
objects."""

import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
from torch import nn
from torch.distributed import ReduceOp

from bn_repro import paper
from bn_repro.data import DataSource
from bn_repro.data.synthetic import Batch
from bn_repro.hparams import EffectiveHparams
from bn_repro.models.population_stats import batchnorms
from bn_repro.train import checkpoint
from bn_repro.train.compute import Compute
from bn_repro.train.distributed import Dist, all_reduce, average_bn_statistics
from bn_repro.train.evaluation import count_correct, population_bn
from bn_repro.train.metrics import Records
from bn_repro.train.plan import Plan, Progress, update_best
from bn_repro.train.probe import InputProbe
from bn_repro.train.schedule import lr_at
from bn_repro.train.signals import STOP_STATUS, stop_code
from bn_repro.train.step import GraphedStep, step_eagerly

log = logging.getLogger(__name__)


@dataclass
class Trainer:
    model: nn.Module  # unwrapped: evaluated and saved as it is
    forward: nn.Module  # the DDP wrapper (compiled, when asked): trains
    optimizer: torch.optim.Optimizer
    data: DataSource
    hp: EffectiveHparams
    plan: Plan
    compute: Compute
    dist: Dist
    records: Records
    run_dir: Path
    checkpoint_extra: dict  # saved with every checkpoint (the resolved config)
    description: dict  # what the run is, in the summary (build.describe_run)
    # The training batches from where the run stands, epoch after epoch (train_stream): one
    # stream a run, so that Algorithm 2's batches after the last step are the data's next ones
    stream: Iterator[Batch]
    stop_signal: list = field(default_factory=list)  # filled by signals.stop_on_signals
    compile_mode: str | None = None  # torch.compile's, when `forward` is compiled
    probe: InputProbe | None = None  # input distributions at every evaluation (rank 0)
    graphed: GraphedStep | None = None  # the step as a CUDA graph (trainer.cuda_graph)
    window: "Window" = field(init=False, default_factory=lambda: Window(time.perf_counter()))
    last_checkpoint: float = field(init=False, default_factory=time.monotonic)

    def fit(self, progress: Progress) -> str:
        """Train to the planned length; returns finished, diverged, or on a signal preempted
        (to be requeued) or stopped (Ctrl-C)."""
        self.window = Window(time.perf_counter())
        if self.dist.is_main:  # one rank carries the ranks' summed loss over the resume
            self.window.loss_sum, self.window.loss_images = (
                progress.window_loss,
                progress.window_images,
            )
        self.last_checkpoint = time.monotonic()
        if progress.step >= self.plan.total_steps:
            return "finished"
        if self.compile_mode is not None:
            self.timed_first_step(progress)
            outcome = self.step_boundary(progress)
            if outcome:
                return outcome
        while True:
            self.step(progress)
            outcome = self.step_boundary(progress)
            if outcome:
                return outcome

    def step(self, progress: Progress) -> None:
        """One optimizer step on the stream's next batch: the one place progress.step moves (the
        stream moves the epoch and the batch in it). Nothing in it waits for the device."""
        start = time.perf_counter()
        images, labels = next(self.stream)
        self.window.data_wait += time.perf_counter() - start
        self.window.add(self.train_step(images, labels, progress.step), len(labels))
        progress.step += 1

    def timed_first_step(self, progress: Progress) -> None:
        """A start's first step under torch.compile, timed to its end on the device: mostly the
        compilation of the forward and backward graphs, which every start pays again."""
        start = time.perf_counter()
        self.step(progress)
        if self.compute.device.type == "cuda":
            torch.cuda.synchronize(self.compute.device)
        seconds = time.perf_counter() - start
        record = {"kind": "compile", **self.plan.counters(progress), "mode": self.compile_mode}
        self.records.write(record | {"first_step_s": round(seconds, 2)})
        log.info("torch.compile (%s): the first step took %.1f s", self.compile_mode, seconds)

    def step_boundary(self, progress: Progress) -> str | None:
        """Logs, evaluations and checkpoints due after this step; the outcome if the run ends."""
        plan, step = self.plan, progress.step
        last = step >= plan.total_steps
        log_due = last or plan.crosses(step, plan.log_every)
        eval_due = last or plan.crosses(step, plan.eval_every)
        checkpoint_due = last or plan.crosses(step, plan.checkpoint_every)
        if not (log_due or eval_due or checkpoint_due or step % plan.control_every_steps == 0):
            return None
        stop, time_due, nonfinite = self.agree()
        if nonfinite:
            return self.diverged(progress)
        if log_due:
            self.log_training(progress)
        if eval_due:
            self.evaluate(progress)
        if checkpoint_due or stop or time_due:
            self.save_checkpoint(progress)
        if stop:
            log.warning("stopping on a signal at step %d: %s", step, STOP_STATUS[stop])
            return STOP_STATUS[stop]
        return "finished" if last else None

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, step: int) -> torch.Tensor:
        lr = lr_at(self.plan.paper_steps(step), self.hp)
        if self.graphed is not None:
            return self.graphed(images, labels, lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        images, labels = self.compute.batch(images, labels)
        return step_eagerly(self.forward, self.optimizer, self.compute.autocast, images, labels)

    def agree(self) -> tuple[int, bool, bool]:
        """All ranks act alike: stop if any got a signal (0, PREEMPTED or STOPPED), checkpoint
        if rank 0's clock says so, end the run if any loss was not finite. The loop's only host
        synchronization between logs."""
        minutes = (time.monotonic() - self.last_checkpoint) / 60
        time_due = self.dist.is_main and minutes > self.plan.checkpoint_every_minutes
        nonfinite = not torch.isfinite(torch.as_tensor(self.window.loss_sum)).item()
        flags = [float(stop_code(self.stop_signal)), float(time_due), float(nonfinite)]
        stop, time_due, nonfinite = all_reduce(flags, self.compute.device, ReduceOp.MAX)
        return int(stop), bool(time_due), bool(nonfinite)

    def measure_window(self) -> dict:
        """The mean training loss, images/s over all ranks and the share of time spent waiting
        for data since the window began, once the device has run the queued steps."""
        window = self.window
        if self.compute.device.type == "cuda":
            torch.cuda.synchronize()  # so that the elapsed time covers the queued work
        elapsed = time.perf_counter() - window.start
        loss_sum, loss_images, images, wait = all_reduce(
            [float(window.loss_sum), window.loss_images, window.images, window.data_wait],
            self.compute.device,
        )
        return {
            "loss": loss_sum / loss_images,
            "images_per_s": images / elapsed,
            "data_wait": wait / self.dist.world_size / elapsed,
        }

    def log_training(self, progress: Progress) -> None:
        record = {
            "kind": "train",
            **self.plan.counters(progress),
            "lr": lr_at(self.plan.paper_steps(progress.step - 1), self.hp),
            **self.measure_window(),
        }
        self.records.write(record)
        left = (self.plan.max_paper_steps - record["paper_steps"]) * paper.BATCH_SIZE
        log.info(
            "paper step %s/%s  loss %.4f  lr %.4g  %.0f images/s  data wait %.0f%%  %s left",
            f"{record['paper_steps']:,.0f}",
            f"{self.plan.max_paper_steps:,.0f}",
            record["loss"],
            record["lr"],
            record["images_per_s"],
            100 * record["data_wait"],
            timedelta(seconds=round(left / record["images_per_s"])),
        )
        self.window = Window(time.perf_counter())

    def evaluate(self, progress: Progress) -> dict:
        """Evaluate with BN's running averages (the ranks' averaged first), as training tracks
        its accuracy; the record, which also counts towards the run's best."""
        average_bn_statistics(self.model, self.dist.world_size)
        record = self.eval_record(progress, "running" if batchnorms(self.model) else "none")
        if self.probe is not None:
            measured = self.probe.measure(self.model)
            self.records.write({"kind": "inputs", **self.plan.counters(progress), **measured})
        if update_best(progress, record, self.plan.target_top1):
            self.save_best(progress)
        self.records.write_file("summary.json", self.summary(progress, "running"))
        return record

    def finish(self, progress: Progress) -> dict | None:
        """The run's final evaluation, on rank 0 (None elsewhere). With BN, Algorithm 2: the
        population statistics over plan.population_batches training batches per rank (those
        that follow the last step), averaged over ranks, then an evaluation with them; a run
        started again once it has that record evaluates nothing more. Without BN, the last
        evaluation."""
        if not batchnorms(self.model):
            return self.records.find(kind="eval", step=progress.step)
        earlier = self.records.find(kind="eval", step=progress.step, bn_stats="population")
        (done,) = all_reduce([float(earlier is not None)], self.compute.device, ReduceOp.MAX)
        if done:
            return earlier
        with population_bn(
            self.model,
            self.stream,
            self.plan.population_batches,
            self.compute,
            self.dist.world_size,
        ) as used:
            return self.eval_record(progress, "population", population_batches=used)

    def eval_record(self, progress: Progress, bn_stats: str, **extra) -> dict:
        """Top-1 and top-5 as exact counts over every validation image once, summed over ranks
        (evaluation.count_correct); written to the records. bn_stats names the BN statistics
        used: running, population or none."""
        counts = count_correct(
            self.model, self.data.val_batches(), self.compute, self.data.val_size
        )
        record = {
            "kind": "eval",
            **self.plan.counters(progress),
            "bn_stats": bn_stats,
            **extra,
            **counts.fields(),
        }
        self.records.write(record)
        log.info(
            "eval (%s BN statistics) at paper step %s: top-1 %.4f  top-5 %.4f  (%d images)",
            bn_stats,
            f"{record['paper_steps']:,.0f}",
            record["top1"],
            record["top5"],
            record["count"],
        )
        return record

    def save_checkpoint(self, progress: Progress) -> None:
        average_bn_statistics(self.model, self.dist.world_size)
        loss, images = all_reduce(
            [float(self.window.loss_sum), self.window.loss_images], self.compute.device
        )
        progress.window_loss, progress.window_images = loss, int(images)
        rng = [torch.get_rng_state()]
        if self.compute.device.type == "cuda":
            rng.append(torch.cuda.get_rng_state(self.compute.device))
        every_rng = [None] * self.dist.world_size
        torch.distributed.all_gather_object(every_rng, rng)
        payload = self.checkpoint_payload(progress)
        if self.dist.is_main:
            payload |= {"optimizer": self.optimizer.state_dict(), "rng": every_rng}
            path = checkpoint.save(self.run_dir, progress.step, payload, self.plan.keep_checkpoints)
            log.info("checkpoint %s", path)
        self.last_checkpoint = time.monotonic()

    def save_best(self, progress: Progress) -> None:
        """checkpoints/best.pt: the weights of the evaluation with the run's best top-1 (BN's
        running averages, as evaluated), where the run stood and each rank's loader state, so
        that `bn-repro evaluate --checkpoint best` can also recompute Algorithm 2's statistics
        from the training batches that followed it."""
        payload = self.checkpoint_payload(progress)
        if self.dist.is_main:
            checkpoint.save_best(self.run_dir, payload)

    def checkpoint_payload(self, progress: Progress) -> dict:
        """What every checkpoint holds: the weights, the progress, every rank's loader state and
        the run's config. A collective: every rank calls it; the ranks' BN statistics must
        have been averaged."""
        loader_states = [None] * self.dist.world_size
        torch.distributed.all_gather_object(loader_states, self.data.state())
        return {
            "model": self.model.state_dict(),
            "progress": asdict(progress),
            "loader": loader_states,
            **self.checkpoint_extra,
        }

    def diverged(self, progress: Progress) -> str:
        at = self.plan.paper_steps(progress.step)
        log.warning(
            "the loss is not finite at paper step %s (within the last %d steps): run diverged",
            f"{at:,.0f}",
            self.plan.control_every_steps,
        )
        summary = self.summary(progress, "diverged")
        summary["diverged_at_paper_steps"] = at
        self.records.write_file("summary.json", summary)
        return "diverged"

    def summary(self, progress: Progress, status: str, final: dict | None = None) -> dict:
        """What the run is and where it stands; with its final evaluation (finish) once done."""
        counters = self.plan.counters(progress)
        return {
            **self.description,
            "status": status,
            **counters,
            "world_size": self.dist.world_size,
            "global_batch": self.plan.global_batch,
            "max_paper_steps": self.plan.max_paper_steps,
            "target_top1": self.plan.target_top1,
            "steps_to_target": progress.steps_to_target,
            "max_top1": progress.max_top1,
            "top5_at_max_top1": progress.top5_at_max_top1,
            "paper_steps_at_max_top1": progress.paper_steps_at_max_top1,
            "final_bn_stats": final and final["bn_stats"],
            "final_top1": final and final["top1"],
            "final_top5": final and final["top5"],
        }


def train_stream(data: DataSource, progress: Progress) -> Iterator[Batch]:
    """The training batches from where progress stands, epoch after epoch, without end: the one
    place where progress.epoch and progress.batch_in_epoch move."""
    while True:
        for batch in data.train_epoch(progress.epoch, progress.batch_in_epoch):
            progress.batch_in_epoch += 1
            yield batch
        progress.epoch += 1
        progress.batch_in_epoch = 0


@dataclass
class Window:
    """Training statistics since the last log record; the loss stays on the device."""

    start: float
    loss_sum: torch.Tensor | float = 0.0  # summed over images
    loss_images: int = 0  # the images loss_sum covers, some maybe from before a resume
    images: int = 0  # trained on since start, for the throughput
    data_wait: float = 0.0  # seconds spent waiting for batches

    def add(self, loss: torch.Tensor, images: int) -> None:
        self.loss_sum = self.loss_sum + loss * images
        self.loss_images += images
        self.images += images
