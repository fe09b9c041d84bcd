"""make wheels (scripts/wheels.py): what a node without internet needs, as requirements."""

import tomllib

from scripts.wheels import PYPROJECT, requirements


def test_the_wheels_cover_the_dependencies_the_dev_extra_and_the_build_less_what_is_skipped():
    pyproject = tomllib.loads(PYPROJECT.read_text())
    everything = requirements(pyproject, set())
    assert {"pytest>=8", "webdataset>=0.2.86"} <= set(everything)  # make test runs there too
    assert set(pyproject["build-system"]["requires"]) <= set(everything)  # the editable build
    kept = requirements(pyproject, {"torch", "torchvision", "hydra-core"})
    dropped = {line.split(">")[0] for line in set(everything) - set(kept)}
    assert dropped == {"torch", "torchvision", "hydra-core"}
