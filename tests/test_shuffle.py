"""Sec. 4.2.1's "shuffle training examples more thoroughly", as both loaders read both formats:
with data.shuffle=standard the same images meet in a batch epoch after epoch (in an order the
run's seed draws), with thorough the batch compositions change as a new permutation of the whole
set every epoch changes them (sharding.epoch_order), on every rank."""

import math
from itertools import combinations, product
from pathlib import Path

import pytest

from bn_repro.data import build_data
from bn_repro.data.make_mini import MiniSpec
from bn_repro.schema import DataFormat, DataLoaderKind, Shuffle
from tests.helpers import prepared_set, run_config, share

CLASSES = 48  # of one training image each: a batch's labels name its images
BATCH = 8
RANKS = 2  # 3 global batches of 16 an epoch: 6 batches of 8 partition the 48 images
EPOCHS = 10
# Chebyshev: a loader that draws independent uniform permutations lands further than K standard
# deviations from the expected pair statistic with probability at most 1/K**2 = 1%.
K = 10
LOADERS = list(product(DataLoaderKind, DataFormat))


@pytest.fixture(scope="module")
def singletons(tmp_path_factory) -> Path:
    spec = MiniSpec(CLASSES, 1, 1, size=16, seed=3)
    return prepared_set(tmp_path_factory, "singletons", spec, shard_size=16)


def batch_pairs(epoch: list[list[int]]) -> set[frozenset]:
    """Every pair of images that share a batch of the epoch."""
    return {frozenset(pair) for labels in epoch for pair in combinations(labels, 2)}


def kept(first: list[list[int]], second: list[list[int]]) -> float:
    """The pair statistic: the share of the pairs that met in a batch of `first` that meet
    again in a batch of `second`."""
    met = batch_pairs(first)
    return len(met & batch_pairs(second)) / len(met)


def uniform_pair_statistic(size: int, batch: int, transitions: int) -> tuple[float, float]:
    """The mean and standard deviation of `kept`, averaged over `transitions` epoch changes, for
    epochs that cut independent uniform permutations of `size` images into batches of `batch`
    (size a multiple of batch). Given one epoch's M pairs, the count X of them that meet again
    is a sum of indicators: each meets again with probability p = (b-1)/(N-1); two sharing an
    image both meet with probability (b-1)(b-2)/((N-1)(N-2)), two disjoint ones with
    p (Nb - N - 4b + 6)/((N-2)(N-3)); so Var X = E X^2 - (E X)^2 with E X^2 summed over the
    ordered pairs of pairs. The counts of successive changes are uncorrelated (given the epoch
    between them, each has mean Mp whatever it is), so the mean over T changes has Var X / T."""
    n, b = size, batch
    groups = n // b
    pairs = groups * b * (b - 1) // 2
    p = (b - 1) / (n - 1)
    sharing = groups * b * (b - 1) * (b - 2)  # ordered pairs of pairs with one image in common
    disjoint = pairs * (pairs - 1) - sharing
    both_sharing = (b - 1) * (b - 2) / ((n - 1) * (n - 2))
    both_disjoint = p * (n * b - n - 4 * b + 6) / ((n - 2) * (n - 3))
    square = pairs * p + sharing * both_sharing + disjoint * both_disjoint
    variance = square - (pairs * p) ** 2
    return p, math.sqrt(variance / transitions) / pairs


def data_cfg(singletons: Path, loader: DataLoaderKind, data_format: DataFormat, shuffle: Shuffle):
    return run_config(
        "bn_x5",
        "data=mini",
        f"data.root={singletons}",
        f"data.num_classes={CLASSES}",
        "data.image_size=16",
        "data.dali_device=cpu",
        f"data.workers={1 if loader is DataLoaderKind.dali else 0}",
        f"data.loader={loader.value}",
        f"data.format={data_format.value}",
        f"data.shuffle={shuffle.value}",
    ).data


def epochs(cfg, seed: int, count: int = EPOCHS) -> list[list[list[int]]]:
    """Each epoch's batches over all ranks (their images, by label), of a run of that seed."""
    ranks = [build_data(cfg, share(BATCH, rank, RANKS, seed)) for rank in range(RANKS)]
    return [
        [labels.tolist() for data in ranks for _, labels in data.train_epoch(epoch)]
        for epoch in range(count)
    ]


@pytest.mark.parametrize(("loader", "data_format"), LOADERS)
def test_thorough_shuffling_meets_the_pair_statistic_of_a_new_permutation_every_epoch(
    singletons, loader, data_format
):
    # The same expectation for every loader and format, on two ranks: no two of them are
    # further apart than 2 K standard deviations. Each rank's images come from the whole set,
    # not from a slice of its own (where pairs would meet again with 7/23, not 7/47).
    run = epochs(data_cfg(singletons, loader, data_format, Shuffle.thorough), seed=0)
    assert all(sorted(sum(epoch, [])) == list(range(CLASSES)) for epoch in run)  # each once
    statistic = sum(kept(a, b) for a, b in zip(run, run[1:], strict=False)) / (EPOCHS - 1)
    expected, deviation = uniform_pair_statistic(CLASSES, BATCH, EPOCHS - 1)
    assert abs(statistic - expected) <= K * deviation, (statistic, expected, deviation)


@pytest.mark.parametrize(("loader", "data_format"), LOADERS)
def test_the_standard_order_is_fixed_within_a_run_and_drawn_from_its_seed(
    singletons, loader, data_format
):
    cfg = data_cfg(singletons, loader, data_format, Shuffle.standard)
    run, other = epochs(cfg, seed=0, count=3), epochs(cfg, seed=1, count=1)
    assert run[0] == run[1] == run[2]  # the same batches, in the same order, every epoch
    # Another seed's batches are as unrelated to them as two independent permutations' are.
    expected, deviation = uniform_pair_statistic(CLASSES, BATCH, 1)
    assert abs(kept(run[0], other[0]) - expected) <= K * deviation


@pytest.mark.parametrize("loader", list(DataLoaderKind))
@pytest.mark.parametrize("data_format", list(DataFormat))
@pytest.mark.parametrize("shuffle", list(Shuffle))
def test_pairs_meet_again_in_the_next_epoch_only_without_thorough_shuffling(
    singletons, loader, data_format, shuffle
):
    data = build_data(data_cfg(singletons, loader, data_format, shuffle), share(BATCH))
    first, second = ([labels.tolist() for _, labels in data.train_epoch(e)] for e in (0, 1))
    assert len(first) == len(second) == CLASSES // BATCH
    assert len({label for labels in first for label in labels}) == CLASSES  # each image once
    met, again = batch_pairs(first), batch_pairs(second)
    kept = len(met & again) / len(met)
    if shuffle is Shuffle.standard:
        assert kept == 1  # all 168 pairs meet again
    else:
        assert kept < 0.5  # by chance about 7/47 of them
