"""The CUDA paths, on the first GPU: `pytest -m gpu` (make test runs it where torch sees a GPU;
elsewhere each test is skipped with the reason). Where a CPU test checks the same thing on the
CPU, the name says so."""

import dataclasses
import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from bn_repro.compose import experiments
from bn_repro.data import build_data
from bn_repro.data.make_mini import MiniSpec
from bn_repro.data.normalize import MEAN, STD
from bn_repro.data.synthetic import SyntheticData
from bn_repro.hparams import effective_hparams
from bn_repro.models import build_model
from bn_repro.models.population_stats import batchnorms, recompute_population_stats
from bn_repro.schema import DaliDecode, DaliDevice, DataFormat, DataLoaderKind, Device
from bn_repro.train.build import build_trainer
from bn_repro.train.checkpoint import load_latest
from bn_repro.train.compute import pick_compute
from bn_repro.train.distributed import Dist, all_reduce, distributed
from bn_repro.train.metrics import read_metrics
from bn_repro.train.optim import build_optimizer
from bn_repro.train.step import GRAPH_WARMUP_STEPS, loss_of
from tests.helpers import BIN, first_visible_gpu, prepared_set, run_config, share

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda", 0)
ONE_GPU = Dist(0, 1, 0, CUDA, "single")
# ImageNet-sized JPEGs (500 x 375 at quality 95, as the Makefile's bench set): what nvJPEG, its
# hardware decoder and the GPU resize meet on ILSVRC2012. 4 classes of 24 + 9 images.
PHOTOS = MiniSpec(
    classes=4, train_per_class=24, val_per_class=9, size=500, seed=5, height=375, quality=95
)


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    return prepared_set(tmp_path_factory, "photos", PHOTOS, workers=4, shard_size=32)


def photo_cfg(root: Path, **changes):
    overrides = ("data=imagenet", f"data.root={root}", f"data.num_classes={PHOTOS.classes}")
    cfg = run_config("bn_x5", *overrides, "data.dali_device=gpu", "data.workers=4").data
    return dataclasses.replace(cfg, **changes)


@pytest.mark.parametrize("experiment", experiments())
def test_every_variant_trains_in_bf16_channels_last_with_fp32_bn_statistics(experiment):
    # as tests/test_compute.py on the CPU, with CUDA's autocast (other op lists) and a backward
    cfg = run_config(experiment)
    compute = pick_compute(cfg, ONE_GPU)
    assert compute.autocast_dtype == torch.bfloat16 and compute.channels_last
    torch.manual_seed(0)
    model = build_model(cfg.model, 10, 64).to(CUDA, memory_format=compute.memory_format)
    outputs = []
    for module in model.modules():
        if not list(module.children()):
            module.register_forward_hook(lambda m, i, out: outputs.append((m, out)))
    images = torch.randn(8, 3, 64, 64, device=CUDA).contiguous(memory_format=torch.channels_last)
    with compute.autocast():
        output = model(images)
    loss_of(output, torch.randint(10, (8,), device=CUDA)).backward()
    maps = [(m, out) for m, out in outputs if isinstance(out, torch.Tensor) and out.dim() == 4]
    for module, out in maps:
        assert out.is_contiguous(memory_format=torch.channels_last), type(module).__name__
    convs = [out for m, out in maps if isinstance(m, nn.Conv2d)]
    assert len(convs) == 70 and all(out.dtype == torch.bfloat16 for out in convs)
    for bn in batchnorms(model):
        assert bn.running_var.dtype == bn.weight.dtype == bn.weight.grad.dtype == torch.float32
        assert torch.isfinite(bn.running_var).all() and bn.num_batches_tracked == 1
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("experiment", ["inception", "bn_x5"])
def test_the_fused_optimizer_makes_the_same_update_on_cuda(experiment):
    hp = effective_hparams(run_config(experiment))
    images = torch.randn(8, 3, 64, 64, device=CUDA)
    labels = torch.randint(10, (8,), device=CUDA)
    weights = []
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True):
        for fused in (False, True):
            torch.manual_seed(0)
            model = build_model(run_config(experiment, "model.dropout=0").model, 10, 64).to(CUDA)
            optimizer = build_optimizer(model, hp, fused=fused)
            for _ in range(2):  # the momentum buffer is at work in the second step
                optimizer.zero_grad()
                loss_of(model(images), labels).backward()
                optimizer.step()
            weights.append(model.state_dict())
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, msg=name)


def test_a_pinned_host_batch_reaches_the_gpu_on_the_copy_stream_without_a_host_wait():
    compute = pick_compute(run_config("bn_x5"), ONE_GPU)
    assert compute.copy_stream is not None
    pixels = torch.randint(0, 256, (16, 24, 20, 3), dtype=torch.uint8)
    labels = torch.arange(16)
    compute.batch(pixels.pin_memory(), labels.pin_memory())  # copies MEAN and STD, once
    torch.cuda.synchronize()
    host_images, host_labels = pixels.pin_memory(), labels.pin_memory()
    torch.cuda.set_sync_debug_mode("error")  # raises at any call that waits for the GPU
    try:
        images, got_labels = compute.batch(host_images, host_labels)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert images.device == got_labels.device == CUDA
    assert images.is_contiguous(memory_format=torch.channels_last)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (MEAN, STD))
    reference = (pixels.permute(0, 3, 1, 2) / 255 - mean) / std
    torch.testing.assert_close(images.cpu(), reference)
    assert torch.equal(got_labels.cpu(), labels)


def test_a_cpu_dali_pipeline_feeding_the_gpu_pins_its_batches(photos):
    data = build_data(photo_cfg(photos, dali_device=DaliDevice.cpu), share(16, gpu=0))
    images, labels = next(data.train_epoch(0))
    assert not images.is_cuda and images.is_pinned() and labels.is_pinned()
    val_images, val_labels = next(data.val_batches())
    assert val_images.is_pinned() and val_labels.is_pinned()


@pytest.mark.parametrize("data_format", list(DataFormat))
@pytest.mark.parametrize("decode", list(DaliDecode))
def test_gpu_dali_batches_in_every_format_and_decode_mode_and_validation_once(
    photos, data_format, decode
):
    cfg = photo_cfg(photos, format=data_format, dali_decode=decode)
    data = build_data(cfg, share(16, gpu=0))
    images, labels = next(data.train_epoch(0))
    assert images.device == labels.device == CUDA
    assert images.shape == (16, 224, 224, 3) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and set(labels.tolist()) <= set(range(PHOTOS.classes))
    assert images.float().std() > 10  # pixels, not a blank
    seen = Counter()
    for rank in range(2):  # two ranks' pipelines on the one GPU: 36 images, 18 each
        for _, rank_labels in build_data(
            cfg, share(16, rank=rank, world_size=2, gpu=0)
        ).val_batches():
            seen.update(rank_labels.tolist())
    assert seen == {c: PHOTOS.val_per_class for c in range(PHOTOS.classes)}


def test_gpu_validation_pixels_match_the_torchvision_loader(photos):
    # The CPU pipelines agree within 1 grey level (tests/test_dali_loader.py). On the GPU,
    # nvJPEG (hardware decoder included) upsamples chroma as libjpeg-turbo does
    # (jpeg_fancy_upsampling) and the resize keeps torchvision's sizes, 0.17 grey levels apart
    # on average and at most 1 with DALI's CPU kernels; nvJPEG's own IDCT may add a level. The
    # bounds below allow for that: not yet measured on a GPU.
    count = PHOTOS.classes * PHOTOS.val_per_class
    cfg = photo_cfg(photos, format=DataFormat.folder)
    dali = build_data(cfg, share(count, gpu=0))
    torchvision = build_data(
        dataclasses.replace(cfg, loader=DataLoaderKind.torch, workers=0), share(count)
    )
    (ours, labels), (theirs, their_labels) = (
        next(dali.val_batches()),
        next(torchvision.val_batches()),
    )
    assert labels.cpu().tolist() == their_labels.tolist()
    difference = (ours.cpu().int() - theirs.int()).abs().float()
    measured = {
        "mean": round(difference.mean().item(), 3),
        "max": difference.max().item(),
        "share_over_2": round((difference > 2).float().mean().item(), 5),
    }
    assert measured["mean"] < 0.5 and measured["share_over_2"] < 0.01, measured


def test_a_restored_gpu_pipeline_continues_mid_epoch_exactly(photos):
    cfg = photo_cfg(photos, format=DataFormat.shards)
    data = build_data(cfg, share(16, gpu=0))
    epoch = data.train_epoch(0)
    for _ in range(2):
        next(epoch)
    state = data.state()
    assert state["pipeline"] == "dali-gpu"
    rest = [(x.cpu(), y.cpu()) for x, y in epoch]
    restored = build_data(cfg, share(16, gpu=0), state).train_epoch(0, start_batch=2)
    again = [(x.cpu(), y.cpu()) for x, y in restored]
    assert len(rest) == len(again) == 96 // 16 - 2
    for (x, y), (x2, y2) in zip(rest, again, strict=True):
        assert torch.equal(y, y2) and torch.equal(x, x2)


def test_nccl_with_one_rank(monkeypatch):
    # a torchrun of one process; monkeypatch takes back what distributed() sets
    for name, value in [("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")]:
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "0")
    with distributed(Device.cuda) as dist:
        assert torch.distributed.get_backend() == "nccl" and dist.device == CUDA
        assert all_reduce([1.0, 2.0], dist.device) == [1.0, 2.0]
        gathered = [None]
        torch.distributed.all_gather_object(gathered, {"rank": dist.rank})
    assert gathered == [{"rank": 0}]


def test_a_task_bound_to_one_gpu_takes_cuda_0():
    # srun --gpus-per-task=1: the fourth task of a node sees its GPU alone, as device 0
    launched = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SUBMITIT_EXECUTOR")  # other launchers'
    environ = {
        **{name: value for name, value in os.environ.items() if name not in launched},
        "SLURM_STEP_NUM_TASKS": "4",
        "SLURM_PROCID": "3",
        "SLURM_LOCALID": "3",
        "SLURM_JOB_ID": "7",
        "SLURM_STEP_NODELIST": "gpu01",
        "MASTER_ADDR": "127.0.0.1",
        "CUDA_VISIBLE_DEVICES": first_visible_gpu(os.environ),
    }
    script = (
        "import os, torch;"
        "from bn_repro.schema import Device;"
        "from bn_repro.train.distributed import launch_env, pick_device;"
        "rank = launch_env(os.environ).local_rank;"
        "d = pick_device(Device.auto, rank, torch.cuda.device_count());"
        "torch.cuda.set_device(d); print(d, torch.ones(1, device=d).item())"
    )
    result = subprocess.run(
        [BIN / "python", "-c", script], env=environ, capture_output=True, text=True
    )
    assert result.stdout.split() == ["cuda:0", "1.0"], result.stderr


def train_command(root: Path, run_dir: Path, *overrides: str) -> list:
    return [
        BIN / "bn-repro",
        "train",
        "experiment=bn_x5",
        "data=mini",
        f"data.root={root}",
        "data.num_classes=6",
        "data.workers=2",
        "trainer.eval_every_paper_steps=1",
        "trainer.log_every_paper_steps=1",
        "trainer.checkpoint_every_paper_steps=1",
        "trainer.population_batches=2",
        f"run_dir={run_dir}",
        *overrides,
    ]


def run(command: list) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_a_two_step_mini_run_on_cuda_resumes(prepared_small, tmp_path):
    # data=mini at its batch of 32: an optimizer step is a paper step, 144 images an epoch
    run_dir = tmp_path / "run"
    run(train_command(prepared_small, run_dir, "trainer.device=cuda", "trainer.max_paper_steps=2"))
    saved = load_latest(run_dir)
    assert [state["pipeline"] for state in saved["loader"]] == ["dali-gpu"]
    resumed = run(
        train_command(prepared_small, run_dir, "trainer.device=cuda", "trainer.max_paper_steps=4")
    )
    assert "resumed at optimizer step 2" in resumed.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == 4
    evals = [r for r in read_metrics(run_dir) if r["kind"] == "eval"]
    assert [r["count"] for r in evals] == [30] * len(evals) and len(evals) >= 4
    starts = json.loads((run_dir / "environment.json").read_text())
    assert all(start["device"] != "cpu" for start in starts)


def test_a_run_started_on_the_cpu_resumes_on_the_gpu_by_skipping_ahead(prepared_small, tmp_path):
    run_dir = tmp_path / "run"
    run(train_command(prepared_small, run_dir, "trainer.device=cpu", "trainer.max_paper_steps=2"))
    resumed = run(
        train_command(prepared_small, run_dir, "trainer.device=cuda", "trainer.max_paper_steps=4")
    )
    assert "loader state is dali-cpu's and this run reads with dali-gpu" in resumed.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == 4


def test_deterministic_training_on_cuda_is_refused_without_a_traceback(prepared_small, tmp_path):
    command = train_command(prepared_small, tmp_path / "run", "trainer.deterministic=true")
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 2
    assert "bn-repro train: trainer.deterministic=true on cuda:0" in result.stderr
    assert "Traceback" not in result.stderr


def test_synthetic_batches_are_taken_on_the_gpu_without_a_copy_from_the_host():
    # "the model alone": after the epoch's order reached the GPU, a batch is a slice taken there
    cfg = run_config("bn_x5", "data=synthetic", "data.synthetic.train_size=64").data
    data = SyntheticData(cfg, share(8, gpu=0))
    epoch = data.train_epoch(0)
    next(epoch)
    with profile(activities=[ProfilerActivity.CUDA]) as profiler:
        batches = [images.sum() for images, _ in epoch]
        torch.cuda.synchronize()
    assert len(batches) == 7
    copies = [event.name for event in profiler.events() if "HtoD" in event.name]
    assert copies == []


def test_dali_gpu_batches_are_the_same_whether_or_not_the_host_waits_for_each(photos):
    # DALI's iterator hands out memory of its own: a release not ordered with torch's stream
    # would let the next batch overwrite one still queued for a kernel. Each batch's checksum
    # is queued behind a slow kernel, with and without a wait after each batch.
    cfg = photo_cfg(photos, format=DataFormat.shards)
    square = torch.randn(4096, 4096, device=CUDA)
    product = torch.empty_like(square)

    def checksums(wait: bool) -> list[int]:
        data, sums = build_data(cfg, share(8, gpu=0)), []
        for epoch in range(9):  # 12 batches an epoch: about 100
            for images, labels in data.train_epoch(epoch):
                for _ in range(4):  # time on the stream before the checksum runs
                    torch.mm(square, square, out=product)
                sums.append(images.sum(dtype=torch.int64) * 1000 + labels.sum())
                if wait:
                    torch.cuda.synchronize()
        return [int(s) for s in sums]

    unordered, waited = checksums(wait=False), checksums(wait=True)
    assert len(waited) == 108 and unordered == waited


def test_algorithm_2_never_waits_for_the_host():
    torch.manual_seed(0)
    model = build_model(run_config("bn_x5", "model.aux_heads=true").model, 10, 64).to(CUDA)
    batches = [torch.randn(8, 3, 64, 64, device=CUDA) for _ in range(3)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # raises at any call that waits for the GPU
    try:
        used = recompute_population_stats(model, iter(batches), num_batches=3)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert used == 3
    assert all(bn.num_batches_tracked.item() == 3 for bn in batchnorms(model))


TWO_RANKS_ON_ONE_GPU = """
import os, torch
from torch import nn
from bn_repro.schema import Backend, Device
from bn_repro.train.distributed import average_bn_statistics, distributed

with distributed(Device.cuda, Backend.gloo) as dist:
    bn = nn.BatchNorm2d(3).to(dist.device)
    bn.running_mean.fill_(dist.rank + 1.0)  # 1 and 2: averaged, 1.5
    average_bn_statistics(bn, dist.world_size)
    print(dist.device, bn.running_mean.tolist())
"""


def test_two_ranks_share_one_gpu_over_gloo_and_average_their_bn_statistics(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(TWO_RANKS_ON_ONE_GPU)
    result = run([BIN / "torchrun", "--standalone", "--nproc_per_node=2", script])
    assert result.stdout.split("\n").count("cuda:0 [1.5, 1.5, 1.5]") == 2, result.stdout


@pytest.mark.parametrize("backend", ["gloo", "nccl"])
def test_two_ranks_on_cuda_train_evaluate_checkpoint_and_resume(prepared_small, tmp_path, backend):
    # gloo: two ranks sharing one GPU; NCCL: a GPU each, where the machine has two
    if backend == "nccl" and torch.cuda.device_count() < 2:
        pytest.skip("NCCL with two ranks needs two GPUs (it refuses two ranks on one)")
    run_dir = tmp_path / "run"
    launch = [BIN / "torchrun", "--standalone", "--nproc_per_node=2", "--no-python"]
    two = ["trainer.device=cuda", f"trainer.backend={backend}", "trainer.batch_per_rank=16"]
    two.append("trainer.bn_batch=16")
    run([*launch, *train_command(prepared_small, run_dir, *two, "trainer.max_paper_steps=2")])
    saved = load_latest(run_dir)
    assert saved["progress"]["step"] == 2 and len(saved["loader"]) == 2
    resumed = run(
        [*launch, *train_command(prepared_small, run_dir, *two, "trainer.max_paper_steps=4")]
    )
    assert "resumed at optimizer step 2" in resumed.stderr
    records = read_metrics(run_dir)
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["count"] for r in evals] == [30] * len(evals)  # every image once over the ranks
    assert [r["paper_steps"] for r in evals if r["bn_stats"] == "running"] == [1, 2, 3, 4]
    assert evals[-1]["bn_stats"] == "population"
    steps = [r["step"] for r in records if r["kind"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 4  # each step once, in order
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["world_size"], summary["global_batch"]) == (
        "finished",
        2,
        32,
    )


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_a_compiled_run_crosses_evaluations_a_checkpoint_and_an_epoch_without_recompiling(
    prepared_small, tmp_path, mode
):
    # data=mini's 144 training images are 4 steps of 32 an epoch: 6 steps cross its end, each
    # with an evaluation and a checkpoint; Algorithm 2 and evaluations run the model uncompiled
    run_dir = tmp_path / "run"
    command = train_command(
        prepared_small, run_dir, f"trainer.compile={mode}", "trainer.max_paper_steps=6"
    )
    result = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "TORCH_LOGS": "recompiles"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Recompiling function" not in result.stderr, result.stderr[-3000:]
    records = read_metrics(run_dir)
    (compiled,) = [r for r in records if r["kind"] == "compile"]
    assert compiled["mode"] == mode and compiled["step"] == 1 and compiled["first_step_s"] > 0
    assert max(r["epoch"] for r in records if r["kind"] == "eval") == 1
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


# A graphed step's comparison with the eager one: the smooth sigmoid variant (ReLU and max
# pooling make the ReLU networks' gradients discontinuous: see tests/test_train.py's test of BN
# groups) in fp32 and a small learning rate that ramps every step (warm-up), so that a rate
# captured as a constant, or a captured first SGD step, would part the two at once; 64 images
# in BN groups of 32.
GRAPH_TEST = (
    "experiment=bn_x5_sigmoid",
    "data=synthetic",
    "data.image_size=64",
    "trainer.batch_per_rank=64",
    "trainer.precision=fp32",
    "trainer.probe_images=0",
    "optim.lr_multiplier=0.2",
    "optim.warmup_paper_steps=1000",
)


@pytest.fixture
def one_rank(monkeypatch):
    """A torchrun of one process (NCCL); monkeypatch takes back what distributed() sets."""
    for name, value in [("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")]:
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "0")


def train_steps(trainer, progress, count: int) -> list[torch.Tensor]:
    """`count` of the trainer's steps, as Trainer.step takes them; their losses."""
    losses = []
    for _ in range(count):
        images, labels = next(trainer.stream)
        losses.append(trainer.train_step(images, labels, progress.step))
        progress.step += 1
    return losses


def test_a_graphed_step_trains_as_the_eager_step_does_step_by_step(one_rank, tmp_path):
    steps = GRAPH_WARMUP_STEPS + 6  # the capture, then replays
    losses, states = {}, {}
    for graphed in (False, True):
        cfg = run_config(
            *GRAPH_TEST, f"trainer.cuda_graph={graphed}", f"run_dir={tmp_path}/{graphed}"
        )
        with distributed(Device.cuda) as dist:
            trainer, progress = build_trainer(cfg, dist, stop_signal=[])
            losses[graphed] = [float(loss) for loss in train_steps(trainer, progress, steps)]
            states[graphed] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
            assert (trainer.graphed is not None) == graphed
        if graphed:
            assert trainer.graphed.graph is not None  # captured at step GRAPH_WARMUP_STEPS
    assert len(set(losses[True])) == steps  # each replay's own loss, not the last one's
    # to float rounding (cuDNN's algorithms, atomic adds in some backward kernels)
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    for name, tensor in states[False].items():
        if tensor.is_floating_point():
            torch.testing.assert_close(states[True][name], tensor, rtol=1e-3, atol=1e-5, msg=name)
        else:  # BN's batch counts: every replay counted
            assert torch.equal(states[True][name], tensor), name


def test_a_replayed_step_never_waits_for_the_host(one_rank, tmp_path):
    cfg = run_config(*GRAPH_TEST, "trainer.cuda_graph=true", f"run_dir={tmp_path}")
    with distributed(Device.cuda) as dist:
        trainer, progress = build_trainer(cfg, dist, stop_signal=[])
        train_steps(trainer, progress, GRAPH_WARMUP_STEPS + 1)  # warm-up and capture
        images, labels = next(trainer.stream)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # raises at any call that waits for the GPU
        try:
            loss = trainer.train_step(images, labels, progress.step)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.isfinite(loss)


def test_a_graphed_ddp_run_through_the_gpu_dali_pipeline_trains_as_the_eager_one(
    prepared_small, tmp_path
):
    if torch.cuda.device_count() < 2:  # asked here: collection must not query CUDA
        pytest.skip("NCCL takes one GPU a rank: needs two")
    # two NCCL ranks of 32 images, DALI decoding on the GPU: 16 steps of 64 images (2 paper
    # steps each) capture the step after 11 eager ones, with DDP's all-reduce in the graph
    launch = [BIN / "torchrun", "--standalone", "--nproc_per_node=2", "--no-python"]
    losses = {}
    for graphed in (False, True):
        run_dir = tmp_path / f"graphed_{graphed}"
        overrides = (
            "trainer.device=cuda",
            "trainer.max_paper_steps=32",
            f"trainer.cuda_graph={graphed}",
        )
        overrides += (
            "experiment=bn_x5_sigmoid",
            "trainer.precision=fp32",
            "optim.lr_multiplier=0.2",
        )
        run(
            [
                *launch,
                *train_command(
                    prepared_small, run_dir, *overrides, "trainer.log_every_paper_steps=2"
                ),
            ]
        )
        records = read_metrics(run_dir)
        losses[graphed] = [r["loss"] for r in records if r["kind"] == "train"]
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"
    assert len(losses[True]) == 16 and losses[True] == pytest.approx(losses[False], rel=1e-3)
