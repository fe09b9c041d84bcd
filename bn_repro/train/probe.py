"""The distribution of a layer's input to its nonlinearity over training, as Fig. 1 (b, c) of
the paper draws it: the 15th, 50th and 85th percentiles of one fixed channel (one unit of a
fully connected layer; one feature map, over images and positions, of a convolution) over a
fixed batch of training images, at every evaluation.

The input of the nonlinearity is what follows BN where there is BN. The probe runs the network
as a training step would (BN normalizes with the statistics of the probe batch), but without
gradients, with dropout off and with BN's running averages put back afterwards: it draws no
random numbers and leaves the model as it found it, so training goes on exactly as without it."""

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import nn

from bn_repro import paper
from bn_repro.models.population_stats import batchnorms
from bn_repro.schema import ConfigError


def percentiles(values: torch.Tensor, qs: Sequence[float]) -> list[float]:
    """The qs-th percentiles of all values, interpolated linearly between the nearest ranks as
    numpy.percentile's default does."""
    flat = values.detach().flatten().float()
    return torch.quantile(flat, torch.tensor(qs, device=flat.device) / 100).tolist()


def channels(block: nn.Module) -> int:
    """The channels (units) of a layers.NormAct block: its weight layer's outputs."""
    layer = block.layer
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


class InputProbe:
    """Percentiles of the input of each named block's nonlinearity (layers.NormAct's `act`), at
    one channel, over fixed images already on the model's device."""

    def __init__(
        self,
        blocks: dict[str, nn.Module],
        images: torch.Tensor,
        channel: int,
        autocast: Callable[[], AbstractContextManager] = nullcontext,
        qs: Sequence[float] = paper.FIGURE_1_PERCENTILES,
    ):
        narrowest = min(channels(block) for block in blocks.values())
        if channel >= narrowest:
            raise ConfigError(
                f"probe channel {channel}: the probed layers have {narrowest} channels or more,"
                " numbered from 0: choose a smaller one"
            )
        self.blocks, self.images, self.channel = blocks, images, channel
        self.autocast, self.qs = autocast, qs

    def measure(self, model: nn.Module) -> dict:
        """{"<block>/p15": ..., "<block>/p50": ..., "<block>/p85": ..., "probe_s": seconds}."""
        start = time.perf_counter()
        captured: dict[str, torch.Tensor] = {}

        def capture(name: str):
            # The hook copies the channel before the nonlinearity runs: an in-place ReLU
            # overwrites its input.
            def hook(module, inputs):
                captured[name] = inputs[0][:, self.channel].float().clone()

            return hook

        handles = [
            block.act.register_forward_pre_hook(capture(name))
            for name, block in self.blocks.items()
        ]
        try:
            with as_in_training(model), self.autocast():
                model(self.images)
        finally:
            for handle in handles:
                handle.remove()
        record = {}
        for name in self.blocks:
            for q, value in zip(self.qs, percentiles(captured[name], self.qs), strict=True):
                record[f"{name}/p{q:g}"] = value
        record["probe_s"] = time.perf_counter() - start  # the values were read: device done
        return record


@contextmanager
def as_in_training(model: nn.Module) -> Iterator[None]:
    """The model runs as in a training step, on batch statistics, without gradients or dropout;
    afterwards every module's mode and BN's running averages are as they were."""
    modes = {module: module.training for module in model.modules()}
    saved = [{k: v.clone() for k, v in bn.state_dict().items()} for bn in batchnorms(model)]
    try:
        model.train()
        for module in model.modules():
            if isinstance(module, nn.modules.dropout._DropoutNd):
                module.eval()
        with torch.no_grad():
            yield
    finally:
        for bn, state in zip(batchnorms(model), saved, strict=True):
            bn.load_state_dict(state)
        for module, training in modes.items():
            module.training = training
