"""data=synthetic: learnable, seeded images made in memory, with the loaders' interface."""

from collections.abc import Iterator

import torch
from torch.nn import functional as F

from bn_repro.data.sharding import (
    Share,
    batches_per_epoch,
    epoch_order,
    train_batches,
    val_batches,
)
from bn_repro.schema import ConfigError, DataConfig, Shuffle

# images: uint8 (N, H, W, 3) from the loaders, normalized on the device (normalize.py), or
# float (N, 3, H, W) ready for the model (synthetic); labels (N,)
Batch = tuple[torch.Tensor, torch.Tensor]


class SyntheticData:
    """Each class is a smooth random colour pattern; an image is its class's pattern plus noise.
    Every rank makes the same images from the run's seed and reads its share (sharding.py).
    They are kept on the training device, so batches cost no loading or copying: throughput
    measured on them is the model's alone."""

    def __init__(self, cfg: DataConfig, share: Share):
        if cfg.synthetic is None:
            raise ConfigError(
                "data.kind=synthetic needs a data.synthetic section: use data=synthetic"
            )
        self.share, self.device = share, share.device
        self.thorough = cfg.shuffle is Shuffle.thorough
        generator = torch.Generator().manual_seed(cfg.synthetic.seed)
        size, classes = cfg.image_size, cfg.num_classes
        patterns = F.interpolate(
            torch.randn(classes, 3, 4, 4, generator=generator), size=(size, size), mode="bilinear"
        )

        def make(count: int) -> Batch:
            labels = torch.randint(classes, (count,), generator=generator)
            noise = torch.randn(count, 3, size, size, generator=generator)
            images = patterns[labels] + cfg.synthetic.noise * noise
            return images.to(share.device), labels.to(share.device)

        self.train_images, self.train_labels = make(cfg.synthetic.train_size)
        self.val_images, self.val_labels = make(cfg.synthetic.val_size)
        if batches_per_epoch(cfg.synthetic.train_size, share.world_size, share.batch) == 0:
            raise ConfigError(
                f"data.synthetic.train_size={cfg.synthetic.train_size} holds no global batch of"
                f" {share.batch * share.world_size}: make it larger"
            )

    @property
    def val_size(self) -> int:
        return len(self.val_labels)

    def train_epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        # the epoch's order goes to the device once: a batch is a slice of it there, no copy
        share = self.share
        order = epoch_order(len(self.train_labels), share.seed, epoch, self.thorough)
        order = order.to(self.device)
        for chosen in train_batches(order, share.rank, share.world_size, share.batch, start_batch):
            yield self._take(self.train_images, self.train_labels, chosen)

    def val_batches(self) -> Iterator[Batch]:
        share = self.share
        for chosen in val_batches(self.val_size, share.rank, share.world_size, share.val_batch):
            yield self._take(self.val_images, self.val_labels, chosen.to(self.device))

    def multicrop_batches(self, batch: int, crops: int) -> Iterator[Batch]:
        raise ConfigError(
            "data.kind=synthetic has no images to cut crops from: evaluate several crops on"
            " prepared data (data.kind=prepared), or 1 crop"
        )

    def _take(self, images: torch.Tensor, labels: torch.Tensor, chosen: torch.Tensor) -> Batch:
        return images.index_select(0, chosen), labels.index_select(0, chosen)

    def state(self) -> None:
        return None  # the position is the epoch and batch the trainer keeps
