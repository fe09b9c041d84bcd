"""Figure 1's network (Sec. 4.1): binary 28x28 inputs, fully connected hidden layers of sigmoid
units, each y = g(Wu + b), then a linear 10-way output (the softmax is in the loss). With BN,
each hidden layer normalizes its pre-activation before the sigmoid and drops its bias (Sec. 3.2),
as bn_repro.models.layers.NormAct builds every layer of the ImageNet networks."""

from collections import OrderedDict

from torch import nn

from bn_repro.figure1.config import MlpConfig
from bn_repro.models.layers import NormAct
from bn_repro.schema import Activation, Norm


class MLP(nn.Sequential):
    """hidden1 ... hiddenN (each layer [, bn], act), then output."""

    def __init__(self, cfg: MlpConfig, norm: Norm, inputs: int, classes: int):
        style = NormAct(norm, Activation.sigmoid, cfg.bn_eps, cfg.bn_momentum)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for index in range(1, cfg.hidden_layers + 1):
            layers[f"hidden{index}"] = style.linear(inputs, cfg.hidden_units)
            inputs = cfg.hidden_units
        layers["output"] = nn.Linear(inputs, classes)
        super().__init__(layers)
        # Sec. 4.1: "W ... initialized to small random Gaussian values"; biases start at 0.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=cfg.init_std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def hidden(self) -> dict[str, nn.Sequential]:
        """The hidden layers by name: their sigmoid inputs are what Fig. 1 (b, c) draws."""
        return {name: layer for name, layer in self.named_children() if name != "output"}
