"""The learning rate as a pure function of paper steps (images seen / paper.BATCH_SIZE)."""

import math

from bn_repro.hparams import EffectiveHparams


def lr_at(paper_step: float, hp: EffectiveHparams) -> float:
    """Inception's exponential decay (Sec. 4.2.1 speeds it up 6x), after an optional warm-up.

    With a staircase the rate drops by lr_decay_factor at every multiple of the interval, as
    GoogLeNet's "decrease by 4% every 8 epochs"; otherwise it decays continuously.
    """
    decays = paper_step / hp.lr_decay_every_paper_steps
    if hp.lr_decay_staircase:
        decays = math.floor(decays)
    lr = hp.lr * hp.lr_decay_factor**decays
    if paper_step < hp.warmup_paper_steps:
        lr *= paper_step / hp.warmup_paper_steps
    return lr


def schedule_table(hp: EffectiveHparams, max_paper_steps: float) -> list[tuple[float, float]]:
    """(paper step, learning rate) at the start, the end of warm-up, and every decay boundary up
    to max_paper_steps (or 200 even points for a continuous decay): the schedule a run used."""
    if hp.lr_decay_staircase:
        boundaries = math.floor(max_paper_steps / hp.lr_decay_every_paper_steps)
        points = [k * hp.lr_decay_every_paper_steps for k in range(boundaries + 1)]
    else:
        points = [max_paper_steps * k / 200 for k in range(201)]
    points = sorted({*points, min(hp.warmup_paper_steps, max_paper_steps), max_paper_steps})
    return [(step, lr_at(step, hp)) for step in points]
