"""`bn-repro bench loader`: training-pipeline images/s at the trainer's output size, side by side:
the classic PyTorch ImageNet recipe (the yardstick), our torchvision fallback, our DALI loader,
and the same DALI pipeline bare, with no training-loop glue."""

import dataclasses
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

from bn_repro.data import Share, build_data
from bn_repro.data.normalize import MEAN, STD
from bn_repro.data.prepared import open_prepared
from bn_repro.data.sharding import CPU
from bn_repro.schema import ConfigError, DaliDevice, DataConfig, DataLoaderKind


@dataclass(frozen=True)
class LoaderBench:
    # our loaders' data config (each with its own data.loader); the classic recipe reads its
    # root, image_size and workers
    data: DataConfig
    loaders: tuple[str, ...]
    cuda_device: int | None  # the GPU our loaders feed, DALI's decoder on it (feeds); None: CPU
    batch: int
    warmup: int  # batches before the clock starts, every round
    batches: int  # batches timed, every round
    rounds: int


def feeds(data: DataConfig) -> int | None:
    """The GPU that DALI decodes on and our loaders feed, as a run on the same machine has it
    (data.dali_device; auto: the GPU where torch sees one); None: the CPU."""
    available = torch.cuda.is_available()
    if data.dali_device is DaliDevice.gpu and not available:
        raise ConfigError(
            "data.dali_device=gpu but torch sees no CUDA device: use data.dali_device=cpu or auto"
        )
    gpu = data.dali_device is DaliDevice.gpu or (data.dali_device is DaliDevice.auto and available)
    return 0 if gpu else None


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
    if bench.cuda_device is not None:
        torch.cuda.synchronize(bench.cuda_device)
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
            transforms.RandomResizedCrop(bench.data.image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    dataset = torchvision.datasets.ImageFolder(Path(bench.data.root) / "train", transform)
    loader = DataLoader(
        dataset,
        batch_size=bench.batch,
        shuffle=True,
        num_workers=bench.data.workers,
        drop_last=True,
    )
    return itertools.chain.from_iterable(itertools.repeat(loader))


def _share(bench: LoaderBench) -> Share:
    """One process's data, seed 0, on the benchmark's device."""
    device = CPU if bench.cuda_device is None else torch.device("cuda", bench.cuda_device)
    return Share(
        rank=0, world_size=1, batch=bench.batch, val_batch=bench.batch, seed=0, device=device
    )


def _ours(bench: LoaderBench, loader: DataLoaderKind) -> Iterator:
    config = dataclasses.replace(bench.data, loader=loader)
    data = build_data(config, _share(bench))
    return itertools.chain.from_iterable(data.train_epoch(epoch) for epoch in itertools.count())


def _dali_bare(bench: LoaderBench) -> Iterator:
    from bn_repro.data.dali_loader import dali_source, dali_train_pipeline

    config = bench.data
    prepared = open_prepared(config, 1, bench.batch)
    source = dali_source(prepared.root, prepared.manifest, config.format, "train")
    pipe = dali_train_pipeline(config, source, _share(bench), bench.cuda_device)
    pipe.build()
    while True:
        images, labels = pipe.run()
        yield images, labels
