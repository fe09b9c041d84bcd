"""The loaders' uint8 images as the network's input: normalized on the training device, apart
from the transforms (augment.py) so that a run that reads no images through torchvision (synthetic
data) does not import it."""

import functools

import torch

MEAN = (0.485, 0.456, 0.406)  # ImageNet's channel statistics; the paper gives none
STD = (0.229, 0.224, 0.225)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """The loaders' uint8 (N, H, W, 3) -> float (N, 3, H, W), normalized by MEAN and STD, in
    channels_last memory. On the training device: a host ships a quarter of the bytes."""
    mean, std = _channel_stats(images.device)
    return images.permute(0, 3, 1, 2).float().sub_(mean).div_(std)


@functools.cache
def _channel_stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # made once per device: a copy to the GPU inside a step would make the host wait
    return tuple(255 * torch.tensor(v).view(1, 3, 1, 1).to(device) for v in (MEAN, STD))
