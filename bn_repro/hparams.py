"""The numbers a run actually uses, from the paper's values and the config's multipliers."""

import math
from dataclasses import dataclass

from bn_repro import paper
from bn_repro.schema import LrScaling, RunConfig


@dataclass(frozen=True)
class EffectiveHparams:
    lr: float  # initial learning rate per optimizer step of global_batch images
    lr_scale: float  # how much lr differs from the paper's, for global_batch vs paper.BATCH_SIZE
    global_batch: int  # images per optimizer step over all ranks
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


def effective_hparams(cfg: RunConfig) -> EffectiveHparams:
    optim = cfg.optim
    scale = lr_scale(optim.lr_scaling, cfg.trainer.global_batch)
    return EffectiveHparams(
        lr=optim.base_lr * optim.lr_multiplier * scale,
        lr_scale=scale,
        global_batch=cfg.trainer.global_batch,
        momentum=optim.momentum,
        weight_decay=optim.weight_decay / optim.l2_divisor,
        lr_decay_factor=optim.lr_decay_factor,
        lr_decay_every_paper_steps=optim.lr_decay_every_paper_steps / optim.decay_speedup,
        lr_decay_staircase=optim.lr_decay_staircase,
        warmup_paper_steps=optim.warmup_paper_steps,
        dropout=paper.DROPOUT if cfg.model.dropout else 0.0,
        lrn=cfg.model.lrn,
        norm=cfg.model.norm.value,
        activation=cfg.model.activation.value,
        photometric=cfg.data.photometric.value,
        shuffle=cfg.data.shuffle.value,
    )
