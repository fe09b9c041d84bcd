"""`bn-repro train` as users start it: one process, two gloo ranks by torchrun, killed, stopped."""

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bn_repro.train.checkpoint import checkpoints
from bn_repro.train.metrics import read_metrics, tensorboard_step, tensorboard_tag
from tests.helpers import (
    BIN,
    TINY,
    assert_same_records,
    bn_repro,
    kill_after_first_checkpoint,
    model_of,
)

pytestmark = pytest.mark.slow


def training(run_dir: Path, *overrides: str) -> list:
    return ["train", *TINY, f"run_dir={run_dir}", *overrides]


def command(run_dir: Path, *overrides: str, ranks: int = 1) -> list:
    train = [BIN / "bn-repro", *training(run_dir, *overrides)]
    if ranks == 1:
        return train
    return [BIN / "torchrun", "--standalone", f"--nproc_per_node={ranks}", "--no-python", *train]


def train(run_dir: Path, *overrides: str, ranks: int = 1) -> subprocess.CompletedProcess:
    if ranks == 1:
        return bn_repro(*training(run_dir, *overrides), cwd=run_dir.parent)
    return subprocess.run(
        command(run_dir, *overrides, ranks=ranks),
        capture_output=True,
        text=True,
        cwd=run_dir.parent,
    )


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def final_weights(run_dir: Path) -> dict:
    return torch.load(checkpoints(run_dir)[-1], weights_only=True)["model"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = train(run_dir, "experiment=bn_baseline")
    assert result.returncode == 0, result.stderr
    return run_dir


def test_a_run_leaves_its_records(uninterrupted):
    for name in (
        "config.json",
        "effective_hparams.json",
        "schedule.json",
        "environment.json",
        "train.log",
    ):
        assert (uninterrupted / name).exists(), name
    records = read_metrics(uninterrupted)
    evals = [r for r in records if r["kind"] == "eval"]
    assert [(r["paper_steps"], r["bn_stats"]) for r in evals] == [
        (10, "running"),
        (20, "running"),
        (30, "running"),
        (40, "running"),
        (40, "population"),  # Algorithm 2 at the end
    ]
    assert all(r["count"] == 101 and r["images_seen"] == 32 * r["paper_steps"] for r in evals)
    assert evals[-1]["population_batches"] == 4
    # the input distributions at every evaluation with running averages (train/probe.py)
    inputs = [r for r in records if r["kind"] == "inputs"]
    assert [r["paper_steps"] for r in inputs] == [10, 20, 30, 40]
    assert all(r["conv2/p15"] <= r["conv2/p50"] <= r["conv2/p85"] for r in inputs)
    assert len({r["5b/p50"] for r in inputs}) == 4  # the network changes, the images do not
    assert [r["step"] for r in records if r["kind"] == "train"] == [
        20,
        40,
        60,
        80,
        100,
        120,
        140,
        160,
    ]
    done = summary(uninterrupted)
    assert done["status"] == "finished" and done["paper_steps"] == 40
    assert done["max_top1"] == max(r["top1"] for r in evals[:-1])  # with running averages
    assert (done["final_bn_stats"], done["final_top1"]) == ("population", evals[-1]["top1"])
    assert done["target_top1"] is None and done["steps_to_target"] is None  # set by the report
    hparams = json.loads((uninterrupted / "effective_hparams.json").read_text())
    assert hparams["lr"] == 0.0015 / 4
    assert (hparams["batch_per_rank"], hparams["global_batch"]) == (8, 8)


def test_the_best_evaluation_keeps_its_weights_apart_from_the_step_checkpoints(uninterrupted):
    best = torch.load(uninterrupted / "checkpoints" / "best.pt", weights_only=True)
    done = summary(uninterrupted)
    assert best["progress"]["max_top1"] == done["max_top1"]
    assert best["progress"]["step"] * 8 == 32 * done["paper_steps_at_max_top1"]  # its step
    assert {"model", "progress", "loader", "config"} <= best.keys()
    assert "optimizer" not in best and "best.pt" not in [p.name for p in checkpoints(uninterrupted)]


def test_tensorboard_holds_the_numbers_of_metrics_jsonl(uninterrupted):
    events = EventAccumulator(str(uninterrupted / "tensorboard")).Reload()
    records = read_metrics(uninterrupted)
    for tag in events.Tags()["scalars"]:
        key = tag.split("/", 1)[1]  # inputs/<layer>/p50: the key holds a slash
        expected = [
            (tensorboard_step(r), r[key]) for r in records if tensorboard_tag(r, key) == tag
        ]
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in logged] == [s for s, _ in expected], tag
        assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-6), tag
    assert {
        "train/loss",
        "train/lr",
        "train/images_per_s",
        "eval/top1",
        "eval/top5",
        "inputs/5b/p50",
    } <= set(events.Tags()["scalars"])


def test_a_killed_run_resumes_and_ends_as_if_never_killed(uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    kill_after_first_checkpoint(command(run_dir, "experiment=bn_baseline"), run_dir)
    killed_at = len(read_metrics(run_dir))

    result = train(run_dir, "experiment=bn_baseline")
    assert result.returncode == 0, result.stderr
    assert "resumed at optimizer step" in result.stderr
    assert killed_at < len(read_metrics(run_dir))
    assert_same_records(read_metrics(run_dir), read_metrics(uninterrupted))
    for name, tensor in final_weights(uninterrupted).items():
        torch.testing.assert_close(final_weights(run_dir)[name], tensor, msg=name)


def test_sigterm_checkpoints_and_asks_to_be_requeued(tmp_path):
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        command(run_dir, "experiment=bn_x5", "trainer.checkpoint_every_paper_steps=1000"),
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    while not read_metrics(run_dir) and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate()
    assert process.returncode == 75, stderr
    stopped = summary(run_dir)
    assert stopped["status"] == "preempted" and 0 < stopped["step"] < 160
    assert int(checkpoints(run_dir)[-1].stem.removeprefix("step_")) == stopped["step"]

    result = train(run_dir, "experiment=bn_x5", "trainer.checkpoint_every_paper_steps=1000")
    assert result.returncode == 0, result.stderr
    assert f"resumed at optimizer step {stopped['step']}" in result.stderr
    assert summary(run_dir)["status"] == "finished"


def test_two_ranks_train_as_one_process_with_their_joint_batch(tmp_path):
    # Without BN (and without dropout's per-rank draws) the averaged gradient of two ranks of 4
    # images is the gradient of the 8 images together. With BN each rank normalizes over its
    # own 4 images, as in the paper's replicas, so there the two differ by design.
    # 4 optimizer steps: later, training amplifies rounding differences as it amplifies any
    # (measured: 7e-7 apart after 4 steps, 6e-4 after 8, 5e-2 after 20: the early steps of
    # He's initialization take large, sensitive steps).
    overrides = ("experiment=inception", "model.dropout=0", "trainer.max_paper_steps=1")
    one, two = tmp_path / "one", tmp_path / "two"
    for run_dir, ranks in ((one, 1), (two, 2)):
        result = train(run_dir, *overrides, f"trainer.batch_per_rank={8 // ranks}", ranks=ranks)
        assert result.returncode == 0, result.stderr
    torch.manual_seed(0)  # the trainer's initial weights (seed 0)
    initial = model_of("inception", "model.dropout=0", num_classes=10).state_dict()
    a, b = final_weights(one), final_weights(two)
    moved = sum((a[k] - initial[k]).norm() ** 2 for k in a) ** 0.5
    apart = sum((a[k] - b[k]).norm() ** 2 for k in a) ** 0.5
    assert apart < 1e-3 * moved  # float rounding of another summation order, nothing more
    losses = [[r["loss"] for r in read_metrics(d) if r["kind"] == "train"] for d in (one, two)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    evals = [[r for r in read_metrics(d) if r["kind"] == "eval"] for d in (one, two)]
    assert [r["count"] for r in evals[1]] == [101]  # 51 + 50 images, each counted once
    assert [r["top1_correct"] for r in evals[1]] == [r["top1_correct"] for r in evals[0]]
    assert json.loads((two / "environment.json").read_text())[-1]["world_size"] == 2


def test_a_diverging_run_ends_cleanly_and_the_sweep_goes_on(tmp_path):
    result = bn_repro(
        "train",
        "-m",
        *TINY,
        "experiment=inception",
        "optim.lr_multiplier=10000,1",
        f"run_dir={tmp_path}/lr_x${{optim.lr_multiplier}}",
        f"hydra.sweep.dir={tmp_path}/sweep",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    diverged = summary(tmp_path / "lr_x10000.0")
    assert diverged["status"] == "diverged" and diverged["diverged_at_paper_steps"] > 0
    assert summary(tmp_path / "lr_x1.0")["status"] == "finished"


def test_resuming_with_other_settings_is_refused(uninterrupted):
    before = (uninterrupted / "metrics.jsonl").read_text()
    result = train(uninterrupted, "experiment=bn_baseline", "optim.lr_multiplier=5")
    assert result.returncode == 2
    assert "holds a run with other settings of ['optim']" in result.stderr
    assert "Traceback" not in result.stderr
    assert (uninterrupted / "metrics.jsonl").read_text() == before


def test_checkpoints_by_time_keep_the_last_few(tmp_path):
    run_dir = tmp_path / "run"
    result = train(
        run_dir,
        "experiment=bn_x5",
        "trainer.max_paper_steps=5",  # 20 steps, each a control point past a tiny time limit
        "trainer.checkpoint_every_paper_steps=1000",
        "trainer.checkpoint_every_minutes=1e-9",
        "trainer.keep_checkpoints=3",
    )
    assert result.returncode == 0, result.stderr
    assert [path.name for path in checkpoints(run_dir)] == [
        f"step_{step:010d}.pt" for step in (18, 19, 20)
    ]
    assert not list((run_dir / "checkpoints").glob("*.tmp"))


def test_a_job_with_a_bad_setting_fails_alone_in_a_sweep(tmp_path):
    result = bn_repro(
        "train",
        "-m",
        *TINY,
        "experiment=bn_x5",
        "trainer.max_paper_steps=5",
        "optim.momentum=2,0.9",
        f"run_dir={tmp_path}/momentum${{optim.momentum}}",
        f"hydra.sweep.dir={tmp_path}/sweep",
        cwd=tmp_path,
    )
    assert "bn-repro train: optim.momentum must lie in [0, 1], got 2.0" in result.stderr
    assert not (tmp_path / "momentum2.0").exists()
    assert summary(tmp_path / "momentum0.9")["status"] == "finished"


def test_a_sweep_under_torchrun_sets_up_a_group_per_job(tmp_path):
    # Three jobs: with torch's own group numbering, restarted by destroy_process_group, the
    # third job found the first one's keys in torchrun's store and hung.
    result = subprocess.run(
        [
            BIN / "torchrun",
            "--standalone",
            "--nproc_per_node=2",
            "--no-python",
            BIN / "bn-repro",
            "train",
            "-m",
            *TINY,
            "trainer.max_paper_steps=5",
            "experiment=bn_x5",
            "seed=0,1,2",
            f"run_dir={tmp_path}/seed${{seed}}",
            f"hydra.sweep.dir={tmp_path}/sweep",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for seed in range(3):
        assert summary(tmp_path / f"seed{seed}")["status"] == "finished"


def test_two_ranks_of_the_papers_bn_batch_end_with_an_algorithm_2_evaluation(tmp_path):
    run_dir = tmp_path / "run"
    papers = ("experiment=bn_x5", "trainer.batch_per_rank=32", "trainer.max_paper_steps=8")
    result = train(run_dir, *papers, "trainer.eval_every_paper_steps=4", ranks=2)
    assert result.returncode == 0, result.stderr
    hparams = json.loads((run_dir / "effective_hparams.json").read_text())
    assert (hparams["batch_per_rank"], hparams["global_batch"]) == (32, 64)
    assert hparams["lr"] == pytest.approx(0.0075 * 2)  # linear scaling from 32 to 64 images
    evals = [r for r in read_metrics(run_dir) if r["kind"] == "eval"]
    assert [(r["paper_steps"], r["bn_stats"]) for r in evals] == [
        (4, "running"),
        (8, "running"),
        (8, "population"),
    ]
    assert evals[-1]["count"] == 101  # every validation image once over the two ranks
    done = summary(run_dir)
    assert (done["final_bn_stats"], done["final_top1"]) == ("population", evals[-1]["top1"])
    assert done["batch_per_rank"] == 32 and done["global_batch"] == 64


def test_a_finished_run_started_again_evaluates_nothing_more(uninterrupted):
    before = read_metrics(uninterrupted)
    result = train(uninterrupted, "experiment=bn_baseline")
    assert result.returncode == 0, result.stderr
    assert read_metrics(uninterrupted) == before  # Algorithm 2's record is there already
    assert summary(uninterrupted)["final_bn_stats"] == "population"


def test_a_resumed_run_updates_with_the_kernels_its_device_chose(uninterrupted, tmp_path):
    # a run started unfused (on the CPU), resumed where the fused kernel is asked for (a GPU's
    # default): the checkpoint's groups must not bring back their fused=False
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted, run_dir)
    result = train(run_dir, "experiment=bn_baseline", "trainer.fused_optimizer=true")
    assert result.returncode == 0, result.stderr
    starts = json.loads((run_dir / "environment.json").read_text())
    # the run's own start, unfused; the last, which resumed from its checkpoint, fused
    assert starts[0]["switches"]["fused_optimizer"] is False
    assert starts[-1]["switches"]["fused_optimizer"] is True


def test_one_process_of_bn_groups_trains_what_as_many_ranks_of_one_group_train(tmp_path):
    # 128 images in BN groups of 32 on one process against 4 gloo ranks of 32: the same 4 groups
    # of the same images (a rank takes its slice of each global batch), each normalized alone,
    # the gradients averaged, the running averages too; equal but for float rounding (other
    # summation orders) after 3 steps. Grouping switched off (BN over all 128) trains another
    # network: the tolerance is a hundredth of its distance (measured: a 32,000th). The sigmoid
    # variant, because ReLU and max pooling make the ReLU networks' gradients discontinuous:
    # measured in fp64, a 1e-7 relative change of bn_x5's inputs changes its gradients by 0.7%,
    # so that any two summation orders part within two steps (a 3rd of that distance after 3).
    # 16-pixel images (1x1 maps from 3c on), 3 steps of 128: the few seconds of each run.
    steps = ("experiment=bn_x5_sigmoid", "trainer.max_paper_steps=12", "data.image_size=16")
    steps += ("trainer.probe_images=0",)
    every = [f"trainer.{key}_every_paper_steps={n}" for key, n in (("log", 4), ("eval", 12))]
    once = ["trainer.checkpoint_every_paper_steps=12", "trainer.population_batches=1"]
    runs = {"grouped": (1, 128, 32), "ranks": (4, 32, 32), "whole": (1, 128, 128)}
    for name, (ranks, batch, bn_batch) in runs.items():
        sizes = (f"trainer.batch_per_rank={batch}", f"trainer.bn_batch={bn_batch}")
        result = train(tmp_path / name, *steps, *every, *once, *sizes, ranks=ranks)
        assert result.returncode == 0, result.stderr
    grouped, ranks, whole = (final_weights(tmp_path / name) for name in runs)
    assert distance(grouped, ranks) < distance(grouped, whole) / 100  # running averages too
    losses = {
        name: [r["loss"] for r in read_metrics(tmp_path / name) if r["kind"] == "train"]
        for name in runs
    }
    assert len(losses["grouped"]) == 3
    assert losses["grouped"] == pytest.approx(losses["ranks"], rel=1e-5)
    assert losses["grouped"][1:] != pytest.approx(losses["whole"][1:], rel=1e-2)
    done = [summary(tmp_path / name) for name in runs]
    assert [s["final_bn_stats"] for s in done] == ["population"] * 3  # Algorithm 2 over groups
    batches = [(s["bn_batch"], s["batch_per_rank"], s["global_batch"]) for s in done]
    assert batches == [(32, 128, 128), (32, 32, 128), (128, 128, 128)]


def distance(a: dict, b: dict) -> float:
    """The distance between two networks' states: every parameter and BN statistic."""
    squares = [(a[k].double() - b[k].double()).norm() ** 2 for k in a if a[k].is_floating_point()]
    return float(sum(squares) ** 0.5)
