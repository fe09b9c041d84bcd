from torch import nn

from bn_repro.config import ModelConfig
from bn_repro.models.inception import Inception


def build_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    return Inception(cfg, num_classes)
