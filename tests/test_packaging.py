"""pyproject.toml as setuptools reads it: no deprecated form that stops building."""

import warnings
from pathlib import Path

import pytest
from packaging.requirements import Requirement

# pip builds the package with its own setuptools; a venv of Python 3.12 or later has none
pytest.importorskip("setuptools", minversion="77")
from setuptools.config.pyprojecttoml import apply_configuration, read_configuration  # noqa: E402
from setuptools.dist import Distribution  # noqa: E402

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_the_license_is_an_spdx_expression_that_setuptools_reads_without_warning(monkeypatch):
    monkeypatch.chdir(PYPROJECT.parent)  # the readme's path is relative to it
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # setuptools' deprecations are warnings
        distribution = apply_configuration(Distribution(), PYPROJECT)
    assert distribution.metadata.license_expression == "MIT"
    # the SPDX string needs setuptools 77 or later to build
    requires = read_configuration(PYPROJECT)["build-system"]["requires"]
    (setuptools,) = [Requirement(r) for r in requires if r.startswith("setuptools")]
    assert not setuptools.specifier.contains("76.9") and setuptools.specifier.contains("77.0")
