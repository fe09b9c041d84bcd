"""L2 applies to the weights of convolutions and linear layers only, chosen by module type."""

import pytest
from torch import nn

from bn_repro.hparams import effective_hparams
from bn_repro.train.optim import build_optimizer
from tests.helpers import model_of, run_config


@pytest.mark.parametrize("experiment", ["inception", "bn_x5"])
def test_bn_parameters_and_biases_are_not_decayed(experiment):
    model = model_of(experiment, "model.aux_heads=true")
    hp = effective_hparams(run_config(experiment))
    decayed, free = build_optimizer(model, hp, fused=False).param_groups
    assert decayed["weight_decay"] == hp.weight_decay and free["weight_decay"] == 0
    decayed_ids = {id(p) for p in decayed["params"]}
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            expected = isinstance(module, nn.Conv2d | nn.Linear) and name == "weight"
            assert (id(parameter) in decayed_ids) == expected, (type(module).__name__, name)
    assert len(decayed["params"]) + len(free["params"]) == len(list(model.parameters()))
    assert free["params"]  # biases without BN, gamma/beta with it
