"""The Inception network of the paper's Fig. 5 (appendix), built from the table as printed.

Module semantics follow GoogLeNet (Szegedy et al. 2014): four branches concatenated on channels
(1x1; 1x1 then 3x3; 1x1 then two 3x3 in place of GoogLeNet's 5x5; 3x3 pooling then a 1x1
projection). The stride-2 modules 3c and 4e drop the 1x1 branch, put the stride on the last 3x3
of each branch and pass the input through a 3x3/2 max pool, as GoogLeNet's stride-2 pooling and
the paper's "max + pass through" rows say.
"""

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from bn_repro.models.layers import NormAct
from bn_repro.schema import Activation, ConfigError, ModelConfig, Stem


@dataclass(frozen=True)
class ModuleSpec:
    """One inception row of Fig. 5; proj 0 means "max + pass through" (a stride-2 module)."""

    name: str
    n1x1: int
    n3x3_reduce: int
    n3x3: int
    double_reduce: int
    double: int
    pool: str
    proj: int


FIGURE_5 = (
    ModuleSpec("3a", 64, 64, 64, 64, 96, "avg", 32),
    ModuleSpec("3b", 64, 64, 96, 64, 96, "avg", 64),
    ModuleSpec("3c", 0, 128, 160, 64, 96, "max", 0),
    ModuleSpec("4a", 224, 64, 96, 96, 128, "avg", 128),
    ModuleSpec("4b", 192, 96, 128, 96, 128, "avg", 128),
    # 4c and 4d as printed: their branches (160 + 160 + 160 + 128) sum to 608 channels, not the
    # 576 Fig. 5 prints as their output; model.pool_proj_4cd=96 is the TF-slim reading that
    # gives 576.
    ModuleSpec("4c", 160, 128, 160, 128, 160, "avg", 128),
    ModuleSpec("4d", 96, 128, 192, 160, 192, "avg", 128),
    ModuleSpec("4e", 0, 128, 192, 192, 256, "max", 0),
    ModuleSpec("5a", 352, 192, 320, 160, 224, "avg", 128),
    ModuleSpec("5b", 352, 192, 320, 192, 224, "max", 128),
)

# GoogLeNet (Szegedy et al. 2014), which the paper's "Inception" inherits without restating.
LRN = dict(size=5, alpha=1e-4, beta=0.75)  # BVLC GoogLeNet: after pool1 and after conv2
AUX_AFTER = ("4a", "4d")  # Sec. 5: auxiliary classifiers on the outputs of 4a and 4d
AUX_DROPOUT = 0.7  # Sec. 5: dropout with a 70% ratio in the auxiliary heads
AUX_WEIGHT = 0.3  # Sec. 5: their losses are added to the total with a discount weight of 0.3


class InceptionModule(nn.Module):
    def __init__(self, spec: ModuleSpec, in_channels: int, style: NormAct):
        super().__init__()
        stride = 1 if spec.proj else 2
        branches = []
        if spec.n1x1:
            branches.append(style.conv(in_channels, spec.n1x1, 1))
        branches.append(
            nn.Sequential(
                style.conv(in_channels, spec.n3x3_reduce, 1),
                style.conv(spec.n3x3_reduce, spec.n3x3, 3, stride),
            )
        )
        branches.append(
            nn.Sequential(
                style.conv(in_channels, spec.double_reduce, 1),
                style.conv(spec.double_reduce, spec.double, 3),
                style.conv(spec.double, spec.double, 3, stride),
            )
        )
        if spec.pool == "max":
            pool = nn.MaxPool2d(3, stride, padding=1)
        else:  # averages only over real pixels at the border, as TF-slim's 'SAME' padding
            pool = nn.AvgPool2d(3, stride, padding=1, count_include_pad=False)
        branches.append(
            nn.Sequential(pool, style.conv(in_channels, spec.proj, 1)) if spec.proj else pool
        )
        self.branches = nn.ModuleList(branches)
        self.out_channels = spec.n1x1 + spec.n3x3 + spec.double + (spec.proj or in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)


class AuxHead(nn.Module):
    """GoogLeNet's auxiliary classifier (Sec. 5): pool to 4x4, 1x1 conv to 128, FC 1024, FC."""

    def __init__(self, in_channels: int, num_classes: int, style: NormAct, dropout: bool):
        super().__init__()
        # At 224 pixels GoogLeNet pools 14x14 with 5x5/3 to 4x4; adaptive pooling keeps the
        # head's shape at any input size (as torchvision's GoogLeNet does).
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.conv = style.conv(in_channels, 128, 1)
        self.fc = style.linear(128 * 4 * 4, 1024)
        self.dropout = nn.Dropout(AUX_DROPOUT) if dropout else nn.Identity()
        self.classifier = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.pool(x)).flatten(1)
        return self.classifier(self.dropout(self.fc(x)))


class Inception(nn.Module):
    """Fig. 5 for image_size x image_size inputs. In training with aux heads on, forward returns
    (logits, aux_logits). bn_group: BN's images per group in training (None: the batch)."""

    def __init__(
        self, cfg: ModelConfig, num_classes: int, image_size: int, bn_group: int | None = None
    ):
        super().__init__()
        style = NormAct(cfg.norm, cfg.activation, cfg.bn_eps, cfg.bn_momentum, bn_group=bn_group)
        per_activation = _per_activation_sizes(cfg.per_activation_bn, image_size)
        trunk = OrderedDict(conv1=_first_conv(cfg.stem, style))
        # Stride-2 pools pad by 1 so they halve any size exactly as the stride-2 convolutions do.
        trunk["pool1"] = nn.MaxPool2d(3, 2, padding=1)
        if cfg.lrn:
            trunk["lrn1"] = nn.LocalResponseNorm(**LRN)
        # Fig. 5 prints one row for the second convolution but gives "#3x3 reduce" 64 and "#3x3"
        # 192: a 1x1 to 64 then a 3x3 to 192, as GoogLeNet's second stage and every public
        # BN-Inception port build it.
        trunk["conv2_reduce"] = style.conv(64, 64, 1)
        trunk["conv2"] = style.conv(64, 192, 3)
        if cfg.lrn:
            trunk["lrn2"] = nn.LocalResponseNorm(**LRN)
        trunk["pool2"] = nn.MaxPool2d(3, 2, padding=1)
        channels = 192
        aux_heads = OrderedDict()
        for spec in FIGURE_5:
            if spec.name in ("4c", "4d"):
                spec = dataclasses.replace(spec, proj=cfg.pool_proj_4cd)
            size = per_activation.get(spec.name)
            module = InceptionModule(
                spec, channels, dataclasses.replace(style, per_activation_size=size)
            )
            trunk[f"inception_{spec.name}"] = module
            channels = module.out_channels
            if cfg.aux_heads and spec.name in AUX_AFTER:
                aux_heads[f"inception_{spec.name}"] = AuxHead(
                    channels, num_classes, style, cfg.dropout > 0
                )
        # The 7x7/1 average pool of Fig. 5 covers the whole 7x7 map at 224 pixels: global pooling.
        trunk["avgpool"] = nn.AdaptiveAvgPool2d(1)
        trunk["flatten"] = nn.Flatten(1)
        if cfg.dropout:
            trunk["dropout"] = nn.Dropout(cfg.dropout)
        trunk["fc"] = nn.Linear(channels, num_classes)
        self.trunk = nn.Sequential(trunk)
        self.aux_heads = nn.ModuleDict(aux_heads)
        _init_weights(self, cfg.activation, cfg.conv_init_scale)

    def forward(self, x: torch.Tensor):
        aux_logits = []
        for name, layer in self.trunk.named_children():
            x = layer(x)
            if self.training and name in self.aux_heads:
                aux_logits.append(self.aux_heads[name](x))
        return (x, tuple(aux_logits)) if aux_logits else x


def _first_conv(stem: Stem, style: NormAct) -> nn.Module:
    if stem is Stem.dense:
        return style.conv(3, 64, 7, stride=2)
    # Fig. 5 "convolution*": separable with depth multiplier 8. As TF-slim's separable_conv2d,
    # the depthwise 7x7/2 (3 -> 24 maps) is linear and bias-free; the 1x1 to 64 carries the
    # normalization and the nonlinearity.
    return nn.Sequential(
        OrderedDict(
            depthwise=nn.Conv2d(3, 3 * 8, 7, stride=2, padding=3, groups=3, bias=False),
            pointwise=style.conv(3 * 8, 64, 1),
        )
    )


def _per_activation_sizes(names: list[str], image_size: int) -> dict[str, int]:
    """The size of the maps inside each named module, for its per-activation BN. Every
    stride-2 layer before a module halves the maps, rounding up (padding 'SAME'): conv1, pool1,
    pool2, then the modules 3c and 4e."""
    strided = {row.name for row in FIGURE_5 if not row.proj}
    eligible = [row.name for row in FIGURE_5 if row.proj]
    unknown = [name for name in names if name not in eligible]
    if unknown:
        raise ConfigError(
            f"model.per_activation_bn={names}: {unknown} not among Fig. 5's stride-1 Inception"
            f" modules ({' and '.join(sorted(strided))} halve the maps inside them): choose"
            f" among {', '.join(eligible)}"
        )
    size, sizes = image_size, {}
    for _ in range(3):  # conv1, pool1, pool2
        size = -(-size // 2)
    for row in FIGURE_5:
        if row.name in names:
            sizes[row.name] = size
        if row.name in strided:
            size = -(-size // 2)
    return sizes


def _init_weights(model: nn.Module, activation: Activation, conv_scale: float) -> None:
    """The paper gives no initialization: the one made for the nonlinearity, zero biases, and
    BN's gamma = 1, beta = 0 (PyTorch's defaults). For ReLU, He et al. (2015): weights of
    variance 2/fan-in keep a signal's scale through the layers. Xavier's variance (Glorot &
    Bengio 2010, made for symmetric nonlinearities, as in the BVLC GoogLeNet Caffe model) halves
    it at every ReLU, and the network without BN starts with almost no signal at its output:
    Inception's training loss stayed at ln(classes) for 300 steps of the generated benchmark,
    where with He's it fell from the start. The paper's Inception trained; so must ours. The
    sigmoid networks, and the classifiers (no nonlinearity follows them), keep Xavier's.
    conv_scale enlarges the convolutions' weights, as in some of the ensemble's members
    (Sec. 4.2.3)."""
    classifiers = [model.trunk.fc, *(head.classifier for head in model.aux_heads.values())]
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            if activation is Activation.relu and not any(module is c for c in classifiers):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(module.weight)
            if isinstance(module, nn.Conv2d):
                with torch.no_grad():
                    module.weight.mul_(conv_scale)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def probe_blocks(model: Inception) -> dict[str, nn.Sequential]:
    """One weight layer of each stage, whose nonlinearity's input the trainer's probe follows
    (train/probe.py): conv1 (its 1x1 part when separable), conv2, and in each Inception module
    the 3x3 convolution of its 3x3 branch, which every module has (the third branch from the
    end: the stride-2 modules lack the 1x1 branch)."""
    trunk = model.trunk
    blocks = {"conv1": getattr(trunk.conv1, "pointwise", trunk.conv1), "conv2": trunk.conv2}
    for name, module in trunk.named_children():
        if isinstance(module, InceptionModule):
            blocks[name.removeprefix("inception_")] = module.branches[-3][1]
    return blocks
