"""The weight layers of the networks, with normalization and nonlinearity injected.

Sec. 3.2: a layer z = g(Wu + b) becomes z = g(BN(Wu)); the bias is dropped because BN's beta
takes its role, and convolutional BN keeps one gamma/beta per feature map.
"""

from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

from bn_repro.schema import Activation, Norm


@dataclass(frozen=True)
class NormAct:
    """How every weight layer ends: optional BN on the pre-activation, then the nonlinearity."""

    norm: Norm
    activation: Activation
    bn_eps: float
    bn_momentum: float

    def conv(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Module:
        conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel,
            stride=stride,
            padding=kernel // 2,
            bias=self.norm is Norm.none,
        )
        return self._finish(conv, nn.BatchNorm2d, out_channels)

    def linear(self, in_features: int, out_features: int) -> nn.Module:
        linear = nn.Linear(in_features, out_features, bias=self.norm is Norm.none)
        return self._finish(linear, nn.BatchNorm1d, out_features)

    def _finish(self, layer: nn.Module, batchnorm: type, channels: int) -> nn.Sequential:
        parts = OrderedDict(layer=layer)
        if self.norm is Norm.batchnorm:
            parts["bn"] = batchnorm(channels, eps=self.bn_eps, momentum=self.bn_momentum)
        parts["act"] = nn.ReLU(inplace=True) if self.activation is Activation.relu else nn.Sigmoid()
        return nn.Sequential(parts)
