"""Exact evaluation, one implementation for the trainer and `bn-repro evaluate`: top-1 and top-5
as counts over every validation image once, summed over ranks and checked against the set's
size (never a mean of per-rank ratios), and Algorithm 2's population statistics from the
training batches that follow a run's last step. Both run in fp32 whatever the training precision
(fp32)."""

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from bn_repro.models.population_stats import population_statistics
from bn_repro.train.compute import Compute
from bn_repro.train.distributed import average_bn_statistics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Counts:
    top1_correct: int
    top5_correct: int
    count: int  # images, over all ranks
    loss_sum: float  # cross-entropy, summed over the images

    def fields(self) -> dict:
        """The record's fields: the ratios, and the counts they come from."""
        return {
            "top1": self.top1_correct / self.count,
            "top5": self.top5_correct / self.count,
            "top1_correct": self.top1_correct,
            "top5_correct": self.top5_correct,
            "count": self.count,
            "loss": self.loss_sum / self.count,
        }


class Tally:
    """Correct predictions of this rank's images, counted on the device; `total` sums the ranks'
    (a collective: every rank calls it) and reads the device once."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)
        self.count = 0  # known on the host: no need to ask the device

    @torch.no_grad()
    def add(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        """scores (N, classes): logits or log-probabilities, whose order and cross-entropy are
        the same."""
        scores = scores.float()
        best = scores.topk(min(5, scores.shape[1]), dim=1).indices
        self.sums += torch.stack(
            [
                (scores.argmax(1) == labels).sum(),
                (best == labels[:, None]).any(1).sum(),
                F.cross_entropy(scores, labels, reduction="sum"),
            ]
        ).double()
        self.count += len(labels)

    def total(self, expected: int) -> Counts:
        totals = torch.cat([self.sums, self.sums.new_tensor([self.count])])
        torch.distributed.all_reduce(totals)
        top1, top5, loss, count = totals.tolist()
        if count != expected:
            raise RuntimeError(f"evaluation counted {count:.0f} images, not {expected}")
        return Counts(int(top1), int(top5), int(count), loss)


def fp32(device: torch.device):
    """Evaluation's precision: fp32, also where training runs under bf16 autocast (the default
    on CUDA, trainer.precision). An evaluation is a small share of a run's compute (one forward
    pass over the validation set every trainer.eval_every_paper_steps), and its numbers are what
    the report compares with the paper's: bf16's 8-bit mantissa moves logits near a tie."""
    return torch.autocast(device.type, enabled=False)


@torch.no_grad()
def count_correct(model: nn.Module, batches: Iterable, compute: Compute, expected: int) -> Counts:
    """The model's single-crop predictions of this rank's validation batches, counted over all
    ranks; the model evaluates outside DDP, in eval mode and fp32, and is back in its mode
    afterwards."""
    training = model.training
    model.eval()
    tally = Tally(compute.device)
    try:
        for batch in batches:
            images, labels = compute.batch(*batch)
            with fp32(compute.device):
                scores = model(images)
            tally.add(scores, labels)
    finally:
        model.train(training)
    return tally.total(expected)


@contextmanager
def population_bn(
    model: nn.Module, train_batches: Iterator, num_batches: int, compute: Compute, world_size: int
) -> Iterator[int]:
    """Algorithm 2: within the block the model's BN layers hold the population statistics of the
    next num_batches training batches of this rank (moved to the device as a training step's, run
    in fp32 as the evaluation that uses them), averaged over the ranks; afterwards the running
    averages are back. Yields the number of batches used."""
    images = (compute.batch(*batch)[0] for batch in train_batches)
    with (
        fp32(compute.device),
        population_statistics(
            model, images, num_batches, lambda model: average_bn_statistics(model, world_size)
        ) as used,
    ):
        log.info("Algorithm 2: BN statistics over %d training batches per rank", used)
        yield used
