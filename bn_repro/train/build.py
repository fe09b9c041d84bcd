"""A run's objects, built from its config: the model, optimizer, data, plan and records, restored
from the newest checkpoint in run_dir where there is one, and the Trainer that drives them
(loop.py). `bn-repro evaluate` and `bench train` build theirs here too."""

import logging
import warnings
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.nn.parallel import DistributedDataParallel

from bn_repro import paper
from bn_repro.data import DataSource, Share, build_data
from bn_repro.data.fixed import fixed_train_batch
from bn_repro.hparams import bn_batch, bn_group, effective_hparams, recipe
from bn_repro.models import build_model
from bn_repro.models.inception import probe_blocks
from bn_repro.schema import ConfigError, DataKind, RunConfig
from bn_repro.train import checkpoint
from bn_repro.train.compute import Compute, fused_optimizer, pick_compute, resolved_switches
from bn_repro.train.distributed import Dist
from bn_repro.train.environment import record_start
from bn_repro.train.loop import Trainer, train_stream
from bn_repro.train.metrics import Records
from bn_repro.train.optim import build_optimizer, load_state
from bn_repro.train.plan import Plan, Progress
from bn_repro.train.probe import InputProbe
from bn_repro.train.schedule import schedule_table
from bn_repro.train.step import GraphedStep

log = logging.getLogger(__name__)

# A resumed run must train the same thing; the trainer's other keys may change between starts.
RESUME_MUST_MATCH = (
    "name",
    "seed",
    "model",
    "optim",
    "data",
    "trainer.batch_per_rank",
    "trainer.bn_batch",
)


def build_trainer(cfg: RunConfig, dist: Dist, stop_signal: list) -> tuple[Trainer, Progress]:
    """Everything a run trains with, and where it stands: restored from the newest checkpoint in
    run_dir if there is one; it stops when a signal arrives in stop_signal. The training
    benchmark drives the same objects."""
    run_dir = Path(cfg.run_dir)
    resolved = OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)
    hp = effective_hparams(cfg, dist.world_size)
    check_global_batch(cfg.trainer.global_batch, hp.global_batch, dist.world_size)
    warn_if_bn_batch_differs(hp.bn_batch)
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
    record_start(run_dir, dist, dist.is_main, resolved_switches(compute, optimizer))
    # a graphed step warms up and is captured on the stream DDP was built on (step.py)
    graph_stream = torch.cuda.Stream(compute.device) if cfg.trainer.cuda_graph else None
    ddp = wrap_ddp(model, compute.device, graph_stream)
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
        description=describe_run(cfg, compute),
        stream=train_stream(data, progress),
        stop_signal=stop_signal,
        compile_mode=cfg.trainer.compile,
        probe=build_probe(cfg, model, data, compute) if dist.is_main else None,
        graphed=GraphedStep(forward, optimizer, compute, graph_stream) if graph_stream else None,
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
    model = build_model(cfg.model, cfg.data.num_classes, cfg.data.image_size, bn_group(cfg))
    return model.to(compute.device, memory_format=compute.memory_format)


def build_run_data(
    cfg: RunConfig, dist: Dist, compute: Compute, loader_state: dict | None
) -> DataSource:
    """This rank's training and validation data for the run, from a loader state (a checkpoint's)
    when given one."""
    share = Share(
        rank=dist.rank,
        world_size=dist.world_size,
        batch=cfg.trainer.batch_per_rank,
        val_batch=cfg.trainer.eval_batch_per_rank,
        seed=cfg.seed,
        device=compute.device,
    )
    return build_data(cfg.data, share, loader_state)


def wrap_ddp(
    model: torch.nn.Module, device: torch.device, stream: torch.cuda.Stream | None = None
) -> DistributedDataParallel:
    # Each rank keeps its own BN statistics, averaged before evaluations and checkpoints
    # (loop.evaluate). Newer torch warns that broadcast_buffers is deprecated but advises keeping it
    # for rank-local buffers until its replacement can skip the sync at construction. A step to be
    # captured as a CUDA graph needs DDP built on the capture's side stream (torch's notes on CUDA
    # graphs): `stream`, None for the current one.
    with warnings.catch_warnings(), torch.cuda.stream(stream):
        warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated", FutureWarning)
        return DistributedDataParallel(
            model,
            device_ids=[device] if device.type == "cuda" else None,
            broadcast_buffers=False,
        )


def describe_run(cfg: RunConfig, compute: Compute) -> dict:
    """What the run trains, on what and how: the summary's fields, which the report groups runs
    by (it reads no config)."""
    # a synthetic set is made of these, drawn from its own seed (data/synthetic.py)
    made = {"image_size": cfg.data.image_size, "num_classes": cfg.data.num_classes}
    synthetic = vars(cfg.data.synthetic) | made if cfg.data.kind is DataKind.synthetic else None
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
        "synthetic": synthetic,
        "bn_batch": bn_batch(cfg),  # the images BN normalizes over; None without BN
        "precision": "fp32" if compute.autocast_dtype is None else "bf16",  # as it trained
    }


def warn_if_bn_batch_differs(bn_batch: int | None) -> None:
    if bn_batch not in (None, paper.BATCH_SIZE):
        log.warning(
            "BN normalizes over %d images (trainer.bn_batch), the paper over %d (Sec. 4.2), so"
            " this network's BN differs from the paper's; the report marks the run",
            bn_batch,
            paper.BATCH_SIZE,
        )


def check_global_batch(wanted: int | None, global_batch: int, world_size: int) -> None:
    """A config that fixes the update (trainer.global_batch) starts on the ranks that give it:
    on others the learning rate would scale to another update."""
    if wanted is None or wanted == global_batch:
        return
    per_rank = global_batch // world_size
    ranks = f"{world_size} rank{'s' * (world_size > 1)} of {per_rank} images"
    fits = f" or trainer.batch_per_rank={wanted // world_size}," if wanted % world_size == 0 else ""
    raise ConfigError(
        f"trainer.global_batch={wanted}, and {ranks} give {global_batch}: start it on"
        f" {wanted // per_rank} rank(s) (hydra.launcher.gpus_per_node, sbatch --gpus-per-node),"
        f"{fits} or trainer.global_batch=null to train the update these ranks give"
    )


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
    if OmegaConf.select(saved, "trainer.bn_batch") is None:
        # saved before the key, or null: BN normalized over each rank's whole batch
        saved.trainer.bn_batch = saved.trainer.batch_per_rank
    if OmegaConf.select(current, "trainer.bn_batch") is None:
        current.trainer.bn_batch = current.trainer.batch_per_rank
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
    load_state(optimizer, payload["optimizer"])
    rng = payload["rng"][dist.rank % len(payload["rng"])]
    torch.set_rng_state(rng[0])
    if dist.device.type == "cuda" and len(rng) > 1:
        torch.cuda.set_rng_state(rng[1], dist.device)
    progress = Progress(**payload["progress"])
    log.info("resumed at optimizer step %d (epoch %d)", progress.step, progress.epoch)
    # a loader's state belongs to its rank: with another world size the loader starts over
    states = payload["loader"]
    return progress, states[dist.rank] if len(states) == dist.world_size else None
