"""The numbers a run actually uses, from the paper's values and the config's multipliers."""

import dataclasses
import math
from dataclasses import dataclass

from bn_repro import paper
from bn_repro.schema import LrScaling, Norm, RunConfig


@dataclass(frozen=True)
class EffectiveHparams:
    lr: float  # initial learning rate per optimizer step of global_batch images
    lr_scale: float  # how much lr differs from the paper's, for global_batch vs paper.BATCH_SIZE
    batch_per_rank: int  # images each rank steps with
    bn_batch: int | None  # images BN normalizes over, a group of batch_per_rank; None: no BN
    global_batch: int  # images per optimizer step over all ranks (the update): x world size
    momentum: float
    weight_decay: float  # L2 weight, on convolution and linear weights only
    lr_decay_factor: float
    lr_decay_every_paper_steps: float  # one paper step = paper.BATCH_SIZE images
    lr_decay_staircase: bool
    warmup_paper_steps: float
    dropout: float  # probability before the classifier; 0 when there is none
    lrn: bool
    norm: str
    activation: str
    photometric: str
    shuffle: str


def lr_scale(rule: LrScaling, global_batch: int) -> float:
    ratio = global_batch / paper.BATCH_SIZE
    return {LrScaling.none: 1.0, LrScaling.linear: ratio, LrScaling.sqrt: math.sqrt(ratio)}[rule]


def effective_hparams(cfg: RunConfig, world_size: int = 1) -> EffectiveHparams:
    """The numbers a run of world_size ranks uses."""
    optim = cfg.optim
    global_batch = cfg.trainer.batch_per_rank * world_size
    scale = lr_scale(optim.lr_scaling, global_batch)
    return EffectiveHparams(
        lr=optim.base_lr * optim.lr_multiplier * scale,
        lr_scale=scale,
        batch_per_rank=cfg.trainer.batch_per_rank,
        bn_batch=bn_batch(cfg),
        global_batch=global_batch,
        momentum=optim.momentum,
        weight_decay=optim.weight_decay / optim.l2_divisor,
        lr_decay_factor=optim.lr_decay_factor,
        lr_decay_every_paper_steps=optim.lr_decay_every_paper_steps / optim.decay_speedup,
        lr_decay_staircase=optim.lr_decay_staircase,
        warmup_paper_steps=optim.warmup_paper_steps,
        dropout=cfg.model.dropout,
        lrn=cfg.model.lrn,
        norm=cfg.model.norm.value,
        activation=cfg.model.activation.value,
        photometric=cfg.data.photometric.value,
        shuffle=cfg.data.shuffle.value,
    )


def bn_batch(cfg: RunConfig) -> int | None:
    """The images BN normalizes over: trainer.bn_batch, or a rank's whole batch where it is
    null; None in a network without BN."""
    if cfg.model.norm is not Norm.batchnorm:
        return None
    return cfg.trainer.bn_batch or cfg.trainer.batch_per_rank


def bn_group(cfg: RunConfig) -> int | None:
    """The BN group a rank's batch is cut into (ghost BN), or None where BN normalizes over the
    whole batch (plain BN layers, the network as before groups existed)."""
    group = bn_batch(cfg)
    return None if group in (None, cfg.trainer.batch_per_rank) else group


def sec_4_2_1_changes(cfg: RunConfig) -> list[str]:
    """Which of Sec. 4.2.1's changes (all but the learning rate) the config makes."""
    bundle = paper.SEC_4_2_1
    made = {
        "dropout": cfg.model.dropout == bundle.dropout,
        "lrn": cfg.model.lrn == bundle.lrn,
        "l2_divisor": cfg.optim.l2_divisor == bundle.l2_divisor,
        "decay_speedup": cfg.optim.decay_speedup == bundle.decay_speedup,
        "shuffle": cfg.data.shuffle.value == bundle.shuffle,
        "photometric": cfg.data.photometric.value == bundle.photometric,
    }
    return [name for name, done in made.items() if done]


def recipe(cfg: RunConfig) -> dict:
    """What a run trains, in the paper's terms: runs that differ only in lr_multiplier share
    everything else here, so a learning-rate comparison compares like with like."""
    changes = sec_4_2_1_changes(cfg)
    everything = len(changes) == len(dataclasses.fields(paper.SEC_4_2_1))
    return {
        "norm": cfg.model.norm.value,
        "activation": cfg.model.activation.value,
        "sec_4_2_1": "all" if everything else "+".join(changes) or "none",
        "lr_multiplier": cfg.optim.lr_multiplier,
    }
