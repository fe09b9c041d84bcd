"""`bn-repro bench loader`: training-pipeline images/s at the trainer's output size, side by side:
the classic PyTorch ImageNet recipe (the yardstick), our torchvision fallback, our DALI loader,
and the same DALI pipeline bare, with no training-loop glue."""

import gc
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch.utils.data import DataLoader
from torchvision import transforms

from bn_repro.data import build_data
from bn_repro.data.augment import MEAN, STD
from bn_repro.data.prepared import read_manifest
from bn_repro.schema import (
    DaliDecode,
    DaliDevice,
    DataConfig,
    DataFormat,
    DataKind,
    DataLoaderKind,
    Photometric,
    Shuffle,
)


@dataclass(frozen=True)
class LoaderBench:
    root: Path
    loaders: tuple[str, ...]
    device: str  # cpu | gpu (DALI's)
    data_format: DataFormat
    size: int
    photometric: Photometric  # none compares like with like: the classic recipe has none
    batch: int
    workers: int
    warmup: int  # batches before the clock starts, every round
    batches: int  # batches timed, every round
    rounds: int


def run(bench: LoaderBench) -> dict[str, list[float]]:
    """images/s of each loader's training batches, round by round. The loaders take turns, so a
    drift in the machine's speed touches them alike; each round starts every loader afresh and
    ends it before the next begins, whose timing its workers would otherwise share."""
    rates = {name: [] for name in bench.loaders}
    for _ in range(bench.rounds):
        for name in bench.loaders:
            batches = _batches(name, bench)
            rates[name].append(_images_per_s(batches, bench))
            del batches  # stops its worker processes or DALI threads
            gc.collect()
    return rates


def _images_per_s(batches: Iterator, bench: LoaderBench) -> float:
    for _ in itertools.islice(batches, bench.warmup):
        pass
    start = time.perf_counter()
    count = 0
    for images, _ in itertools.islice(batches, bench.batches):
        count += len(images)
    if bench.device == "gpu":
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def _batches(name: str, bench: LoaderBench) -> Iterator:
    makers: dict[str, Callable[[LoaderBench], Iterator]] = {
        "classic": _classic,
        "torch": lambda b: _ours(b, DataLoaderKind.torch),
        "dali": lambda b: _ours(b, DataLoaderKind.dali),
        "dali-bare": _dali_bare,
    }
    return makers[name](bench)


def _classic(bench: LoaderBench) -> Iterator:
    """The pytorch/examples ImageNet recipe: ImageFolder, PIL transforms, a shuffling DataLoader."""
    transform = transforms.Compose(
        [
            transforms.RandomResizedCrop(bench.size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    dataset = torchvision.datasets.ImageFolder(bench.root / "train", transform)
    loader = DataLoader(
        dataset, batch_size=bench.batch, shuffle=True, num_workers=bench.workers, drop_last=True
    )
    return itertools.chain.from_iterable(itertools.repeat(loader))


def _data_config(bench: LoaderBench, loader: DataLoaderKind) -> DataConfig:
    return DataConfig(
        kind=DataKind.prepared,
        root=str(bench.root),
        loader=loader,
        format=bench.data_format,
        dali_device=DaliDevice(bench.device),
        dali_decode=DaliDecode.roi,
        dali_hw_decoder_load=0.65,
        workers=bench.workers,
        prefetch=2,
        num_classes=len(read_manifest(bench.root)["classes"]),
        image_size=bench.size,
        photometric=bench.photometric,
        shuffle=Shuffle.standard,
        target_top1=None,
        synthetic=None,
    )


def _ours(bench: LoaderBench, loader: DataLoaderKind) -> Iterator:
    cuda_device = 0 if bench.device == "gpu" else None
    data = build_data(_data_config(bench, loader), 0, 0, 1, bench.batch, cuda_device)
    return itertools.chain.from_iterable(data.train_epoch(epoch) for epoch in itertools.count())


def _dali_bare(bench: LoaderBench) -> Iterator:
    from bn_repro.data.dali_loader import dali_source, dali_train_pipeline

    cuda_device = 0 if bench.device == "gpu" else None
    config = _data_config(bench, DataLoaderKind.dali)
    source = dali_source(bench.root, read_manifest(bench.root), bench.data_format, "train")
    pipe = dali_train_pipeline(config, source, 0, 0, 1, bench.batch, cuda_device)
    pipe.build()
    while True:
        images, labels = pipe.run()
        yield images, labels
