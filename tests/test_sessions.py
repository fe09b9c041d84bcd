"""How a test session picks its device (conftest.py): the CPU suite hides the GPUs from itself
and its subprocesses and skips the gpu tests with the reason; the gpu tests run alone."""

import subprocess
import sys
from pathlib import Path

import pytest

TESTS = """
import os

import pytest


def test_cpu():  # the processes it starts inherit the variable
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""


@pytest.mark.gpu
def test_gpu():
    import torch

    assert torch.cuda.is_available()
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(Path(__file__).with_name("conftest.py").read_text())
    pytester.makeini("[pytest]\naddopts = --strict-markers -ra\nmarkers =\n    gpu: CUDA")
    pytester.makepyfile(test_devices=TESTS)
    return pytester


@pytest.mark.slow
def test_the_cpu_suite_hides_the_gpus_and_skips_the_gpu_tests_with_the_reason(project, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")  # as on a GPU machine
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        ["*SKIPPED*needs CUDA, which the CPU suite hides: run the gpu tests alone, pytest -m gpu*"]
    )


@pytest.mark.slow
def test_the_gpu_tests_run_alone_and_say_why_they_skip(project):
    # CUDA_VISIBLE_DEVICES="" (this CPU suite's) reaches the session: it sees no GPU
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-m", "gpu")
    result.assert_outcomes(skipped=1, deselected=1)
    result.stdout.fnmatch_lines(["*SKIPPED*torch sees no CUDA device*"])


# Run in a fresh interpreter: every CUDA query of torch raises until the session's collection
# is over (conftest's own check comes after it), then every module of bn_repro/ and scripts/
# is imported and the whole suite collected.
TRIPWIRE = """
import importlib, pkgutil, sys
import pytest, torch
import bn_repro, scripts

QUERIES = (
    "is_available", "device_count", "current_device", "get_device_name",
    "get_device_properties", "get_device_capability", "init", "mem_get_info", "set_device",
)
saved = {name: getattr(torch.cuda, name) for name in QUERIES}


def tripwire(name):
    def query(*args, **kwargs):
        raise RuntimeError(f"torch.cuda.{name}() at import or collection")
    return query


class Lift:
    @pytest.hookimpl(tryfirst=True)  # before conftest's device choice, which may ask
    def pytest_collection_modifyitems(self):
        for name, query in saved.items():
            setattr(torch.cuda, name, query)


for name in QUERIES:
    setattr(torch.cuda, name, tripwire(name))
for package in (bn_repro, scripts):
    for module in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
        importlib.import_module(module.name)
sys.exit(pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "tests"], [Lift()]))
"""


@pytest.mark.slow
def test_no_module_queries_cuda_at_import_or_collection():
    # torch caches the device count at its first query: one before conftest hides the GPUs
    # leaves the CPU suite seeing them, and conftest then refuses the whole session
    project = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-c", TRIPWIRE], cwd=project, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_a_passing_test_leaves_no_files_behind(pytester: pytest.Pytester):
    """The suite's runs and prepared sets copied into tmp_path add up to gigabytes: a passing
    test's folder goes when it ends (a failing one's stays to be read)."""
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    pytester.makepyprojecttoml(pyproject.read_text())
    pytester.makepyfile(
        test_files="""
def test_passes(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(bytes(1000))


def test_fails(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(bytes(1000))
    assert False
"""
    )
    basetemp = pytester.path / "basetemp"
    pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--basetemp={basetemp}")
    kept = [path.name for path in basetemp.iterdir() if not path.is_symlink()]  # "current" links
    assert kept == ["test_fails0"]


@pytest.mark.slow
def test_under_xdist_each_module_stays_on_one_worker(pytester):
    # where its module fixtures (a trained run, a local SLURM) are made once, not once a worker
    pytester.makeconftest(Path(__file__).with_name("conftest.py").read_text())
    pytester.makeini("[pytest]\naddopts = --strict-markers\nmarkers =\n    gpu: CUDA")
    worker = 'def test_{}():\n    print("ran on", os.environ.get("PYTEST_XDIST_WORKER"))\n'
    for module in ("test_slurm", "test_nodes", "test_other"):
        tests = "\n\n".join(worker.format(n) for n in range(4))
        pytester.makepyfile(**{module: "import os\n\n\n" + tests})
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "-v")
    result.assert_outcomes(passed=12)
    ran = {}
    for line in result.outlines:
        if " PASSED " in line:  # [gw0] [  8%] PASSED test_slurm.py::test_0
            ran.setdefault(line.split("::")[0].split()[-1], set()).add(line.split()[0])
    assert len(ran) == 3 and all(len(workers) == 1 for workers in ran.values()), ran
    # and without xdist, the scheduler's hook is no error (-p no:xdist, or xdist not installed)
    alone = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist")
    alone.assert_outcomes(passed=12)


@pytest.mark.slow
def test_under_xdist_the_modules_with_the_most_work_go_first(pytester):
    # the SLURM tests, then the most slow ones, then the most tests (conftest.heaviest_first),
    # not xdist's own order (the most tests first)
    pytester.makeconftest(Path(__file__).with_name("conftest.py").read_text())
    marks = "gpu: CUDA\n    slow: long\n    slurm: SLURM"
    pytester.makeini(f"[pytest]\naddopts = --strict-markers\nmarkers =\n    {marks}")
    modules = {"test_plain": ("", 3), "test_slow": ("slow", 1), "test_slurm": ("slurm", 1)}
    modules |= {"test_few": ("", 2), "test_slow_two": ("slow", 2)}
    for module, (mark, count) in modules.items():
        marked = f"@pytest.mark.{mark}\n" if mark else ""
        tests = "\n\n".join(f"{marked}def test_{n}():\n    pass\n" for n in range(count))
        pytester.makepyfile(**{module: "import pytest\n\n\n" + tests})
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "1", "-v")
    result.assert_outcomes(passed=9)
    ran = [line.split("::")[0].split()[-1] for line in result.outlines if " PASSED " in line]
    order = list(dict.fromkeys(ran))
    expected = ["test_slurm", "test_slow_two", "test_slow", "test_plain", "test_few"]
    assert order == [f"{name}.py" for name in expected]
