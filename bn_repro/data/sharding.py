"""Which samples a rank reads: the same arithmetic for every data source.

An epoch is one permutation of the training set (seeded by the run's seed and the epoch), cut
into global batches; rank r takes the r-th slice of each, so two ranks of b images step through
exactly the batches one process of 2b would, and every rank gets the same number of batches
(the incomplete last global batch is dropped). Validation is dealt out image by image."""

import torch


def train_batches(
    size: int, seed: int, epoch: int, rank: int, world_size: int, batch: int, start: int = 0
) -> list[torch.Tensor]:
    """This rank's sample indices for each batch of the epoch from batch `start` on."""
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed + 7919 * epoch))
    global_batch = batch * world_size
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
