"""The benchmarks run and record their numbers with their provenance, and the cost table turns
recorded rates into GPU-hours; the speeds themselves are measured by running the benchmarks,
never asserted here."""

import ast
import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from bn_repro import compose as compose_module
from bn_repro import paper
from bn_repro.bench import train as bench_train_module
from bn_repro.bench.commands import loader_data
from bn_repro.bench.cost import Rate, cost_report
from bn_repro.bench.device import dense_bf16_peak
from bn_repro.bench.stepper import Stepper
from bn_repro.bench.table import write_shared
from bn_repro.bench.train import meet, training_flops
from bn_repro.cli import main
from bn_repro.schema import DataFormat, Device, Photometric, Shuffle
from bn_repro.train.build import build_trainer
from bn_repro.train.distributed import distributed
from tests.helpers import TINY, bn_repro, run_config


def test_bench_loader_writes_a_record_of_every_loader(prepared_small, tmp_path):
    out = tmp_path / "loader.json"
    switches = ["--batch", "8", "--warmup", "1", "--batches", "2", "--rounds", "2", "--out", out]
    overrides = ["data.image_size=32", "data.workers=1"]
    result = bn_repro("bench", "loader", "--root", prepared_small, *switches, *overrides)
    assert result.returncode == 0, result.stderr
    record = json.loads(out.read_text())
    rates = record["results"]["images_per_s"]
    assert set(rates) == {"classic", "torch", "dali", "dali-bare"} and min(rates.values()) > 0
    rounds = record["results"]["rounds"]
    assert all(
        len(rounds[name]) == 2 and rate == sum(rounds[name]) / 2 for name, rate in rates.items()
    )
    assert record["results"]["ratios"]["dali/classic"] == round(rates["dali"] / rates["classic"], 3)
    assert record["command"][:3] == ["bn-repro", "bench", "loader"]
    assert record["machine"]["cores"] >= 1 and record["versions"]["torch"]
    settings = record["settings"]
    assert settings["device"] == "cpu" and settings["batch"] == 8
    assert settings["overrides"][-2:] == overrides
    data = settings["data"]  # like the classic recipe unless overridden, then the overrides
    assert (data["format"], data["photometric"], data["image_size"], data["workers"]) == (
        "folder",
        "none",
        32,
        1,
    )
    assert (data["root"], data["num_classes"]) == (str(prepared_small), 6)


def test_bench_loader_composes_its_data_config_from_configs(prepared_small, tmp_path, monkeypatch):
    configs = tmp_path / "configs"
    shutil.copytree(compose_module.CONFIG_DIR, configs)
    imagenet = configs / "data" / "imagenet.yaml"
    imagenet.write_text(imagenet.read_text().replace("prefetch: 2", "prefetch: 3"))
    monkeypatch.setattr(compose_module, "CONFIG_DIR", configs)
    changes = ["data.photometric=full", "data.format=shards"]
    data, overrides = loader_data("bn_x5", prepared_small, changes)
    assert data.prefetch == 3 and data.num_classes == 6 and data.root == str(prepared_small)
    assert (data.photometric, data.format) == (Photometric.full, DataFormat.shards)
    assert data.shuffle is Shuffle.thorough  # bn_x5's, Sec. 4.2.1
    assert overrides[-2:] == changes


@pytest.mark.parametrize(
    "command, expected",
    [
        (["loader", "data.photometric=fulll"], "Error merging override data.photometric=fulll"),
        (["loader", "data.wokers=2"], "Could not override 'data.wokers'"),
        (["loader", "trainer.precision=bf16"], "bench loader takes data.KEY=VALUE overrides"),
        (["train", "trainer.precison=bf16"], "Could not override 'trainer.precison'"),
    ],
)
def test_a_mistyped_override_says_which_without_a_traceback(prepared_small, command, expected):
    root = ["--root", prepared_small] if command[0] == "loader" else []
    result = bn_repro("bench", *command, *root)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("bn-repro bench: ") and expected in result.stderr


def bench_train(*args, out: Path) -> dict:
    switches = ["--batch", "4", "--warmup", "2", "--steps", "3", "--out", out]
    result = bn_repro("bench", "train", *switches, *args)
    assert result.returncode == 0, result.stderr
    assert f"written to {out}" in result.stdout
    return json.loads(out.read_text())


@pytest.mark.slow
def test_bench_train_times_the_trainers_step_and_counts_its_flops(tmp_path, capsys):
    out = tmp_path / "train.json"
    switches = ["--size", "64", "--profile", "--profile-steps", "1"]
    overrides = ["trainer.channels_last=true", "trainer.fused_optimizer=true"]
    record = bench_train(*switches, *overrides, out=out)
    settings, results = record["settings"], record["results"]
    assert record["command"][:3] == ["bn-repro", "bench", "train"]
    assert settings["experiment"] == "bn_x5" and settings["data"] == "synthetic"
    assert settings["config"]["trainer"]["batch_per_rank"] == 4 and settings["image_size"] == 64
    assert results["device"] == "cpu" and results["world_size"] == 1
    rate = results["images_per_s_per_gpu"]
    assert rate > 0 and 4000 / results["step_ms"] == pytest.approx(rate, abs=0.05)
    assert 0 <= results["data_wait"] < 1 and results["loss"] > 0
    assert results["resolved"] == {
        "precision": "fp32",
        "channels_last": True,
        "overlap_copy": False,
        "fused_optimizer": True,
    }
    # 3 passes x 2 FLOPs x the multiply-adds `bn-repro describe` counts for the same network
    assert main(["describe", "experiment=bn_x5", "data.image_size=64"]) == 0
    macs = int(capsys.readouterr().out.splitlines()[-1].split(": ")[1])
    assert results["training_flops_per_image"] == 6 * macs
    # both rounded (the rate to 0.1 image/s, the TFLOP/s to 0.001): equal within the latter
    assert results["achieved_tflops"] == pytest.approx(rate * 6 * macs / 1e12, abs=1e-3)
    assert results["mfu"] is None and results["notes"]["mfu"] == "no tensor-core peak on a CPU"
    assert results["peak_memory_gib"] is None and results["host_syncs_in_a_step"] is None
    table = Path(results["profile"]["table"])
    assert table == out.with_suffix(".profile.txt") and "aten::convolution" in table.read_text()
    assert out.with_suffix(".trace.json.gz").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["dali", "torch"])
def test_bench_train_reads_prepared_data_with_either_loader(prepared_small, tmp_path, loader):
    out = tmp_path / f"{loader}.json"
    args = ["--data", loader, "--root", prepared_small, "--size", "32", "data.workers=1"]
    record = bench_train(*args, out=out)
    data = record["settings"]["config"]["data"]
    assert (data["loader"], data["root"], data["num_classes"]) == (loader, str(prepared_small), 6)
    assert record["results"]["images_per_s_per_gpu"] > 0


def test_the_trainers_stepper_agrees_as_a_run_does_and_times_a_window_of_its_own(
    tmp_path, monkeypatch
):
    single = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    for name, value in {**single, "MASTER_PORT": "0"}.items():
        monkeypatch.setenv(name, value)  # taken back after distributed() sets them
    controls = ["trainer.control_every_steps=2", "trainer.probe_images=0", f"run_dir={tmp_path}"]
    # not deterministic: that switch is process-wide, and this trainer runs in pytest's process
    controls.append("trainer.deterministic=false")
    cfg = run_config("bn_x5", *TINY, "data.image_size=32", *controls)
    agreed = []
    with distributed(Device.cpu) as dist:
        trainer, progress = build_trainer(cfg, dist, stop_signal=[])
        stepper = Stepper(trainer, progress)
        agree = trainer.agree
        monkeypatch.setattr(trainer, "agree", lambda: agreed.append(progress.step) or agree())
        stepper.advance(3)
        timed = stepper.time(2)
    assert progress.step == 5 and agreed == [2, 4]  # every control_every_steps, as in fit
    # the timed window holds the two timed steps' 8 images each and nothing before them
    assert trainer.window.images == 16
    assert timed["loss"] == pytest.approx(float(trainer.window.loss_sum) / 16)
    assert timed["images_per_s"] > 0 and 0 <= timed["data_wait"] < 1


def test_the_benchmark_drives_the_trainer_through_its_stepper_alone():
    tree = ast.parse(Path(bench_train_module.__file__).read_text())
    used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert "Stepper" in {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    assert used.isdisjoint({"window", "agree", "train_steps", "measure_window"})


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--data", "dali"], "--data dali and --data torch read a prepared set --root DIR"),
        (["--root", "x"], "--data dali and --data torch read a prepared set --root DIR"),
        (["--steps", "0"], "--batch, --size, --steps and --profile-steps must be at least 1"),
        (["trainer.compile=fast"], "trainer.compile=fast is not a torch.compile mode"),
        (["--experiment", "bn_x7"], "Could not find 'experiment/bn_x7'"),
        (["--data", "dali", "--root", "nowhere"], "data.root=nowhere has no manifest.json"),
        (["--batch", "64", "--bn-batch", "48"], "--bn-batch 48: give a number of images that"),
        (["--start-together", "2"], "--start-together N and --meet-at DIR go together"),
        (["--table", "--batch", "32"], "--table chooses the batches, data, modes and record"),
        (["--table", "--modes", "eager,fast"], "--modes eager,fast: choose from eager, compiled"),
        (["--table", "--shared", "1,two"], "--shared 1,two: give numbers of processes"),
    ],
)
def test_bench_train_refuses_bad_arguments(args, expected, capsys):
    assert main(["bench", "train", *args]) == 2
    assert expected in capsys.readouterr().err


def test_the_issues_target_is_about_12_percent_of_an_h100():
    # 10,000 images/s of bn_x5 at 224 pixels against the H100 SXM's dense bf16 peak
    flops = training_flops(run_config("bn_x5"))
    assert flops == 6 * 1_948_605_440
    peak, _ = dense_bf16_peak("NVIDIA H100 80GB HBM3")
    assert 10_000 * flops / (peak * 1e12) == pytest.approx(0.118, abs=0.001)


@pytest.mark.parametrize(
    "device, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H100 PCIe", 756.5),
        ("NVIDIA H100 NVL", 835.5),
        ("NVIDIA H200", 989.4),
        ("NVIDIA GH200 480GB", 989.4),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("Tesla V100-SXM2-32GB", None),
        ("cpu", None),
    ],
)
def test_peaks_are_known_by_device_name_or_left_out_with_the_reason(device, peak):
    found, note = dense_bf16_peak(device)
    assert found == peak
    assert note.startswith(device) or note == "no tensor-core peak on a CPU"


def record(path: Path, device: str, experiment: str, data: str, rate: float, size=224) -> Path:
    settings = {"experiment": experiment, "data": data, "image_size": size}
    results = {"device": device, "images_per_s_per_gpu": rate, "mfu": 0.1}
    path.write_text(json.dumps({"settings": settings, "results": results}))
    return path


def test_bench_cost_turns_the_recorded_rates_into_gpu_hours(tmp_path, capsys):
    h100 = "NVIDIA H100 80GB HBM3"
    paths = [
        record(tmp_path / "a.json", h100, "bn_x5", "synthetic", 10_000),
        record(tmp_path / "b.json", h100, "bn_x5", "dali", 9_000),  # real data: the rate used
        record(tmp_path / "c.json", h100, "bn_x5", "synthetic", 40_000, size=112),
        record(tmp_path / "d.json", "cpu", "inception", "synthetic", 50),
        tmp_path / "loader.json",
    ]
    paths[-1].write_text(json.dumps({"settings": {}, "results": {"images_per_s": {}}}))
    assert main(["bench", "cost", *map(str, paths)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rates = [line for line in lines if line.startswith("| bn_x5 |")]
    assert rates == [
        f"| bn_x5 | {h100} | dali | 9,000 | 10.0% | b.json |",
        f"| bn_x5 | {h100} | synthetic | 10,000 | 10.0% | a.json |",
    ]
    bn_x5 = next(line for line in lines if line.startswith("| BN-x5 |")).split(" | ")
    # 2.1 M paper steps x 32 images / 9,000 images/s = 2.07 h; its 8 M paper steps: 7.9 h
    assert bn_x5[1:] == ["2.1 M", "67.2 M", "9,000 (dali)", "2.1", "8 M paper steps", "7.9 |"]
    assert "| Inception | 31.0 M | 992.0 M | not measured | - |" in "\n".join(lines)
    assert lines[-3:] == [
        f"left out {paths[2]}: 112-pixel images, not 224",
        f"left out {paths[3]}: measured on a CPU",
        f"left out {paths[4]}: not a record of bn-repro bench train",
    ]


def test_the_cost_of_a_whole_figure_3_adds_up_its_variants():
    rates = [Rate("H200", row.experiment, "dali", 10_000, None, "x") for row in paper.FIGURE_3]
    report = cost_report(rates, {row.experiment: 31e6 for row in paper.FIGURE_3})
    # to 72.2%: (31 + 13.3 + 2.1 + 2.7) M paper steps x 32 / 10,000 per s = 43.6 h (the sigmoid
    # never reaches it); five default runs of 31 M paper steps: 137.8 h
    assert report.splitlines()[-1] == "| total | | | | 43.6 | | 137.8 |"


@pytest.mark.slow
def test_bench_train_prints_the_table_of_a_sweep_on_a_cpu_with_the_gpu_cells_saying_why(tmp_path):
    table = ["--table", "--size", "32", "--warmup", "1", "--steps", "1", "--groups", "2"]
    options = ["--modes", "eager,compiled,graphed", "--shared", "2", "--out-dir", tmp_path]
    result = bn_repro("bench", "train", *table, *options)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "| configuration | data | eager | compiled | graphed |" in lines
    rows = {
        tuple(line.split(" | ")[:2]): line.split(" | ")[2:] for line in lines if line[:3] == "| ("
    }
    paper_update = ("| (a) 32 a step, BN over 32 (the paper's update)", "synthetic")
    groups = ("| (b) 64 a step in BN groups of 32", "synthetic")
    for row in (paper_update, groups):  # measured on the CPU: eager, synthetic images
        assert float(rows[row][0].replace(",", "")) > 0
    reasons = {line.split("] ", 1)[1] for line in lines if line.startswith("[")}
    assert reasons == {
        "measured on GPUs only: inductor's CPU build of the network takes minutes, and its CPU"
        " rate says nothing of a GPU sweep's",
        "CUDA graphs capture CUDA kernels: they need a GPU",
        "the GPU DALI pipeline (nvJPEG decoding) needs a GPU",
        "processes sharing one GPU need a GPU",
    }
    assert all(
        cell.startswith("- [")
        for cell in rows[("| (a) x 2 processes sharing the GPU", "synthetic")]
    )
    record = json.loads((tmp_path / "train-cpu-bn_x5-synthetic-64-bn32-eager.json").read_text())
    settings = record["settings"]
    assert (settings["batch_per_gpu"], settings["bn_batch"], settings["mode"]) == (64, 32, "eager")
    assert record["settings"]["config"]["trainer"]["bn_batch"] == 32
    assert (tmp_path / "train-cpu-bn_x5-synthetic-32-bn32-eager.json").is_file()
    cells = json.loads((tmp_path / "table-cpu-bn_x5.json").read_text())["results"]["cells"]
    # rows: (a) and (b) on synthetic images and through DALI, and the row of --shared 2
    assert len(cells) == 5 * 3 and sum(c["images_per_s_per_gpu"] is not None for c in cells) == 2


def test_benchmarks_sharing_a_gpu_meet_before_their_timed_steps(tmp_path):
    arrived, started = [], time.monotonic()

    def benchmark(k: int) -> None:  # threads of one process: the same pid
        time.sleep(0.2 * k)  # the second comes later
        meet(2, tmp_path / "meet", timeout_s=10)
        arrived.append(time.monotonic())

    threads = [threading.Thread(target=benchmark, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(arrived) == 2 and max(arrived) - min(arrived) < 0.15  # both left together
    assert min(arrived) - started >= 0.2  # the first waited for the second


def test_processes_sharing_a_gpu_are_counted_over_their_common_span(tmp_path):
    settings = {"experiment": "bn_x5", "steps": 10, "batch_per_gpu": 32, "processes_per_gpu": 1}
    results = {"device": "GPU", "images_per_s_per_gpu": 300.0}  # each one's own rate
    windows = ([100.0, 101.0], [100.5, 102.0])  # started together, not ended together
    records = [{"settings": settings, "results": results | {"window_unix": w}} for w in windows]
    out = tmp_path / "shared.json"
    write_shared(out, records)
    shared = json.loads(out.read_text())
    # 2 x 10 steps x 32 images from the first start (100) to the last end (102)
    assert shared["results"]["images_per_s_per_gpu"] == 320.0
    assert shared["settings"]["processes_per_gpu"] == 2 and len(shared["results"]["processes"]) == 2


def test_bench_cost_gives_a_sweeps_gpu_hours_per_configuration_measured_and_stated(
    tmp_path, capsys
):
    h200 = "NVIDIA H200"
    paths = [record(tmp_path / f"{k}.json", h200, "bn_x5", "dali", 8_000) for k in "ab"]
    for path, batch, bn_batch, mode in ((paths[0], 32, 32, "eager"), (paths[1], 256, 32, None)):
        saved = json.loads(path.read_text())
        trainer = {"compile": "default", "cuda_graph": True}  # the mode where none is recorded
        saved["settings"] |= {"batch_per_gpu": batch, "bn_batch": bn_batch, "mode": mode}
        saved["settings"]["config"] = {"trainer": trainer}
        path.write_text(json.dumps(saved))
    stated = ["--stated", "256 a step in BN groups of 32 (target)=14,000"]
    assert main(["bench", "cost", *map(str, paths), *stated]) == 0
    lines = capsys.readouterr().out.splitlines()
    # sweep=figure3: 3 seeds x (31 + 31 + 8 + 8 + 8) M paper steps x 32 images = 8.26 G images
    assert "sweep=figure3, 15 runs of 8.26 G images in all" in lines[lines.index("") + 1]
    rows = [line for line in lines if line.startswith(f"| {h200} |") or line.startswith("| - |")]
    assert rows == [  # 8.256e9 images / 8,000 per s = 286.7 h; / 14,000 per s = 163.8 h
        f"| {h200} | 256 a step in BN groups of 32 | compiled+graphed | bn_x5 | dali | 8,000 |"
        " measured (b.json) | 286.7 |",
        f"| {h200} | 32 a step, BN over 32 | eager | bn_x5 | dali | 8,000 | measured (a.json) |"
        " 286.7 |",
        "| - | 256 a step in BN groups of 32 (target) | - | - | - | 14,000 | stated | 163.8 |",
    ]


@pytest.mark.parametrize("stated", ["14000", "fast=", "fast=none", "fast=-3"])
def test_bench_cost_refuses_a_stated_rate_it_cannot_read(stated, capsys):
    assert main(["bench", "cost", "--stated", stated]) == 2
    assert f"--stated {stated}: give CONFIGURATION=IMAGES_PER_S" in capsys.readouterr().err
