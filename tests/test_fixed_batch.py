"""The probe's fixed training images: the same for a seed on every start, centre-cropped, read
from the prepared folders or shards or taken from synthetic data, drawing no random number."""

import json
from pathlib import Path

import pytest
import torch

from bn_repro.data import build_data
from bn_repro.data.fixed import fixed_train_batch
from bn_repro.schema import ConfigError
from tests.helpers import TINY, run_config, share


def mini_cfg(root: Path):
    overrides = ("data=mini", f"data.root={root}", "data.num_classes=6", "data.image_size=32")
    return run_config("bn_x5", *overrides).data


def shards_only(prepared: Path, tmp_path: Path) -> Path:
    """The prepared set as if prepared with --formats shards alone."""
    manifest = json.loads((prepared / "manifest.json").read_text())
    (tmp_path / "shards").symlink_to(prepared / "shards")
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "formats": ["shards"]}))
    return tmp_path


@pytest.mark.parametrize("layout", ["folder", "shards"])
def test_the_batch_is_fixed_by_the_seed_and_draws_no_random_number(
    prepared_small, tmp_path, layout
):
    root = prepared_small if layout == "folder" else shards_only(prepared_small, tmp_path)
    cfg = mini_cfg(root)
    rng = torch.get_rng_state()
    images, labels = fixed_train_batch(cfg, None, seed=0, count=10)
    assert torch.equal(torch.get_rng_state(), rng)
    assert images.shape == (10, 32, 32, 3) and images.dtype == torch.uint8
    assert labels.shape == (10,) and labels.min() >= 0 and labels.max() < 6
    again, again_labels = fixed_train_batch(cfg, None, seed=0, count=10)
    assert torch.equal(images, again) and torch.equal(labels, again_labels)
    assert not torch.equal(fixed_train_batch(cfg, None, seed=1, count=10)[0], images)


def test_synthetic_data_gives_its_own_training_images():
    cfg = run_config("bn_x5", *TINY).data
    data = build_data(cfg, share(8))
    images, labels = fixed_train_batch(cfg, data, seed=0, count=5)
    for image, label in zip(images, labels, strict=True):
        match = (data.train_images == image).flatten(1).all(1).nonzero().flatten()
        assert len(match) == 1 and data.train_labels[match[0]] == label


def test_more_images_than_the_training_set_is_refused(prepared_small):
    cfg = mini_cfg(prepared_small)
    with pytest.raises(ConfigError, match="trainer.probe_images=1000: .* only 144 images"):
        fixed_train_batch(cfg, None, seed=0, count=1000)
