"""SGD with momentum, L2 on the weights of convolutions and linear layers only."""

import torch
from torch import nn

from bn_repro.hparams import EffectiveHparams

WEIGHT_LAYERS = (nn.Conv2d, nn.Linear)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weights of convolutions and linear layers decay; BN's gamma/beta and every bias do not.
    Chosen by module type, never by parameter name."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            is_weight = isinstance(module, WEIGHT_LAYERS) and name == "weight"
            (decay if is_weight else no_decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, hp: EffectiveHparams, fused: bool) -> torch.optim.SGD:
    # Sec. 4.2: "a version of SGD with momentum (Sutskever et al., 2013)"; classical momentum
    # (not Nesterov) as Caffe and TF's MomentumOptimizer. The rate is set every step. Fused:
    # one kernel updates every parameter of a group, the same arithmetic as the loop of the
    # default implementation.
    return torch.optim.SGD(
        parameter_groups(model, hp.weight_decay), lr=hp.lr, momentum=hp.momentum, fused=fused
    )
