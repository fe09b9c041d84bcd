"""BN inference statistics recomputed from training mini-batches, as Algorithm 2 of the paper does.

Training tracks accuracy with BN's running averages (Sec. 3.1: "using moving averages instead,
we can track the accuracy of a model as it trains"); the network's final inference uses the
population statistics of Algorithm 2, step 10: E[x] = E_B[mu_B], Var[x] = m/(m-1) E_B[sigma^2_B]."""

import itertools
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recompute_population_stats(
    model: nn.Module, batches: Iterable[torch.Tensor], num_batches: int
) -> int:
    """Set every BN layer's inference statistics from num_batches training mini-batches.

    E[x] is the mean of the mini-batch means and Var[x] = m/(m-1) times the mean of the
    mini-batch variances: with momentum 1 a BN layer's running statistics are its mini-batch's
    mean and unbiased variance, which a hook adds up after each of its passes; a layer that
    normalizes in groups (ghost BN, ghost_bn.py) holds its groups' mean statistics, so that
    Algorithm 2's mini-batches are the groups of m = bn_batch images. All on the device:
    PyTorch's own cumulative average (momentum=None) reads the batch count on the host in every
    layer, a wait for the GPU some 70 times a batch. The model runs as in training (auxiliary
    heads too), but for dropout, which would change what later layers see. Returns the number of
    batches used; on an error, or if `batches` is empty, the previous statistics are kept.
    """
    layers = batchnorms(model)
    if not layers:
        return 0
    saved = [(bn.momentum, {k: v.clone() for k, v in bn.state_dict().items()}) for bn in layers]
    modes = {module: module.training for module in model.modules()}
    sums = _Sums(layers)
    seen = 0
    try:
        model.train()
        for module in model.modules():
            if isinstance(module, nn.modules.dropout._DropoutNd):
                module.eval()
        for bn in layers:
            bn.momentum = 1.0
        for images in itertools.islice(batches, num_batches):
            model(images)
            seen += 1
        if seen == 0:
            raise ValueError("no batches to recompute the BN population statistics from")
        sums.set_averages()
    except BaseException:
        for bn, (_, state) in zip(layers, saved, strict=True):
            bn.load_state_dict(state)
        raise
    finally:
        sums.remove()
        for bn, (momentum, _) in zip(layers, saved, strict=True):
            bn.momentum = momentum
        for module, training in modes.items():
            module.training = training
    return seen


class _Sums:
    """Each BN layer's mini-batch means and unbiased variances summed over its passes, on its
    device, by a forward hook: a layer's running statistics after a pass with momentum 1."""

    def __init__(self, layers: list[nn.modules.batchnorm._BatchNorm]):
        self.sums = {
            bn: [torch.zeros_like(bn.running_mean), torch.zeros_like(bn.running_var), 0]
            for bn in layers
        }
        self.hooks = [bn.register_forward_hook(self._add) for bn in layers]

    def _add(self, bn: nn.Module, inputs, output) -> None:
        sums = self.sums[bn]
        sums[0] += bn.running_mean
        sums[1] += bn.running_var
        sums[2] += 1

    def set_averages(self) -> None:
        """Every layer that ran gets the averages; one that did not keeps its statistics."""
        for bn, (means, variances, passes) in self.sums.items():
            if not passes:
                continue
            bn.running_mean.copy_(means / passes)
            bn.running_var.copy_(variances / passes)
            bn.num_batches_tracked.fill_(passes)

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()


@contextmanager
def population_statistics(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    num_batches: int,
    combine: Callable[[nn.Module], None] = lambda model: None,
) -> Iterator[int]:
    """Within the block the model's BN layers hold Algorithm 2's statistics over num_batches
    training mini-batches (combined over ranks by `combine`); afterwards the running averages
    are back, as training left them. Yields the number of batches used."""
    saved = [{k: v.clone() for k, v in bn.state_dict().items()} for bn in batchnorms(model)]
    try:
        seen = recompute_population_stats(model, batches, num_batches)
        combine(model)
        yield seen
    finally:
        for bn, state in zip(batchnorms(model), saved, strict=True):
            bn.load_state_dict(state)
