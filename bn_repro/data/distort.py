"""The photometric distortion of both loaders: TF-slim's Inception distortion
(inception_preprocessing.distort_color in its full mode), written once over the few operations
that torch tensors and DALI's data nodes share (Ops), so that the torchvision loader (TORCH) and
DALI's pipelines (dali_loader.DALI_OPS, on the CPU or the GPU) apply the same operators, in the
same orders, about the same pivot, over the same ranges.

On an image of [0, 1] floats, one of four orders (ORDERS), drawn per image, of: brightness, a
shift of every channel by +-32/255; saturation, HSV's S times [0.5, 1.5], clipped to [0, 1]; hue,
HSV's H turned by +-0.2 of the colour circle; contrast, each channel's distance from its mean
over the image times [0.5, 1.5]. Nothing is clipped between the operations, only at the end, as
TF-slim has it; out of [0, 1] the HSV conversions extend as their formulas do. GoogLeNet used
Howard's distortions, which TF-slim's approximate (Szegedy et al. 2014, Sec. 6)."""

from dataclasses import dataclass
from typing import Any

import torch

from bn_repro.schema import Photometric

# distort_color's four orders (color_ordering 0-3), one drawn per image
ORDERS = (
    ("brightness", "saturation", "hue", "contrast"),
    ("saturation", "brightness", "contrast", "hue"),
    ("contrast", "hue", "brightness", "saturation"),
    ("hue", "saturation", "contrast", "brightness"),
)
# Its full strengths: brightness +-32/255 (added), saturation and contrast x[1 - 0.5, 1 + 0.5],
# hue +-0.2 (turns); each half as wide at Photometric.reduced.
FULL_DISTORTION = {"brightness": 32 / 255, "saturation": 0.5, "hue": 0.2, "contrast": 0.5}
# Sec. 4.2.1 distorts "less" without saying how much: reduced, half of every strength, is this
# project's reading, not a number of the paper's.
STRENGTH = {Photometric.full: 1.0, Photometric.reduced: 0.5, Photometric.none: 0.0}


@dataclass(frozen=True)
class Draw:
    """One image's distortion: python numbers (TORCH) or DALI data nodes, one value a sample."""

    order: Any  # an index into ORDERS
    brightness: Any  # added to every channel, in [0, 1] units
    saturation: Any  # factor on S
    hue: Any  # added to H, in turns
    contrast: Any  # factor on the distance from the channel's mean


def ranges(strength: Photometric) -> dict[str, tuple[float, float]]:
    """The interval each value of a Draw is drawn from, uniformly (the order: from the four)."""
    scale = STRENGTH[strength]
    spread = {key: value * scale for key, value in FULL_DISTORTION.items()}
    return {
        "brightness": (-spread["brightness"], spread["brightness"]),
        "saturation": (1 - spread["saturation"], 1 + spread["saturation"]),
        "hue": (-spread["hue"], spread["hue"]),
        "contrast": (1 - spread["contrast"], 1 + spread["contrast"]),
    }


class TorchOps:
    """Ops on float32 (..., H, W, 3) tensors, one image or a batch of them (with a Draw's values
    shaped (N, 1, 1, 1)): what the torchvision loader and DALI's CPU pipeline distort with."""

    maximum, minimum = staticmethod(torch.maximum), staticmethod(torch.minimum)
    floor, clamp = staticmethod(torch.floor), staticmethod(torch.clamp)

    @staticmethod
    def channels(images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return images[..., 0:1], images[..., 1:2], images[..., 2:3]

    @staticmethod
    def stack(*channels: torch.Tensor) -> torch.Tensor:
        return torch.cat(channels, dim=-1)

    @staticmethod
    def channel_mean(images: torch.Tensor) -> torch.Tensor:
        return images.mean((-3, -2), keepdim=True)

    @staticmethod
    def mask(condition: torch.Tensor) -> torch.Tensor:
        return condition.float()

    @staticmethod
    def to_float(images: torch.Tensor) -> torch.Tensor:
        return images.float()

    @staticmethod
    def to_uint8(images: torch.Tensor) -> torch.Tensor:
        return images.to(torch.uint8)


TORCH = TorchOps()


def distort(image, draw: Draw, ops):
    """uint8 (H, W, 3) -> the same, distorted as `draw` says, with `ops` (TORCH, DALI_OPS); with
    TORCH also a batch (N, H, W, 3) of one order."""
    x = ops.to_float(image) / 255
    if draw.order == 0:
        x = _in_order(x, 0, draw, ops)
    elif draw.order == 1:
        x = _in_order(x, 1, draw, ops)
    elif draw.order == 2:
        x = _in_order(x, 2, draw, ops)
    else:
        x = _in_order(x, 3, draw, ops)
    return ops.to_uint8(ops.floor(ops.clamp(x, 0.0, 1.0) * 255 + 0.5))


def _in_order(x, order: int, draw: Draw, ops):
    for operation in ORDERS[order]:
        if operation == "brightness":
            x = x + draw.brightness
        elif operation == "contrast":
            mean = ops.channel_mean(x)
            x = (x - mean) * draw.contrast + mean
        else:
            hue, saturation, value = _hsv(x, ops)
            if operation == "saturation":
                saturation = ops.clamp(saturation * draw.saturation, 0.0, 1.0)
            else:
                hue = _fraction(hue + draw.hue, ops)
            x = _rgb(hue, saturation, value, ops)
    return x


def _hsv(x, ops) -> tuple:
    """RGB -> H (turns, [0, 1)), S, V, as TF's rgb_to_hsv: S = 0 where V <= 0, H = 0 where the
    channels are equal; divisions without a branch (a divisor of 0 becomes 1, its quotient 0)."""
    red, green, blue = ops.channels(x)
    value = ops.maximum(ops.maximum(red, green), blue)
    chroma = value - ops.minimum(ops.minimum(red, green), blue)
    positive = ops.mask(value > 0)
    saturation = chroma / (value + 1 - positive) * positive
    divisor = chroma + 1 - ops.mask(chroma > 0)
    is_red = ops.mask(value == red)
    is_green = ops.mask(value == green) * (1 - is_red)
    is_blue = 1 - is_red - is_green
    sixths = (
        is_red * ((green - blue) / divisor)
        + is_green * ((blue - red) / divisor + 2)
        + is_blue * ((red - green) / divisor + 4)
    )
    return _fraction(sixths / 6, ops), saturation, value


def _rgb(hue, saturation, value, ops):
    """H, S, V -> RGB: channel n (5 red, 3 green, 1 blue) is V - V S clamp(min(k, 4 - k), 0, 1)
    with k = (n + 6 H) mod 6, the conversion without a branch per sector."""
    channels = []
    for n in (5, 3, 1):
        k = n + 6 * hue
        k = k - 6 * ops.floor(k / 6)
        channels.append(value - value * saturation * ops.clamp(ops.minimum(k, 4 - k), 0.0, 1.0))
    return ops.stack(*channels)


def _fraction(x, ops):
    return x - ops.floor(x)


def torch_draw(strength: Photometric) -> Draw:
    """A Draw from torch's generator (the torchvision loader seeds it per image)."""
    bounds = ranges(strength)
    uniform = torch.rand(len(bounds)).tolist()
    values = {
        key: low + u * (high - low)
        for u, (key, (low, high)) in zip(uniform, bounds.items(), strict=True)
    }
    return Draw(order=int(torch.randint(len(ORDERS), ()).item()), **values)


class Distort:
    """The torchvision loader's distortion of the strength: uint8 (H, W, 3) -> the same."""

    def __init__(self, strength: Photometric):
        self.strength = strength

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return distort(image, torch_draw(self.strength), TORCH)
