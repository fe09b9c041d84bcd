"""GoogLeNet's 144 crops (Szegedy et al. 2014, Sec. 7), which the multicrop and ensemble rows of
the paper's Fig. 4 follow (Sec. 4.2.3): the image's shorter side resized to 4 scales (256, 288,
320 and 352 pixels for 224-pixel crops); of each, the left, centre and right squares (top, centre
and bottom for a portrait image); of each square the 4 corners and the centre at the crop size,
and the whole square resized to it; each also mirrored: 4 x 3 x 6 x 2 = 144 crops, whose softmax
outputs are averaged.

Fewer crops, 36, 72 or 108, take only the first 1, 2 or 3 scales: a quicker look where a forward
pass is dear (the generated benchmark on a 2-core CPU); records and tables name the scales.

The work is split so that images batch: a loader cuts each image's 3 squares and resizes each to
the 4 scales and to the crop size (fixed shapes whatever the image's), and the evaluation
device takes the windows and the mirrors (`views`). Cutting the square before resizing it,
rather than resizing the whole image first, changes pixels only along the square's edges. The
whole square resized is the same picture at every scale: it is evaluated once and counted 4
times; an image's identical squares (a square image's three) are evaluated once too."""

import functools
from dataclasses import dataclass

import torch
from torchvision import transforms

from bn_repro.data.augment import hwc, resize

REFERENCE_CROP = 224  # the crop size GoogLeNet's scales are given for
SHORTER_SIDES = (256, 288, 320, 352)
SQUARES = 3  # left, centre, right (or top, centre, bottom)
WINDOWS = 5  # 4 corners and the centre; the 6th crop is the whole square
CROPS_PER_SCALE = SQUARES * (WINDOWS + 1) * 2  # x 2 mirrors: 36
CROPS = len(SHORTER_SIDES) * CROPS_PER_SCALE  # 144
CROP_COUNTS = (1, *(CROPS_PER_SCALE * k for k in range(1, len(SHORTER_SIDES) + 1)))


def scales(size: int, crops: int = CROPS) -> tuple[int, ...]:
    """The shorter sides for `crops` crops (144: all 4) of `size` pixels: GoogLeNet's, in
    proportion, rounded."""
    sides = SHORTER_SIDES[: crops // CROPS_PER_SCALE]
    return tuple(round(side * size / REFERENCE_CROP) for side in sides)


@dataclass(frozen=True)
class Square:
    top: int
    left: int
    side: int


def squares(height: int, width: int) -> tuple[Square, ...]:
    """The first, centre and last squares along the longer side of a height x width image; the
    centre's offset rounds half up, as the single crop's (augment.CentreCrop)."""
    side = min(height, width)
    return tuple(
        Square(((height - side) * k + 1) // 2, ((width - side) * k + 1) // 2, side)
        for k in range(SQUARES)
    )


def windows(scale: int, size: int) -> tuple[tuple[int, int], ...]:
    """(top, left) of the 4 corner crops and the centre crop of a square of side `scale`."""
    far = scale - size
    centre = (far + 1) // 2
    return ((0, 0), (0, far), (far, 0), (far, far), (centre, centre))


@dataclass(frozen=True)
class CropBox:
    square: Square  # in the image
    scale: int  # the square's side once resized
    top: int  # the crop, in the resized square
    left: int
    side: int  # the crop size, or the scale for the whole square (then resized to the crop size)
    mirrored: bool


def crop_boxes(height: int, width: int, size: int, crops: int = CROPS) -> list[CropBox]:
    """The crops of a height x width image for `size`-pixel crops: per square, per scale, the 5
    windows and the whole square, each as it is and mirrored."""
    return [
        CropBox(square, scale, *crop, mirrored)
        for square in squares(height, width)
        for scale in scales(size, crops)
        for crop in [(*corner, size) for corner in windows(scale, size)] + [(0, 0, scale)]
        for mirrored in (False, True)
    ]


class MultiCropSquares:
    """The loaders' part: a decoded image, uint8 (H, W, 3) -> its squares, resized to each scale
    and to the crop size: uint8 (3, L, L, 3) for each scale L of `crops`, then (3, S, S, 3)."""

    def __init__(self, size: int, crops: int = CROPS):
        self.sizes = (*scales(size, crops), size)

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cut = [
            image[s.top : s.top + s.side, s.left : s.left + s.side]
            for s in squares(*image.shape[:2])
        ]
        return tuple(torch.stack([resize(c, [side, side]) for c in cut]) for side in self.sizes)


def multicrop_transform(size: int, crops: int = CROPS) -> transforms.Compose:
    """A decoded PIL image -> MultiCropSquares' tensors (the torchvision loader's)."""
    return transforms.Compose([hwc, MultiCropSquares(size, crops)])


def views(parts: tuple[torch.Tensor, ...], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluation device's part: a batch of MultiCropSquares' tensors (each with the batch
    dimension first) -> the distinct crops, uint8 (N, K, S, S, 3), and how many of the crops
    each stands for, (K,), summing to 36 a scale (144 for 4)."""
    *scaled, whole = parts
    count = SQUARES
    if all(torch.equal(p[:, 0], p[:, k]) for p in parts for k in range(1, SQUARES)):
        count = 1  # the squares coincide (square images): one counts for three
    repeat = SQUARES // count
    crops, weights = [], []
    for part in scaled:
        for top, left in windows(part.shape[2], size):
            crops.append(part[:, :count, top : top + size, left : left + size])
            weights += [repeat] * count
    crops.append(whole[:, :count])  # the whole square, the same at every scale
    weights += [repeat * len(scaled)] * count
    crops = torch.cat(crops, dim=1)
    crops = torch.cat([crops, crops.flip(3)], dim=1)  # mirrored: (N, K, H, W, 3)
    return crops, _weights(tuple(weights * 2), crops.device)


@functools.cache
def _weights(weights: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(weights, dtype=torch.float32, device=device)


def mean_probability(log_probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """log of the weighted mean of the probabilities: log_probs (N, K, classes), weights (K,)
    -> (N, classes). In log space, so that small probabilities keep their order."""
    return torch.logsumexp(log_probs + weights.log()[:, None], dim=1) - weights.sum().log()
