"""Shared fixtures, and which device a test session runs on.

A session that selects only tests marked `gpu` (`pytest -m gpu`, or their files) runs them on
CUDA, and skips them with the reason where torch sees no GPU. Any other session is the CPU
suite: it hides every GPU from itself and from the processes its tests start, so that the
`auto` switches resolve to the CPU on a GPU machine too, and skips the gpu tests it selected
(`make test` runs both sessions)."""

import os
from pathlib import Path

import pytest

from bn_repro.data.make_mini import MiniSpec, make_mini
from bn_repro.data.prepare import PrepareOptions, prepare

pytest_plugins = ["pytester"]  # test_sessions.py runs sessions of its own

# 6 classes, 24 training and 5 validation images each, 40 pixels, folders and shards of 20.
SMALL = MiniSpec(classes=6, train_per_class=24, val_per_class=5, size=40, seed=2)
RUN_GPU_TESTS_ALONE = (
    "needs CUDA, which the CPU suite hides: run the gpu tests alone, pytest -m gpu"
)


# Module fixtures that generate sets of ILSVRC2012's archives (test_prepare.py and
# test_bad_sources.py): their tests are slow, out of `make test-fast`. prepared_small, 174 images
# of 40 pixels made once a session, is not.
GENERATES_ARCHIVES = {"mini", "prepared"}
MARKS = ("slurm", "slow")  # heaviest_first's measures of a module's work, the first the most


def pytest_itemcollected(item):
    if GENERATES_ARCHIVES & set(getattr(item, "fixturenames", ())):
        item.add_marker(pytest.mark.slow)


# Under pytest-xdist (make test), each module's tests run on one worker, where its module fixtures
# (a trained run, a prepared set, a local SLURM) are made once; xdist hands out the modules in the
# order of the session's items (heaviest_first), not its own (the most tests first).
@pytest.hookimpl(optionalhook=True)  # a hook of xdist's: unknown without it (-p no:xdist)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadFileScheduling

    config.option.loadscopereorder = False
    return LoadFileScheduling(config, log)


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected
def pytest_collection_modifyitems(config, items):
    items[:] = heaviest_first(items)
    if items and all(item.get_closest_marker("gpu") for item in items):
        _gpu_session(items)
    else:
        _cpu_session(items)


def heaviest_first(items: list) -> list:
    """The items module by module, the modules that hold the most work first, as their markers
    tell it: the most SLURM tests, then the most slow ones, then the most tests. A worker that
    ends its module early takes the next, so the long modules start at once and the short ones
    fill in at the end; started last, one would leave the other worker idle while it runs."""
    modules: dict[Path, list] = {}
    for item in items:
        modules.setdefault(item.path, []).append(item)

    def work(tests: list) -> tuple[int, int, int]:
        marked = [sum(bool(test.get_closest_marker(name)) for test in tests) for name in MARKS]
        return (*marked, len(tests))

    ordered = sorted(modules.values(), key=work, reverse=True)  # stable: ties keep their order
    return [item for tests in ordered for item in tests]


def _gpu_session(items) -> None:
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="torch sees no CUDA device (torch.cuda.is_available())")
        for item in items:
            item.add_marker(skip)


def _cpu_session(items) -> None:
    # Before CUDA starts: the CUDA runtime reads the variable once, when it starts.
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch

    if torch.cuda.is_available():
        raise pytest.UsageError(
            "CUDA started before the CPU suite could hide the GPUs (a test module touches CUDA"
            " at import): move that call into its test"
        )
    # One thread a process, its trainers' too: the suite's networks are tiny (16-32 pixels), where
    # a second thread costs more in synchronization than it gains, and a test process beside
    # the runs it starts (two ranks each, some) would otherwise ask for more threads than the
    # machine has cores, each spinning while it waits for the others: steps of bn_x5 at 32
    # pixels took 1.25 s at 2 threads on a loaded 2-core machine, 0.16 s at 1.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    skip = pytest.mark.skip(reason=RUN_GPU_TESTS_ALONE)
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def prepared_small(tmp_path_factory) -> Path:
    # as tests.helpers.prepared_set, which this file cannot import: test_sessions.py runs it alone
    archives = tmp_path_factory.mktemp("archives")
    make_mini(archives, SMALL, workers=2)
    out = tmp_path_factory.mktemp("prepared")
    prepare(archives, out, PrepareOptions(("folder", "shards"), 2, 20, 0))
    return out
