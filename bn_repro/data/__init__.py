from bn_repro.config import ConfigError, DataConfig, DataKind
from bn_repro.data.synthetic import SyntheticData


def build_data(cfg: DataConfig, seed: int, rank: int, world_size: int, batch: int) -> SyntheticData:
    """The training and validation data of this rank, `batch` images per rank and step."""
    if cfg.kind is DataKind.synthetic:
        return SyntheticData(cfg, seed, rank, world_size, batch)
    raise ConfigError(
        f"data={cfg.kind.value}: the ILSVRC2012 loaders are not built yet; train on data=synthetic"
    )
