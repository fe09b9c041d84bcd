"""The learning-rate schedule, a pure function of paper steps."""

import dataclasses

import pytest

from bn_repro.hparams import effective_hparams
from bn_repro.train.schedule import lr_at, schedule_table
from tests.helpers import run_config


def hparams(experiment: str, *overrides: str):
    return effective_hparams(run_config(experiment, *overrides))


def test_staircase_drops_by_4_percent_at_each_interval():
    hp = hparams("inception")
    assert lr_at(0, hp) == pytest.approx(0.0015)
    assert lr_at(319_999, hp) == pytest.approx(0.0015)
    assert lr_at(320_000, hp) == pytest.approx(0.0015 * 0.96)
    assert lr_at(3_200_000, hp) == pytest.approx(0.0015 * 0.96**10)


def test_section_4_2_1_decays_six_times_faster():
    slow, fast = hparams("bn_baseline"), hparams("bn_x5")
    for paper_step in (0, 53_333, 53_334, 500_000, 2_100_000):
        decays_slow = slow.lr_decay_factor ** (6 * paper_step // 320_000)
        assert lr_at(paper_step, fast) / 5 == pytest.approx(slow.lr * decays_slow)


def test_continuous_decay_and_warm_up():
    hp = dataclasses.replace(hparams("bn_x30"), lr_decay_staircase=False, warmup_paper_steps=1000)
    assert lr_at(0, hp) == 0
    assert lr_at(500, hp) == pytest.approx(
        0.5 * 0.045 * 0.96 ** (500 / hp.lr_decay_every_paper_steps)
    )
    assert lr_at(hp.lr_decay_every_paper_steps / 2, hp) == pytest.approx(0.045 * 0.96**0.5)


def test_the_table_lists_every_boundary_up_to_the_end():
    hp = hparams("bn_x5")
    table = schedule_table(hp, max_paper_steps=200_000)
    steps = [step for step, _ in table]
    assert steps[0] == 0 and steps[-1] == 200_000
    assert steps[1:4] == pytest.approx([320_000 / 6 * k for k in (1, 2, 3)])
    assert all(lr == lr_at(step, hp) for step, lr in table)
