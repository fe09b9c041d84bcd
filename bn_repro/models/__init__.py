"""The networks: build_model makes the ImageNet Inception of a model config (inception.py),
whose layers (layers.py) take BN as Sec. 3.2 inserts it; Figure 1's network is
bn_repro/figure1/model.py."""

from torch import nn

from bn_repro.models.inception import Inception
from bn_repro.schema import ModelConfig


def build_model(cfg: ModelConfig, num_classes: int, image_size: int) -> nn.Module:
    return Inception(cfg, num_classes, image_size)
