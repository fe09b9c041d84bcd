"""The networks: build_model makes the ImageNet Inception of a model config (inception.py),
whose layers (layers.py) take BN as Sec. 3.2 inserts it; Figure 1's network is
bn_repro/figure1/model.py."""

from torch import nn

from bn_repro.models.inception import Inception
from bn_repro.schema import ModelConfig


def build_model(
    cfg: ModelConfig, num_classes: int, image_size: int, bn_group: int | None = None
) -> nn.Module:
    """bn_group: BN normalizes training batches in groups of this many images (ghost BN,
    models/ghost_bn.py); None: over the whole batch, with torch's own BN layers."""
    return Inception(cfg, num_classes, image_size, bn_group)
