"""What the evaluated networks predict for a batch of validation images: each member's scores at
1 crop (logits, as the trainer counts them) or several (144: the log of its class probabilities
averaged over the crops), and the ensemble's, the arithmetic mean of its members' class
probabilities (Sec. 4.2.3); in fp32, as the trainer's evaluations (train/evaluation.py)."""

import torch
from torch import nn
from torch.nn import functional as F

from bn_repro.data.multicrop import mean_probability, views
from bn_repro.data.normalize import normalize
from bn_repro.train.compute import Compute
from bn_repro.train.evaluation import fp32


@torch.no_grad()
def single_crop(
    models: list[nn.Module], batch: tuple, compute: Compute
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each model's logits for a loader's batch of single crops, and the labels on the device."""
    images, labels = compute.batch(*batch)
    with fp32(compute.device):
        return [model(images).float() for model in models], labels


@torch.no_grad()
def multi_crop(
    models: list[nn.Module], batch: tuple, compute: Compute, size: int, crops_per_pass: int
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each model's log mean probabilities over the crops of every image of a loader's multicrop
    batch (a tuple of squares, multicrop.MultiCropSquares), and the labels. A forward pass
    takes at most crops_per_pass crops, whatever the batch: 256 images at 144 crops are 36,864,
    tens of GB for the first convolution's output alone."""
    parts, labels = batch
    parts = tuple(part.to(compute.device, non_blocking=True) for part in parts)
    crops, weights = views(parts, size)
    count, per_image = crops.shape[:2]
    chunks = crops.flatten(0, 1).split(crops_per_pass)  # uint8 views: normalized a chunk at a time
    scores = []
    for model in models:
        logits = torch.cat([_logits(model, chunk, compute) for chunk in chunks])
        log_probs = F.log_softmax(logits, dim=1).view(count, per_image, -1)
        scores.append(mean_probability(log_probs, weights))
    return scores, labels.to(compute.device, non_blocking=True)


def _logits(model: nn.Module, crops: torch.Tensor, compute: Compute) -> torch.Tensor:
    images = normalize(crops).contiguous(memory_format=compute.memory_format)
    with fp32(compute.device):
        return model(images).float()


def ensemble(scores: list[torch.Tensor]) -> torch.Tensor:
    """The log of the members' class probabilities averaged, from their logits or log
    probabilities (N, classes) each."""
    log_probs = torch.stack([F.log_softmax(s, dim=1) for s in scores], dim=1)
    return mean_probability(log_probs, log_probs.new_ones(len(scores)))
