"""The training loop: optimizer steps, exact evaluation, records and checkpoints, counted in the
paper's steps of paper.BATCH_SIZE images. It never sees the config: train() passes objects."""

import logging
import math
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
from torch import nn
from torch.distributed import ReduceOp
from torch.nn import functional as F

from bn_repro import paper
from bn_repro.data import DataSource
from bn_repro.data.augment import normalize
from bn_repro.hparams import EffectiveHparams
from bn_repro.models.inception import AUX_WEIGHT
from bn_repro.models.population_stats import batchnorms
from bn_repro.train import checkpoint
from bn_repro.train.distributed import Dist, all_reduce, average_bn_statistics
from bn_repro.train.evaluation import count_correct, population_bn
from bn_repro.train.probe import InputProbe
from bn_repro.train.records import Records
from bn_repro.train.schedule import lr_at

log = logging.getLogger(__name__)

# How a stop signal ends a run. Ranks that got different ones agree on the larger (agree): a
# user's Ctrl-C stops for good a run that a preemption alone would have had requeued.
PREEMPTED, STOPPED = 1, 2
STOP_STATUS = {PREEMPTED: "preempted", STOPPED: "stopped"}


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


@dataclass(frozen=True)
class Compute:
    """How a step runs on this device: autocast dtype (None: fp32), memory format, and the
    stream that copies host batches to the GPU (None: the current stream)."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    channels_last: bool
    copy_stream: torch.cuda.Stream | None = None

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def batch(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The batch on the device, in the step's memory format, without waiting for the device:
        a blocking copy would stall the host until the steps queued before it had run."""
        if self.copy_stream is None or images.is_cuda:
            return self._to_device(images, labels)
        # A host batch (pinned by the loader) is copied on the copy stream, so the copy overlaps
        # the step still running on the current stream; this step's kernels wait for it.
        with torch.cuda.stream(self.copy_stream):
            batch = self._to_device(images, labels)
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self.copy_stream)
        for tensor in batch:
            tensor.record_stream(current)  # its memory is not reused before the step has run
        return batch

    def _to_device(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        images = images.to(self.device, non_blocking=True)
        if images.dtype == torch.uint8:  # a loader's (N, H, W, 3)
            images = normalize(images)
        return (
            images.contiguous(memory_format=self.memory_format),
            labels.to(self.device, non_blocking=True),
        )


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
    identity: dict  # what the run is, in the summary: the report reads no config
    stop_signal: list = field(default_factory=list)  # filled by stop_on_signals
    probe: InputProbe | None = None  # input distributions at every evaluation (rank 0)
    window: "Window" = field(init=False, default_factory=lambda: Window(time.perf_counter()))
    last_checkpoint: float = field(init=False, default_factory=time.monotonic)
    batches: Iterator | None = field(init=False, default=None)  # the training stream (stream)

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
        steps = self.train_steps(progress)
        while True:
            next(steps)
            outcome = self.step_boundary(progress)
            if outcome:
                return outcome

    def stepper(self, progress: Progress) -> "Stepper":
        """The run's training steps driven from outside fit (bench train): no logs, evaluations
        or checkpoints, the same step and agreement."""
        return Stepper(self, progress, self.train_steps(progress))

    def train_steps(self, progress: Progress) -> Iterator[None]:
        """One optimizer step each time it is advanced, epoch after epoch, without end; progress
        and the window count them. Nothing in a step waits for the device."""
        for images, labels in self.stream(progress):
            self.window.add(self.train_step(images, labels, progress.step), len(labels))
            progress.step += 1
            yield

    def stream(self, progress: Progress) -> Iterator:
        """The training batches from where progress stands, epoch after epoch, without end; one
        stream a trainer, so that what follows the last step (Algorithm 2's batches) is the
        data's next batches, as after a resume."""
        if self.batches is None:
            self.batches = self._batches(progress)
        return self.batches

    def _batches(self, progress: Progress) -> Iterator:
        return train_stream(self.data, progress, self.timed)

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

    def timed(self, batches: Iterator) -> Iterator:
        """The batches, adding the time spent waiting for each to the window's data wait."""
        iterator = iter(batches)
        while True:
            start = time.perf_counter()
            batch = next(iterator, None)
            self.window.data_wait += time.perf_counter() - start
            if batch is None:
                return
            yield batch

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, step: int) -> torch.Tensor:
        lr = lr_at(self.plan.paper_steps(step), self.hp)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        images, labels = self.compute.batch(images, labels)
        with self.compute.autocast():
            loss = loss_of(self.forward(images), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

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
            self.stream(progress),
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
        payload = self.weights_and_place(progress)
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
        payload = self.weights_and_place(progress)
        if self.dist.is_main:
            checkpoint.save_best(self.run_dir, payload)

    def weights_and_place(self, progress: Progress) -> dict:
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
            **self.identity,
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


def train_stream(data: DataSource, progress: Progress, timed=iter) -> Iterator:
    """The training batches from where progress stands, epoch after epoch, without end, counted
    in progress; `timed` wraps each epoch's batches (Trainer.timed)."""
    while True:
        for batch in timed(data.train_epoch(progress.epoch, progress.batch_in_epoch)):
            progress.batch_in_epoch += 1
            yield batch
        progress.epoch += 1
        progress.batch_in_epoch = 0


def loss_of(output, labels: torch.Tensor) -> torch.Tensor:
    if isinstance(output, tuple):  # training with GoogLeNet's auxiliary heads
        logits, aux_logits = output
        aux = sum(F.cross_entropy(aux.float(), labels) for aux in aux_logits)
        return F.cross_entropy(logits.float(), labels) + AUX_WEIGHT * aux
    return F.cross_entropy(output.float(), labels)


@dataclass
class Stepper:
    """Trainer.stepper: steps taken as fit takes them, and timed over a window of their own."""

    trainer: Trainer
    progress: Progress
    steps: Iterator[None]  # Trainer.train_steps

    def advance(self, count: int) -> None:
        """`count` training steps, with the ranks' agreement every control_every_steps as a run
        has it (its one host synchronization between logs)."""
        for _ in range(count):
            next(self.steps)
            if self.progress.step % self.trainer.plan.control_every_steps == 0:
                self.trainer.agree()

    def time(self, count: int) -> dict:
        """`count` steps (advance) in a window of their own, which starts once the device has
        run the steps before: Trainer.measure_window's loss, images/s and data wait."""
        trainer = self.trainer
        if trainer.compute.device.type == "cuda":
            torch.cuda.synchronize(trainer.compute.device)
        trainer.window = Window(time.perf_counter())
        self.advance(count)
        return trainer.measure_window()


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


def stop_code(signals: list) -> int:
    if signal.SIGINT in signals:
        return STOPPED
    return PREEMPTED if signals else 0


@contextmanager
def stop_on_signals(received: list) -> Iterator[None]:
    """SIGTERM, SIGUSR1 or SIGUSR2 (SLURM's warning before the time limit: the usual one, and
    submitit's) asks for a checkpoint and a stop at the next control point, then a requeue;
    SIGINT (Ctrl-C) for the same without the requeue, and a second Ctrl-C interrupts at once
    (KeyboardInterrupt). The handlers from before come back afterwards
    (requeue.ask_to_be_requeued hands them the signals). Loader workers forked meanwhile inherit
    the handler, which ignores the Ctrl-C that reaches them too: they stop with the trainer."""
    trainer = os.getpid()

    def on_signal(signum: int, frame) -> None:
        if os.getpid() != trainer:
            return
        if signum == signal.SIGINT:
            if signum in received:
                raise KeyboardInterrupt
            # straight to the terminal: logging is not safe in a signal handler
            os.write(2, b"\nCtrl-C: stopping with a checkpoint (Ctrl-C again: at once, without)\n")
        received.append(signum)

    handled = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)
    previous = {sig: signal.signal(sig, on_signal) for sig in handled}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
