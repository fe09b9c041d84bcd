"""`bn-repro report` on recorded runs whose answers are known."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bn_repro.report import write_report
from bn_repro.report.runs import find_runs
from bn_repro.report.tables import figure2_runs

BN_REPRO = Path(sys.executable).with_name("bn-repro")


def record(
    root: Path,
    folder: str,
    name: str,
    seed: int,
    evals,
    status="finished",
    lr=None,
    norm=None,
    target=None,
):
    """A run directory as the trainer leaves it: summary.json and metrics.jsonl."""
    standard = {"inception": 1, "bn_baseline": 1, "bn_x5": 5, "bn_x30": 30}
    run = root / folder
    run.mkdir(parents=True)
    lines = [
        {
            "kind": "eval",
            "step": s,
            "images_seen": 32 * s,
            "paper_steps": s,
            "epoch": 0,
            "top1": t,
            "top5": min(1, t + 0.3),
            "count": 500,
        }
        for s, t in evals
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    summary = {
        "name": name,
        "seed": seed,
        "lr_multiplier": lr or standard[name],
        "norm": norm or ("none" if name == "inception" else "batchnorm"),
        "activation": "relu",
        "data": "data/mini/prepared",
        "status": status,
        "paper_steps": evals[-1][0],
        "target_top1": target,
    }
    (run / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "sweep"
    record(root, "inception/0", "inception", 0, [(100, 0.30), (200, 0.50), (300, 0.48)])
    record(root, "inception/1", "inception", 1, [(100, 0.35), (200, 0.54), (300, 0.60)])
    # target: the mean of the inception maxima, (0.50 + 0.60) / 2 = 0.55
    for seed, first in enumerate((100, 200, 100)):  # three seeds against inception's two
        record(root, f"bn_baseline/{seed}", "bn_baseline", seed, [(first, 0.56), (300, 0.70)])
    record(root, "bn_x5/0", "bn_x5", 0, [(50, 0.20)], status="diverged")
    record(root, "bn_x5/1", "bn_x5", 1, [(50, 0.58), (100, 0.74)])
    record(root, "bn_x30/0", "bn_x30", 0, [(50, 0.40), (100, 0.52)], status="preempted")
    record(root, "inception_lr5/0", "inception", 0, [(10, 0.01)], status="diverged", lr=5)
    return root


def test_the_figure3_table_has_the_known_answers(sweep, tmp_path):
    rows = {r.variant: r for r in write_report([sweep], tmp_path / "out")}
    assert list(rows) == ["inception", "bn_baseline", "bn_x5", "bn_x30"]
    inception, baseline, x5, x30 = rows.values()
    assert inception.runs == 2 and inception.steps_to_target.n == 1  # seed 0 peaks at 0.50
    assert inception.steps_to_target.mean == 300 and inception.max_top1.mean == pytest.approx(0.55)
    assert baseline.steps_to_target.mean == pytest.approx(400 / 3)
    assert baseline.steps_to_target.spread == pytest.approx(57.735, rel=1e-4)
    assert baseline.speedup == pytest.approx(300 / (400 / 3))
    assert x5.runs == 2 and x5.steps_to_target.n == 1 and x5.steps_to_target.mean == 50
    assert x5.status == "1 diverged, 1 finished"
    assert x30.steps_to_target is None and x30.status == "1 running"  # preempted: it resumes
    assert x30.max_top1.mean == 0.52 and x30.paper_max_top1 == 0.748
    with (tmp_path / "out" / "figure3.csv").open() as file:
        table = {r["variant"]: r for r in csv.DictReader(file)}
    assert float(table["bn_baseline"]["steps_to_target"]) == pytest.approx(400 / 3)
    assert (
        table["bn_x30"]["reached"] == "0"
        and table["bn_x30"]["paper_steps_to_target"] == "2700000.0"
    )
    markdown = (tmp_path / "out" / "figure3.md").read_text()
    assert "55.00% top-1, the maximum of this set's inception runs (mean of 2)" in markdown
    assert "| bn_x30 | not reached (0/1) |" in markdown
    assert "Data: data/mini/prepared; each evaluation counts 500 validation images." in markdown


def test_the_learning_rate_comparison_shows_divergence(sweep, tmp_path):
    write_report([sweep], tmp_path / "out")
    table = (tmp_path / "out" / "lr_multipliers.md").read_text()
    assert "| no | 5 | 1 | 1 | not reached (0/1) | - |" in table
    assert "| yes | 5 | 2 | 1 | 50 (1/2) | 74.00% |" in table
    for name in ("figure2.png", "figure2.svg", "lr_multipliers.png", "README.md"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert (tmp_path / "out" / "README.md").read_text().count("| ") >= 9 * 8  # a row per run


def test_figure2_draws_the_runs_at_the_paper_rate_only(sweep):
    drawn = {run.path.relative_to(sweep).as_posix() for run in figure2_runs(find_runs([sweep]))}
    assert "inception_lr5/0" not in drawn  # Inception at x5 belongs to the lr comparison
    assert len(drawn) == 8 and {"inception/0", "bn_x5/0"} <= drawn


def test_a_dataset_target_is_used_as_given(tmp_path):
    root = tmp_path / "imagenet"
    record(root, "a", "bn_x5", 0, [(1e6, 0.70), (2.1e6, 0.725)], target=0.722)
    record(root, "b", "inception", 0, [(1e6, 0.60), (3.1e7, 0.722)], target=0.722)
    rows = {r.variant: r for r in write_report([root], tmp_path / "out")}
    assert (
        rows["bn_x5"].steps_to_target.mean == 2.1e6
        and rows["inception"].steps_to_target.mean == 3.1e7
    )
    assert rows["bn_x5"].speedup == pytest.approx(3.1e7 / 2.1e6)
    assert "72.2% top-1, the dataset's target" in (tmp_path / "out" / "figure3.md").read_text()


def test_no_runs_is_an_error_that_says_so(tmp_path):
    result = subprocess.run(
        [BN_REPRO, "report", tmp_path, "--out", tmp_path / "out"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "no runs (folders with a summary.json)" in result.stderr


def test_input_distributions_are_drawn_for_the_runs_that_recorded_them(sweep, tmp_path):
    for folder, shift in (("inception/0", 0.0), ("bn_baseline/0", 1.0)):
        lines = [
            {"kind": "inputs", "step": s, "paper_steps": s, "probe_s": 0.01}
            | {
                f"{layer}/p{q}": shift + q / 100 + s / 1000
                for layer in ("conv2", "5b")
                for q in (15, 50, 85)
            }
            for s in (100, 200)
        ]
        with (sweep / folder / "metrics.jsonl").open("a") as file:
            file.write("".join(json.dumps(r) + "\n" for r in lines))
    write_report([sweep], tmp_path / "out")
    assert (tmp_path / "out" / "input_distributions.png").stat().st_size > 0
    with (tmp_path / "out" / "input_distributions.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 2 * 2 * 2  # runs x evaluations x layers
    baseline = [r for r in rows if r["variant"] == "bn_baseline" and r["layer"] == "5b"]
    assert [float(r["p85"]) for r in baseline] == pytest.approx([1.95, 2.05])
