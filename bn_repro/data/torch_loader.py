"""Prepared data read with torchvision (the fallback loader): decoding and transforms in loader
worker processes, with the batches, order and validation split of every source (sharding.py)."""

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from bn_repro.config import ConfigError, DataConfig
from bn_repro.data.augment import train_transform, val_transform
from bn_repro.data.sharding import batches_per_epoch, train_batches, val_batches
from bn_repro.data.synthetic import Batch


class FolderData:
    """The train/<wnid>/ and val/<wnid>/ tree that `bn-repro prepare` writes."""

    def __init__(
        self, cfg: DataConfig, seed: int, rank: int, world_size: int, batch: int, pin_memory: bool
    ):
        root = Path(cfg.root)
        manifest = read_manifest(root)
        wnids = [c["wnid"] for c in manifest["classes"]]
        if len(wnids) != cfg.num_classes:
            raise ConfigError(
                f"{root} holds {len(wnids)} classes but data.num_classes={cfg.num_classes}:"
                f" set data.num_classes={len(wnids)}"
            )
        self.train, self.val = (
            _listing(root, split, wnids, manifest["splits"][split]) for split in ("train", "val")
        )
        if batches_per_epoch(len(self.train), world_size, batch) == 0:
            raise ConfigError(
                f"{root} has fewer training images than one global batch of {batch * world_size}"
            )
        self.seed, self.rank, self.world_size, self.batch = seed, rank, world_size, batch
        self.train_transform = train_transform(cfg.image_size, cfg.photometric)
        self.val_transform = val_transform(cfg.image_size)
        self.workers, self.pin_memory = cfg.workers, pin_memory

    @property
    def val_size(self) -> int:
        return len(self.val)

    def train_epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        batches = train_batches(
            len(self.train), self.seed, epoch, self.rank, self.world_size, self.batch, start_batch
        )
        # Each image's crop, flip and distortion are drawn from its own seed: the same pixels
        # whichever worker loads it, and again after a resume.
        return self._load(_Batches(self.train, batches, self.train_transform, (self.seed, epoch)))

    def val_batches(self) -> Iterator[Batch]:
        batches = val_batches(len(self.val), self.rank, self.world_size, self.batch)
        return self._load(_Batches(self.val, batches, self.val_transform, None))

    def _load(self, batches: "_Batches") -> Iterator[Batch]:
        return iter(
            DataLoader(
                batches, batch_size=None, num_workers=self.workers, pin_memory=self.pin_memory
            )
        )


class _Batches(Dataset):
    def __init__(
        self,
        items: list[tuple[str, int]],
        batches: list[torch.Tensor],
        transform,
        seed: tuple | None,
    ):
        self.items, self.batches, self.transform, self.seed = items, batches, transform, seed

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> Batch:
        images, labels = [], []
        for index in self.batches[k].tolist():
            path, label = self.items[index]
            if self.seed is not None:
                torch.manual_seed(hash((*self.seed, index)) % 2**63)
            with Image.open(path) as image:
                images.append(self.transform(image.convert("RGB")))
            labels.append(label)
        return torch.stack(images), torch.tensor(labels)


def read_manifest(root: Path) -> dict:
    path = root / "manifest.json"
    if not path.exists():
        raise ConfigError(
            f"data.root={root} has no manifest.json: prepare it with"
            f" `bn-repro prepare --source SOURCE --out {root}`"
        )
    return json.loads(path.read_text())


def _listing(root: Path, split: str, wnids: list[str], expected: int) -> list[tuple[str, int]]:
    """(path, class index) of every image of the split, in a fixed order."""
    items = [
        (str(path), label)
        for label, wnid in enumerate(wnids)
        for path in sorted((root / split / wnid).glob("*"))
    ]
    if len(items) != expected:
        raise ConfigError(
            f"{root / split} holds {len(items)} images, its manifest {expected}: was it prepared"
            " with --formats folder, and completely?"
        )
    return items
