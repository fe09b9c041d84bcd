"""What a row of the report and a run are: one variant at one update (global batch, BN batch,
precision), one data set, each run once by its identity; the claims that cannot tell say so."""

import torch

from bn_repro.train.loop import Compute
from bn_repro.train.main import identity
from tests.helpers import TINY, run_config


def test_the_trainer_records_the_update_and_the_synthetic_set_in_the_summary():
    cpu = Compute(torch.device("cpu"), None, channels_last=False)
    summary = identity(run_config("bn_x5", *TINY), cpu)
    assert (summary["bn_batch"], summary["precision"]) == (8, "fp32")
    assert summary["synthetic"] == {
        "train_size": 256,
        "val_size": 101,
        "noise": 3.0,
        "seed": 0,
        "image_size": 32,
        "num_classes": 10,
    }
    bf16 = Compute(torch.device("cpu"), torch.bfloat16, channels_last=False)
    summary = identity(run_config("bn_x5", "seed=3"), bf16)
    assert (summary["bn_batch"], summary["precision"], summary["synthetic"]) == (32, "bf16", None)
