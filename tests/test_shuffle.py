"""Sec. 4.2.1's "shuffle training examples more thoroughly", as both loaders read both formats:
with data.shuffle=standard the same images meet in a batch epoch after epoch, with thorough the
batch compositions change."""

from itertools import combinations
from pathlib import Path

import pytest

from bn_repro.data import build_data
from bn_repro.data.make_mini import MiniSpec
from bn_repro.schema import DataFormat, DataLoaderKind, Shuffle
from tests.helpers import prepared_set, run_config, share

CLASSES = 48  # of one training image each: a batch's labels name its images
BATCH = 8


@pytest.fixture(scope="module")
def singletons(tmp_path_factory) -> Path:
    spec = MiniSpec(CLASSES, 1, 1, size=16, seed=3)
    return prepared_set(tmp_path_factory, "singletons", spec, shard_size=16)


def batch_pairs(epoch: list[list[int]]) -> set[frozenset]:
    """Every pair of images that share a batch of the epoch."""
    return {frozenset(pair) for labels in epoch for pair in combinations(labels, 2)}


@pytest.mark.parametrize("loader", list(DataLoaderKind))
@pytest.mark.parametrize("data_format", list(DataFormat))
@pytest.mark.parametrize("shuffle", list(Shuffle))
def test_pairs_meet_again_in_the_next_epoch_only_without_thorough_shuffling(
    singletons, loader, data_format, shuffle
):
    cfg = run_config(
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
    data = build_data(cfg, share(BATCH))
    first, second = ([labels.tolist() for _, labels in data.train_epoch(e)] for e in (0, 1))
    assert len(first) == len(second) == CLASSES // BATCH
    assert len({label for labels in first for label in labels}) == CLASSES  # each image once
    met, again = batch_pairs(first), batch_pairs(second)
    kept = len(met & again) / len(met)
    if shuffle is Shuffle.standard:
        assert kept == 1  # all 168 pairs meet again
    else:
        assert kept < 0.5  # by chance about 7/47 of them
