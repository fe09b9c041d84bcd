"""A fixed batch of training images, the same on every start and resume of a run: the images
the trainer's input-distribution probe (train/probe.py) runs at every evaluation.

A seeded draw from the training set, taken without augmentation (resized and centre-cropped as
validation images are), so that only the network changes between two measurements. Read
directly from the prepared folders or shards, whatever loader trains: drawing it costs the
training stream nothing, neither a batch nor a random number."""

import io
from pathlib import Path

import torch
from PIL import Image

from bn_repro.data.prepared import folder_items, read_manifest, shard_items
from bn_repro.data.synthetic import Batch, SyntheticData
from bn_repro.schema import ConfigError, DataConfig


def fixed_train_batch(cfg: DataConfig, data, seed: int, count: int) -> Batch:
    """count training images chosen by seed: uint8 (N, H, W, 3) as the loaders deliver them,
    or, for synthetic data, its float images; with their labels."""
    generator = torch.Generator().manual_seed(seed)
    if isinstance(data, SyntheticData):
        chosen = _draw(len(data.train_labels), count, generator).to(data.train_images.device)
        return data.train_images[chosen], data.train_labels[chosen]
    from bn_repro.data.augment import val_transform  # torchvision only for a prepared set

    root = Path(cfg.root)
    manifest = read_manifest(root)
    # the folder tree lists faster than the shards' index files, where both were prepared
    items = (folder_items if "folder" in manifest["formats"] else shard_items)(
        root, manifest, "train"
    )
    transform = val_transform(cfg.image_size)
    images, labels = [], []
    for index in _draw(len(items), count, generator).tolist():
        item = items[index]
        source = item.path if item.size < 0 else io.BytesIO(item.read())
        with Image.open(source) as image:
            images.append(transform(image))
        labels.append(item.label)
    return torch.stack(images), torch.tensor(labels)


def _draw(size: int, count: int, generator: torch.Generator) -> torch.Tensor:
    if count > size:
        raise ConfigError(f"trainer.probe_images={count}: the training set has only {size} images")
    return torch.randperm(size, generator=generator)[:count]
