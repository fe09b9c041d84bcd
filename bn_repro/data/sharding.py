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


def epoch_order(size: int, seed: int, epoch: int, thorough: bool) -> torch.Tensor:
    """The order of the training samples in an epoch, the same for every loader and format, on
    every rank (each takes its part of each global batch: train_batches).

    standard: one permutation of the whole set, drawn from the run's seed, for every epoch: the
    same examples meet in a mini-batch epoch after epoch (what the paper's thorough shuffling
    "prevents"), and another seed gives other batches. thorough (Sec. 4.2.1's "shuffle
    training examples more thoroughly"): a new permutation of the whole set every epoch. The
    paper enabled "within-shard shuffling" of its sharded data, with shards of a size it does
    not give; a pair of examples in one mini-batch of b meets again in the next epoch with
    probability (b - 1)/(S - 1) after a shuffle within shards of S examples, (b - 1)/(N - 1)
    after one of the whole set of N: 2.5% and 0.002% for b = 32, S = 1,250 (prepare's shards),
    N = 1.28M. Both keep examples from always meeting, which is the paper's point; the whole
    set's permutation is the limit of large shards and the one whose batches depend neither on
    how prepare cut the shards nor on the number of ranks."""
    if thorough:
        return torch.randperm(size, generator=torch.Generator().manual_seed(seed + 7919 * epoch))
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
