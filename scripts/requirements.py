"""What `make setup` installs, as pip requirements, for `make wheels`: pyproject.toml's
dependencies, its dev extra and its build system's (the editable install builds with them), less
the packages named by --skip (those the compute node's environment already has, e.g. torch)."""

import argparse
import re
import sys
from pathlib import Path

import tomllib

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def requirements(pyproject: dict, skip: set[str]) -> list[str]:
    project = pyproject["project"]
    wanted = [
        *project["dependencies"],
        *project["optional-dependencies"]["dev"],
        *pyproject["build-system"]["requires"],
    ]
    return [line for line in wanted if _name(line) not in skip]


def _name(requirement: str) -> str:
    """A requirement's project name, normalized as PyPI compares them."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)
    return re.sub(r"[-_.]+", "-", name).lower()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip", default="", help="names to leave out, space-separated")
    args = parser.parse_args(argv)
    pyproject = tomllib.loads(PYPROJECT.read_text())
    skip = {_name(name) for name in args.skip.split()}
    print("\n".join(requirements(pyproject, skip)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
