"""One optimizer step's work on a rank: forward, loss, backward and SGD's update, run eagerly
(step_eagerly), or captured once as a CUDA graph and replayed (GraphedStep, trainer.cuda_graph):
one graph launch a step instead of the some thousand kernels Python launches one by one."""

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn
from torch.nn import functional as F

from bn_repro.models.inception import AUX_WEIGHT
from bn_repro.schema import ConfigError
from bn_repro.train.compute import Compute

# Eager steps before the capture: cuDNN's autotuning, the lazily made handles, the momentum
# buffers (a captured first SGD step would copy the gradient into them at every replay) and
# DDP's reducer, which rebuilds its buckets after the first iteration and must have run 11
# eager iterations before a capture (torch's notes on CUDA graphs with DDP).
GRAPH_WARMUP_STEPS = 11


def loss_of(output, labels: torch.Tensor) -> torch.Tensor:
    if isinstance(output, tuple):  # training with GoogLeNet's auxiliary heads
        logits, aux_logits = output
        aux = sum(F.cross_entropy(aux.float(), labels) for aux in aux_logits)
        return F.cross_entropy(logits.float(), labels) + AUX_WEIGHT * aux
    return F.cross_entropy(output.float(), labels)


def step_eagerly(
    forward: nn.Module,
    optimizer: torch.optim.Optimizer,
    autocast: Callable[[], AbstractContextManager],
    images: torch.Tensor,
    labels: torch.Tensor,
) -> torch.Tensor:
    """Forward, backward and update on a batch already on the device; the loss, detached."""
    with autocast():
        loss = loss_of(forward(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


class GraphedStep:
    """The whole step as one CUDA graph: GRAPH_WARMUP_STEPS eager steps on `stream` (the one DDP
    was built on), then one capture of step_eagerly on static tensors (the batch, the
    learning rate as a device tensor that fused SGD reads, the loss), replayed for every later
    step with the batch copied into the static input. The captured work is fixed: parameters,
    gradients, momentum buffers and BN statistics are updated in place, where evaluation and
    checkpoints read them."""

    def __init__(
        self,
        forward: nn.Module,
        optimizer: torch.optim.Optimizer,
        compute: Compute,
        stream: torch.cuda.Stream,
    ):
        if compute.device.type != "cuda":
            raise ConfigError(
                f"trainer.cuda_graph=true captures CUDA kernels, and this run trains on"
                f" {compute.device}: set trainer.cuda_graph=false, or train on a GPU"
            )
        self.forward, self.optimizer, self.compute, self.stream = (
            forward,
            optimizer,
            compute,
            stream,
        )
        self.warmup_left = GRAPH_WARMUP_STEPS
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: tuple[torch.Tensor, ...] = ()  # images, labels, learning rate, loss

    def autocast(self) -> AbstractContextManager:
        # autocast's cache of cast weights would be captured as the capture found it (torch's
        # notes on CUDA graphs ask for it off); without it every step casts the weights anew
        if self.compute.autocast_dtype is None:
            return nullcontext()
        return torch.autocast("cuda", dtype=self.compute.autocast_dtype, cache_enabled=False)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, lr: float) -> torch.Tensor:
        """One step on a host or device batch at learning rate lr; the loss, on the device."""
        images, labels = self.compute.batch(images, labels)
        if self.graph is None and self.warmup_left:
            self.warmup_left -= 1
            return self._eager(images, labels, lr)
        if self.graph is None:
            self._capture(images, labels)
        static_images, static_labels, static_lr, loss = self.static
        static_images.copy_(images)
        static_labels.copy_(labels)
        static_lr.fill_(lr)
        self.graph.replay()
        return loss.clone()  # the static loss is overwritten by the next replay

    def _eager(self, images: torch.Tensor, labels: torch.Tensor, lr: float) -> torch.Tensor:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        current = torch.cuda.current_stream(self.compute.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            loss = step_eagerly(self.forward, self.optimizer, self.autocast, images, labels)
        current.wait_stream(self.stream)
        return loss

    def _capture(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Capture the step on static copies of this batch's shape; nothing runs until the
        first replay. thread_local: the loaders' own threads (DALI's, pin memory's) may go on
        calling CUDA while the main thread captures."""
        static_lr = torch.zeros((), dtype=torch.float32, device=self.compute.device)
        for group in self.optimizer.param_groups:
            group["lr"] = static_lr
        static_images, static_labels = torch.empty_like(images), torch.empty_like(labels)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
            loss = step_eagerly(
                self.forward, self.optimizer, self.autocast, static_images, static_labels
            )
        self.graph, self.static = graph, (static_images, static_labels, static_lr, loss)
