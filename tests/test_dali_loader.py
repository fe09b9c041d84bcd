"""loader=dali on CPU (device_id=None): sharding, exact validation, resume, and the same pixels
as the torchvision fallback."""

import dataclasses
import io
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from nvidia.dali import fn, pipeline_def, types
from PIL import Image
from torch.nn import functional as F

from bn_repro.data import build_data
from bn_repro.data.augment import hwc, resize
from bn_repro.data.dali_loader import resize_shorter
from bn_repro.schema import DaliDecode, DataFormat, DataLoaderKind
from bn_repro.train.metrics import read_metrics
from tests.helpers import (
    BIN,
    assert_same_records,
    bn_repro,
    kill_after_first_checkpoint,
    on_small_set,
    run_config,
    share,
)

FORMATS = list(DataFormat)


@pytest.fixture
def root(prepared_small) -> Path:
    return prepared_small


def data_cfg(prepared: Path, **changes):
    overrides = ("data=mini", f"data.root={prepared}", "data.num_classes=6", "data.image_size=32")
    cfg = run_config("bn_x5", *overrides, "data.dali_device=cpu", "data.workers=1").data
    return dataclasses.replace(cfg, **changes)


@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("val_batch", [None, 16])
def test_ranks_get_equal_training_batches_and_validation_exactly_once(root, data_format, val_batch):
    cfg = data_cfg(root, format=data_format)
    seen, batches, sizes = Counter(), [], Counter()
    for rank in range(4):  # 30 validation images over 4 ranks: 8, 8, 7, 7
        data = build_data(cfg, share(4, rank=rank, world_size=4, val_batch=val_batch))
        for _, labels in data.val_batches():
            seen.update(labels.tolist())
            sizes[len(labels)] += 1
        batches.append(sum(1 for _ in data.train_epoch(0)))
        assert data.val_size == 30
    assert seen == {c: 5 for c in range(6)}
    # In the training batch of 4, or whole in one batch of up to 16 each.
    assert sizes == ({4: 6, 3: 2} if val_batch is None else {8: 2, 7: 2})
    assert len(set(batches)) == 1 and batches[0] == 144 // 16


@pytest.mark.parametrize("data_format", FORMATS)
def test_a_restored_pipeline_continues_mid_epoch_exactly(root, data_format):
    cfg = data_cfg(root, format=data_format)
    data = build_data(cfg, share(8))
    epoch = data.train_epoch(0)
    first = [next(epoch) for _ in range(5)]
    state = data.state()
    rest = list(epoch)
    restored = list(build_data(cfg, share(8), state).train_epoch(0, start_batch=5))
    assert len(first) + len(rest) == 18 and len(restored) == len(rest)
    for (x, y), (x2, y2) in zip(rest, restored, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert first[0][0].shape == (8, 32, 32, 3) and first[0][0].dtype == torch.uint8


def test_a_state_of_another_pipeline_is_not_restored_but_its_batches_skipped(root, caplog):
    cfg = data_cfg(root)
    # A checkpoint of other operators, as a run that began on a GPU (mixed decoding) records:
    # DALI refuses it ("The checkpoint might come from another pipeline").
    other = build_data(dataclasses.replace(cfg, dali_decode=DaliDecode.full), share(8))
    epoch = other.train_epoch(0)
    for _ in range(5):
        next(epoch)
    state = other.state()
    assert state["pipeline"] == "dali-cpu"
    resumed = build_data(cfg, share(8), {**state, "pipeline": "dali-gpu"})
    assert "loader state is dali-gpu's and this run reads with dali-cpu" in caplog.text
    fresh = build_data(cfg, share(8))  # no state: the first five batches read, skipped
    for (x, y), (x2, y2) in zip(
        resumed.train_epoch(0, start_batch=5), fresh.train_epoch(0, start_batch=5), strict=True
    ):
        assert torch.equal(x, x2) and torch.equal(y, y2)


def test_a_cpu_pipeline_pins_its_batches_only_for_a_gpu_trainer(root):
    # pinned host memory needs CUDA: the batches themselves are checked by the gpu tests
    assert build_data(data_cfg(root), share(8, gpu=0)).pin_memory
    assert not build_data(data_cfg(root), share(8)).pin_memory


@pytest.mark.parametrize("decode", list(DaliDecode))
def test_both_decode_modes_give_training_batches(root, decode):
    data = build_data(data_cfg(root, dali_decode=decode, prefetch=3), share(8))
    images, labels = next(data.train_epoch(0))
    assert images.shape == (8, 32, 32, 3) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and set(labels.tolist()) <= set(range(6))
    assert images.float().std() > 10  # pixels, not a blank


def test_the_file_reader_reshuffles_every_epoch(root):
    data = build_data(data_cfg(root, format=DataFormat.folder), share(8))
    epochs = [[y.tolist() for _, y in data.train_epoch(e)] for e in (0, 1)]
    assert epochs[0] != epochs[1]
    assert len({label for batch in epochs[0][:3] for label in batch}) >= 4  # mixed classes


def test_validation_pixels_match_the_torchvision_loader(root):
    dali = build_data(data_cfg(root, format=DataFormat.folder), share(30))
    torch_data = build_data(
        data_cfg(root, loader=DataLoaderKind.torch, format=DataFormat.folder, workers=0), share(30)
    )
    (ours, labels), (theirs, their_labels) = (
        next(dali.val_batches()),
        next(torch_data.val_batches()),
    )
    assert labels.tolist() == their_labels.tolist()
    difference = (ours.int() - theirs.int()).abs().float()
    # Both decode with libjpeg-turbo and resize with augment.resize: the same pixels, and within
    # a grey level should either library's rounding change.
    assert difference.max() <= 1 and difference.mean() < 0.01, (
        difference.mean(),
        difference.max(),
    )


def test_the_gpu_validation_resize_keeps_torchvisions_sizes_and_pixels():
    # The GPU pipeline's resize, run on CPU-decoded JPEGs: 427 x 640 becomes 256 x 383 as in
    # torchvision (DALI's own resize_shorter makes it 384 wide).
    shapes = [(375, 500), (427, 640), (683, 1024), (500, 333)]
    generator = torch.Generator().manual_seed(0)
    jpegs, expected = [], []
    for height, width in shapes:
        coarse = torch.rand(1, 3, height // 20, width // 20, generator=generator)
        smooth = F.interpolate(coarse, size=(height, width), mode="bilinear")[0]
        encoded = io.BytesIO()
        Image.fromarray((255 * smooth).byte().permute(1, 2, 0).numpy()).save(encoded, "JPEG")
        jpegs.append(np.frombuffer(encoded.getvalue(), dtype=np.uint8))
        expected.append(resize(hwc(Image.open(encoded)), [256]))

    @pipeline_def(batch_size=len(jpegs), num_threads=1, device_id=None)
    def pipeline():
        encoded = fn.external_source(source=lambda: jpegs, batch=True)
        images = fn.decoders.image(encoded, output_type=types.RGB, adjust_orientation=False)
        return resize_shorter(images, encoded, 256)

    (resized,) = pipeline().run()
    for index, theirs in enumerate(expected):
        ours = torch.from_numpy(np.array(resized[index]))
        assert ours.shape == theirs.shape
        assert (ours.int() - theirs.int()).abs().max() <= 1


@pytest.mark.slow
def test_training_with_dali_resumes_after_a_kill_as_if_never_killed(root, tmp_path):
    def training(run_dir: Path) -> list:
        return [
            "train",
            "experiment=bn_baseline",
            "data=mini",
            f"data.root={root}",
            "data.num_classes=6",
            "data.image_size=32",
            "data.dali_device=cpu",
            "data.workers=1",
            "trainer.batch_per_rank=8",
            "trainer.bn_batch=8",
            "trainer.max_paper_steps=8",  # 32 steps of 8 images, 18 to an epoch
            "trainer.population_batches=4",
            "trainer.eval_every_paper_steps=4",
            "trainer.log_every_paper_steps=1",
            "trainer.checkpoint_every_paper_steps=1.5",  # mid-epoch checkpoints
            "trainer.deterministic=true",
            f"run_dir={run_dir}",
        ]

    whole = tmp_path / "whole"
    assert bn_repro(*training(whole)).returncode == 0
    killed = tmp_path / "killed"
    kill_after_first_checkpoint([BIN / "bn-repro", *training(killed)], killed)
    result = bn_repro(*training(killed))
    assert result.returncode == 0, result.stderr
    assert "resumed at optimizer step" in result.stderr
    assert_same_records(read_metrics(killed), read_metrics(whole))
    evals = [r for r in read_metrics(whole) if r["kind"] == "eval"]
    assert [(r["count"], r["bn_stats"]) for r in evals] == [
        (30, "running"),
        (30, "running"),
        (30, "population"),  # Algorithm 2 at the end
    ]


@pytest.mark.slow
def test_two_ranks_train_with_dali_and_count_validation_once(root, tmp_path):
    run_dir = tmp_path / "run"
    bin_dir = Path(sys.executable).parent
    result = subprocess.run(
        [
            bin_dir / "torchrun",
            "--standalone",
            "--nproc_per_node=2",
            "--no-python",
            bin_dir / "bn-repro",
            "train",
            *on_small_set(root),
            "data.dali_device=cpu",
            "data.workers=1",
            "trainer.max_paper_steps=8",
            "trainer.population_batches=4",
            "trainer.eval_every_paper_steps=4",
            f"run_dir={run_dir}",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    evals = [r for r in read_metrics(run_dir) if r["kind"] == "eval"]
    assert [r["count"] for r in evals] == [30, 30, 30]  # 15 per rank, none twice
    assert [r["step"] for r in evals] == [8, 16, 16]  # the last with Algorithm 2's statistics
