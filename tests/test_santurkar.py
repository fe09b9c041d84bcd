"""Santurkar et al.'s measurements on networks whose answers are known."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

from bn_repro.figure1.santurkar import (
    batch_loss,
    gradient,
    gradient_ics,
    landscape,
    parameters_of,
)


class Parallel(nn.Module):
    """Layers side by side on the same input, each with its own outputs: under a squared error
    the loss is a sum of one term per layer, so no layer's gradient depends on another's
    weights, and updating the earlier ones shifts nothing."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(5, 3), nn.Linear(5, 3), nn.Linear(5, 3)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x), self.c(x)], dim=1)


def layers_of(model: nn.Module) -> list[tuple[str, list[str]]]:
    return [
        (name, [f"{name}.{key}" for key, _ in layer.named_parameters()])
        for name, layer in model.named_children()
    ]


def test_layers_that_do_not_interact_have_no_internal_covariate_shift():
    torch.manual_seed(0)
    model = Parallel()
    images, targets = torch.randn(16, 5), torch.randn(16, 9)

    def loss_at(params):
        return ((functional_call(model, params, (images,)) - targets) ** 2).sum()

    ics = gradient_ics(loss_at, parameters_of(model), layers_of(model), lr=0.5)
    for name in ("a", "b", "c"):
        assert ics[f"{name}/l2"] == pytest.approx(0, abs=1e-7)
        assert ics[f"{name}/cosine"] == pytest.approx(1, abs=1e-6)


def test_ics_of_a_chain_is_the_gradient_after_the_earlier_layers_moved():
    # L = (w2 w1 x - y)^2 / 2 with scalars: G1 = r w2 x, G2 = r w1 x with r = w2 w1 x - y. After
    # w1 -> w1 - lr G1, G'2 = r' w1' x; layer 1 has no earlier layer, so G'1 = G1.
    w1, w2, x, y, lr = 0.8, -1.5, 2.0, 1.0, 0.1
    params = {"w1": torch.tensor(w1), "w2": torch.tensor(w2)}

    def loss_at(p):
        return (p["w2"] * p["w1"] * x - y) ** 2 / 2

    r = w2 * w1 * x - y
    g1, g2 = r * w2 * x, r * w1 * x
    w1_moved = w1 - lr * g1
    g2_moved = (w2 * w1_moved * x - y) * w1_moved * x
    ics = gradient_ics(loss_at, params, [("one", ["w1"]), ("two", ["w2"])], lr)
    assert ics["one/l2"] == 0 and ics["one/cosine"] == 1
    assert ics["two/l2"] == pytest.approx(abs(g2 - g2_moved), rel=1e-5)
    assert ics["two/cosine"] == pytest.approx(1.0 if g2 * g2_moved > 0 else -1.0)
    assert g2 != pytest.approx(g2_moved)  # a real shift, not a zero by construction


def test_a_constant_loss_has_a_flat_landscape():
    params = {"w": torch.randn(4, 3)}
    marks = landscape(lambda p: p["w"].sum() * 0 + 2.5, params, [0.05, 0.2, 0.4])
    assert marks["loss_range"] == 0 and marks["loss_min"] == marks["loss_max"] == 2.5
    assert marks["grad_change_max"] == 0 and marks["beta_smoothness"] == 0


def test_a_quadratic_landscape_has_its_known_ranges():
    # L = |w|^2 / 2: g = w, L(w - eta g) = (1 - eta)^2 |w|^2 / 2, the gradient changes by eta |w|,
    # and the gradient changes by exactly 1 per unit moved (beta = 1).
    w = torch.tensor([3.0, -4.0])  # |w| = 5
    marks = landscape(lambda p: (p["w"] ** 2).sum() / 2, {"w": w}, [0.1, 0.4])
    assert marks["loss"] == pytest.approx(12.5)
    assert (marks["loss_min"], marks["loss_max"]) == pytest.approx((0.36 * 12.5, 0.81 * 12.5))
    assert (marks["grad_change_min"], marks["grad_change_max"]) == pytest.approx((0.5, 2.0))
    assert marks["beta_smoothness"] == pytest.approx(1.0)


def test_measurements_leave_bn_statistics_and_weights_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Sigmoid(), nn.Linear(4, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss_at = batch_loss(model, torch.randn(8, 5), torch.randint(3, (8,)))
    params = parameters_of(model)
    landscape(loss_at, params, [0.1, 0.2])
    gradient_ics(loss_at, params, [("0", ["0.weight", "0.bias"]), ("3", ["3.weight"])], 0.1)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in model.parameters())
    loss, grads = gradient(loss_at, params)
    assert grads["1.weight"].abs().sum() > 0 and loss > 0  # BN's gamma is a parameter too
