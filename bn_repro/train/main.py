"""`bn-repro train`: builds a run's objects and hands them to the loop (loop.py)."""

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel

from bn_repro import paper
from bn_repro.compose import CONFIG_DIR, register, to_object, validate
from bn_repro.data import DataSource, build_data
from bn_repro.data.fixed import fixed_train_batch
from bn_repro.errors import UserError, explain_os_error
from bn_repro.hparams import effective_hparams, recipe
from bn_repro.models import build_model
from bn_repro.models.inception import probe_blocks
from bn_repro.schema import ConfigError, Norm, Precision, RunConfig
from bn_repro.train import checkpoint, lock
from bn_repro.train.distributed import Dist, distributed
from bn_repro.train.environment import record_start
from bn_repro.train.loop import Compute, Plan, Progress, Trainer, stop_on_signals
from bn_repro.train.optim import build_optimizer
from bn_repro.train.probe import InputProbe
from bn_repro.train.records import Records, setup_logging
from bn_repro.train.requeue import INTERRUPTED_EXIT_CODE, ask_to_be_requeued, exit_stopped
from bn_repro.train.schedule import schedule_table

log = logging.getLogger(__name__)

# A resumed run must train the same thing; the trainer's other keys may change between starts.
RESUME_MUST_MATCH = ("name", "seed", "model", "optim", "data", "trainer.batch_per_rank")


def train(cfg: RunConfig, stop_signal: list) -> dict:
    """Train one run to its end, resuming from run_dir if it holds checkpoints, or until a signal
    arrives in stop_signal (stop_on_signals fills it); the summary."""
    run_dir = Path(cfg.run_dir)
    timeout = timedelta(minutes=cfg.trainer.collective_timeout_minutes)
    with distributed(cfg.trainer.device, timeout) as dist, owning(run_dir, dist):
        setup_logging(run_dir, dist.rank)
        trainer, progress = build_trainer(cfg, dist, stop_signal)
        log.info(
            "training %s for %s paper steps in %s",
            cfg.name,
            f"{trainer.plan.max_paper_steps:,.0f}",
            run_dir,
        )
        status = trainer.fit(progress)
        final = trainer.finish(progress) if status == "finished" else None
        summary = trainer.summary(progress, status, final)
        if status != "diverged":  # a diverged run already wrote its summary
            trainer.records.write_file("summary.json", summary)
        trainer.records.close()
        log.info("%s: %s", run_dir, status)
        if status == "stopped":
            log.info("stopped on Ctrl-C with a checkpoint: the same command resumes the run")
    return summary


@contextmanager
def owning(run_dir: Path, dist: Dist) -> Iterator[None]:
    """Rank 0 takes run_dir for this run until it ends (lock.py), before anything is written
    there; every rank stops with rank 0's reason if it cannot: another training owns it, or the
    path cannot be written."""
    held, refusal = None, None
    if dist.is_main:
        try:
            held = lock.acquire(run_dir)
        except (UserError, OSError) as error:
            refusal = error
    shared = [refusal]
    try:
        torch.distributed.broadcast_object_list(shared, src=0)
        if shared[0] is not None:
            raise shared[0]
        yield
    finally:
        if held is not None:
            held.release()


def build_trainer(cfg: RunConfig, dist: Dist, stop_signal: list) -> tuple[Trainer, Progress]:
    """Everything a run trains with, and where it stands: restored from the newest checkpoint in
    run_dir if there is one; it stops when a signal arrives in stop_signal. The training
    benchmark drives the same objects."""
    run_dir = Path(cfg.run_dir)
    resolved = OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)
    hp = effective_hparams(cfg, dist.world_size)
    warn_if_bn_batch_differs(cfg.trainer.batch_per_rank, cfg.model.norm)
    compute = pick_compute(cfg, dist)
    model = build_run_model(cfg, compute)
    optimizer = build_optimizer(model, hp, fused=fused_optimizer(cfg, dist))
    progress, loader_state = resume(run_dir, resolved, hp.global_batch, model, optimizer, dist)
    data = build_run_data(cfg, dist, compute, loader_state)
    if progress.step == 0:
        torch.manual_seed(cfg.seed + 1 + dist.rank)  # dropout draws differ between ranks
    records = Records(run_dir, progress.step, dist.is_main)
    plan = make_plan(cfg, hp.global_batch)
    records.write_file("config.json", resolved)
    records.write_file("effective_hparams.json", vars(hp))
    records.write_file("schedule.json", schedule_table(hp, plan.max_paper_steps))
    record_start(run_dir, dist, enabled=dist.is_main)
    ddp = wrap_ddp(model, compute.device)
    forward = torch.compile(ddp, mode=cfg.trainer.compile) if cfg.trainer.compile else ddp
    trainer = Trainer(
        model,
        forward,
        optimizer,
        data,
        hp,
        plan,
        compute,
        dist,
        records,
        run_dir,
        checkpoint_extra={"config": resolved, "global_batch": hp.global_batch},
        identity=identity(cfg),
        stop_signal=stop_signal,
        probe=build_probe(cfg, model, data, compute) if dist.is_main else None,
    )
    return trainer, progress


def build_probe(cfg: RunConfig, model, data, compute: Compute) -> InputProbe | None:
    """The input distributions the trainer records at every evaluation: over a fixed draw of
    trainer.probe_images training images (seeded by the run's seed), at channel
    trainer.probe_channel of each probe block; None when probe_images is 0."""
    if not cfg.trainer.probe_images:
        return None
    batch = fixed_train_batch(cfg.data, data, cfg.seed, cfg.trainer.probe_images)
    images = compute.batch(*batch)[0]
    return InputProbe(probe_blocks(model), images, cfg.trainer.probe_channel, compute.autocast)


def build_run_model(cfg: RunConfig, compute: Compute) -> torch.nn.Module:
    """The run's network, initialized from its seed (the same weights on every rank), on the
    device in the step's memory format."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.data.num_classes, cfg.data.image_size)
    return model.to(compute.device, memory_format=compute.memory_format)


def build_run_data(
    cfg: RunConfig, dist: Dist, compute: Compute, loader_state: dict | None
) -> DataSource:
    """This rank's training and validation data for the run, from a loader state (a checkpoint's)
    when given one."""
    cuda_device = compute.device.index if compute.device.type == "cuda" else None
    return build_data(
        cfg.data,
        cfg.seed,
        dist.rank,
        dist.world_size,
        cfg.trainer.batch_per_rank,
        cuda_device,
        loader_state,
        val_batch=cfg.trainer.eval_batch_per_rank,
    )


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> DistributedDataParallel:
    # Each rank keeps its own BN statistics, averaged before evaluations and checkpoints
    # (loop.evaluate). torch 2.15 deprecates broadcast_buffers but advises keeping it for
    # rank-local buffers until its replacement can skip the sync at construction.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated", FutureWarning)
        return DistributedDataParallel(
            model,
            device_ids=[device] if device.type == "cuda" else None,
            broadcast_buffers=False,
        )


def identity(cfg: RunConfig) -> dict:
    return {
        "name": cfg.name,
        "seed": cfg.seed,
        "lr_multiplier": cfg.optim.lr_multiplier,
        "norm": cfg.model.norm.value,
        "activation": cfg.model.activation.value,
        "recipe": recipe(cfg),
        "batch_per_rank": cfg.trainer.batch_per_rank,
        "data": cfg.data.root or cfg.data.kind.value,
        "num_classes": cfg.data.num_classes,
    }


def warn_if_bn_batch_differs(batch_per_rank: int, norm: Norm) -> None:
    if batch_per_rank != paper.BATCH_SIZE and norm is Norm.batchnorm:
        log.warning(
            "trainer.batch_per_rank=%d: BN normalizes over %d images per rank, the paper over %d"
            " (Sec. 4.2), so this network's BN differs from the paper's; the report marks the run",
            batch_per_rank,
            batch_per_rank,
            paper.BATCH_SIZE,
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


def fused_optimizer(cfg: RunConfig, dist: Dist) -> bool:
    fused = cfg.trainer.fused_optimizer
    return dist.device.type == "cuda" if fused is None else fused


def make_plan(cfg: RunConfig, global_batch: int) -> Plan:
    trainer = cfg.trainer
    return Plan(
        global_batch=global_batch,
        max_paper_steps=trainer.max_paper_steps,
        eval_every=trainer.eval_every_paper_steps,
        log_every=trainer.log_every_paper_steps,
        checkpoint_every=trainer.checkpoint_every_paper_steps,
        checkpoint_every_minutes=trainer.checkpoint_every_minutes,
        keep_checkpoints=trainer.keep_checkpoints,
        control_every_steps=trainer.control_every_steps,
        target_top1=cfg.data.target_top1,
        population_batches=trainer.population_batches,
    )


def resume(
    run_dir: Path, resolved: dict, global_batch: int, model, optimizer, dist: Dist
) -> tuple[Progress, dict | None]:
    """Restore the latest checkpoint of run_dir into the model and optimizer, if there is one;
    where the run stands, and this rank's loader state."""
    payload = checkpoint.load_agreed(run_dir)
    if payload is None:
        return Progress(), None
    saved, current = OmegaConf.create(payload["config"]), OmegaConf.create(resolved)
    differing = [
        key
        for key in RESUME_MUST_MATCH
        if OmegaConf.select(saved, key) != OmegaConf.select(current, key)
    ]
    if differing:
        raise ConfigError(
            f"{run_dir} holds a run with other settings of {differing}: resume it with the same"
            " overrides, or give this run its own run_dir=PATH"
        )
    if payload.get("global_batch", global_batch) != global_batch:
        # its steps are counted in global batches: another size would misplace every record
        raise ConfigError(
            f"{run_dir} trained with a global batch of {payload['global_batch']} images, this"
            f" start has {global_batch} ({dist.world_size} ranks x"
            f" {global_batch // dist.world_size}): resume it on as many ranks, or give this run"
            " its own run_dir=PATH"
        )
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    rng = payload["rng"][dist.rank % len(payload["rng"])]
    torch.set_rng_state(rng[0])
    if dist.device.type == "cuda" and len(rng) > 1:
        torch.cuda.set_rng_state(rng[1], dist.device)
    progress = Progress(**payload["progress"])
    log.info("resumed at optimizer step %d (epoch %d)", progress.step, progress.epoch)
    # a loader's state belongs to its rank: with another world size the loader starts over
    states = payload["loader"]
    return progress, states[dist.rank] if len(states) == dist.world_size else None


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> None:
    register()  # a submitit job unpickles this function in a fresh process
    stops: list[int] = []
    try:
        validate(cfg)
        with stop_on_signals(stops):
            summary = train(to_object(cfg), stops)
    except (UserError, OSError) as error:
        if isinstance(error, OSError) and error.filename is None:
            raise  # no path the user could fix: the traceback says where it came from
        message = explain_os_error(error) if isinstance(error, OSError) else error
        print(f"bn-repro train: {message}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            return  # this job fails; the sweep's other jobs go on
        sys.exit(2)
    except KeyboardInterrupt:  # a second Ctrl-C: at once, no checkpoint
        print(
            "bn-repro train: interrupted; the same command resumes from the last checkpoint",
            file=sys.stderr,
        )
        sys.exit(INTERRUPTED_EXIT_CODE)
    if summary["status"] == "preempted":
        ask_to_be_requeued(stops)
    elif summary["status"] == "stopped":
        exit_stopped()
