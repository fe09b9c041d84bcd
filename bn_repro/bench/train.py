"""`bn-repro bench train`: training images/s per GPU of the trainer's own step, built by
build_trainer and stepped by bench/stepper.py with the objects and code a run trains with, over
a fixed number of steps after a warm-up, with the share of time spent waiting for data, peak
GPU memory, the host synchronizations inside a step and the model FLOP utilization (MFU)."""

import dataclasses
import math
import os
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bn_repro.bench.device import dense_bf16_peak
from bn_repro.bench.stepper import Stepper
from bn_repro.data.prepared import read_manifest
from bn_repro.models import build_model
from bn_repro.models.summary import training_multiply_adds
from bn_repro.schema import RunConfig
from bn_repro.train.build import build_trainer
from bn_repro.train.compute import resolved_switches
from bn_repro.train.distributed import distributed_for
from bn_repro.train.loop import Trainer
from bn_repro.train.plan import Progress

IMAGENET_CLASSES = 1000  # synthetic data gets ImageNet's classifier, as the paper's networks
SYNTHETIC_BATCHES = 4  # distinct global batches of synthetic images, kept on the GPU
# Training FLOPs per image: a forward pass and two backward ones (to the inputs and to the
# weights), each as many multiply-adds, of 2 FLOPs each.
PASSES, FLOPS_PER_MULTIPLY_ADD = 3, 2
SYNC_WARNING = "called a synchronizing CUDA operation"


@dataclass(frozen=True)
class TrainBench:
    warmup: int  # steps before the clock starts: cuDNN's autotuning, compilation, loader start
    steps: int  # steps timed
    profile_steps: int  # steps under the torch profiler after the timed ones; 0: none
    profile_out: Path  # the trace (.trace.json.gz) and table (.profile.txt) go beside this
    # (processes, folder): so many benchmarks sharing the GPU start their timed steps together,
    # meeting in the folder (the table's processes sharing one GPU); None: alone
    start_together: tuple[int, Path] | None = None


def overrides(
    experiment: str,
    data: str,
    root: Path | None,
    size: int,
    batch: tuple[int, int],
    world_size: int,
) -> list[str]:
    """The config of the benchmark: the experiment at image size `size` and batch = (images per
    rank, BN batch), on synthetic images or the prepared set at root read by the DALI or
    torchvision loader."""
    global_batch = batch[0] * world_size
    common = [
        f"experiment={experiment}",
        f"trainer.batch_per_rank={batch[0]}",
        f"trainer.bn_batch={batch[1]}",
        f"data.image_size={size}",
        "trainer.probe_images=0",  # it never evaluates: no input-distribution probe to build
    ]
    if data == "synthetic":
        return common + [
            "data=synthetic",
            f"data.num_classes={IMAGENET_CLASSES}",
            f"data.synthetic.train_size={SYNTHETIC_BATCHES * global_batch}",
            "data.synthetic.val_size=1",  # never evaluated
        ]
    classes = len(read_manifest(root)["classes"])
    return common + [
        "data=imagenet",
        f"data.root={root}",
        f"data.loader={data}",
        f"data.num_classes={classes}",
    ]


def training_flops(cfg: RunConfig) -> int:
    """Training FLOPs per image of the run's network at its image size."""
    model = build_model(cfg.model, cfg.data.num_classes, cfg.data.image_size)
    return PASSES * FLOPS_PER_MULTIPLY_ADD * training_multiply_adds(model, cfg.data.image_size)


def run(cfg: RunConfig, bench: TrainBench) -> dict | None:
    """The benchmark's results (None on ranks other than 0). It trains in a temporary run_dir."""
    flops = training_flops(cfg)
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = dataclasses.replace(cfg, run_dir=run_dir)
        with distributed_for(cfg.trainer) as dist:
            trainer, progress = build_trainer(cfg, dist, stop_signal=[])
            measured = _measure(trainer, progress, bench)
    if not dist.is_main:
        return None
    device = measured.pop("device")
    per_gpu = measured.pop("images_per_s") / dist.world_size
    peak, peak_note = dense_bf16_peak(device)
    notes = {"mfu": peak_note}
    if measured["peak_memory_gib"] is None:
        notes["memory"] = "measured on CUDA only"
    if measured["host_syncs_in_a_step"] is None:
        notes["host_syncs_in_a_step"] = "checked on CUDA only (torch.cuda.set_sync_debug_mode)"
    return {
        "device": device,
        "world_size": dist.world_size,
        "images_per_s_per_gpu": round(per_gpu, 1),
        "step_ms": round(1000 * cfg.trainer.batch_per_rank / per_gpu, 2),
        "training_flops_per_image": flops,
        "achieved_tflops": round(per_gpu * flops / 1e12, 3),
        "peak_bf16_dense_tflops": peak,
        "mfu": round(per_gpu * flops / (peak * 1e12), 4) if peak else None,
        **measured,
        "notes": notes,
    }


def _measure(trainer: Trainer, progress: Progress, bench: TrainBench) -> dict:
    device = trainer.compute.device
    cuda = device.type == "cuda"
    stepper = Stepper(trainer, progress)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    stepper.advance(bench.warmup)
    host_syncs = _host_syncs(stepper) if cuda else None
    if bench.start_together is not None:
        if cuda:
            torch.cuda.synchronize(device)  # warmed up before the others' clocks start
        meet(*bench.start_together)
    started = time.time()
    window = stepper.time(bench.steps)
    window_unix = [started, time.time()]  # to add up processes that share the GPU
    measured = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "images_per_s": window["images_per_s"],
        "data_wait": round(window["data_wait"], 4),
        "loss": window["loss"] if math.isfinite(window["loss"]) else None,
        "host_syncs_in_a_step": host_syncs,
        "window_unix": window_unix,
        **_memory(device),
        "resolved": resolved_switches(trainer.compute, trainer.optimizer),
    }
    if bench.profile_steps:
        measured["profile"] = _profile(trainer, stepper, bench, cuda)
    return measured


def meet(processes: int, folder: Path, timeout_s: float = 3600) -> None:
    """Wait until `processes` benchmarks (this one among them) have come here: each leaves a
    file in folder, named apart by process and call. An hour at most: every process may compile
    first."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{os.getpid()}-{uuid.uuid4().hex}.ready").touch()
    deadline = time.monotonic() + timeout_s
    while len(list(folder.glob("*.ready"))) < processes:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{processes} benchmarks were to meet in {folder} within an hour")
        time.sleep(0.05)


def _host_syncs(stepper: Stepper) -> list[str]:
    """Where one step, data included, waits for the GPU: the Python lines of the synchronizing
    CUDA calls torch reports (it does not see every kind; torch.distributed's, for one). A step
    that falls on trainer.control_every_steps has the ranks' agreement too, as in a run."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            stepper.advance(1)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [f"{w.filename}:{w.lineno}" for w in caught if SYNC_WARNING in str(w.message)]


def _memory(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"peak_memory_gib": None, "peak_reserved_gib": None, "device_memory_used_gib": None}
    free, total = torch.cuda.mem_get_info(device)
    return {
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2),  # tensors
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved(device) / 2**30, 2),  # cache
        "device_memory_used_gib": round((total - free) / 2**30, 2),  # all, DALI's pools too
    }


def _profile(trainer: Trainer, stepper: Stepper, bench: TrainBench, cuda: bool) -> dict:
    """A torch profiler trace (chrome://tracing, Perfetto) and table of a few steps, after the
    timed ones so as not to slow them."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as profiler:
        stepper.advance(bench.profile_steps)
        if cuda:
            torch.cuda.synchronize(trainer.compute.device)
    trace = bench.profile_out.with_suffix(".trace.json.gz")
    table = bench.profile_out.with_suffix(".profile.txt")
    if trainer.dist.is_main:
        trace.parent.mkdir(parents=True, exist_ok=True)
        profiler.export_chrome_trace(str(trace))
        sort = "self_device_time_total" if cuda else "self_cpu_time_total"
        table.write_text(profiler.key_averages().table(sort_by=sort, row_limit=40) + "\n")
    return {"steps": bench.profile_steps, "trace": str(trace), "table": str(table)}
