"""Which samples a rank reads: the same arithmetic for every data source.

An epoch is one order of the training set, cut into global batches; rank r takes the r-th slice
of each, so two ranks of b images step through exactly the batches one process of 2b would, and
every rank gets the same number of batches (the incomplete last global batch is dropped).
Validation is dealt out image by image."""

from dataclasses import dataclass

import torch

CPU = torch.device("cpu")


@dataclass(frozen=True)
class Share:
    """A rank's share of the data, built once a run (train/build.py): which rank of how many, its
    batches, the run's seed (its training order and augmentation draws) and the device it trains
    on, where its batches end up. Every loader reads its part of the data from this alone."""

    rank: int
    world_size: int
    batch: int  # training images per step
    val_batch: int  # images per evaluation batch
    seed: int
    device: torch.device = CPU

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"


def epoch_order(size: int, seed: int, epoch: int, thorough: bool, stored: bool) -> torch.Tensor:
    """The order of the training samples in an epoch. Sec. 4.2.1 shuffles the accelerated
    networks' examples "more thoroughly", so that the same examples do not always meet in a
    mini-batch: thorough draws a new permutation every epoch; standard keeps one order for all
    epochs, the stored one where the source is stored shuffled (shards), else one seeded by the
    run's seed."""
    if thorough:
        return torch.randperm(size, generator=torch.Generator().manual_seed(seed + 7919 * epoch))
    if stored:
        return torch.arange(size)
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed))


def train_batches(
    order: torch.Tensor, rank: int, world_size: int, batch: int, start: int = 0
) -> list[torch.Tensor]:
    """This rank's sample indices for each batch of the epoch in `order`, from batch `start` on."""
    size, global_batch = len(order), batch * world_size
    firsts = range(
        start * global_batch + rank * batch, size - global_batch + 1 + rank * batch, global_batch
    )
    return [order[first : first + batch] for first in firsts]


def batches_per_epoch(size: int, world_size: int, batch: int) -> int:
    return size // (batch * world_size)


def val_batches(size: int, rank: int, world_size: int, batch: int) -> list[torch.Tensor]:
    """This rank's share of the validation set: every image on exactly one rank, the last batch
    partial, possibly none at all on a rank."""
    return list(torch.arange(rank, size, world_size).split(batch))
