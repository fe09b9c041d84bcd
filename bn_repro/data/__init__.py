"""The data a run trains and evaluates on: build_data picks, from the data config, synthetic
images (synthetic.py) or a prepared set (prepared.py) read by DALI (dali_loader.py) or
torchvision (torch_loader.py), each behind the DataSource interface the trainer uses."""

from collections.abc import Iterator
from typing import Protocol

from bn_repro.data.sharding import Share
from bn_repro.data.synthetic import Batch, SyntheticData
from bn_repro.schema import ConfigError, DaliDevice, DataConfig, DataKind, DataLoaderKind


class DataSource(Protocol):
    """What the trainer needs of a rank's data, whatever reads it."""

    val_size: int  # validation images over all ranks: the denominator evaluation checks

    def train_epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        """This rank's batches of one epoch from start_batch on; as many on every rank;
        on the host, or already on the rank's GPU."""

    def val_batches(self) -> Iterator[Batch]:
        """This rank's share of the validation set; every image on exactly one rank."""

    def multicrop_batches(self, batch: int, crops: int) -> Iterator[Batch]:
        """val_batches for evaluation at `crops` crops (144: GoogLeNet's), `batch` images at a
        time: each image's squares at every scale (multicrop.MultiCropSquares), a tuple of
        uint8 tensors."""

    def state(self) -> dict | None:
        """The reader's position and random state beyond (epoch, batch), for checkpoints."""


def build_data(cfg: DataConfig, share: Share, state: dict | None = None) -> DataSource:
    """This rank's training and validation data (its share), from a loader state (a
    checkpoint's) when given one."""
    if cfg.kind is DataKind.synthetic:
        return SyntheticData(cfg, share)
    if cfg.root is None:
        raise ConfigError(
            "data.root is not set: point it at the output of `bn-repro prepare`"
            " (for ILSVRC2012: bn-repro prepare --source ARCHIVES --out DIR, then data.root=DIR)"
        )
    if cfg.loader is DataLoaderKind.torch:
        from bn_repro.data.torch_loader import TorchData  # torchvision only when asked for

        return TorchData(cfg, share)
    from bn_repro.data.dali_loader import DaliData  # DALI only when asked for

    if cfg.dali_device is DaliDevice.gpu and not share.on_gpu:
        raise ConfigError(
            "data.dali_device=gpu needs training on CUDA: use dali_device=cpu or auto"
        )
    gpu = cfg.dali_device is DaliDevice.gpu or (cfg.dali_device is DaliDevice.auto and share.on_gpu)
    return DaliData(cfg, share, gpu, state)
