"""`bn-repro report`'s Figure 4 from evaluation records whose answers are known."""

import csv
import json
from pathlib import Path

import pytest

from bn_repro.report import write_report
from bn_repro.report.figure4 import figure4, read_records
from bn_repro.report.runs import find_runs
from tests.test_report import record as run_record


def member(run: Path, name: str, bn_stats="population") -> dict:
    return {
        "run": str(run),
        "name": name,
        "seed": 0,
        "checkpoint": "best.pt",
        "step": 400,
        "epoch": 2,
        "bn_stats": bn_stats,
        "population_batches": 100,
    }


def evaluation(ident: str, members: list[dict], crops: int, top1: float, top5: float, time: str):
    return {
        "kind": "evaluation",
        "id": ident,
        "checkpoint": "best",
        "time": time,
        "bn_stats": "population",
        "crop_size": 32,
        "data": "data/mini/prepared",
        "crops": crops,
        **({"scales": [37, 41, 46, 50]} if crops > 1 else {}),
        "members": members,
        "top1": top1,
        "top5": top5,
        "count": 500,
    }


def write(run: Path, *evaluations: dict) -> None:
    with (run / "evaluations.jsonl").open("a") as file:
        file.writelines(json.dumps(e) + "\n" for e in evaluations)


@pytest.fixture
def runs(tmp_path) -> Path:
    root = tmp_path / "runs"
    for seed in (0, 1):
        run_record(root, f"bn_x30/{seed}", "bn_x30", seed, [(400, 0.7)])
        run_record(root, f"bn_x5/{seed}", "bn_x5", seed, [(400, 0.6)])
    a, b = root / "bn_x30/0", root / "bn_x30/1"
    x5 = root / "bn_x5/0"
    # bn_x30 seeds at 1 crop (an older evaluation of seed 0 is replaced by the later one) and at
    # 144; an ensemble of the two bn_x30 runs and bn_x5's seed 0, in each member's file.
    write(a, evaluation("1", [member(a, "bn_x30")], 1, 0.50, 0.80, "2026-01-01T00:00:00"))
    write(a, evaluation("4", [member(a, "bn_x30")], 1, 0.70, 0.90, "2026-01-02T00:00:00"))
    write(b, evaluation("3", [member(b, "bn_x30")], 1, 0.80, 0.94, "2026-01-02T00:00:00"))
    # one command at 1 and 144 crops writes records of one id
    write(a, evaluation("4", [member(a, "bn_x30")], 144, 0.75, 0.95, "2026-01-02T00:00:00"))
    trio = [member(a, "bn_x30"), member(b, "bn_x30"), member(x5, "bn_x5")]
    ensemble = evaluation("5", trio, 144, 0.85, 0.97, "2026-01-04T00:00:00")
    for run in (a, b, x5):
        write(run, ensemble)
    return root


def test_the_figure4_rows_have_the_known_answers(runs):
    found = read_records(find_runs([runs]))
    assert len(found) == 5  # the ensemble's record counted once
    rows = figure4(found)
    assert [(r.model, r.crops, r.runs) for r in rows] == [
        ("bn_x30", 1, 2),
        ("bn_x30", 144, 1),
        ("ensemble of 3: bn_x5, bn_x30 x2", 144, 1),
    ]
    single, multi, ensemble = rows
    assert single.top1_error.mean == pytest.approx(0.25)  # seeds 0.30 and 0.20
    assert single.top1_error.spread == pytest.approx(0.0707107, rel=1e-5)
    assert single.top5_error.mean == pytest.approx(0.08)
    assert single.paper.model == "BN-Inception single crop" and single.paper.top1_error == 0.252
    assert (multi.scales, multi.paper.model) == ("37/41/46/50", "BN-Inception multicrop")
    assert ensemble.members == 3 and ensemble.paper.top5_error == 0.049
    assert ensemble.bn_stats == "population (100 batches/rank)" and ensemble.checkpoint == "best"


def test_the_report_writes_figure4_beside_the_papers_rows(runs, tmp_path):
    write_report([runs], tmp_path / "out")
    table = (tmp_path / "out" / "figure4.md").read_text()
    assert "| bn_x30 | 1 | - | 1 | 2 | best | population (100 batches/rank) | 500" in table
    assert "| 25.00% ± 7.07 | 8.00% ± 2.83 | BN-Inception single crop | 25.20% | 7.82% |" in table
    assert "| BN-Inception ensemble | 224 | 144 | 6 | 20.10% | 4.90% |" in table  # the paper's
    assert "Data: data/mini/prepared, crops of 32 pixels." in table
    with (tmp_path / "out" / "figure4.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [r["crops"] for r in rows] == ["1", "144", "144"]
    assert float(rows[2]["top5_error"]) == pytest.approx(0.03)
    assert rows[2]["paper_model"] == "BN-Inception ensemble"


def test_without_evaluations_there_is_no_figure4(tmp_path):
    run_record(tmp_path / "runs", "bn_x5/0", "bn_x5", 0, [(400, 0.6)])
    write_report([tmp_path / "runs"], tmp_path / "out")
    assert not (tmp_path / "out" / "figure4.md").exists()
