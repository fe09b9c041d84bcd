"""SGD with momentum, L2 on the weights of convolutions and linear layers only."""

import torch
from torch import nn

from bn_repro.hparams import EffectiveHparams

WEIGHT_LAYERS = (nn.Conv2d, nn.Linear)
# How the update runs, not what it computes: the device decides, never a checkpoint.
KERNEL_CHOICES = ("fused", "foreach")


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


def load_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """A checkpoint's optimizer state (momentum buffers, rates) with the kernels this optimizer
    was built with: a saved group carries the fused and foreach flags of the device that wrote
    it, and load_state_dict would bring them back (a run started on the CPU and resumed on a
    GPU would train unfused)."""
    chosen = [{key: group[key] for key in KERNEL_CHOICES} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, kernels in zip(optimizer.param_groups, chosen, strict=True):
        group.update(kernels)


def is_fused(optimizer: torch.optim.Optimizer) -> bool:
    """Whether every group updates with the fused kernel, as the step will run it."""
    return all(group["fused"] for group in optimizer.param_groups)
