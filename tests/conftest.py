from pathlib import Path

import pytest

from bn_repro.data.make_mini import MiniSpec, make_mini
from bn_repro.data.prepare import PrepareOptions, prepare

# 6 classes, 24 training and 5 validation images each, 40 pixels, folders and shards of 20.
SMALL = MiniSpec(classes=6, train_per_class=24, val_per_class=5, size=40, seed=2)


@pytest.fixture(scope="session")
def prepared_small(tmp_path_factory) -> Path:
    archives = tmp_path_factory.mktemp("archives")
    make_mini(archives, SMALL, workers=2)
    out = tmp_path_factory.mktemp("prepared")
    prepare(archives, out, PrepareOptions(("folder", "shards"), 2, 20, 0))
    return out
