from collections.abc import Iterator
from typing import Protocol

from bn_repro.config import ConfigError, DataConfig, DataKind
from bn_repro.data.folder import FolderData
from bn_repro.data.synthetic import Batch, SyntheticData


class DataSource(Protocol):
    """What the trainer needs of a rank's data, whatever reads it."""

    val_size: int  # validation images over all ranks: the denominator evaluation checks

    def train_epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        """This rank's batches of one epoch from start_batch on; as many on every rank."""

    def val_batches(self) -> Iterator[Batch]:
        """This rank's share of the validation set; every image on exactly one rank."""


def build_data(
    cfg: DataConfig, seed: int, rank: int, world_size: int, batch: int, pin_memory: bool
) -> DataSource:
    """The training and validation data of this rank, `batch` images per rank and step."""
    if cfg.kind is DataKind.synthetic:
        return SyntheticData(cfg, seed, rank, world_size, batch)
    if cfg.root is None:
        raise ConfigError(
            "data.root is not set: point it at the output of `bn-repro prepare`"
            " (for ILSVRC2012: bn-repro prepare --source ARCHIVES --out DIR, then data.root=DIR)"
        )
    return FolderData(cfg, seed, rank, world_size, batch, pin_memory)
