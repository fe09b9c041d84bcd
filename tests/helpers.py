from torch import nn

from bn_repro.config import RunConfig, compose, to_object
from bn_repro.models import build_model


def run_config(experiment: str, *overrides: str) -> RunConfig:
    return to_object(compose([f"experiment={experiment}", *overrides]))


def model_of(experiment: str, *overrides: str, num_classes: int = 1000) -> nn.Module:
    return build_model(run_config(experiment, *overrides).model, num_classes)
