"""The photometric distortion is TF-slim's (distort_color, full mode) and the same in both
loaders: on the same image and the same draw, DALI's pipelines (the GPU's formulas in DALI's
operators, run on the CPU; the CPU's by torch in a python_function) and the torchvision loader's
give the same pixels, within a grey level."""

import colorsys

import numpy as np
import pytest
import torch
from nvidia.dali import fn, pipeline_def
from torch.nn import functional as F

from bn_repro.data.dali_loader import DALI_OPS, dali_draw, distorted
from bn_repro.data.distort import ORDERS, TORCH, Draw, distort, ranges, torch_draw
from bn_repro.schema import Photometric

NEUTRAL = {"brightness": 0.0, "saturation": 1.0, "hue": 0.0, "contrast": 1.0}


def image() -> torch.Tensor:
    """uint8 (24, 24, 3): smooth colours, with a row of black, white, grey and pure colours."""
    coarse = torch.rand(1, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    pixels = (255 * F.interpolate(coarse, size=(24, 24), mode="bilinear")[0]).byte()
    pixels = pixels.permute(1, 2, 0).contiguous()
    extremes = [(0, 0, 0), (255, 255, 255), (128, 128, 128), (255, 0, 0), (0, 255, 0), (0, 0, 255)]
    pixels[0, : len(extremes)] = torch.tensor(extremes, dtype=torch.uint8)
    return pixels


def draws() -> list[Draw]:
    """Every order, at both strengths, at the ranges' ends (hue also at the end opposite the
    others') and at a point inside them."""
    chosen = []
    for strength in (Photometric.full, Photometric.reduced):
        bounds = ranges(strength)
        low, high = ({k: b[end] for k, b in bounds.items()} for end in (0, 1))
        inside = {k: (b[0] + 2 * b[1]) / 3 for k, b in bounds.items()}
        crossed = ({**low, "hue": high["hue"]}, {**high, "hue": low["hue"]})
        for order in range(len(ORDERS)):
            chosen += [Draw(order, **values) for values in (low, high, *crossed, inside)]
    return chosen


def dali_distorted(
    pixels: torch.Tensor, chosen: list[Draw], native: bool, gpu: bool = False
) -> list[np.ndarray]:
    """DALI's distortion of the image under each draw, a batch of them: in DALI's operators
    (native, on the CPU, or on the GPU as its pipeline runs them), or as the CPU pipeline does."""

    def batch(key: str, dtype) -> list[list[np.ndarray]]:  # a source of one batch
        return [[np.array(getattr(d, key), dtype=dtype) for d in chosen]]

    def where(node):  # the images and the draw's values where the pipeline's images are
        return node.gpu() if gpu else node

    @pipeline_def(
        enable_conditionals=True,
        batch_size=len(chosen),
        num_threads=1,
        device_id=0 if gpu else None,
    )
    def pipe():
        images = where(fn.external_source([[pixels.numpy()] * len(chosen)], layout="HWC"))
        fields = {key: where(fn.external_source(batch(key, np.float32))) for key in NEUTRAL}
        order = fn.external_source(batch("order", np.int32))  # on the CPU: conditionals read it
        draw = Draw(order, **fields)
        return distort(images, draw, DALI_OPS) if native else distorted(images, draw, False)

    built = pipe()
    built.build()
    (out,) = built.run()
    if gpu:
        out = out.as_cpu()
    return [np.array(out[k]) for k in range(len(chosen))]


def differences(pixels: torch.Tensor, chosen: list[Draw], theirs: list[np.ndarray]) -> torch.Tensor:
    """Each pixel value's difference between the torchvision loader's distortion and `theirs`."""
    found = []
    for draw, other in zip(chosen, theirs, strict=True):
        ours = distort(pixels, draw, TORCH)
        assert ours.dtype == torch.uint8 and ours.shape == pixels.shape
        found.append((ours.int() - torch.from_numpy(other).int()).abs())
    return torch.stack(found).float()


@pytest.mark.parametrize("native", [True, False], ids=["dali-operators", "dali-cpu"])
def test_both_loaders_give_the_same_pixels_for_the_same_image_and_draw(native):
    pixels, chosen = image(), draws()
    difference = differences(pixels, chosen, dali_distorted(pixels, chosen, native))
    # The same float32 formulas in the same order: they part only where a channel's mean sums
    # in another order or a division rounds its last bit, 1e-4 grey levels at most, which moves
    # the final rounding by one level for a value that close to a half level, and never by two.
    assert difference.max() <= 1 and difference.mean() < 0.01, (difference.max(), difference.mean())


@pytest.mark.gpu
def test_the_gpu_pipeline_distorts_as_the_torchvision_loader():
    pixels, chosen = image(), draws()
    difference = differences(pixels, chosen, dali_distorted(pixels, chosen, True, gpu=True))
    # As on the CPU; CUDA's division and its fused multiply-adds round their last bit
    # differently again, which moves no value by more than the final rounding's one level.
    assert difference.max() <= 1 and difference.mean() < 0.01, (difference.max(), difference.mean())


def reference(pixels: torch.Tensor, draw: Draw) -> torch.Tensor:
    """distort_color's operations one pixel at a time, by the Python standard library's HSV
    conversions (TF's definitions), each channel's mean by numpy: the meaning, not the speed."""
    x = pixels.double().numpy() / 255
    for operation in ORDERS[draw.order]:
        if operation == "brightness":
            x = x + draw.brightness
        elif operation == "contrast":
            mean = x.mean((0, 1))
            x = (x - mean) * draw.contrast + mean
        else:
            for row, col in np.ndindex(x.shape[:2]):
                h, s, v = colorsys.rgb_to_hsv(*x[row, col])
                if operation == "saturation":
                    s = min(max(s * draw.saturation, 0), 1)
                else:
                    h = (h + draw.hue) % 1
                x[row, col] = colorsys.hsv_to_rgb(h, s, v)
    return torch.from_numpy(np.floor(np.clip(x, 0, 1) * 255 + 0.5))


@pytest.mark.parametrize("order", range(len(ORDERS)))
def test_the_distortion_is_tf_slims_in_its_order(order):
    pixels = image()
    bounds = ranges(Photometric.full)
    for draw in (
        Draw(order, **{k: b[1] for k, b in bounds.items()}),
        Draw(order, **{k: b[0] for k, b in bounds.items()}),
    ):
        ours = distort(pixels, draw, TORCH).double()
        assert (ours - reference(pixels, draw)).abs().max() <= 1
    # one operation alone moves the pixels; all neutral keeps them
    assert torch.equal(distort(pixels, Draw(order, **NEUTRAL), TORCH), pixels)
    for key, (_, high) in bounds.items():
        moved = distort(pixels, Draw(order, **{**NEUTRAL, key: high}), TORCH)
        assert (moved.int() - pixels.int()).abs().float().mean() > 2, key


@pytest.mark.parametrize("strength", [Photometric.full, Photometric.reduced])
def test_both_loaders_draw_from_the_same_ranges(strength):
    bounds, count = ranges(strength), 400
    torch.manual_seed(0)
    ours = [torch_draw(strength) for _ in range(count)]

    @pipeline_def(batch_size=count, num_threads=1, device_id=None, seed=0)
    def pipe():
        draw = dali_draw(strength, gpu=False)
        return draw.order, *(getattr(draw, key) for key in bounds)

    built = pipe()
    built.build()
    order, *fields = (np.array(out.as_array()) for out in built.run())
    theirs = {"order": order, **dict(zip(bounds, fields, strict=True))}
    for name, values in (
        ("torch", {k: np.array([getattr(d, k) for d in ours]) for k in theirs}),
        ("dali", theirs),
    ):
        assert set(values["order"].tolist()) == set(range(len(ORDERS))), name
        for key, (low, high) in bounds.items():
            assert low <= values[key].min() and values[key].max() <= high, (name, key)
            # 400 uniform draws leave less than 2% of the interval uncovered at each end with
            # probability 1 - 2 (0.98 ** 400) > 0.9999
            assert values[key].min() < low + 0.02 * (high - low), (name, key)
            assert values[key].max() > high - 0.02 * (high - low), (name, key)


def test_the_gpu_formulas_restore_from_a_checkpoint_with_their_draws():
    # The GPU pipeline's graph (conditionals on the drawn order) run on the CPU: a checkpoint
    # taken after a batch restores the draws of the batches after it, as the trainer's resume
    # needs of every pipeline.
    pixels = image().numpy()

    @pipeline_def(enable_conditionals=True, batch_size=8, num_threads=1, device_id=None, seed=3)
    def pipe():
        images = fn.external_source(lambda iteration: [pixels] * 8, batch=True, layout="HWC")
        return distort(images, dali_draw(Photometric.full, gpu=False), DALI_OPS)

    def outputs(built, count: int) -> list[np.ndarray]:
        return [np.stack([np.array(s) for s in built.run()[0]]) for _ in range(count)]

    first = pipe(enable_checkpointing=True)
    first.build()
    outputs(first, 1)
    state = first.checkpoint()
    rest = outputs(first, 2)
    restored = pipe(enable_checkpointing=True, checkpoint=state)
    restored.build()
    again = outputs(restored, 2)
    assert all(np.array_equal(a, b) for a, b in zip(rest, again, strict=True))
    assert not np.array_equal(rest[0], rest[1])  # each batch its own draws
