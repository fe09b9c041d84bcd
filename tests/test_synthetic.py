"""data=synthetic: two ranks see what one process of twice the batch sees; validation splits."""

import dataclasses

import torch

from bn_repro.data.synthetic import SyntheticData
from tests.helpers import run_config, share

CFG = run_config(
    "bn_x5", "data=synthetic", "data.synthetic.train_size=64", "data.synthetic.val_size=11"
).data


def test_two_ranks_split_the_global_batches_of_one():
    single = list(SyntheticData(CFG, share(8)).train_epoch(epoch=3))
    ranks = [
        list(SyntheticData(CFG, share(4, rank=r, world_size=2)).train_epoch(epoch=3))
        for r in (0, 1)
    ]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 8
    for whole, first, second in zip(single, *ranks, strict=True):
        torch.testing.assert_close(whole[0], torch.cat([first[0], second[0]]))
        assert whole[1].tolist() == first[1].tolist() + second[1].tolist()


def test_epochs_reshuffle_and_resume_mid_epoch():
    data = SyntheticData(CFG, share(8))
    first, second = list(data.train_epoch(0)), list(data.train_epoch(1))
    assert first[0][1].tolist() != second[0][1].tolist()
    resumed = list(data.train_epoch(1, start_batch=5))
    assert [b[1].tolist() for b in resumed] == [b[1].tolist() for b in second[5:]]


def test_validation_images_are_split_over_ranks_exactly_once():
    parts = [SyntheticData(CFG, share(2, rank=r, world_size=3)) for r in range(3)]
    seen = torch.cat([x for part in parts for x, _ in part.val_batches()])
    whole = SyntheticData(CFG, share(2)).val_images
    assert len(seen) == 11
    assert sorted(seen.sum((1, 2, 3)).tolist()) == sorted(whole.sum((1, 2, 3)).tolist())


def test_the_data_seed_makes_the_images_and_every_run_seed_trains_on_them():
    # a data set of its own, as a prepared one: the run's seed draws the order, not the images
    a, b = SyntheticData(CFG, share(8, seed=5)), SyntheticData(CFG, share(8, seed=6))
    torch.testing.assert_close(a.train_images, b.train_images)
    other = dataclasses.replace(CFG, synthetic=dataclasses.replace(CFG.synthetic, seed=1))
    assert not torch.equal(a.train_images, SyntheticData(other, share(8, seed=5)).train_images)
