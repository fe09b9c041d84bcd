"""`bn-repro figure1` as a user runs it (a short run of both networks), and its report."""

import csv
import json
import subprocess
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bn_repro.figure1.compose import compose_figure1
from bn_repro.figure1.training import log_spaced
from bn_repro.report import write_report
from bn_repro.report.runs import find_runs
from bn_repro.schema import ConfigError
from bn_repro.train.metrics import read_metrics
from tests.helpers import bn_repro
from tests.test_report import record

SHORT = [
    "train.steps=40",
    "train.eval_every=20",
    "santurkar.measurements=3",
    "santurkar.step_multiples=[0.5,4]",
    "train.probe_examples=100",
    "train.population_batches=5",
]
HIDDEN = ("hidden1", "hidden2", "hidden3")


def figure1(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return bn_repro("figure1", *SHORT, f"run_dir={run_dir}", *overrides, cwd=run_dir.parent)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("figure1") / "runs"
    result = figure1(run_dir)
    assert result.returncode == 0, result.stderr
    assert "runs/batchnorm: held-out accuracy" in result.stdout
    return run_dir


@pytest.mark.slow
def test_both_networks_leave_every_kind_of_record(trained):
    for norm in ("none", "batchnorm"):
        records = read_metrics(trained / norm)
        steps = {
            kind: [r["step"] for r in records if r["kind"] == kind]
            for kind in ("eval", "inputs", "ics", "landscape", "train")
        }
        population = norm == "batchnorm"
        assert steps["eval"] == [0, 20, 40] + [40] * population  # Algorithm 2 closes BN's
        assert steps["inputs"] == [0, 20, 40] and steps["train"] == [20, 40]
        assert steps["ics"] == steps["landscape"] == [0, 1, 39]  # log-spaced
        inputs = next(r for r in records if r["kind"] == "inputs")
        assert {f"{h}/p{q}" for h in HIDDEN for q in (15, 50, 85)} <= set(inputs)
        assert inputs["hidden3/p15"] <= inputs["hidden3/p50"] <= inputs["hidden3/p85"]
        ics = next(r for r in records if r["kind"] == "ics")
        assert ics["hidden1/l2"] == 0 and ics["hidden1/cosine"] == 1  # no earlier layer
        assert ics["hidden3/l2"] > 0 and -1 <= ics["output/cosine"] <= 1
        evals = [r for r in records if r["kind"] == "eval"]
        assert all(r["count"] == 1000 and r["images_seen"] == 60 * r["step"] for r in evals)
        summary = json.loads((trained / norm / "summary.json").read_text())
        assert (summary["study"], summary["norm"], summary["status"]) == (
            "figure1",
            norm,
            "finished",
        )
        assert summary["final_top1"] == evals[-1]["top1"]
        assert summary["final_bn_stats"] == ("population" if population else "none")
        tags = EventAccumulator(str(trained / norm / "tensorboard")).Reload().Tags()["scalars"]
        assert {
            "eval/top1",
            "inputs/hidden3/p50",
            "ics/hidden2/cosine",
            "landscape/loss_max",
        } <= set(tags)


@pytest.mark.slow
def test_a_trained_network_is_kept_and_other_settings_are_refused(trained):
    before = (trained / "none" / "metrics.jsonl").read_bytes()
    again = figure1(trained, "train.jobs=1")  # how it runs is no setting of what it learns
    assert again.returncode == 0 and "already trained with these settings" in again.stderr
    assert (trained / "none" / "metrics.jsonl").read_bytes() == before
    other = figure1(trained, "train.lr=0.3")
    assert other.returncode == 2
    assert "holds a Figure 1 run with other settings" in other.stderr
    assert (trained / "none" / "metrics.jsonl").read_bytes() == before


@pytest.mark.slow
def test_the_report_draws_figure1_and_the_landscape(trained, tmp_path):
    out = tmp_path / "report"
    result = bn_repro("report", trained, "--out", out)
    assert result.returncode == 0, result.stderr
    for name in ("figure1.png", "figure1_landscape.png", "figure1.md"):
        assert (out / name).stat().st_size > 0
    assert not (out / "figure3.md").exists()  # no ImageNet run here
    with (out / "figure1.csv").open() as file:
        rows = list(csv.DictReader(file))
    metrics = read_metrics(trained / "none")
    assert [(r["norm"], r["step"]) for r in rows] == [
        (n, s) for n in ("none", "batchnorm") for s in ("0", "20", "40")
    ]
    first_inputs = next(r for r in metrics if r["kind"] == "inputs")
    assert float(rows[0]["hidden3_p85"]) == pytest.approx(first_inputs["hidden3/p85"])
    with (out / "figure1_landscape.csv").open() as file:
        marks = list(csv.DictReader(file))
    assert len(marks) == 6 and {"loss_max", "hidden3_ics_l2", "output_ics_cosine"} <= set(marks[0])
    markdown = (out / "figure1.md").read_text()
    assert "| without BN | 0 |" in markdown and "| with BN | 0 |" in markdown


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["train.lrr=1"], "Key 'lrr' not in 'Figure1TrainConfig'"),
        (["train.probe_unit=100"], "train.probe_unit=100: the hidden layers have 100 units"),
        (["norms=[batchnorm,batchnorm]"], "list each of none, batchnorm at most once"),
        (["santurkar.step_multiples=[0.1,-1]"], "give positive multiples"),
        (["train.lr=0"], "train.lr must be positive"),
    ],
)
def test_config_errors_say_what_to_fix(overrides, expected):
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        compose_figure1(overrides)


@pytest.mark.slow
def test_figure1_runs_stay_out_of_the_imagenet_report(trained, tmp_path):
    imagenet = tmp_path / "imagenet"
    record(imagenet, "inception/0", "inception", 0, [(100, 0.3), (200, 0.5)])
    rows = write_report([imagenet, trained], tmp_path / "out")
    assert [r.variant for r in rows] == ["inception"]
    assert [run.name for run in find_runs([imagenet, trained])] == ["inception"]
    assert (tmp_path / "out" / "figure1.md").exists() and (tmp_path / "out" / "figure3.md").exists()


def test_measurements_are_log_spaced_from_the_first_step_to_the_last_update():
    steps = sorted(log_spaced(50_000, 100))
    assert steps[:3] == [0, 1, 2] and steps[-1] == 49_999 and len(steps) <= 100
    ratios = [b / a for a, b in zip(steps[-10:-1], steps[-9:], strict=True)]
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-3)  # even in log(step)
    assert sorted(log_spaced(40, 2)) == [0, 39] and sorted(log_spaced(40, 1)) == [0]
