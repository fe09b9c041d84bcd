"""How a training step runs on this rank's device: autocast dtype, memory format, the stream
that copies host batches to the GPU and the optimizer's kernels, chosen once from the config (its
null and auto switches take the fast path on CUDA and plain fp32 on the CPU)."""

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from bn_repro.data.normalize import normalize
from bn_repro.schema import ConfigError, Precision, RunConfig
from bn_repro.train.distributed import Dist
from bn_repro.train.optim import is_fused


@dataclass(frozen=True)
class Compute:
    """How a step runs on this device: autocast dtype (None: fp32), memory format, and the
    stream that copies host batches to the GPU (None: the current stream)."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    channels_last: bool
    copy_stream: torch.cuda.Stream | None = None

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def batch(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The batch on the device, in the step's memory format, without waiting for the device:
        a blocking copy would stall the host until the steps queued before it had run."""
        if self.copy_stream is None or images.is_cuda:
            return self._to_device(images, labels)
        # A host batch (pinned by the loader) is copied on the copy stream, so the copy overlaps
        # the step still running on the current stream; this step's kernels wait for it.
        with torch.cuda.stream(self.copy_stream):
            batch = self._to_device(images, labels)
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self.copy_stream)
        for tensor in batch:
            tensor.record_stream(current)  # its memory is not reused before the step has run
        return batch

    def _to_device(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        images = images.to(self.device, non_blocking=True)
        if images.dtype == torch.uint8:  # a loader's (N, H, W, 3)
            images = normalize(images)
        return (
            images.contiguous(memory_format=self.memory_format),
            labels.to(self.device, non_blocking=True),
        )


def pick_compute(cfg: RunConfig, dist: Dist) -> Compute:
    """The fast path on CUDA where the config leaves it open (null or auto): bf16 autocast,
    channels_last and a side stream for host-to-GPU copies; fp32 and plain copies on CPU."""
    trainer = cfg.trainer
    cuda = dist.device.type == "cuda"
    if trainer.deterministic and cuda:
        # torch.use_deterministic_algorithms would raise mid-step: CUDA has no deterministic
        # backward for the adaptive average pools (the heads) and LRN's pooling, nor an NLL loss
        raise ConfigError(
            f"trainer.deterministic=true on {dist.device}: torch has no deterministic CUDA kernels"
            " for this network's adaptive average pools and LRN (backward) or its cross-entropy;"
            " it is for exact resume tests on CPU: leave it false, or add trainer.device=cpu"
        )
    bf16 = trainer.precision is Precision.bf16 or (trainer.precision is Precision.auto and cuda)
    if cuda:
        torch.backends.cudnn.benchmark = not trainer.deterministic
    if trainer.deterministic:
        torch.use_deterministic_algorithms(True)
    channels_last = cuda if trainer.channels_last is None else trainer.channels_last
    if trainer.overlap_copy and not cuda:
        raise ConfigError(
            "trainer.overlap_copy=true overlaps copies to a GPU, and this run has none:"
            " leave it null (on with CUDA)"
        )
    overlap = cuda if trainer.overlap_copy is None else trainer.overlap_copy
    copy_stream = torch.cuda.Stream(dist.device) if overlap else None
    return Compute(dist.device, torch.bfloat16 if bf16 else None, channels_last, copy_stream)


def resolved_switches(compute: Compute, optimizer: torch.optim.Optimizer) -> dict:
    """What the config's null and auto switches became on this device, for the records."""
    return {
        "precision": "bf16" if compute.autocast_dtype == torch.bfloat16 else "fp32",
        "channels_last": compute.channels_last,
        "overlap_copy": compute.copy_stream is not None,
        "fused_optimizer": is_fused(optimizer),
    }


def fused_optimizer(cfg: RunConfig, dist: Dist) -> bool:
    fused = cfg.trainer.fused_optimizer
    return dist.device.type == "cuda" if fused is None else fused
