"""The measurements of Santurkar et al. (2018), "How Does Batch Normalization Help
Optimization?", at one training step of a network trained by plain SGD:

- gradient-based internal covariate shift (their Definition 2.1): for each layer i, G_i, the
  gradient of the loss on the step's batch with respect to layer i's parameters, against G'_i,
  the same gradient after layers 1..i-1 have taken this step's update; their l2 distance
  (0 without shift) and cosine (1 without shift);
- the loss landscape along the gradient (their Sec. 3.1): with g the gradient at the weights w,
  the loss L(w - eta g) and the gradient change ||grad L(w - eta g) - g|| over a grid of step
  sizes eta: the range of each, and the "effective beta-smoothness", the largest gradient change
  per unit of distance moved, max ||grad L(w - eta g) - g|| / ||eta g||.

Everything is evaluated on copies of the parameters and buffers (torch.func.functional_call), in
the model's current mode: the model, its BN running averages and the optimizer are untouched."""

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

Params = dict[str, torch.Tensor]
LossAt = Callable[[Params], torch.Tensor]  # the step's loss at other parameter values


def batch_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> LossAt:
    """The cross-entropy on this batch as a function of the parameters; BN's buffers are copied
    for every evaluation, so their running averages never move."""
    buffers = {name: b.detach() for name, b in model.named_buffers()}

    def loss_at(params: Params) -> torch.Tensor:
        state = {**{k: v.clone() for k, v in buffers.items()}, **params}
        return F.cross_entropy(functional_call(model, state, (images,)), labels)

    return loss_at


def parameters_of(model: nn.Module) -> Params:
    return {name: p.detach() for name, p in model.named_parameters()}


def gradient(loss_at: LossAt, params: Params) -> tuple[float, Params]:
    """The loss and its gradient at params (zero for parameters it does not depend on)."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    loss = loss_at(leaves)
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return loss.item(), {
        k: torch.zeros_like(v) if g is None else g
        for (k, v), g in zip(leaves.items(), grads, strict=True)
    }


def flat(tensors: Params, keys: Sequence[str]) -> torch.Tensor:
    return torch.cat([tensors[k].flatten() for k in keys])


def gradient_ics(
    loss_at: LossAt, params: Params, layers: Sequence[tuple[str, Sequence[str]]], lr: float
) -> dict[str, float]:
    """Definition 2.1 for each layer, given as (name, its parameter names) from the input on:
    {"<layer>/l2": ||G - G'||, "<layer>/cosine": cos(G, G')}, where G' is taken after the SGD
    update w - lr * G of every parameter of the layers before it."""
    _, grads = gradient(loss_at, params)
    record, earlier = {}, set()
    for name, keys in layers:
        moved = {k: v - lr * grads[k] if k in earlier else v for k, v in params.items()}
        _, shifted = gradient(loss_at, moved)
        g, g_shifted = flat(grads, keys), flat(shifted, keys)
        record[f"{name}/l2"] = (g - g_shifted).norm().item()
        record[f"{name}/cosine"] = cosine(g, g_shifted)
        earlier.update(keys)
    return record


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """cos(a, b); 1 for two equal vectors, zero ones included."""
    if torch.equal(a, b):
        return 1.0
    return F.cosine_similarity(a, b, dim=0, eps=1e-30).item()


def landscape(loss_at: LossAt, params: Params, step_sizes: Sequence[float]) -> dict[str, float]:
    """The loss and the gradient along the gradient's direction, over the step sizes."""
    loss, grads = gradient(loss_at, params)
    keys = list(params)
    g = flat(grads, keys)
    losses, changes, smoothness = [], [], []
    for eta in step_sizes:
        moved_loss, moved_grads = gradient(
            loss_at, {k: v - eta * grads[k] for k, v in params.items()}
        )
        change = (flat(moved_grads, keys) - g).norm().item()
        distance = eta * g.norm().item()
        losses.append(moved_loss)
        changes.append(change)
        smoothness.append(change / distance if distance > 0 else 0.0)
    return {
        "loss": loss,
        "grad_norm": g.norm().item(),
        "loss_min": min(losses),
        "loss_max": max(losses),
        "loss_range": max(losses) - min(losses),
        "grad_change_min": min(changes),
        "grad_change_max": max(changes),
        "beta_smoothness": max(smoothness),
    }
