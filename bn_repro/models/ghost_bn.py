"""BN over groups of a rank's batch (ghost batch normalization): a batch of N images is cut into
N / group consecutive groups, each normalized with its own mean and variance, as that many of
the paper's replicas of `group` images (Sec. 4.2: 32) would normalize theirs.

One pass over the batch, whatever the number of groups: the (N, C, ...) input is viewed as
(groups, group, C, ...) (a view in either memory format: only the batch axis is split) and
reduced over each group's images and positions, so that torch.compile fuses the reductions and
the normalization into a few kernels instead of a kernel per group. The running averages move
by the groups' mean statistics, what averaging the replicas' running averages gives (they are
linear in the batch statistics); in evaluation the layer is plain BN."""

import torch
from torch import nn


def grouped_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, group: int):
    """BN's training-mode forward of x with statistics per group of `group` consecutive images;
    updates bn's running statistics with the groups' mean batch mean and mean unbiased batch
    variance (m = group images x positions per channel, as Algorithm 1's m)."""
    if x.shape[0] % group:
        raise ValueError(
            f"BN in groups of {group} images got a batch of {x.shape[0]}: a rank's batch must be"
            " a multiple of trainer.bn_batch"
        )
    grouped = x.view(x.shape[0] // group, group, *x.shape[1:])
    over = (1, *range(3, grouped.dim()))  # a group's images and every position
    # statistics in fp32 (at least) under autocast, as torch's BN kernels keep them
    values = grouped if grouped.dtype in (torch.float32, torch.float64) else grouped.float()
    variance, mean = torch.var_mean(values, dim=over, correction=0, keepdim=True)
    if bn.training and bn.track_running_stats:
        _update_running(bn, mean, variance, x[0, 0].numel() * group)
    scale = torch.rsqrt(variance + bn.eps)
    if bn.affine:
        shape = (1, 1, -1) + (1,) * (grouped.dim() - 3)
        scale = scale * bn.weight.view(shape)
        shift = bn.bias.view(shape) - mean * scale
    else:
        shift = -mean * scale
    return (values * scale + shift).to(x.dtype).view(x.shape)


@torch.no_grad()
def _update_running(bn, mean: torch.Tensor, variance: torch.Tensor, m: int) -> None:
    bn.num_batches_tracked.add_(1)
    groups_mean = mean.flatten(2).mean(0).flatten()
    groups_var = (variance * (m / (m - 1))).flatten(2).mean(0).flatten()
    bn.running_mean.lerp_(groups_mean.to(bn.running_mean.dtype), bn.momentum)
    bn.running_var.lerp_(groups_var.to(bn.running_var.dtype), bn.momentum)


class GhostBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d whose training batches are normalized in groups of `group` images; the
    same parameters and buffers (a checkpoint of either loads into the other)."""

    def __init__(self, channels: int, group: int, eps: float, momentum: float):
        super().__init__(channels, eps=eps, momentum=momentum)
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        return grouped_batch_norm(self, x, self.group)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, group={self.group}"


class GhostBatchNorm1d(nn.BatchNorm1d):
    """nn.BatchNorm1d of (N, features) batches, normalized in groups of `group` images in
    training, as GhostBatchNorm2d."""

    def __init__(self, features: int, group: int, eps: float, momentum: float):
        super().__init__(features, eps=eps, momentum=momentum)
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        return grouped_batch_norm(self, x, self.group)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, group={self.group}"
