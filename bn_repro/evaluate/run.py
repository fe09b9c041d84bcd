"""`bn-repro evaluate`: trained runs evaluated on their own, as Fig. 4 does: a checkpoint's
weights (the newest, the best or a named one), BN's running averages or Algorithm 2's population
statistics recomputed as the trainer's final evaluation does, 1 or 144 crops, one run or an
ensemble of several. Every validation image counts once over the ranks, with the launchers of
training (one process, torchrun, srun). Records go to each run's evaluations.jsonl (evaluations.py);
nothing else of a run is written."""

import logging
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from bn_repro.data import DataSource
from bn_repro.data.multicrop import scales
from bn_repro.evaluate import evaluations
from bn_repro.evaluate.members import (
    EvaluateError,
    Member,
    Settings,
    check_same_data,
    load_member,
)
from bn_repro.evaluate.predict import ensemble, multi_crop, single_crop
from bn_repro.models.population_stats import batchnorms
from bn_repro.schema import RunConfig
from bn_repro.train.build import build_run_data, build_run_model
from bn_repro.train.compute import Compute, pick_compute
from bn_repro.train.distributed import Dist, distributed_for
from bn_repro.train.evaluation import Tally, population_bn
from bn_repro.train.loop import train_stream

log = logging.getLogger(__name__)

# Images per multicrop batch: the run's evaluation batch over this, so that a forward pass of
# their crops (up to 126 distinct of the 144) is a few times the single-crop one.
MULTICROP_BATCH_DIVISOR = 32
# Crops in one forward pass at several crops: at 224 pixels about 2 GB of bf16 activations at
# the first convolution's output, whatever --batch is.
CROPS_PER_PASS = 1024


@dataclass(frozen=True)
class Options:
    checkpoint: str = "latest"  # latest | best | a checkpoint file
    bn_stats: str = "population"  # population (Algorithm 2) | running
    population_batches: int | None = None  # per rank; None: each run's trainer.population_batches
    crops: tuple[int, ...] = (1,)
    batch: int | None = None  # images per rank and batch; None: from the run's evaluation batch
    crops_per_pass: int = CROPS_PER_PASS  # at most, in one forward pass at several crops
    settings: Settings = field(default_factory=Settings)


@dataclass(frozen=True)
class Networks:
    """What a pass over the validation set runs: the networks, on the same images."""

    models: list[nn.Module]
    val: DataSource
    compute: Compute
    crop_size: int
    multicrop_batch: int  # images per rank and batch at 144 crops
    crops_per_pass: int  # at most, in one forward pass


def evaluate(run_dirs: list[Path], options: Options) -> list[dict]:
    """Evaluates the runs (an ensemble when there are several) and appends the records to each
    run's evaluations.jsonl; the records on rank 0, [] on the others."""
    if len({run_dir.resolve() for run_dir in run_dirs}) < len(run_dirs):
        raise EvaluateError(f"a run is given twice in {' '.join(map(str, run_dirs))}")
    members = [load_member(run_dir, options.checkpoint, options.settings) for run_dir in run_dirs]
    check_same_data(members)
    cfg = _eval_cfg(members[0].cfg, options)
    with distributed_for(cfg.trainer) as dist:
        _setup_logging(dist.rank)
        compute = pick_compute(cfg, dist)
        models = [_model(member, compute) for member in members]
        with ExitStack() as stack:
            stats = [
                stack.enter_context(_bn_statistics(m, model, options, dist, compute))
                for m, model in zip(members, models, strict=True)
            ]
            multicrop_batch = options.batch or max(
                1, cfg.trainer.eval_batch_per_rank // MULTICROP_BATCH_DIVISOR
            )
            val = build_run_data(cfg, dist, compute, None)
            networks = Networks(
                models, val, compute, cfg.data.image_size, multicrop_batch, options.crops_per_pass
            )
            described = [m.describe() | s for m, s in zip(members, stats, strict=True)]
            common = _common(options, dist, compute, cfg)
            written = [
                r for crops in options.crops for r in _pass(networks, crops, described, common)
            ]
    if dist.is_main:
        for member in members:
            run = str(member.run_dir.resolve())
            evaluations.append(member.run_dir, [r for r in written if _has(r, run)])
        return written
    return []


def _model(member: Member, compute: Compute) -> nn.Module:
    model = build_run_model(member.cfg, compute)
    model.load_state_dict(member.weights)
    return model


@contextmanager
def _bn_statistics(
    member: Member, model: nn.Module, options: Options, dist: Dist, compute: Compute
) -> Iterator[dict]:
    """Within the block the model holds the BN statistics asked for; what they are, for the
    record. Algorithm 2's batches are the training batches that follow the checkpoint's step,
    as the trainer's final evaluation takes them (with as many ranks: each its loader state)."""
    if not batchnorms(model):
        yield {"bn_stats": "none"}
        return
    if options.bn_stats == "running":
        yield {"bn_stats": "running"}
        return
    states = member.loader_states
    if len(states) != dist.world_size:
        log.info(
            "%s trained on %d ranks, evaluated on %d: Algorithm 2's batches are drawn afresh",
            member.run_dir,
            len(states),
            dist.world_size,
        )
    state = states[dist.rank] if len(states) == dist.world_size else None
    data = build_run_data(member.cfg, dist, compute, state)
    progress = replace(member.progress)  # the stream counts in its own copy
    batches = options.population_batches or member.cfg.trainer.population_batches
    with population_bn(model, train_stream(data, progress), batches, compute, dist.world_size) as n:
        yield {"bn_stats": "population", "population_batches": n}


def _eval_cfg(cfg: RunConfig, options: Options) -> RunConfig:
    if options.batch is None:
        return cfg
    return replace(cfg, trainer=replace(cfg.trainer, eval_batch_per_rank=options.batch))


def _pass(networks: Networks, crops: int, described: list[dict], common: dict) -> list[dict]:
    """One pass over the validation set at `crops` crops: a record per member and, for several,
    one for the ensemble."""
    start = time.perf_counter()
    device = networks.compute.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    several = len(networks.models) > 1
    tallies = [Tally(networks.compute.device) for _ in range(len(networks.models) + several)]
    for scores, labels in _predictions(networks, crops):
        for tally, score in zip(
            tallies, [*scores, ensemble(scores)] if several else scores, strict=True
        ):
            tally.add(score, labels)
    counts = [tally.total(networks.val.val_size) for tally in tallies]
    seconds = time.perf_counter() - start
    method = {
        "crops": crops,
        **({"scales": list(scales(networks.crop_size, crops))} if crops > 1 else {}),
        "seconds": round(seconds, 3),
        # images x crops x networks per second, over all ranks
        "crops_per_s": round(counts[0].count * crops * len(networks.models) / seconds, 1),
        "crops_per_pass": networks.crops_per_pass if crops > 1 else None,
        "peak_memory_gib": _peak_memory_gib(device),
    }
    groups = [[d] for d in described] + ([described] if several else [])
    written = [
        common | method | {"members": group} | c.fields()
        for group, c in zip(groups, counts, strict=True)
    ]
    for record in written:
        log.info(
            "%s at %d crop(s): top-1 %.4f  top-5 %.4f  (%d images, %.0f crops/s)",
            " + ".join(m["name"] for m in record["members"]),
            crops,
            record["top1"],
            record["top5"],
            record["count"],
            record["crops_per_s"],
        )
    return written


def _peak_memory_gib(device: torch.device) -> float | None:
    """This rank's peak of tensor memory on its GPU during the pass; None on the CPU."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def _predictions(networks: Networks, crops: int) -> Iterator[tuple[list, object]]:
    """Each network's scores for every batch of this rank's validation images, and the labels."""
    models, compute = networks.models, networks.compute
    for model in models:
        model.eval()
    if crops == 1:
        for batch in networks.val.val_batches():
            yield single_crop(models, batch, compute)
        return
    for batch in networks.val.multicrop_batches(networks.multicrop_batch, crops):
        yield multi_crop(models, batch, compute, networks.crop_size, networks.crops_per_pass)


def _common(options: Options, dist: Dist, compute: Compute, cfg: RunConfig) -> dict:
    return {
        "kind": "evaluation",
        "id": uuid.uuid4().hex,  # one for the records of one evaluation: the report's key
        "checkpoint": options.checkpoint,  # as asked; each member names its file
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "bn_stats": options.bn_stats,
        "crop_size": cfg.data.image_size,
        "eval_batch": cfg.trainer.eval_batch_per_rank,  # images per rank, at 1 crop
        "data": cfg.data.root or cfg.data.kind.value,
        "loader": cfg.data.loader.value,
        "world_size": dist.world_size,
        "device": compute.device.type,
    }


def _has(record: dict, run: str) -> bool:
    return any(member["run"] == run for member in record["members"])


def _setup_logging(rank: int) -> None:
    """Rank 0 logs progress to stderr, other ranks only their warnings; no file is written."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s [rank {rank}] %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
