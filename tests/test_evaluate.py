"""`bn-repro evaluate` on a real run: Algorithm 2 as the trainer's final evaluation, exact counts
over ranks, the best checkpoint, ensembles, and errors that say what to fix."""

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from bn_repro.cli import main
from bn_repro.data.make_mini import MiniSpec
from bn_repro.evaluate import evaluations
from bn_repro.report import write_report
from bn_repro.train.metrics import read_metrics
from tests.helpers import BIN, bn_repro, on_small_set, prepared_set

pytestmark = pytest.mark.slow
KEPT = ("metrics.jsonl", "config.json", "summary.json", "train.log", "effective_hparams.json")


def training(root: Path, run_dir: Path) -> list:
    # 24 steps of 8 images on 144 (an epoch is 18 batches), then Algorithm 2 over 4 batches.
    return [
        "train",
        *on_small_set(root),
        "data.dali_device=cpu",
        "data.workers=1",
        "trainer.max_paper_steps=6",
        "trainer.eval_every_paper_steps=2",
        "trainer.log_every_paper_steps=2",
        "trainer.checkpoint_every_paper_steps=2",
        "trainer.population_batches=4",
        "trainer.deterministic=true",
        f"run_dir={run_dir}",
    ]


@pytest.fixture(scope="module")
def run(prepared_small, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("evaluate") / "bn_x5"
    result = bn_repro(*training(prepared_small, run_dir))
    assert result.returncode == 0, result.stderr
    return run_dir


def added(run_dir: Path, before: list[dict]) -> list[dict]:
    """The evaluation records written since `before` (the module's tests share the run)."""
    return evaluations.read(run_dir)[len(before) :]


def evaluate(*args, ranks: int = 1) -> subprocess.CompletedProcess:
    if ranks == 1:
        result = bn_repro("evaluate", *args)
    else:
        command = [BIN / "torchrun", "--standalone", f"--nproc_per_node={ranks}", "--no-python"]
        command += [BIN / "bn-repro", "evaluate", *map(str, args)]
        result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result


def fingerprints(run_dir: Path) -> dict:
    return {name: hashlib.sha256((run_dir / name).read_bytes()).hexdigest() for name in KEPT}


COUNTS = ("top1_correct", "top5_correct", "count", "loss")


def test_algorithm_2_in_evaluate_gives_the_trainers_final_evaluation(run):
    before, earlier = fingerprints(run), evaluations.read(run)
    evaluate(run)  # the newest checkpoint, population statistics, 1 crop: the defaults
    (final,) = [r for r in read_metrics(run) if r.get("bn_stats") == "population"]
    (record,) = added(run, earlier)
    assert {k: record[k] for k in COUNTS} == {k: final[k] for k in COUNTS}  # exactly
    (member,) = record["members"]
    assert member["population_batches"] == final["population_batches"] == 4
    assert (member["checkpoint"], member["step"]) == ("step_0000000024.pt", final["step"])
    assert fingerprints(run) == before  # nothing of the run but evaluations.jsonl is written


def test_two_ranks_count_every_image_once_with_partial_last_batches(run, tmp_path):
    # 30 images: 15 a rank, in batches of 4, 4, 4 and 3; at 144 crops too. DALI on two ranks
    # and in one process: the same pixels, so the same counts and loss. The torchvision loader:
    # pixels within 1 of DALI's (test_dali_loader), here the same counts.
    one, torch_loader = tmp_path / "one", tmp_path / "torch"
    shutil.copytree(run, one)
    shutil.copytree(run, torch_loader)
    common = ("--bn-stats", "running", "--crops", "1,144", "--batch", "4")
    earlier = evaluations.read(run)
    evaluate(run, *common, ranks=2)
    evaluate(one, *common)
    evaluate(torch_loader, *common, "--loader", "torch")
    two, single, other = (added(path, earlier) for path in (run, one, torch_loader))
    assert [(r["crops"], r["world_size"], r["loader"]) for r in two] == [
        (1, 2, "dali"),
        (144, 2, "dali"),
    ]
    assert [r["crops"] for r in single + other] == [1, 144, 1, 144]
    assert {r["count"] for r in two + single + other} == {30}
    for mine, theirs, torchs in zip(two, single, other, strict=True):
        counts = [(r["top1_correct"], r["top5_correct"]) for r in (mine, theirs, torchs)]
        assert counts[0] == counts[1] == counts[2]
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
    assert two[1]["scales"] == [37, 41, 46, 50]


def test_the_best_checkpoint_is_the_best_running_evaluation(run):
    earlier = evaluations.read(run)
    evaluate(run, "--checkpoint", "best", "--bn-stats", "running")
    (record,) = added(run, earlier)
    best = max(
        (r for r in read_metrics(run) if r.get("bn_stats") == "running"), key=lambda r: r["top1"]
    )
    assert record["members"][0]["checkpoint"] == "best.pt"
    assert record["members"][0]["step"] == best["step"]
    assert {k: record[k] for k in COUNTS} == pytest.approx({k: best[k] for k in COUNTS})


def test_an_ensemble_of_equal_members_predicts_as_each_and_the_report_shows_it(run, tmp_path):
    twin = tmp_path / "twin"
    shutil.copytree(run, twin)
    (twin / evaluations.FILE).unlink(missing_ok=True)
    earlier = evaluations.read(run)
    result = evaluate(run, twin, "--bn-stats", "running")
    assert result.stdout.count("top-1") == 3  # each member, then the ensemble
    mine, ensemble = evaluations.read(twin)
    assert len(ensemble["members"]) == 2 and ensemble["id"] == mine["id"]
    assert ensemble["members"][0]["run"] == str(run.resolve())
    assert (ensemble["top1_correct"], ensemble["top5_correct"]) == (
        mine["top1_correct"],
        mine["top5_correct"],
    )
    assert added(run, earlier)[-1] == ensemble  # in every member's file
    write_report([tmp_path, run.parent], tmp_path / "report")
    table = (tmp_path / "report" / "figure4.md").read_text()
    assert "| ensemble of 2: bn_x5 x2 | 1 | - | 2 | 1 | latest | running |" in table


def cli_error(capsys, *args) -> str:
    assert main(["evaluate", *map(str, args)]) == 2
    return capsys.readouterr().err


def test_bad_input_gets_a_clear_error(run, tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    assert "has no checkpoint in" in cli_error(capsys, empty)
    assert "is not a run directory" in cli_error(capsys, tmp_path / "nothing")
    bare = tmp_path / "bare"
    shutil.copytree(run, bare)
    (bare / "checkpoints" / "best.pt").unlink()
    assert "use --checkpoint latest" in cli_error(capsys, bare, "--checkpoint", "best")
    assert "no such file" in cli_error(capsys, run, "--checkpoint", "step_7.pt")
    assert "--crops 12: give one or more of 1, 36, 72, 108, 144" in cli_error(
        capsys, run, "--crops", "12"
    )


@pytest.fixture(scope="module")
def two_classes(tmp_path_factory) -> Path:
    return prepared_set(tmp_path_factory, "two", MiniSpec(2, 8, 3, size=40, seed=3))


def test_runs_of_other_data_are_refused(run, two_classes, tmp_path, capsys):
    error = cli_error(capsys, run, "--data-root", two_classes)
    assert "holds 2 classes, and bn_x5 was trained on 6" in error
    other = tmp_path / "other"  # a run of the two-class set, as its checkpoint says
    shutil.copytree(run, other)
    path = other / "checkpoints" / "step_0000000024.pt"
    payload = torch.load(path, weights_only=True)
    payload["config"]["data"] |= {"root": str(two_classes), "num_classes": 2}
    torch.save(payload, path)
    error = cli_error(capsys, run, other)
    assert "the ensemble's members were trained on different data" in error
    assert "classes, val, wnids" in error
    assert json.loads((run / "config.json").read_text())["data"]["num_classes"] == 6
