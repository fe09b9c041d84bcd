"""BN inference statistics recomputed after training, as Algorithm 2 of the paper does."""

import itertools
from collections.abc import Iterable

import torch
from torch import nn


@torch.no_grad()
def recompute_population_stats(
    model: nn.Module, batches: Iterable[torch.Tensor], num_batches: int
) -> int:
    """Set every BN layer's inference statistics from num_batches training mini-batches.

    Algorithm 2: E[x] is the mean of the mini-batch means and Var[x] = m/(m-1) times the mean of
    the mini-batch variances. PyTorch's cumulative average (momentum=None) over the unbiased
    per-batch variances computes exactly that for batches of equal size. Returns the number of
    batches used; on an error, or if `batches` is empty, the previous statistics are kept.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return 0
    saved = [(bn.momentum, {k: v.clone() for k, v in bn.state_dict().items()}) for bn in layers]
    was_training = model.training
    seen = 0
    try:
        for bn in layers:
            bn.reset_running_stats()
            bn.momentum = None
        model.train()
        for images in itertools.islice(batches, num_batches):
            model(images)
            seen += 1
        if seen == 0:
            raise ValueError("no batches to recompute the BN population statistics from")
    except BaseException:
        for bn, (_, state) in zip(layers, saved, strict=True):
            bn.load_state_dict(state)
        raise
    finally:
        for bn, (momentum, _) in zip(layers, saved, strict=True):
            bn.momentum = momentum
        model.train(was_training)
    return seen
