"""The transcription of the paper agrees with the paper's own text."""

import csv
from pathlib import Path

import pytest

from bn_repro import paper
from bn_repro.compose import experiments
from bn_repro.report.reference import write_paper_tables

REPO = Path(__file__).resolve().parents[1]


def row(experiment: str) -> paper.Figure3Row:
    return next(r for r in paper.FIGURE_3 if r.experiment == experiment)


def test_every_figure3_row_has_an_experiment_and_a_learning_rate():
    for r in paper.FIGURE_3:
        assert r.experiment in experiments()
        assert r.experiment in paper.LEARNING_RATES


def test_section_4_2_2_claims_follow_from_figure3():
    inception = row("inception").steps_to_target
    # "we match the accuracy of Inception in less than half the number of training steps"
    assert row("bn_baseline").steps_to_target < inception / 2
    # "BN-x5 needs 14 times fewer steps than Inception"
    assert int(inception / row("bn_x5").steps_to_target) == 14
    # BN-x30 "trains somewhat slower initially, but ... reach[es] a higher final accuracy"
    assert row("bn_x30").steps_to_target > row("bn_x5").steps_to_target
    assert row("bn_x30").max_top1 > row("bn_x5").max_top1
    # Inception's maximum is the target; BN-x5-Sigmoid never reaches it
    assert row("inception").max_top1 == paper.TARGET_TOP1
    assert row("bn_x5_sigmoid").steps_to_target is None
    assert row("bn_x5_sigmoid").max_top1 < paper.TARGET_TOP1


@pytest.mark.parametrize("experiment, multiplier", [("bn_x5", 5), ("bn_x30", 30)])
def test_learning_rates_are_the_stated_multiples(experiment, multiplier):
    assert paper.LEARNING_RATES[experiment] == pytest.approx(paper.BASE_LR * multiplier)


def test_the_committed_paper_tables_are_what_bn_repro_paper_writes(tmp_path):
    written = write_paper_tables(tmp_path)
    for path in written:
        committed = REPO / "results" / "paper" / path.name
        assert committed.read_bytes() == path.read_bytes(), f"rerun: bn-repro paper ({path.name})"
    with (tmp_path / "figure3.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [r["experiment"] for r in rows] == [r.experiment for r in paper.FIGURE_3]
    sigmoid = rows[-1]
    assert sigmoid["steps_to_target"] == "" and float(sigmoid["max_top1"]) == 0.698
    with (tmp_path / "figure4.csv").open() as file:
        single_crop = next(r for r in csv.DictReader(file) if r["crops"] == "1")
    # Fig. 4's single-crop top-1 error (25.2%) is Fig. 3's BN-x30 maximum accuracy (74.8%).
    assert 1 - float(single_crop["top1_error"]) == pytest.approx(paper.FIGURE_3[3].max_top1)
