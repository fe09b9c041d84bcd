"""loader=torch over prepared folders and shards, and training on the generated benchmark."""

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from bn_repro.data import build_data
from bn_repro.data.prepared import open_prepared
from bn_repro.schema import ConfigError, DataFormat, DataLoaderKind
from tests.helpers import bn_repro, on_small_set, run_config, share


@pytest.fixture
def root(prepared_small) -> Path:
    return prepared_small  # 6 classes x (24 train + 5 val), tests/conftest.py


def data_cfg(prepared: Path, **changes):
    overrides = (
        "data=mini",
        f"data.root={prepared}",
        "data.num_classes=6",
        "data.image_size=32",
        "data.loader=torch",
        "data.format=folder",
    )
    return dataclasses.replace(run_config("bn_x5", *overrides).data, **changes)


def epoch(source, number=0, start=0):
    return [(x.clone(), y.clone()) for x, y in source.train_epoch(number, start)]


@pytest.mark.parametrize("data_format", list(DataFormat))
def test_two_ranks_read_the_batches_of_one_process_pixel_for_pixel(root, data_format):
    cfg = data_cfg(root, workers=0, format=data_format)
    one = epoch(build_data(cfg, share(8)))
    halves = [epoch(build_data(cfg, share(4, rank=r, world_size=2))) for r in (0, 1)]
    assert len(one) == len(halves[0]) == len(halves[1]) == 144 // 8
    for (x, y), (x0, y0), (x1, y1) in zip(one, *halves, strict=True):
        torch.testing.assert_close(x, torch.cat([x0, x1]))
        assert y.tolist() == y0.tolist() + y1.tolist()
    assert one[0][0].shape == (8, 32, 32, 3) and one[0][0].dtype == torch.uint8


def test_augmentation_is_the_same_with_any_number_of_workers_and_after_a_resume(root):
    in_process = epoch(build_data(data_cfg(root, workers=0), share(8)), 2)
    workers = build_data(data_cfg(root, workers=2), share(8))
    for (x, _), (y, _) in zip(in_process, epoch(workers, 2), strict=True):
        torch.testing.assert_close(x, y)
    for (x, _), (y, _) in zip(in_process[3:], epoch(workers, 2, start=3), strict=True):
        torch.testing.assert_close(x, y)
    other_epoch = epoch(workers, 3)
    assert not torch.equal(in_process[0][0], other_epoch[0][0])


@pytest.mark.parametrize("data_format", list(DataFormat))
def test_validation_reads_every_image_once_over_ranks(root, data_format):
    cfg = data_cfg(root, workers=0, format=data_format)
    seen = Counter()
    for rank in range(4):
        for _, labels in build_data(cfg, share(2, rank=rank, world_size=4)).val_batches():
            seen.update(labels.tolist())
    assert seen == {c: 5 for c in range(6)}


@pytest.mark.parametrize("loader", list(DataLoaderKind))
def test_a_missing_root_a_wrong_class_count_or_too_few_images_says_what_to_do(
    root, tmp_path, loader
):
    # both loaders open data.root through prepared.open_prepared, before any reader starts
    with pytest.raises(ConfigError, match="has no manifest.json: prepare it with"):
        build_data(data_cfg(tmp_path, loader=loader), share(8))
    with pytest.raises(ConfigError, match="set data.num_classes=6"):
        build_data(data_cfg(root, loader=loader, num_classes=100), share(8))
    with pytest.raises(ConfigError, match="data.root is not set"):
        build_data(data_cfg(root, loader=loader, root=None), share(8))
    # 144 training images, and 2 ranks of 80 a global batch of 160
    with pytest.raises(ConfigError, match="fewer training images than one global batch of 160"):
        build_data(data_cfg(root, loader=loader), share(80, world_size=2))


def test_a_prepared_set_opens_with_its_manifests_split_sizes(root):
    prepared = open_prepared(data_cfg(root), world_size=2, batch=72)  # 144: one global batch
    assert prepared.root == root and prepared.manifest["classes"][0]["train"] == 24
    assert (prepared.size("train"), prepared.size("val")) == (144, 30)


@pytest.mark.slow
def test_training_on_the_prepared_benchmark(root, tmp_path):
    run_dir = tmp_path / "run"
    result = bn_repro(
        "train",
        *on_small_set(root),
        "data.loader=torch",
        "trainer.max_paper_steps=4",
        "trainer.population_batches=4",
        "trainer.eval_every_paper_steps=2",
        f"run_dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["paper_steps"] == 4
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["count"] for r in evals if r["kind"] == "eval"] == [30, 30, 30]  # Algorithm 2 last
