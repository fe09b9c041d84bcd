"""The weight layers of the networks, with normalization and nonlinearity injected.

Sec. 3.2: a layer z = g(Wu + b) becomes z = g(BN(Wu)); the bias is dropped because BN's beta
takes its role, and convolutional BN keeps one gamma/beta per feature map.
"""

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from bn_repro.models.ghost_bn import GhostBatchNorm1d, GhostBatchNorm2d, grouped_batch_norm
from bn_repro.schema import Activation, Norm


class PerActivationBatchNorm(nn.BatchNorm1d):
    """BN as Algorithm 1 states it, for each activation on its own: every (channel, row, column)
    of a (N, C, H, W) map has its own mean and variance over the mini-batch and its own gamma
    and beta, where convolutional BN (Sec. 3.2) shares them over a feature map's positions.
    Sec. 4.2.3's "non-convolutional, per-activation Batch Normalization", which some ensemble
    members use in their last hidden layers. The maps' size is fixed at construction."""

    def __init__(
        self, channels: int, size: int, eps: float, momentum: float, group: int | None = None
    ):
        super().__init__(channels * size * size, eps=eps, momentum=momentum)
        self.map_shape = (channels, size, size)
        self.group = group  # images per BN group in training (ghost_bn.py); None: the batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.map_shape:
            raise ValueError(
                f"per-activation BN of {self.map_shape} maps got {tuple(x.shape[1:])}: the"
                " network was built for another image size (data.image_size)"
            )
        flat = x.flatten(1)
        if self.training and self.group is not None:
            out = grouped_batch_norm(self, flat, self.group).view(x.shape)
        else:
            out = super().forward(flat).view(x.shape)
        if x.is_contiguous(memory_format=torch.channels_last):  # as the layers around it
            out = out.contiguous(memory_format=torch.channels_last)
        return out


@dataclass(frozen=True)
class NormAct:
    """How every weight layer ends: optional BN on the pre-activation, then the nonlinearity.
    per_activation_size: the size of the (square) maps whose BN normalizes per activation; None:
    convolutional BN. bn_group: images per BN group in training (ghost BN, ghost_bn.py); None:
    plain BN over the whole batch."""

    norm: Norm
    activation: Activation
    bn_eps: float
    bn_momentum: float
    per_activation_size: int | None = None
    bn_group: int | None = None

    def conv(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Module:
        conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel,
            stride=stride,
            padding=kernel // 2,
            bias=self.norm is Norm.none,
        )
        return self._finish(conv, self._conv_bn(out_channels))

    def linear(self, in_features: int, out_features: int) -> nn.Module:
        linear = nn.Linear(in_features, out_features, bias=self.norm is Norm.none)
        eps, momentum, group = self.bn_eps, self.bn_momentum, self.bn_group
        if group is None:
            bn = nn.BatchNorm1d(out_features, eps=eps, momentum=momentum)
        else:
            bn = GhostBatchNorm1d(out_features, group, eps, momentum)
        return self._finish(linear, bn)

    def _conv_bn(self, channels: int) -> nn.Module:
        eps, momentum, group = self.bn_eps, self.bn_momentum, self.bn_group
        if self.per_activation_size is not None:
            return PerActivationBatchNorm(channels, self.per_activation_size, eps, momentum, group)
        if group is None:
            return nn.BatchNorm2d(channels, eps=eps, momentum=momentum)
        return GhostBatchNorm2d(channels, group, eps, momentum)

    def _finish(self, layer: nn.Module, bn: nn.Module) -> nn.Sequential:
        parts = OrderedDict(layer=layer)
        if self.norm is Norm.batchnorm:
            parts["bn"] = bn
        parts["act"] = nn.ReLU(inplace=True) if self.activation is Activation.relu else nn.Sigmoid()
        return nn.Sequential(parts)
