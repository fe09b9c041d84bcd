"""GoogLeNet's 144 crops: the boxes, the split between loaders and device, and the averaging."""

from pathlib import Path

import numpy as np
import pytest
import torch
from nvidia.dali import fn
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
from PIL import Image

from bn_repro import cli
from bn_repro.data import build_data
from bn_repro.data.augment import val_transform
from bn_repro.data.dali_loader import (
    READER,
    _pipeline_options,
    dali_source,
    multicrop_pipeline,
    val_pipeline,
)
from bn_repro.data.make_mini import MiniSpec
from bn_repro.data.multicrop import (
    CROP_COUNTS,
    CROPS,
    CropBox,
    Square,
    crop_boxes,
    mean_probability,
    multicrop_transform,
    scales,
    views,
    windows,
)
from bn_repro.data.prepared import read_manifest
from bn_repro.evaluate.predict import ensemble, multi_crop
from bn_repro.schema import DataFormat
from bn_repro.train.compute import Compute
from bn_repro.train.evaluation import Tally
from tests.helpers import model_of, prepared_set, run_config, share

CPU = Compute(torch.device("cpu"), None, False)


def test_the_144_boxes_of_a_landscape_image_are_googlenets():
    # 300 x 400 (height x width), 224-pixel crops, worked out by hand: squares of side 300 at
    # left 0, 50 (the centre) and 100; at shorter side L the corner windows lie L - 224 from the
    # edge and the centre window half as far.
    squares = [Square(0, 0, 300), Square(0, 50, 300), Square(0, 100, 300)]
    by_scale = [(256, 32, 16), (288, 64, 32), (320, 96, 48), (352, 128, 64)]
    expected = [
        CropBox(square, scale, top, left, side, mirrored)
        for square in squares
        for scale, far, centre in by_scale
        for top, left, side in [
            (0, 0, 224),
            (0, far, 224),
            (far, 0, 224),
            (far, far, 224),
            (centre, centre, 224),
            (0, 0, scale),  # the whole square, resized to 224
        ]
        for mirrored in (False, True)
    ]
    assert crop_boxes(300, 400, 224) == expected
    assert len(expected) == CROPS == 144


def test_a_portrait_image_has_top_centre_and_bottom_squares_rounded_half_up():
    assert {box.square for box in crop_boxes(401, 300, 224)} == {
        Square(0, 0, 300),
        Square(51, 0, 300),  # 101 / 2 rounds up, as the single crop's centre
        Square(101, 0, 300),
    }


def test_other_crop_sizes_scale_googlenets_sides_and_fewer_crops_take_the_first():
    assert scales(224) == (256, 288, 320, 352)
    assert scales(32) == (37, 41, 46, 50)  # 256 x 32/224 = 36.6, 41.1, 45.7, 50.3
    assert (scales(224, 36), scales(224, 72)) == ((256,), (256, 288))
    assert len(crop_boxes(300, 400, 224, 72)) == 72
    assert CROP_COUNTS == cli.CROP_COUNTS  # the command line's copy, checked without torch
    # 5 pixels to spare: the centre window's offset rounds half up, as the single crop's
    assert windows(37, 32) == ((0, 0), (0, 5), (5, 0), (5, 5), (3, 3))


def uniform(height: int, width: int, colour: tuple[int, int, int]) -> Image.Image:
    return Image.fromarray(np.full((height, width, 3), colour, dtype=np.uint8))


@pytest.mark.parametrize("height, width, distinct", [(45, 60, 126), (40, 40, 42)])
def test_the_distinct_crops_stand_for_all_144(height, width, distinct):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    parts = tuple(part[None] for part in multicrop_transform(32)(image))
    crops, weights = views(parts, 32)
    assert crops.shape == (1, distinct, 32, 32, 3) and weights.shape == (distinct,)
    assert weights.sum() == CROPS
    half = distinct // 2
    assert torch.equal(crops[:, half:], crops[:, :half].flip(3))  # the mirrored half


def test_the_single_crop_and_its_mirror_are_among_a_square_images_crops():
    # At the first scale (37 = 32 / 0.875, rounded) the centre window is the single crop.
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    crops, _ = views(tuple(part[None] for part in multicrop_transform(32)(image)), 32)
    single = val_transform(32)(image)
    assert [k for k, crop in enumerate(crops[0]) if torch.equal(crop, single)] == [4]
    assert torch.equal(crops[0, 4 + crops.shape[1] // 2], single.flip(1))  # left to right


def test_multicrop_equals_single_crop_for_a_model_constant_over_crops():
    # Uniform images look the same in every crop, mirrored or resized: any network predicts
    # the same for all 144, so their mean probability is the single crop's softmax.
    torch.manual_seed(0)
    model = model_of("bn_x5", num_classes=10).eval()
    colours = [(200, 30, 60), (10, 220, 90), (128, 128, 128), (0, 0, 255)]
    images = [uniform(45, 60, c) for c in colours[:2]] + [uniform(60, 45, c) for c in colours[2:]]
    labels = torch.tensor([3, 1, 4, 1])
    parts = [multicrop_transform(32)(image) for image in images]
    batch = tuple(torch.stack(p) for p in zip(*parts, strict=True)), labels
    (multi,), _ = multi_crop([model], batch, CPU, 32, crops_per_pass=1024)
    single = torch.stack([val_transform(32)(image) for image in images])
    with torch.no_grad():
        logits = model(CPU.batch(single, labels)[0])
    torch.testing.assert_close(multi, torch.log_softmax(logits, 1), rtol=0, atol=1e-5)
    assert counts(multi, labels) == counts(logits, labels)


def test_a_forward_pass_takes_at_most_crops_per_pass_crops_whatever_the_batch():
    # 4 images at 144 crops are 4 x 126 distinct crops: in passes of at most 50, the same scores
    torch.manual_seed(0)
    model = model_of("bn_x5", num_classes=10).eval()
    images = [
        Image.fromarray(np.random.default_rng(k).integers(0, 256, (45, 60, 3), np.uint8))
        for k in range(4)
    ]
    parts = [multicrop_transform(32)(image) for image in images]
    batch = tuple(torch.stack(p) for p in zip(*parts, strict=True)), torch.tensor([3, 1, 4, 1])
    (whole,), _ = multi_crop([model], batch, CPU, 32, crops_per_pass=4 * 126)
    passes = []
    model.register_forward_pre_hook(lambda module, inputs: passes.append(len(inputs[0])))
    (chunked,), _ = multi_crop([model], batch, CPU, 32, crops_per_pass=50)
    assert max(passes) == 50 and sum(passes) == 4 * 126
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)


def counts(scores: torch.Tensor, labels: torch.Tensor) -> tuple:
    tally = Tally(torch.device("cpu"))
    tally.add(scores, labels)
    return tuple(tally.sums[:2].tolist())


def test_an_ensemble_of_one_is_its_member():
    scores = torch.randn(8, 10) * 5
    labels = torch.randint(10, (8,))
    torch.testing.assert_close(ensemble([scores]), torch.log_softmax(scores, 1))
    assert counts(ensemble([scores]), labels) == counts(scores, labels)
    twice = ensemble([scores, scores])  # the mean of equal probabilities
    torch.testing.assert_close(twice, torch.log_softmax(scores, 1))


def test_the_mean_probability_is_weighted_by_the_crops_each_stands_for():
    log_probs = torch.log_softmax(torch.randn(2, 3, 5), dim=2)
    weights = torch.tensor([1.0, 2.0, 3.0])
    expected = (log_probs.exp() * weights[:, None]).sum(1) / 6
    torch.testing.assert_close(mean_probability(log_probs, weights).exp(), expected)


@pytest.fixture(scope="module")
def landscape(tmp_path_factory) -> Path:
    """2 classes x 3 validation images of 48 x 36 pixels: three distinct squares each."""
    return prepared_set(
        tmp_path_factory, "landscape", MiniSpec(2, 8, 3, size=48, seed=1, height=36)
    )


def data_cfg(root: Path, **changes):
    overrides = [f"data.root={root}", "data.num_classes=2", "data.image_size=32"]
    overrides += [f"data.{key}={value}" for key, value in changes.items()]
    return run_config("bn_x5", "data=mini", "data.dali_device=cpu", *overrides).data


@pytest.mark.parametrize("data_format", list(DataFormat))
def test_both_loaders_cut_the_same_pixels(landscape, data_format):
    dali = build_data(data_cfg(landscape, format=data_format.value), share(4))
    fallback = data_cfg(landscape, format=data_format.value, loader="torch", workers=0)
    batches = [
        list(dali.multicrop_batches(4, CROPS)),
        list(build_data(fallback, share(4)).multicrop_batches(4, CROPS)),
    ]
    assert [len(y) for _, y in batches[0]] == [4, 2]
    for (ours, labels), (theirs, their_labels) in zip(*batches, strict=True):
        assert labels.tolist() == their_labels.tolist()
        assert [p.shape[1:] for p in ours] == [(3, s, s, 3) for s in (37, 41, 46, 50, 32)]
        for mine, yours in zip(ours, theirs, strict=True):
            assert torch.equal(mine, yours)  # libjpeg-turbo both, then augment.resize


def test_dalis_own_operators_cut_the_same_squares(landscape):
    # The GPU pipeline's slices and resizes, run on the CPU: DALI's resampling differs from
    # torch's by a grey level or two; a misplaced square would differ by far more.
    cfg = data_cfg(landscape, format="folder")
    source = dali_source(landscape, read_manifest(landscape), DataFormat.folder, "val")
    options = _pipeline_options(cfg, 6, None)
    pipe = multicrop_pipeline(cfg, source, share(6), False, CROPS, True, seed=0, **options)

    names = [f"part{k}" for k in range(5)]
    outputs = next(
        iter(
            DALIGenericIterator(
                [pipe],
                [*names, "labels"],
                reader_name=READER,
                last_batch_policy=LastBatchPolicy.PARTIAL,
            )
        )
    )[0]
    fallback = build_data(data_cfg(landscape, format="folder", loader="torch", workers=0), share(6))
    ((theirs, _),) = list(fallback.multicrop_batches(6, CROPS))
    for name, yours in zip(names, theirs, strict=True):
        difference = (outputs[name].int() - yours.int()).abs().float()
        assert difference.max() <= 3 and difference.mean() < 0.5, (name, difference.max())


@pytest.mark.gpu  # skipped with the reason where torch sees no GPU (conftest.py)
def test_dali_on_the_gpu_cuts_the_fallbacks_squares(landscape):
    # nvJPEG and DALI's GPU resize against libjpeg-turbo and augment.resize: close, not equal.
    gpu = build_data(data_cfg(landscape, format="folder", dali_device="gpu"), share(6, gpu=0))
    ((ours, labels),) = list(gpu.multicrop_batches(6, CROPS))
    fallback = data_cfg(landscape, format="folder", loader="torch", workers=0)
    ((theirs, their_labels),) = list(build_data(fallback, share(6)).multicrop_batches(6, CROPS))
    assert labels.is_cuda and labels.tolist() == their_labels.tolist()
    for mine, yours in zip(ours, theirs, strict=True):
        assert mine.is_cuda
        assert (mine.cpu().int() - yours.int()).abs().float().mean() < 2


class Decoded(Exception):
    """Raised by a stand-in decoder once it has seen its arguments."""


@pytest.mark.parametrize("crops", [1, CROPS])
def test_the_gpu_decodes_validation_at_any_crops_as_libjpeg_does(landscape, monkeypatch, crops):
    # nvJPEG's chroma upsampling as libjpeg-turbo's, as the torchvision loader decodes, for
    # Figure 4's rows as for training's evaluations. The pipeline is defined, never built:
    # the decoder's arguments are known at its call, without a GPU.
    seen = []

    def decoder(jpegs, **arguments):
        seen.append(arguments)
        raise Decoded

    monkeypatch.setattr(fn.decoders, "image", decoder)
    cfg = data_cfg(landscape, format="folder")
    val = dali_source(landscape, read_manifest(landscape), DataFormat.folder, "val")
    options = _pipeline_options(cfg, 4, None)
    with pytest.raises(Decoded):
        if crops == 1:
            val_pipeline(cfg, val, share(4), True, **options)
        else:
            multicrop_pipeline(cfg, val, share(4), True, crops, True, **options)
    assert seen[0]["device"] == "mixed" and seen[0]["jpeg_fancy_upsampling"] is True
