"""Figure 4's ensemble members: BN-x30 with the changes Sec. 4.2.3 names, and those changes in
the network."""

import pytest
import torch
from torch import nn

from bn_repro import paper
from bn_repro.compose import sweep_jobs
from bn_repro.models.layers import PerActivationBatchNorm
from bn_repro.models.population_stats import recompute_population_stats
from bn_repro.schema import ConfigError
from tests.helpers import model_of
from tests.test_configs import composed_jobs, flat

# Every member is BN-x30 trained for the ensemble's 6M steps from its own seed, plus its changes.
COMMON = {"trainer.max_paper_steps", "seed"}
MEMBERS = [
    ("ensemble/bn_x30_init", {"model.conv_init_scale"}),
    ("ensemble/bn_x30_dropout5", {"model.dropout"}),
    ("ensemble/bn_x30_dropout10", {"model.dropout"}),
    ("ensemble/bn_x30_per_activation", {"model.per_activation_bn"}),
    ("ensemble/bn_x30_init_dropout5", {"model.conv_init_scale", "model.dropout"}),
    ("ensemble/bn_x30_dropout10_per_activation", {"model.dropout", "model.per_activation_bn"}),
]


@pytest.mark.parametrize("member, changes", MEMBERS)
def test_each_member_is_bn_x30_with_the_changes_the_paper_names(member, changes):
    base, ours = flat("bn_x30"), flat(member)
    assert base.keys() == ours.keys()
    assert {key for key in base if base[key] != ours[key]} - {"name", "run_dir"} == COMMON | changes
    assert ours["trainer.max_paper_steps"] == paper.ENSEMBLE.peak_steps
    assert ours["model.dropout"] in (0.0, paper.ENSEMBLE.dropout_low, paper.ENSEMBLE.dropout_high)


def test_the_members_make_up_the_papers_ensemble():
    dropouts = [flat(member)["model.dropout"] for member, _ in MEMBERS]
    assert len(MEMBERS) == paper.ENSEMBLE.members
    assert {paper.ENSEMBLE.dropout_low, paper.ENSEMBLE.dropout_high} <= set(dropouts)
    assert len({flat(member)["seed"] for member, _ in MEMBERS}) == len(MEMBERS)


def test_the_figure4_preset_trains_the_six_members_in_their_own_directories():
    runs = composed_jobs("sweep=figure4")
    assert sorted(r.name for r in runs) == sorted(m.removeprefix("ensemble/") for m, _ in MEMBERS)
    assert len({r.run_dir for r in runs}) == len(runs) == 6
    assert all(r.optim.lr_multiplier == 30 for r in runs)


def test_the_members_stay_out_of_the_figure3_globs():
    assert all("ensemble" not in job[0] for job in sweep_jobs(["experiment=glob(*)"]))


def test_per_activation_bn_normalizes_every_activation_of_5b_on_its_own():
    model = model_of("ensemble/bn_x30_per_activation", num_classes=10)  # at 224 pixels
    special = {
        name: bn for name, bn in model.named_modules() if isinstance(bn, PerActivationBatchNorm)
    }
    assert special and all(name.startswith("trunk.inception_5b.") for name in special)
    assert {bn.map_shape[1:] for bn in special.values()} == {(7, 7)}
    assert all(bn.num_features == bn.map_shape[0] * 49 for bn in special.values())
    plain = [m for m in model.trunk.inception_5a.modules() if isinstance(m, nn.BatchNorm2d)]
    assert plain  # the module before keeps convolutional BN


def test_per_activation_statistics_are_algorithm_2_per_activation():
    torch.manual_seed(0)
    overrides = ("data.image_size=64",)  # 5b's maps are 2 x 2
    model = model_of("ensemble/bn_x30_per_activation", *overrides, num_classes=10)
    bn = next(m for m in model.modules() if isinstance(m, PerActivationBatchNorm))
    seen = []
    bn.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    batches = [torch.randn(4, 3, 64, 64) for _ in range(3)]
    assert recompute_population_stats(model, iter(batches), 3) == 3
    flat_inputs = torch.stack([x.flatten(1) for x in seen])  # (batches, m, activations)
    torch.testing.assert_close(bn.running_mean, flat_inputs.mean(1).mean(0), rtol=1e-4, atol=1e-5)
    # m = 4 images per activation (not m x p x q): Var[x] = m/(m-1) E_B[sigma^2_B]
    expected = 4 / 3 * flat_inputs.var(1, unbiased=False).mean(0)
    torch.testing.assert_close(bn.running_var, expected, rtol=1e-4, atol=1e-5)
    model.eval()(torch.randn(2, 3, 64, 64))  # inference: a fixed affine map per activation


def test_per_activation_bn_refuses_another_image_size():
    model = model_of("ensemble/bn_x30_per_activation", "data.image_size=64", num_classes=10)
    with pytest.raises(ValueError, match="built for another image size"):
        model(torch.randn(2, 3, 96, 96))


def test_larger_initial_weights_scale_the_convolutions_only():
    torch.manual_seed(0)
    plain = model_of("bn_x30", num_classes=10).state_dict()
    torch.manual_seed(0)
    model = model_of("ensemble/bn_x30_init", num_classes=10)
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            torch.testing.assert_close(module.weight, 2 * plain[f"{name}.weight"])
        elif isinstance(module, nn.Linear):
            torch.testing.assert_close(module.weight, plain[f"{name}.weight"])


@pytest.mark.parametrize("member, p", [("bn_x30_dropout5", 0.05), ("bn_x30_dropout10", 0.10)])
def test_the_members_dropout_sits_before_the_classifier(member, p):
    model = model_of(f"ensemble/{member}", num_classes=10)
    assert model.trunk.dropout.p == p
    assert not hasattr(model_of("bn_x30", num_classes=10).trunk, "dropout")


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["model.per_activation_bn=[4e]"], "['4e'] not among Fig. 5's stride-1 Inception modules"),
        (["model.norm=none"], "asks for BN in a network without it"),
        (["model.dropout=1"], "model.dropout must lie in [0, 1), got 1.0"),
    ],
)
def test_bad_member_settings_say_what_to_fix(overrides, expected):
    with pytest.raises(ConfigError) as error:
        model_of("ensemble/bn_x30_per_activation", *overrides, num_classes=10)
    assert expected in str(error.value)
