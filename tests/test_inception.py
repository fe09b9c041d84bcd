"""The Fig. 5 network: its counts, where BN and the nonlinearities sit, and that it trains."""

import pytest
import torch
from torch import nn

from bn_repro.models.summary import layer_table
from tests.helpers import model_of

BN_VARIANTS = ["bn_baseline", "bn_x5", "bn_x30", "bn_x5_sigmoid"]
PLAIN_VARIANTS = ["inception", "inception_sigmoid"]
NONLINEARITIES = (nn.ReLU, nn.Sigmoid)
CLASSIFIERS = {
    False: {"trunk.fc"},
    True: {"trunk.fc", "aux_heads.inception_4a.classifier", "aux_heads.inception_4d.classifier"},
}

# Parameters at 1000 classes. The default is the 11,278,528. From it:
# - dense first convolution: + 3*64*49 - (3*8*49 + 24*64) = +6,696, giving the count of the
#   literal table with a dense 7x7 (11,285,224);
# - no BN: each normalized layer's 2C gamma/beta become C biases, - sum(C) = -10,016, the
#   difference between the Caffe port with both (11,295,240, osmr/imgclsmob) and that count;
# - 96-channel projections in 4c/4d: 576*32 + 64 (4c), 32*384 + 608*128 - 576*96 + 64 (4d),
#   32*320 (4e's 1x1 reduces), 32*832 (5a's 1x1s) = -90,240;
# - aux heads on 4a (576 channels) and 4d (608): 2 * (2048*1024 + 2*1024 + 1024*1000 + 1000)
#   + (576 + 608) * 128 + 2 * 2*128 = +6,400,464 with BN; without, 1024 + 128 fewer per head.
PARAMETERS = [
    ("bn_x5", [], 11_278_528),
    ("inception", [], 11_268_512),
    ("bn_x5", ["model.stem=dense"], 11_285_224),
    ("inception", ["model.stem=dense"], 11_275_208),
    ("bn_x5", ["model.pool_proj_4cd=96"], 11_188_288),
    ("inception", ["model.pool_proj_4cd=96"], 11_178_336),
    ("bn_x5", ["model.aux_heads=true"], 17_678_992),
    ("inception", ["model.aux_heads=true"], 17_666_672),
]


@pytest.mark.parametrize("experiment, overrides, expected", PARAMETERS)
def test_parameter_counts(experiment, overrides, expected):
    model = model_of(experiment, *overrides)
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize(
    "overrides, giga_macs",
    [
        ([], 1.95),  # "about 30% more compute than GoogLeNet" (1.5 G): 1.3 * 1.5 G
        (["model.stem=dense"], 2.03),  # osmr/imgclsmob lists 2,048.06 M with biases counted
        (["model.pool_proj_4cd=96"], 1.93),
        (["model.aux_heads=true"], 1.95),  # the heads run only in training
    ],
)
def test_multiply_adds_at_224(overrides, giga_macs):
    rows = layer_table(model_of("bn_x5", *overrides), 224)
    total = sum(row.multiply_adds for row in rows if row.inference)
    assert total == pytest.approx(giga_macs * 1e9, rel=0.005)


@pytest.mark.parametrize("overrides", [[], ["model.pool_proj_4cd=96"]])
def test_shapes_through_the_stride_2_modules(overrides):
    shapes = {row.name: row.output_shape for row in layer_table(model_of("bn_x5", *overrides), 224)}
    narrow = bool(overrides)
    assert shapes["conv1"] == (64, 112, 112)
    assert shapes["pool2"] == (192, 28, 28)
    assert shapes["inception_3c"] == (576, 14, 14)
    assert shapes["inception_4d"] == (576 if narrow else 608, 14, 14)
    assert shapes["inception_4e"] == (1024 if narrow else 1056, 7, 7)
    assert shapes["inception_5b"] == (1024, 7, 7)
    assert shapes["fc"] == (1000,)


def record_nonlinearity_inputs(model: nn.Module, image_size: int = 64) -> list[tuple]:
    """(nonlinearity, the module whose output it received) for every nonlinearity call."""
    producer, calls = {}, []

    def remember(module, inputs, output):
        producer[id(output)] = (output, module)  # holding the output keeps its id unique

    def check(module, inputs):
        calls.append((module, producer[id(inputs[0])][1]))

    for module in model.modules():
        if isinstance(module, NONLINEARITIES):
            module.register_forward_pre_hook(check)
        elif not list(module.children()):
            module.register_forward_hook(remember)
    model.train()(torch.randn(2, 3, image_size, image_size))
    return calls


@pytest.mark.parametrize("experiment", BN_VARIANTS)
@pytest.mark.parametrize("overrides", [[], ["model.aux_heads=true", "model.stem=dense"]])
def test_bn_precedes_every_nonlinearity(experiment, overrides):
    model = model_of(experiment, *overrides)
    calls = record_nonlinearity_inputs(model)
    assert len(calls) == sum(isinstance(m, NONLINEARITIES) for m in model.modules())
    assert all(isinstance(before, nn.BatchNorm2d | nn.BatchNorm1d) for _, before in calls)
    # BN normalizes the pre-activation Wu, so only the classifiers keep a bias
    assert biased_layers(model) == CLASSIFIERS["model.aux_heads=true" in overrides]


def biased_layers(model: nn.Module) -> set[str]:
    return {
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear) and m.bias is not None
    }


@pytest.mark.parametrize("experiment", PLAIN_VARIANTS)
def test_no_bn_in_the_plain_networks(experiment):
    model = model_of(experiment, "model.aux_heads=true")
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    calls = record_nonlinearity_inputs(model)
    assert calls and all(isinstance(before, nn.Conv2d | nn.Linear) for _, before in calls)
    for conv in model.modules():
        if isinstance(conv, nn.Conv2d):
            # only the linear depthwise half of the separable first convolution has no bias
            assert (conv.bias is None) == (conv.groups > 1)


@pytest.mark.parametrize(
    "experiment, kind",
    [("bn_x5_sigmoid", nn.Sigmoid), ("inception_sigmoid", nn.Sigmoid), ("bn_x5", nn.ReLU)],
)
def test_one_kind_of_nonlinearity_everywhere(experiment, kind):
    model = model_of(experiment, "model.aux_heads=true")
    kinds = {type(m) for m in model.modules() if isinstance(m, NONLINEARITIES)}
    assert kinds == {kind}
    # 3 in the stem, 7 in each of 8 standard modules, 5 in 3c and in 4e, 2 in each aux head
    assert len(record_nonlinearity_inputs(model)) == 3 + 8 * 7 + 2 * 5 + 2 * 2


def test_lrn_and_dropout_sit_where_googlenet_puts_them():
    names = [name for name, _ in model_of("inception").trunk.named_children()]
    assert names[:8] == [
        "conv1",
        "pool1",
        "lrn1",
        "conv2_reduce",
        "conv2",
        "lrn2",
        "pool2",
        "inception_3a",
    ]
    assert names[-3:] == ["flatten", "dropout", "fc"]
    assert model_of("inception").trunk.dropout.p == 0.4
    fast = model_of("bn_x5")
    assert not any(isinstance(m, nn.LocalResponseNorm | nn.Dropout) for m in fast.modules())


@pytest.mark.parametrize(
    "experiment, image_size",
    [("bn_x5", 224), ("inception", 224), ("bn_x5_sigmoid", 64), ("inception", 32)],
)
def test_forward_and_backward(experiment, image_size):
    model = model_of(experiment, num_classes=10).train()
    logits = model(torch.randn(2, 3, image_size, image_size))
    assert logits.shape == (2, 10)
    nn.functional.cross_entropy(logits, torch.tensor([1, 7])).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


def test_aux_heads_return_logits_in_training_only():
    model = model_of("bn_baseline", "model.aux_heads=true", num_classes=10)
    images = torch.randn(2, 3, 96, 96)
    logits, aux = model.train()(images)
    assert logits.shape == (2, 10) and [a.shape for a in aux] == [(2, 10), (2, 10)]
    assert model.eval()(images).shape == (2, 10)


@pytest.mark.parametrize("experiment", ["inception", "bn_baseline"])
def test_the_relu_network_carries_a_signal_to_its_output_at_initialization(experiment):
    # Xavier's initialization halves a signal's variance at every ReLU: through Inception's
    # depth the features of unit-variance images came out with a std of 0.005, and the network
    # without BN could not start learning. He's keeps them at the input's scale.
    torch.manual_seed(0)
    model = model_of(experiment, "model.dropout=0", num_classes=10).eval()
    features = {}
    model.trunk.flatten.register_forward_hook(lambda m, args, out: features.update(out=out))
    with torch.no_grad():
        model(torch.randn(8, 3, 64, 64))
    assert 0.3 < features["out"].std() < 3
