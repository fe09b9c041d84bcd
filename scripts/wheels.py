"""`make wheels WHEELS=DIR`: every wheel `make setup` installs, downloaded into DIR on a machine
with internet, for the compute node's Python and platform; there `make setup WHEELS=DIR`
installs them with no index. What is installed: pyproject.toml's dependencies, its dev extra and
its build system's (the editable install builds with them), less what --skip names (what the
node's environment already has, e.g. torch).

A package that PyPI offers only as source (hydra-core's antlr4-python3-runtime) is built into a
wheel here first, so that the node builds nothing. Python 3.11 or newer (tomllib)."""

import argparse
import re
import subprocess
import sys
import tempfile
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


def download(wanted: list[str], out: Path, python: str, platform: str) -> None:
    """The wheels of `wanted` and everything they need into out, for that Python and platform;
    what PyPI has as source only is built here (pure Python: a wheel for any platform)."""
    pip = [sys.executable, "-m", "pip"]
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        listed = Path(work) / "requirements.txt"
        listed.write_text("\n".join(wanted) + "\n")
        sources = Path(work) / "sources"
        subprocess.run([*pip, "download", "--dest", sources, "-r", listed], check=True)
        built = [p for p in sources.iterdir() if p.suffix != ".whl"]
        if built:
            subprocess.run([*pip, "wheel", "--no-deps", "--wheel-dir", out, *built], check=True)
        target = ["--python-version", python, "--only-binary=:all:"]
        for tag in (platform, "manylinux2014_x86_64", "linux_x86_64", "any"):
            target += ["--platform", tag]
        command = [*pip, "download", "--dest", out, "--find-links", out, *target, "-r", listed]
        subprocess.run(command, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path, help="the folder the wheels go into")
    parser.add_argument("--python", default=f"{sys.version_info[0]}.{sys.version_info[1]}")
    parser.add_argument("--platform", default="manylinux_2_28_x86_64")
    parser.add_argument("--skip", default="", help="names to leave out, space-separated")
    args = parser.parse_args(argv)
    skip = {_name(name) for name in args.skip.split()}
    wanted = requirements(tomllib.loads(PYPROJECT.read_text()), skip)
    try:
        download(wanted, args.out, args.python, args.platform)
    except subprocess.CalledProcessError as error:
        print(f"make wheels: pip failed (exit {error.returncode}); its lines above say why")
        return 2
    print(f"Wheels in {args.out}; on the node: make setup WHEELS={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
