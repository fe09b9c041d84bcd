"""The training and validation transforms, in one place for every loader to match. Loaders
yield uint8 images (N, H, W, 3); the trainer normalizes them on its device (normalize.py).

Inception's recipe (Szegedy et al. 2014, Sec. 6): random crops of 8-100% of the area at aspect
ratios 3/4-4/3, horizontal flips and photometric distortions (distort.py, TF-slim's, written once
for both loaders). The paper distorts less for the accelerated networks (Sec. 4.2.1) without
saying how much less; "reduced", half of every strength, is this project's reading.
"""

import functools

import numpy as np
import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import v2

from bn_repro.data.distort import STRENGTH, Distort
from bn_repro.schema import Photometric

CROP_AREA = (0.08, 1.0)
CROP_ASPECT = (3 / 4, 4 / 3)
VAL_CROP_FRACTION = 0.875  # the centre crop covers 87.5% of the resized image (TF-slim)


def resize(image: torch.Tensor, size: list[int]) -> torch.Tensor:
    """uint8 (H, W, 3) -> uint8 (h, w, 3) of size [h, w], or [shorter side] (torchvision's rule
    for the longer): antialiased bilinear, PIL's filter, by torch's vectorized kernel."""
    batch = image.permute(2, 0, 1).unsqueeze(0)  # channels_last strides: the fast kernel
    return v2.functional.resize(batch, size, antialias=True)[0].permute(1, 2, 0).contiguous()


def hwc(image: Image.Image) -> torch.Tensor:
    """A PIL image (RGB or grayscale) -> uint8 (H, W, 3)."""
    return torch.from_numpy(np.array(image.convert("RGB")))


class RandomResizedCrop:
    """torchvision's RandomResizedCrop (the same crops, from torch's generator): only the crop's
    region leaves PIL, then resize. The fallback's version of DALI's fused decode-and-crop."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: Image.Image) -> torch.Tensor:
        top, left, height, width = transforms.RandomResizedCrop.get_params(
            image, list(CROP_AREA), list(CROP_ASPECT)
        )
        region = image.crop((left, top, left + width, top + height))
        return resize(hwc(region), [self.size, self.size])


def random_flip(image: torch.Tensor) -> torch.Tensor:
    return image.flip(1) if torch.rand(1).item() < 0.5 else image


def train_transform(size: int, strength: Photometric) -> transforms.Compose:
    """A decoded PIL image -> uint8 (size, size, 3) crop, flipped and distorted, drawn from
    torch's generator."""
    distort = [Distort(strength)] if STRENGTH[strength] else []
    return transforms.Compose([RandomResizedCrop(size), random_flip, *distort])


class CentreCrop:
    """A centre crop of a (H, W, 3) image whose offset rounds half up, as DALI's crop_pos 0.5
    does (torchvision's CenterCrop rounds half to even): the loaders crop the same pixels."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[:2]
        top, left = (height - self.size + 1) // 2, (width - self.size + 1) // 2
        return image[top : top + self.size, left : left + self.size]


def val_transform(size: int) -> transforms.Compose:
    """A decoded PIL image -> uint8 (size, size, 3): the shorter side resized, the centre cut."""
    shorter = round(size / VAL_CROP_FRACTION)
    return transforms.Compose([hwc, functools.partial(resize, size=[shorter]), CentreCrop(size)])
