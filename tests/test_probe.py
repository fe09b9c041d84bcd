"""The input-distribution probe: numpy's percentiles, the input of the nonlinearity (after BN,
before an in-place ReLU), and a model left exactly as it was found."""

import numpy as np
import pytest
import torch
from torch import nn

from bn_repro.models.inception import FIGURE_5, probe_blocks
from bn_repro.models.layers import NormAct
from bn_repro.schema import Activation, ConfigError, Norm
from bn_repro.train.probe import InputProbe, percentiles
from tests.helpers import model_of


def test_percentiles_are_numpys():
    values = torch.randn(7, 13, 5, generator=torch.Generator().manual_seed(0))
    qs = (15, 50, 85, 0, 100, 33.3)
    assert percentiles(values, qs) == pytest.approx(np.percentile(values.numpy(), qs), rel=1e-6)
    assert percentiles(torch.arange(11.0), (15, 50, 85)) == pytest.approx([1.5, 5.0, 8.5])


def two_layers(norm: Norm, activation: Activation) -> nn.Sequential:
    style = NormAct(norm, activation, 1e-5, 0.1)
    return nn.Sequential(style.linear(6, 4), style.linear(4, 3))


def test_the_probe_reads_the_input_of_the_nonlinearity_after_bn_before_an_inplace_relu():
    torch.manual_seed(0)
    model = two_layers(Norm.batchnorm, Activation.relu)
    images = torch.randn(50, 6)
    with torch.no_grad():
        model[0].bn.weight.fill_(2.0)  # gamma 2, beta 0.5: the normalized input is visible
        model[0].bn.bias.fill_(0.5)
    probe = InputProbe({"first": model[0], "second": model[1]}, images, channel=2)
    measured = probe.measure(model)
    pre = model[0].layer(images)[:, 2]
    expected = 2.0 * (pre - pre.mean()) / torch.sqrt(pre.var(unbiased=False) + 1e-5) + 0.5
    assert [measured[f"first/p{q}"] for q in (15, 50, 85)] == pytest.approx(
        np.percentile(expected.detach().numpy(), (15, 50, 85)), abs=1e-5
    )
    assert measured["first/p15"] < 0  # read before the in-place ReLU zeroed it
    assert set(measured) == {f"{n}/p{q}" for n in ("first", "second") for q in (15, 50, 85)} | {
        "probe_s"
    }


def test_the_probe_leaves_weights_statistics_modes_and_random_numbers_alone():
    model = model_of("bn_x5_sigmoid", "model.aux_heads=true", num_classes=10)
    model.eval()
    model.trunk.inception_3a.train()  # a mix of modes, restored as it was
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    probe = InputProbe(probe_blocks(model), torch.randn(4, 3, 32, 32), channel=5)
    rng = torch.get_rng_state()  # the auxiliary heads' dropout draws none
    measured = probe.measure(model)
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in model.modules()] == modes
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    layers = {k.split("/")[0] for k in measured if "/" in k}
    assert layers == {"conv1", "conv2", *(spec.name for spec in FIGURE_5)}


def test_a_channel_beyond_the_narrowest_layer_is_refused():
    model = two_layers(Norm.none, Activation.sigmoid)
    with pytest.raises(ConfigError, match="probe channel 3: the probed layers have 3 channels"):
        InputProbe({"a": model[0], "b": model[1]}, torch.zeros(2, 6), channel=3)
