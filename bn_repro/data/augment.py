"""The training and validation transforms, in one place for every loader to match.

Inception's recipe (Szegedy et al. 2014, Sec. 6): random crops of 8-100% of the area at aspect
ratios 3/4-4/3, horizontal flips and photometric distortions. The paper distorts less for the
accelerated networks (Sec. 4.2.1) without saying how much less; "reduced" halves every strength.
"""

import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import v2

from bn_repro.config import Photometric

CROP_AREA = (0.08, 1.0)
CROP_ASPECT = (3 / 4, 4 / 3)
# TF-slim's Inception distortions (SPEC.md 2.3): brightness +-32/255, contrast and saturation
# x[0.5, 1.5], hue +-0.2 (its fast mode; an approximation of Howard's distortions).
FULL_DISTORTION = {"brightness": 32 / 255, "contrast": 0.5, "saturation": 0.5, "hue": 0.2}
STRENGTH = {Photometric.full: 1.0, Photometric.reduced: 0.5, Photometric.none: 0.0}
VAL_CROP_FRACTION = 0.875  # the centre crop covers 87.5% of the resized image (TF-slim)
MEAN = (0.485, 0.456, 0.406)  # ImageNet's channel statistics; the paper gives none
STD = (0.229, 0.224, 0.225)


def photometric(strength: Photometric) -> v2.Transform:
    scale = STRENGTH[strength]
    if scale == 0:
        return v2.Identity()
    jitter = {key: value * scale for key, value in FULL_DISTORTION.items()}
    # ColorJitter takes brightness as a factor around 1: +-32/255 of a mid-grey is about +-0.25.
    jitter["brightness"] = 2 * jitter["brightness"]
    return v2.ColorJitter(**jitter)


class RandomResizedCropRGB:
    """torchvision's RandomResizedCrop (the same crops, from torch's generator) in one PIL pass:
    crop and antialiased bilinear resize together, then RGB, with no full-size copy. The
    fallback's version of DALI's fused decode-and-crop."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: Image.Image) -> Image.Image:
        top, left, height, width = transforms.RandomResizedCrop.get_params(
            image, list(CROP_AREA), list(CROP_ASPECT)
        )
        box = (left, top, left + width, top + height)
        return image.resize((self.size, self.size), Image.BILINEAR, box=box).convert("RGB")


class ToRGB:
    def __call__(self, image: Image.Image) -> Image.Image:
        return image.convert("RGB")


def train_transform(size: int, strength: Photometric) -> v2.Transform:
    """A decoded PIL image (RGB or grayscale) -> normalized float crop, from torch's generator."""
    return v2.Compose(
        [
            RandomResizedCropRGB(size),
            v2.RandomHorizontalFlip(),
            photometric(strength),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD, inplace=True),
        ]
    )


class CentreCrop:
    """A centre crop whose offset rounds half up, as DALI's crop_pos 0.5 does (torchvision's
    CenterCrop rounds half to even): the loaders then crop the very same pixels."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image):
        height, width = v2.functional.get_size(image)
        top, left = (height - self.size + 1) // 2, (width - self.size + 1) // 2
        return v2.functional.crop(image, top, left, self.size, self.size)


def val_transform(size: int) -> v2.Transform:
    return v2.Compose(
        [
            ToRGB(),
            v2.Resize(round(size / VAL_CROP_FRACTION), antialias=True),
            CentreCrop(size),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD, inplace=True),
        ]
    )
