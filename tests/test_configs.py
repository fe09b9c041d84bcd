"""Every experiment composes, and each differs from its neighbour in the keys the paper names."""

import math
import shutil

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import OmegaConf

from bn_repro import compose as compose_module
from bn_repro import paper
from bn_repro.compose import compose, experiments, sweep_jobs, to_object
from bn_repro.hparams import effective_hparams, lr_scale
from bn_repro.schema import ConfigError, LrScaling, RunConfig
from tests.helpers import run_config

SEC_4_2_1_KEYS = {
    "model.dropout",
    "model.lrn",
    "optim.l2_divisor",
    "optim.decay_speedup",
    "data.photometric",
    "data.shuffle",
}
PAPER_DIFFS = [
    ("inception", "bn_baseline", {"model.norm"}),
    # with Sec. 4.2.1's faster decay the run is shorter (configs/experiment/bn_x5.yaml says why)
    ("bn_baseline", "bn_x5", SEC_4_2_1_KEYS | {"optim.lr_multiplier", "trainer.max_paper_steps"}),
    ("bn_x5", "bn_x30", {"optim.lr_multiplier"}),
    ("bn_x5", "bn_x5_sigmoid", {"model.activation"}),
    ("inception", "inception_sigmoid", {"model.activation"}),
]


def flat(experiment: str) -> dict:
    container = OmegaConf.to_container(compose([f"experiment={experiment}"]), resolve=True)

    def walk(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    return dict(walk(container))


def test_the_six_experiments_exist():
    assert experiments() == sorted(
        ["inception", "bn_baseline", "bn_x5", "bn_x30", "bn_x5_sigmoid", "inception_sigmoid"]
    )


@pytest.mark.parametrize("experiment", experiments())
def test_every_experiment_composes_under_its_own_name(experiment):
    assert run_config(experiment).name == experiment


@pytest.mark.parametrize("before, after, keys", PAPER_DIFFS)
def test_variants_differ_in_exactly_the_keys_the_paper_names(before, after, keys):
    a, b = flat(before), flat(after)
    assert a.keys() == b.keys()
    # the label, and the run directory named after it, differ everywhere
    differing = {key for key in a if a[key] != b[key]} - {"name", "run_dir"}
    assert differing == keys


@pytest.mark.parametrize("experiment", sorted(paper.LEARNING_RATES))
def test_effective_learning_rate_is_the_papers(experiment):
    assert effective_hparams(run_config(experiment)).lr == pytest.approx(
        paper.LEARNING_RATES[experiment]
    )


def test_section_4_2_1_factors_reach_the_effective_hyperparameters():
    baseline = effective_hparams(run_config("bn_baseline"))
    fast = effective_hparams(run_config("bn_x5"))
    assert fast.weight_decay == pytest.approx(baseline.weight_decay / 5)
    assert fast.lr_decay_every_paper_steps == pytest.approx(baseline.lr_decay_every_paper_steps / 6)
    assert (baseline.dropout, fast.dropout) == (0.4, 0.0)
    assert (baseline.lrn, fast.lrn) == (True, False)
    assert (baseline.photometric, fast.photometric) == ("full", "reduced")
    assert (baseline.shuffle, fast.shuffle) == ("standard", "thorough")


@pytest.mark.parametrize("rule, factor", [("none", 1.0), ("linear", 8.0), ("sqrt", math.sqrt(8))])
def test_learning_rate_scales_from_the_papers_batch_to_the_global_batch(rule, factor):
    hp = effective_hparams(run_config("bn_x30", f"optim.lr_scaling={rule}"), world_size=8)
    assert (hp.batch_per_rank, hp.global_batch) == (32, 256)
    assert hp.lr == pytest.approx(paper.LEARNING_RATES["bn_x30"] * factor)
    assert lr_scale(LrScaling(rule), paper.BATCH_SIZE) == 1.0


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["experiment=bn_x7"], "Could not find 'experiment/bn_x7'"),
        (["experiment=bn_x5", "optim.lr_multiplyer=5"], "valid keys here: base_lr, lr_multiplier"),
        (
            ["experiment=bn_x5", "+optim.lr_multiplyer=5"],
            "unknown config keys ['optim.lr_multiplyer']",
        ),
        (["experiment=bn_x5", "modle.norm=none"], "Key 'modle' not in 'RunConfig'"),
        (["experiment=bn_x5", "model.norm=layernorm"], "expected one of [none, batchnorm]"),
        (["experiment=bn_x5", "model.lrn=maybe"], "'maybe' is not a valid bool"),
        (["experiment=bn_x5", "optim.base_lr=-0.1"], "optim.base_lr must be positive, got -0.1"),
        (["experiment=bn_x5", "optim.momentum=1.5"], "optim.momentum must lie in [0, 1]"),
        (["experiment=bn_x5", "optim.lr_multiplier=nan"], "must be a finite number"),
        (
            ["experiment=bn_x5", "trainer.compile=fast"],
            "trainer.compile=fast is not a torch.compile mode: use null (no compile) or one of",
        ),
        (["experiment=bn_x5", "data.dali_hw_decoder_load=1.5"], "must lie in [0, 1], got 1.5"),
        (["experiment=bn_x5", "data.prefetch=0"], "data.prefetch must be positive, got 0"),
        (["experiment=bn_x5", "trainer.fused_optimizer=often"], "'often' is not a valid bool"),
        (["experiment=bn_x5", "data.dali_decode=gpu"], "expected one of [roi, full]"),
        (["experiment=bn_x5", "model.norm"], "Error parsing override 'model.norm'"),
        ([], "no experiment chosen: add experiment=NAME"),
        (
            ["experiment=bn_x5", "trainer.batch_per_rank=1"],
            "trainer.batch_per_rank=1 with BN: BN normalizes each channel over the rank's batch",
        ),
        (
            ["experiment=bn_x5", "trainer.batch_per_rank=48"],
            "trainer.batch_per_rank=48 is not a multiple of trainer.bn_batch=32: BN normalizes a"
            " rank's batch in whole groups of bn_batch images; make batch_per_rank a multiple of"
            " 32, or set trainer.bn_batch=48",
        ),
        (
            ["experiment=bn_x5", "trainer.bn_batch=1"],
            "trainer.bn_batch=1: BN needs at least 2 images a group to have a variance",
        ),
        (
            ["experiment=bn_x5", "trainer.batch_per_rank=64", "trainer.probe_images=48"],
            "trainer.probe_images=48 is not a multiple of trainer.bn_batch=32",
        ),
        (
            ["experiment=bn_x5", "trainer.global_batch=100"],
            "trainer.global_batch=100 is not a whole number of ranks' trainer.batch_per_rank=32",
        ),
        (
            ["experiment=bn_x5", "trainer.cuda_graph=true", "trainer.device=cpu"],
            "trainer.cuda_graph=true cannot work with trainer.device=cpu: CUDA graphs capture",
        ),
        (
            ["experiment=bn_x5", "trainer.cuda_graph=true", "trainer.backend=gloo"],
            "cannot work with trainer.backend=gloo: gloo's all-reduce runs on the host",
        ),
        (
            ["experiment=bn_x5", "trainer.cuda_graph=true", "trainer.fused_optimizer=false"],
            "cannot work with trainer.fused_optimizer=false: the graph updates with fused SGD",
        ),
        (
            ["experiment=bn_x5", "trainer.cuda_graph=true", "trainer.compile=reduce-overhead"],
            "cannot work with trainer.compile=reduce-overhead: that mode captures CUDA graphs of",
        ),
    ],
)
def test_user_errors_say_what_to_fix(overrides, expected):
    with pytest.raises(ConfigError) as error:
        compose(overrides)
    assert expected in str(error.value)


def test_a_batch_that_is_no_multiple_of_the_bn_batch_is_refused_with_bn_only():
    assert run_config("inception", "trainer.batch_per_rank=48").trainer.batch_per_rank == 48
    grouped = run_config("bn_x5", "trainer.batch_per_rank=256", "trainer.global_batch=256")
    assert (grouped.trainer.bn_batch, grouped.trainer.global_batch) == (paper.BATCH_SIZE, 256)
    graphed = run_config("bn_x5", "trainer.cuda_graph=true", "trainer.compile=default")
    assert graphed.trainer.cuda_graph  # compiled kernels, captured in the step's graph


def test_one_image_per_rank_is_refused_with_bn_only():
    assert run_config("inception", "trainer.batch_per_rank=1").trainer.batch_per_rank == 1
    two = run_config("bn_x5", "trainer.batch_per_rank=2", "trainer.bn_batch=2")
    assert two.trainer.batch_per_rank == 2


def test_an_experiment_given_twice_is_composed_from_the_last_with_a_warning(capsys):
    assert compose(["experiment=bn_x5", "seed=3", "experiment=bn_x30"]).name == "bn_x30"
    assert capsys.readouterr().err == (
        "bn-repro: experiment= is given 2 times (bn_x5, bn_x30): the last, experiment=bn_x30,"
        " is used\n"
    )
    compose(["experiment=bn_x5"])
    assert capsys.readouterr().err == ""


def composed_jobs(*overrides: str) -> list[RunConfig]:
    return [to_object(compose(job)) for job in sweep_jobs(list(overrides))]


def test_the_figure3_preset_runs_the_five_networks_over_seeds_in_their_own_directories():
    runs = composed_jobs("sweep=figure3")
    assert sorted({r.name for r in runs}) == sorted(row.experiment for row in paper.FIGURE_3)
    assert {r.seed for r in runs} == {0, 1, 2} and len(runs) == 15
    assert len({r.run_dir for r in runs}) == 15
    # the command line wins over the preset, as in bn-repro train -m
    assert {r.seed for r in composed_jobs("sweep=figure3", "seed=7")} == {7}


def test_the_lr_preset_crosses_multipliers_with_and_without_bn_in_their_own_directories():
    runs = composed_jobs("sweep=lr_multipliers")
    grid = {(r.model.norm.value, r.optim.lr_multiplier) for r in runs}
    assert {1, 5, 30} <= {multiplier for _, multiplier in grid}
    assert grid == {(norm, m) for norm in ("none", "batchnorm") for _, m in grid}
    assert len({r.run_dir for r in runs}) == len(runs) == len(grid)


@pytest.mark.parametrize("sweep", ["figure3", "lr_multipliers", "figure4"])
def test_every_sweep_preset_trains_a_gpu_as_8_replicas_of_the_papers_bn_batch(sweep):
    for run in composed_jobs(f"sweep={sweep}"):
        batches = (run.trainer.batch_per_rank, run.trainer.bn_batch, run.trainer.global_batch)
        assert batches == (256, paper.BATCH_SIZE, 256)
        hp = effective_hparams(run)
        assert (hp.lr_scale, hp.warmup_paper_steps) == (256 / paper.BATCH_SIZE, 0)
        bn = run.model.norm.value == "batchnorm"
        assert hp.bn_batch == (paper.BATCH_SIZE if bn else None)
    # placement=ranks: back to ranks of the paper's 32 images
    one = to_object(compose([f"sweep={sweep}", "placement=ranks", "experiment=bn_x5"]))
    assert (one.trainer.batch_per_rank, one.trainer.global_batch) == (paper.BATCH_SIZE, None)


def test_a_machines_local_config_applies_to_every_run(tmp_path, monkeypatch):
    configs = tmp_path / "configs"
    shutil.copytree(compose_module.CONFIG_DIR, configs)
    (configs / "local").mkdir(exist_ok=True)
    (configs / "local" / "default.yaml").write_text(LOCAL)
    monkeypatch.setattr(compose_module, "CONFIG_DIR", configs)
    assert compose(["experiment=bn_x5"]).data.root == "/shared/ilsvrc2012-prepared"
    assert compose(["experiment=bn_x5", "data=mini"]).data.root == "data/mini/prepared"
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        launcher = hydra_compose("train", ["experiment=bn_x5"], return_hydra_config=True)
    assert launcher.hydra.launcher.partition == "gpu"
    assert launcher.hydra.launcher.gpus_per_node == 4


LOCAL = """\
# @package _global_
defaults:
  - override /hydra/launcher: slurm
paths:
  imagenet: /shared/ilsvrc2012-prepared
hydra:
  launcher:
    partition: gpu
    gpus_per_node: 4
"""
