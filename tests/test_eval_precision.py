"""Evaluations run in fp32 whatever the training precision: the trainer's (running averages and
Algorithm 2's) and `bn-repro evaluate`'s at 1 crop and at several, on CPU under a Compute whose
training steps run in bf16 autocast."""

import torch
from torch import nn

from bn_repro.data.multicrop import MultiCropSquares
from bn_repro.evaluate.predict import multi_crop, single_crop
from bn_repro.schema import Device
from bn_repro.train.compute import Compute
from bn_repro.train.distributed import distributed
from bn_repro.train.evaluation import count_correct, population_bn

BF16 = Compute(torch.device("cpu"), torch.bfloat16, channels_last=False)
SIZE = 8


class Spy(nn.Module):
    """A BN network that records, at each forward pass, whether autocast was on and the dtype
    of its convolution's output."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 5)
        self.seen = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        maps = self.conv(images)
        self.seen.append((torch.is_autocast_enabled("cpu"), maps.dtype))
        return self.fc(self.bn(maps).mean((2, 3)))


def batch(count: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """A loader's batch: uint8 (N, H, W, 3) images and their labels."""
    return torch.randint(0, 256, (count, SIZE, SIZE, 3), dtype=torch.uint8), torch.arange(count)


def test_the_training_compute_runs_bf16_and_every_evaluation_fp32():
    model = Spy()
    images, _ = BF16.batch(*batch())
    with BF16.autocast():  # as a training step runs
        model(images)
    assert model.seen == [(True, torch.bfloat16)]
    model.seen.clear()
    with distributed(Device.cpu):
        count_correct(model, [batch(), batch()], BF16, expected=8)
        with population_bn(model, iter([batch()] * 3), 3, BF16, world_size=1) as used:
            assert used == 3
            count_correct(model, [batch()], BF16, expected=4)
    single_crop([model], batch(), BF16)
    squares = MultiCropSquares(SIZE, 72)
    images, labels = batch(2)
    parts = tuple(map(torch.stack, zip(*(squares(image) for image in images), strict=True)))
    multi_crop([model], (parts, labels), BF16, SIZE, crops_per_pass=16)
    assert len(model.seen) > 2 + 3 + 1 + 1 + 1
    assert set(model.seen) == {(False, torch.float32)}
