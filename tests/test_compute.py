"""The fast path's switches, on CPU: every variant keeps bf16 convolutions and channels_last
through every layer (no silent fallback to another layout), BN keeps fp32 statistics, the fused
optimizer makes the default's update, and the switches resolve as the config says."""

import pytest
import torch
from torch import nn

from bn_repro.compose import experiments
from bn_repro.data.normalize import MEAN, STD
from bn_repro.hparams import effective_hparams
from bn_repro.models import build_model
from bn_repro.schema import ConfigError, Device
from bn_repro.train.build import wrap_ddp
from bn_repro.train.compute import fused_optimizer, pick_compute
from bn_repro.train.distributed import Dist, distributed
from bn_repro.train.optim import build_optimizer
from bn_repro.train.step import GraphedStep
from tests.helpers import model_of, run_config

CPU = Dist(0, 1, 0, torch.device("cpu"), "single")


@pytest.mark.parametrize("experiment", experiments())
def test_every_variant_runs_bf16_convolutions_in_channels_last_throughout(experiment):
    model = model_of(experiment, num_classes=10).to(memory_format=torch.channels_last)
    outputs = []
    for module in model.modules():
        if not list(module.children()):
            module.register_forward_hook(lambda m, i, out: outputs.append((m, out)))
    images = torch.randn(2, 3, 64, 64).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(images)
    maps = [(m, out) for m, out in outputs if out.dim() == 4]
    assert len(maps) > 100
    for module, out in maps:
        assert out.is_contiguous(memory_format=torch.channels_last), type(module).__name__
    convs = [out for m, out in maps if isinstance(m, nn.Conv2d)]
    assert len(convs) == 70 and all(out.dtype == torch.bfloat16 for out in convs)
    # BN normalizes bf16 maps with fp32 parameters and running statistics, updated in place.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert module.running_var.dtype == module.weight.dtype == torch.float32
            assert module.num_batches_tracked == 1


@pytest.mark.parametrize("experiment", ["inception", "bn_x5"])
def test_the_fused_optimizer_makes_the_same_update(experiment):
    hp = effective_hparams(run_config(experiment))
    images, labels = torch.randn(4, 3, 32, 32), torch.randint(10, (4,))
    weights = []
    for fused in (False, True):
        torch.manual_seed(0)
        model = model_of(experiment, "model.dropout=0", num_classes=10)
        optimizer = build_optimizer(model, hp, fused=fused)
        for _ in range(2):  # the momentum buffer is at work in the second step
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
        weights.append(model.state_dict())
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, msg=name)


def test_on_cpu_the_open_switches_resolve_to_plain_fp32():
    cfg = run_config("bn_x5")
    compute = pick_compute(cfg, CPU)
    assert compute.autocast_dtype is None and not compute.channels_last
    assert compute.copy_stream is None and not fused_optimizer(cfg, CPU)


def test_the_switches_apply_on_cpu_where_they_can():
    cfg = run_config(
        "bn_x5",
        "trainer.precision=bf16",
        "trainer.channels_last=true",
        "trainer.fused_optimizer=true",
    )
    compute = pick_compute(cfg, CPU)
    assert compute.autocast_dtype == torch.bfloat16 and compute.channels_last
    assert compute.memory_format == torch.channels_last and fused_optimizer(cfg, CPU)
    images, labels = compute.batch(torch.randn(2, 3, 8, 8), torch.tensor([1, 2]))
    assert images.is_contiguous(memory_format=torch.channels_last) and labels.tolist() == [1, 2]


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_loaders_uint8_batch_is_normalized_on_the_device(channels_last):
    cfg = run_config("bn_x5", f"trainer.channels_last={channels_last}")
    compute = pick_compute(cfg, CPU)
    pixels = torch.randint(0, 256, (2, 5, 6, 3), dtype=torch.uint8)  # a loader's (N, H, W, 3)
    images, _ = compute.batch(pixels, torch.tensor([1, 2]))
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (MEAN, STD))
    torch.testing.assert_close(images, (pixels.permute(0, 3, 1, 2) / 255 - mean) / std)
    assert images.dtype == torch.float32 and images.is_contiguous(
        memory_format=compute.memory_format
    )


def test_overlapping_copies_without_a_gpu_is_refused():
    with pytest.raises(ConfigError, match="trainer.overlap_copy=true overlaps copies to a GPU"):
        pick_compute(run_config("bn_x5", "trainer.overlap_copy=true"), CPU)


def test_deterministic_training_on_cuda_is_refused_with_the_reason():
    # No GPU needed: the refusal comes before anything touches the device (or torch's
    # global deterministic switch).
    cuda = Dist(0, 1, 0, torch.device("cuda", 0), "single")
    with pytest.raises(ConfigError, match="deterministic=true on cuda:0: torch has no determ"):
        pick_compute(run_config("bn_x5", "trainer.deterministic=true"), cuda)
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.mark.slow
def test_the_network_compiles_as_one_graph_but_for_ddps_own_breaks():
    # torch.compile over DDP's wrapper: DDPOptimizer splits the graph where its gradient buckets
    # end (intentional breaks); the network itself must add none, or every step would return to
    # Python between the graphs (dynamo's trace only: the CPU cannot afford inductor's build)
    cfg = run_config("bn_x5", "data=synthetic", "data.image_size=32", "trainer.probe_images=0")
    with distributed(Device.cpu) as dist:
        model = build_model(cfg.model, 1000, 32)
        ddp = wrap_ddp(model, dist.device)
        explained = torch._dynamo.explain(ddp)(torch.randn(8, 3, 32, 32))
    reasons = [str(b.reason) for b in explained.break_reasons]
    assert reasons and all("DDPOptimizer intentional graph-break" in r for r in reasons)
    assert explained.graph_count == explained.graph_break_count + 1  # DDP's splits alone


def test_a_graphed_step_on_a_cpu_device_is_refused_with_the_reason():
    # trainer.device=auto passes composition; on a machine without CUDA the run has the CPU
    cfg = run_config("bn_x5", "trainer.cuda_graph=true")
    compute = pick_compute(cfg, CPU)
    model = model_of("bn_x5", num_classes=10)
    optimizer = build_optimizer(model, effective_hparams(cfg), fused=False)
    with pytest.raises(ConfigError, match="trainer.cuda_graph=true captures CUDA kernels, and"):
        GraphedStep(model, optimizer, compute, stream=None)
