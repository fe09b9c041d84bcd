"""Per-layer output shapes, parameters and multiply-adds of the Inception network."""

import copy
from dataclasses import dataclass

import torch
from torch import nn

from bn_repro.models.inception import AuxHead, Inception, InceptionModule


@dataclass(frozen=True)
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]  # for one image
    params: int
    multiply_adds: int  # per image: convolutions and linear layers
    inference: bool  # False for the auxiliary heads, which run only in training


@torch.no_grad()
def layer_table(model: Inception, image_size: int) -> list[LayerRow]:
    """One row per stage of the trunk, then one per auxiliary head, from a real forward pass."""
    # A copy in training mode, so that the auxiliary heads run and the caller's BN statistics
    # stay as they were.
    model = copy.deepcopy(model).train()
    stages = list(model.trunk.named_children()) + [
        (f"aux_{name.removeprefix('inception_')}", head)
        for name, head in model.aux_heads.named_children()
    ]
    shapes: dict[str, tuple[int, ...]] = {}
    macs = {name: 0 for name, _ in stages}
    for name, stage in stages:
        stage.register_forward_hook(_record_shape(shapes, name))
        for layer in stage.modules():
            if isinstance(layer, nn.Conv2d | nn.Linear):
                layer.register_forward_hook(_count_macs(macs, name))
    batch = 2  # BN in training mode needs more than one value per channel
    model(torch.zeros(batch, 3, image_size, image_size))
    return [
        LayerRow(
            name,
            _kind(stage),
            shapes[name],
            sum(p.numel() for p in stage.parameters()),
            macs[name] // batch,
            not isinstance(stage, AuxHead),
        )
        for name, stage in stages
    ]


def training_multiply_adds(model: Inception, image_size: int) -> int:
    """Forward multiply-adds per image of every layer that runs in training: the trunk (what
    `bn-repro describe` counts) and the auxiliary heads, when there are any."""
    return sum(row.multiply_adds for row in layer_table(model, image_size))


def _kind(stage: nn.Module) -> str:
    """The layer's type in the words of Fig. 5."""
    if isinstance(stage, nn.Sequential):
        convs = [m for m in stage.modules() if isinstance(m, nn.Conv2d)]
        (kh, kw), (stride, _) = max((c.kernel_size, c.stride) for c in convs)
        separable = "separable " if any(conv.groups > 1 for conv in convs) else ""
        return f"{separable}convolution {kh}x{kw}/{stride}"
    if isinstance(stage, nn.MaxPool2d):
        return f"max pool {stage.kernel_size}x{stage.kernel_size}/{stage.stride}"
    kinds = {
        InceptionModule: "inception",
        AuxHead: "auxiliary classifier",
        nn.LocalResponseNorm: "LRN",
        nn.AdaptiveAvgPool2d: "avg pool (global)",
        nn.Flatten: "flatten",
        nn.Dropout: "dropout",
        nn.Linear: "linear",
    }
    return kinds[type(stage)]


def _record_shape(shapes: dict, name: str):
    def hook(module, inputs, output):
        shapes[name] = tuple(output.shape[1:])

    return hook


def _count_macs(macs: dict, name: str):
    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            per_output = module.in_channels // module.groups * kh * kw
        else:
            per_output = module.in_features
        macs[name] += output.numel() * per_output

    return hook
