"""Algorithm 2: BN inference statistics averaged over training mini-batches, unbiased variance."""

import pytest
import torch
from torch import nn

from bn_repro.models import build_model
from bn_repro.models.population_stats import population_statistics, recompute_population_stats
from tests.helpers import model_of, run_config


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_recomputed_statistics_match_a_hand_computation_of_algorithm_2():
    torch.manual_seed(0)
    model = model_of("bn_x5", "model.aux_heads=true", num_classes=10).eval()
    inputs = {bn: [] for bn in batchnorms(model)}
    for bn in inputs:
        bn.register_forward_pre_hook(lambda module, args: inputs[module].append(args[0].clone()))
    batches = [torch.randn(4, 3, 64, 64) * 2 + 1 for _ in range(3)]

    assert recompute_population_stats(model, iter(batches), num_batches=3) == 3

    for bn, seen in inputs.items():
        assert len(seen) == 3
        dims = [0] + list(range(2, seen[0].dim()))  # over the batch and every position
        m = seen[0].numel() // seen[0].shape[1]  # m' = m * p * q values per feature map
        means = torch.stack([x.mean(dims) for x in seen])
        variances = torch.stack([x.var(dims, unbiased=False) for x in seen])  # sigma^2_B
        torch.testing.assert_close(bn.running_mean, means.mean(0), rtol=1e-4, atol=1e-5)
        expected_var = m / (m - 1) * variances.mean(0)  # Var[x] = m/(m-1) E_B[sigma^2_B]
        torch.testing.assert_close(bn.running_var, expected_var, rtol=1e-4, atol=1e-5)
    assert not model.training
    assert all(bn.momentum == 0.1 for bn in batchnorms(model))


def test_only_the_requested_number_of_batches_is_used():
    model = model_of("bn_x5", num_classes=10)
    batches = (torch.randn(2, 3, 32, 32) for _ in range(10))
    assert recompute_population_stats(model, batches, num_batches=4) == 4
    assert all(bn.num_batches_tracked == 4 for bn in batchnorms(model))


def test_without_batches_the_previous_statistics_are_kept():
    model = model_of("bn_x5", num_classes=10).train()
    model(torch.randn(2, 3, 32, 32))
    before = [bn.running_var.clone() for bn in batchnorms(model)]
    with pytest.raises(ValueError, match="no batches"):
        recompute_population_stats(model, iter([]), num_batches=5)
    for bn, var in zip(batchnorms(model), before, strict=True):
        torch.testing.assert_close(bn.running_var, var)
        assert bn.momentum == 0.1
    assert model.training


def test_networks_without_bn_are_left_alone():
    model = model_of("inception", num_classes=10)
    assert recompute_population_stats(model, iter([torch.randn(2, 3, 32, 32)]), 1) == 0


def test_dropout_is_off_while_the_statistics_are_recomputed():
    model = nn.Sequential(nn.Dropout(0.5), nn.BatchNorm1d(4))
    batches = [torch.randn(64, 4) * 3 + 2 for _ in range(2)]
    recompute_population_stats(model, iter(batches), num_batches=2)
    means = torch.stack([x.mean(0) for x in batches]).mean(0)
    torch.testing.assert_close(model[1].running_mean, means)  # the inputs themselves
    assert model.training and model[0].training  # modes as they were


def test_population_statistics_hold_within_the_block_and_the_running_ones_come_back():
    model = nn.Sequential(nn.BatchNorm1d(3))
    model.train()(torch.randn(16, 3) + 5)
    running = model[0].running_mean.clone()
    batches = [torch.randn(16, 3) - 4 for _ in range(3)]
    halved = []
    with population_statistics(model, iter(batches), 3, lambda m: halved.append(m)) as used:
        assert used == 3 and halved == [model]  # combined (over ranks) once
        torch.testing.assert_close(
            model[0].running_mean, torch.stack([x.mean(0) for x in batches]).mean(0)
        )
    torch.testing.assert_close(model[0].running_mean, running)


def test_over_groups_algorithm_2_averages_the_groups_of_bn_batch_images():
    # a network that normalizes in groups of 4 (trainer.bn_batch): Algorithm 2's mini-batches
    # are the groups, m = 4 images x the positions of a feature map, however many a batch holds
    torch.manual_seed(0)
    group = 4
    cfg = run_config("bn_x5", "model.aux_heads=true")
    model = build_model(cfg.model, 10, 64, bn_group=group).eval()
    inputs = {bn: [] for bn in batchnorms(model)}
    for bn in inputs:
        bn.register_forward_pre_hook(lambda module, args: inputs[module].append(args[0].clone()))
    batches = [torch.randn(3 * group, 3, 64, 64) * 2 + 1 for _ in range(2)]

    assert recompute_population_stats(model, iter(batches), num_batches=2) == 2

    for bn, seen in inputs.items():
        groups = [part for x in seen for part in x.split(group)]  # 2 batches x 3 groups
        assert len(groups) == 6
        dims = [0] + list(range(2, groups[0].dim()))
        m = groups[0].numel() // groups[0].shape[1]  # 4 images x p x q values per feature map
        means = torch.stack([x.mean(dims) for x in groups])
        variances = torch.stack([x.var(dims, unbiased=False) for x in groups])
        torch.testing.assert_close(bn.running_mean, means.mean(0), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(
            bn.running_var, m / (m - 1) * variances.mean(0), rtol=1e-4, atol=1e-5
        )
    assert all(bn.momentum == 0.1 for bn in batchnorms(model))
