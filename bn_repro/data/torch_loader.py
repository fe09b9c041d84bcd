"""loader=torch: prepared folders or shards read with PIL and torchvision transforms in loader
worker processes, with the batches, order and validation split of every source (sharding.py).
The fallback for DALI, and its yardstick."""

import io
from collections.abc import Iterator

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from bn_repro.data.augment import train_transform, val_transform
from bn_repro.data.multicrop import multicrop_transform
from bn_repro.data.prepared import Item, folder_items, open_prepared, shard_items
from bn_repro.data.sharding import Share, epoch_order, train_batches, val_batches
from bn_repro.data.synthetic import Batch
from bn_repro.schema import DataConfig, DataFormat, Shuffle


class TorchData:
    def __init__(self, cfg: DataConfig, share: Share):
        prepared = open_prepared(cfg, share.world_size, share.batch)
        items = folder_items if cfg.format is DataFormat.folder else shard_items
        self.train, self.val = (
            items(prepared.root, prepared.manifest, split) for split in ("train", "val")
        )
        self.share = share
        self.thorough = cfg.shuffle is Shuffle.thorough
        self.train_transform = train_transform(cfg.image_size, cfg.photometric)
        self.val_transform = val_transform(cfg.image_size)
        self.image_size = cfg.image_size
        self.workers, self.prefetch, self.pin_memory = cfg.workers, cfg.prefetch, share.on_gpu

    @property
    def val_size(self) -> int:
        return len(self.val)

    def train_epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        share = self.share
        order = epoch_order(len(self.train), share.seed, epoch, self.thorough)
        batches = train_batches(order, share.rank, share.world_size, share.batch, start_batch)
        # Each image's crop, flip and distortion are drawn from its own seed: the same pixels
        # whichever worker loads it, and again after a resume.
        return self._load(_Batches(self.train, batches, self.train_transform, (share.seed, epoch)))

    def val_batches(self) -> Iterator[Batch]:
        share = self.share
        batches = val_batches(len(self.val), share.rank, share.world_size, share.val_batch)
        return self._load(_Batches(self.val, batches, self.val_transform, None))

    def multicrop_batches(self, batch: int, crops: int) -> Iterator[Batch]:
        batches = val_batches(len(self.val), self.share.rank, self.share.world_size, batch)
        transform = multicrop_transform(self.image_size, crops)
        return self._load(_Batches(self.val, batches, transform, None))

    def state(self) -> None:
        return None  # the position is the epoch and batch the trainer keeps

    def _load(self, batches: "_Batches") -> Iterator[Batch]:
        # Pinned batches let the trainer's copy to its GPU overlap the step before (Compute.batch).
        loader = DataLoader(
            batches,
            batch_size=None,
            num_workers=self.workers,
            pin_memory=self.pin_memory,
            prefetch_factor=self.prefetch if self.workers else None,
        )
        return iter(loader)


class _Batches(Dataset):
    def __init__(
        self, items: list[Item], batches: list[torch.Tensor], transform, seed: tuple | None
    ):
        self.items, self.batches, self.transform, self.seed = items, batches, transform, seed

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> Batch:
        images, labels = [], []
        for index in self.batches[k].tolist():
            item = self.items[index]
            if self.seed is not None:
                # the CPU generator the transforms draw from (torch.manual_seed would also
                # seed CUDA: 60 us an image against 1 us)
                torch.default_generator.manual_seed(hash((*self.seed, index)) % 2**63)
            source = item.path if item.size < 0 else io.BytesIO(item.read())
            with Image.open(source) as image:
                images.append(self.transform(image))
            labels.append(item.label)
        if isinstance(images[0], tuple):  # multicrop_transform's parts, each batched
            return tuple(map(torch.stack, zip(*images, strict=True))), torch.tensor(labels)
        return torch.stack(images), torch.tensor(labels)
