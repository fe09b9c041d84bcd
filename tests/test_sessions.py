"""How a test session picks its device (conftest.py): the CPU suite hides the GPUs from itself
and its subprocesses and skips the gpu tests with the reason; the gpu tests run alone."""

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
