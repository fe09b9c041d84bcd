"""BN over groups of a rank's batch (trainer.bn_batch): each group normalized as its own BN
layer would, the running averages as the groups' averaged, and the network of a run whose BN
batch is its whole batch exactly the plain-BN one it always was."""

import copy
import dataclasses
import logging

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from bn_repro import paper
from bn_repro.evaluate import members
from bn_repro.hparams import effective_hparams
from bn_repro.models.ghost_bn import GhostBatchNorm1d, GhostBatchNorm2d
from bn_repro.models.layers import PerActivationBatchNorm
from bn_repro.models.population_stats import batchnorms
from bn_repro.schema import ConfigError
from bn_repro.train import checkpoint
from bn_repro.train.build import (
    build_run_model,
    check_global_batch,
    resume,
    warn_if_bn_batch_differs,
)
from bn_repro.train.compute import Compute
from bn_repro.train.distributed import Dist
from bn_repro.train.optim import build_optimizer
from bn_repro.train.plan import Progress
from tests.helpers import run_config

CPU = Compute(torch.device("cpu"), None, channels_last=False)


def grouped_and_plain(kind: str, group: int):
    """A grouped BN layer of `kind`, and the plain layer each group is compared with, both with
    the same random affine parameters; and the shape of an input's image."""
    if kind == "2d":
        grouped, plain, shape = GhostBatchNorm2d(5, group, 1e-5, 0.1), nn.BatchNorm2d(5), (5, 6, 6)
    elif kind == "1d":
        grouped, plain, shape = GhostBatchNorm1d(7, group, 1e-5, 0.1), nn.BatchNorm1d(7), (7,)
    else:  # Sec. 4.2.3's per-activation BN, in groups
        grouped = PerActivationBatchNorm(3, 4, 1e-5, 0.1, group)
        plain, shape = PerActivationBatchNorm(3, 4, 1e-5, 0.1), (3, 4, 4)
    with torch.no_grad():
        grouped.weight.uniform_(0.5, 1.5)
        grouped.bias.uniform_(-1, 1)
    plain.load_state_dict(grouped.state_dict())
    return grouped, plain, shape


@pytest.mark.parametrize("kind", ["2d", "1d", "per_activation"])
def test_each_group_is_normalized_as_its_own_bn_layer_would(kind):
    torch.manual_seed(0)
    group, groups = 4, 3
    grouped, plain, shape = grouped_and_plain(kind, group)
    x = torch.randn(group * groups, *shape) * 3 + 2
    if kind == "2d":
        x = x.contiguous(memory_format=torch.channels_last)  # as the network runs on a GPU
    x.requires_grad_()
    out = grouped(x)
    # each group through its own copy of the plain layer, as one replica of `group` images
    replicas = [copy.deepcopy(plain) for _ in range(groups)]
    parts = x.detach().split(group)
    inputs = [part.clone().requires_grad_() for part in parts]
    expected = torch.cat([bn(part) for bn, part in zip(replicas, inputs, strict=True)])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    if kind == "2d":
        assert out.is_contiguous(memory_format=torch.channels_last)
    # the running averages move as the replicas' averaged ones
    for name in ("running_mean", "running_var"):
        averaged = torch.stack([getattr(bn, name) for bn in replicas]).mean(0)
        torch.testing.assert_close(getattr(grouped, name), averaged, rtol=1e-5, atol=1e-6)
    assert grouped.num_batches_tracked == 1
    # gradients: the input's per group, the affine parameters' summed over the groups
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(
        x.grad, torch.cat([part.grad for part in inputs]), atol=1e-5, rtol=1e-5
    )
    for name in ("weight", "bias"):
        summed = sum(getattr(bn, name).grad for bn in replicas)
        torch.testing.assert_close(getattr(grouped, name).grad, summed, rtol=1e-5, atol=1e-5)


def test_in_evaluation_a_grouped_layer_is_plain_bn_on_its_running_averages():
    grouped, plain, shape = grouped_and_plain("2d", 4)
    grouped.train()(torch.randn(8, *shape) + 1)
    plain.load_state_dict(grouped.state_dict())
    x = torch.randn(3, *shape)  # any batch: evaluation does not group
    torch.testing.assert_close(grouped.eval()(x), plain.eval()(x))


def test_a_batch_that_is_not_a_multiple_of_the_group_is_refused():
    grouped, _, shape = grouped_and_plain("2d", 4)
    with pytest.raises(ValueError, match="BN in groups of 4 images got a batch of 6"):
        grouped(torch.randn(6, *shape))


def test_grouped_bn_traces_as_one_graph_for_torch_compile():
    # one pass over the batch, not a loop over the groups in Python: dynamo (its trace only,
    # no inductor build) sees a single graph, which the compiler fuses
    grouped, _, shape = grouped_and_plain("2d", 4)
    explained = torch._dynamo.explain(grouped)(torch.randn(16, *shape))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)


def bn_types(model: nn.Module) -> set[type]:
    return {type(bn) for bn in batchnorms(model)}


def test_a_run_whose_bn_batch_is_its_batch_has_the_plain_bn_network_of_before():
    for overrides in (["trainer.batch_per_rank=32"], ["trainer.bn_batch=null"]):
        cfg = run_config("bn_x5", "model.aux_heads=true", *overrides)
        assert bn_types(build_run_model(cfg, CPU)) == {nn.BatchNorm2d, nn.BatchNorm1d}
    grouped_cfg = run_config("bn_x5", "model.aux_heads=true", "trainer.batch_per_rank=256")
    grouped = build_run_model(grouped_cfg, CPU)
    assert bn_types(grouped) == {GhostBatchNorm2d, GhostBatchNorm1d}
    assert {bn.group for bn in batchnorms(grouped)} == {paper.BATCH_SIZE}
    plain = build_run_model(run_config("bn_x5", "model.aux_heads=true"), CPU)
    # the same weights from the same seed, and checkpoints that load into either
    for (name, a), (other, b) in zip(
        grouped.state_dict().items(), plain.state_dict().items(), strict=True
    ):
        assert name == other
        torch.testing.assert_close(a, b)


def test_per_activation_bn_groups_too():
    cfg = run_config("bn_x5", "model.per_activation_bn=[5b]", "trainer.batch_per_rank=64")
    per_activation = [
        bn for bn in batchnorms(build_run_model(cfg, CPU)) if isinstance(bn, PerActivationBatchNorm)
    ]
    assert per_activation and {bn.group for bn in per_activation} == {paper.BATCH_SIZE}


def test_the_effective_hyperparameters_show_the_bn_batch_and_the_update_apart():
    hp = effective_hparams(run_config("bn_x5", "trainer.batch_per_rank=256"), world_size=2)
    assert (hp.bn_batch, hp.batch_per_rank, hp.global_batch) == (32, 256, 512)
    assert effective_hparams(run_config("inception")).bn_batch is None  # no BN
    old = effective_hparams(
        run_config("bn_x5", "trainer.bn_batch=null", "trainer.batch_per_rank=8")
    )
    assert old.bn_batch == 8  # null: the rank's whole batch, as configs saved before the key


def test_the_warning_goes_by_the_bn_batch(caplog):
    with caplog.at_level(logging.WARNING):
        warn_if_bn_batch_differs(paper.BATCH_SIZE)  # 256 images a rank in groups of 32
        warn_if_bn_batch_differs(None)  # no BN
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        warn_if_bn_batch_differs(8)
    assert "BN normalizes over 8 images (trainer.bn_batch), the paper over 32" in caplog.text


def resolved(cfg) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)


def saved_before_groups(cfg) -> dict:
    """cfg's config.json as a version of bn-repro without trainer.bn_batch, cuda_graph and
    global_batch wrote it."""
    saved = resolved(cfg)
    for key in ("bn_batch", "cuda_graph", "global_batch"):
        del saved["trainer"][key]
    return saved


def test_a_config_saved_before_bn_groups_loads_as_bn_over_each_ranks_batch(tmp_path):
    saved = saved_before_groups(
        run_config("bn_x5", "trainer.batch_per_rank=8", "trainer.bn_batch=8")
    )
    cfg = members.run_config(saved, tmp_path / "step.pt")  # bn-repro evaluate's reading
    assert (cfg.trainer.bn_batch, cfg.trainer.cuda_graph, cfg.trainer.global_batch) == (
        None,
        False,
        None,
    )
    assert effective_hparams(cfg).bn_batch == 8  # Algorithm 2 in evaluate: over the batch
    assert bn_types(build_run_model(cfg, CPU)) == {nn.BatchNorm2d}


def checkpointed(run_dir, config: dict, model: nn.Module, optimizer) -> None:
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "progress": dataclasses.asdict(Progress(step=3)),
        "loader": [None],
        "rng": [[torch.get_rng_state()]],
        "config": config,
        "global_batch": config["trainer"]["batch_per_rank"],
    }
    checkpoint.save(run_dir, 3, payload, keep=1)


def test_a_run_resumes_with_its_bn_batch_only_and_one_saved_before_groups_with_its_batch(tmp_path):
    single = Dist(0, 1, 0, torch.device("cpu"), "single")
    cfg = run_config("bn_x5", "data.image_size=32", "trainer.batch_per_rank=64")
    model = build_run_model(cfg, CPU)
    optimizer = build_optimizer(model, effective_hparams(cfg), fused=False)
    checkpointed(tmp_path / "a", resolved(cfg), model, optimizer)
    other = run_config(
        "bn_x5", "data.image_size=32", "trainer.batch_per_rank=64", "trainer.bn_batch=64"
    )
    with pytest.raises(ConfigError, match=r"other settings of \['trainer.bn_batch'\]"):
        resume(tmp_path / "a", resolved(other), 64, model, optimizer, single)
    # saved before the key: it normalized over each rank's whole batch, as bn_batch=64 does
    checkpointed(tmp_path / "b", saved_before_groups(other), model, optimizer)
    progress, _ = resume(tmp_path / "b", resolved(other), 64, model, optimizer, single)
    assert progress.step == 3
    with pytest.raises(ConfigError, match=r"other settings of \['trainer.bn_batch'\]"):
        resume(tmp_path / "b", resolved(cfg), 64, model, optimizer, single)


def test_a_fixed_update_starts_only_on_the_ranks_that_give_it():
    check_global_batch(None, 2048, 8)
    check_global_batch(256, 256, 1)
    with pytest.raises(ConfigError) as error:
        check_global_batch(256, 2048, 8)
    assert str(error.value) == (
        "trainer.global_batch=256, and 8 ranks of 256 images give 2048: start it on 1 rank(s)"
        " (hydra.launcher.gpus_per_node, sbatch --gpus-per-node), or trainer.batch_per_rank=32,"
        " or trainer.global_batch=null to train the update these ranks give"
    )
