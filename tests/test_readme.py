"""README.md's commands, checked as written: a command a user copies from README must not fail
on a key that no longer exists, a missing data root, or a path nothing writes.

How README is read. Each ```bash block is split into commands (a trailing backslash continues a
line, `#` starts a comment, `&&` and `;` separate commands, `VAR=value` prefixes are dropped):
- `bn-repro train ...`, `bn-repro describe ...` and `bn-repro figure1 ...`, also behind a
  launcher (`torchrun ... --no-python`, `srun ...`), `sbatch ... slurm/train.sbatch OVERRIDES`
  and `python slurm/submit_sweep.py ... -- OVERRIDES`: their Hydra overrides are composed and
  checked here, in this process, without training (a sweep, `-m` or submit_sweep.py, job by
  job, as Hydra's sweeper makes them). A run on prepared data must resolve a data root.
- `bn-repro report PATH` and `bn-repro evaluate RUN_DIR`: each path under runs/ must be where
  some training command of README writes (report: a run directory or a folder above them).
- A block right after the line `<!-- doc-check: run -->` is also run, each command in a shell
  (`bn-repro` is this environment's), or, for a ```python block, the whole block in a fresh
  interpreter; both in a scratch folder, and each must exit 0. Mark only blocks that are quick
  on a CPU and write nothing outside the current folder.
The configs are composed from a copy without configs/local/, so a machine's own settings
(paths.imagenet) cannot hide a README command that names no data root.
"""

import contextlib
import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from bn_repro import compose as compose_module
from bn_repro.compose import compose, sweep_jobs, to_object
from bn_repro.figure1.compose import compose_figure1
from bn_repro.schema import ConfigError, DataKind

README = Path(__file__).resolve().parent.parent / "README.md"
RUN_MARK = "<!-- doc-check: run -->"
BIN = Path(sys.executable).parent
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)
# `bn-repro train` options that take a value (Hydra's); every other option stands alone
TRAIN_OPTIONS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-name", "--config-dir"}
DESCRIBE_OPTIONS_WITH_VALUE = {"--world-size", "--images-per-s"}
DESCRIBE_FLAGS = {"--cfg", "--help", "-h"}
# report's and evaluate's
EVALUATE_OPTIONS_WITH_VALUE = {
    "--out",
    "--checkpoint",
    "--crops",
    "--bn-stats",
    "--population-batches",
    "--batch",
    "--data-root",
    "--loader",
    "--device",
}


@dataclass
class Block:
    language: str
    text: str
    run: bool
    line: int  # in README, for messages


def blocks(text: str) -> list[Block]:
    found = []
    for match in BLOCK.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        line = text.count("\n", 0, match.start()) + 1
        found.append(Block(match.group(1), match.group(2), before == RUN_MARK, line))
    return found


def commands(block: Block) -> list[tuple[int, list[str]]]:
    """The block's commands, each with its README line and its words."""
    found, pending, start = [], "", 0
    for number, line in enumerate(block.text.splitlines(), block.line + 1):
        start = start or number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        words: list[str] = []
        for word in shlex.split(pending + line, comments=True) + [";"]:
            if word in ("&&", ";", "||", "|"):
                if words:
                    found.append((start, words))
                words = []
            elif words or not re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", word):
                words.append(word)
        pending, start = "", 0
    return found


README_TEXT = README.read_text()
BASH = [b for b in blocks(README_TEXT) if b.language == "bash"]
COMMANDS = [command for b in BASH for command in commands(b)]


@dataclass
class Invocation:
    command: str  # train, describe, figure1, report, evaluate
    args: list[str]
    sweep: bool = False


def invocation(words: list[str]) -> Invocation | None:
    """What a command asks of bn-repro, whatever launches it; None for other programs."""
    names = [Path(w).name for w in words]
    if "submit_sweep.py" in names:
        return Invocation("train", words[words.index("--") + 1 :], sweep=True)
    if "train.sbatch" in names:
        return Invocation("train", words[names.index("train.sbatch") + 1 :])
    if "bn-repro" not in names or names.index("bn-repro") + 1 >= len(words):
        return None
    at = names.index("bn-repro")
    command, args = words[at + 1], words[at + 2 :]
    sweep = command == "train" and bool({"-m", "--multirun"} & set(args))
    return Invocation(command, args, sweep)


def overrides_of(args: list[str], with_value: set[str], flags: set[str] | None) -> list[str]:
    """The KEY=VALUE words; an option outside with_value and flags (None: any) is an error."""
    found, skip = [], False
    for word in args:
        if skip:
            skip = False
        elif word in with_value:
            skip = True
        elif word.startswith("-"):
            assert flags is None or word in flags, f"unknown option {word}"
        else:
            found.append(word)
    return found


@pytest.fixture(scope="module", autouse=True)
def configs_without_local(tmp_path_factory):
    """The project's configs alone: a machine's configs/local/ (git-ignored) is left out."""
    copy = tmp_path_factory.mktemp("configs") / "configs"
    shutil.copytree(compose_module.CONFIG_DIR, copy, ignore=shutil.ignore_patterns("local"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compose_module, "CONFIG_DIR", copy)
        yield


COMPOSED_RUN_DIRS: dict[tuple[str, ...], list[str]] = {}  # composed once per test session


def run_dirs_of(words: list[str]) -> list[str]:
    """Compose and check the command's runs; their run directories."""
    if tuple(words) not in COMPOSED_RUN_DIRS:
        COMPOSED_RUN_DIRS[tuple(words)] = composed_run_dirs(invocation(words))
    return COMPOSED_RUN_DIRS[tuple(words)]


def composed_run_dirs(call: Invocation) -> list[str]:
    if call.command == "figure1":
        return [compose_figure1(overrides_of(call.args, {"--cfg"}, None)).run_dir]
    if call.command == "describe":
        overrides = overrides_of(call.args, DESCRIBE_OPTIONS_WITH_VALUE, DESCRIBE_FLAGS)
        compose(overrides)
        return []
    overrides = overrides_of(call.args, TRAIN_OPTIONS_WITH_VALUE, None)
    dirs = []
    for job in sweep_jobs(overrides) if call.sweep else [overrides]:
        cfg = to_object(compose(job))
        assert cfg.data.kind is not DataKind.prepared or cfg.data.root, (
            f"{' '.join(job)}: no data root (data.root=DIR, or paths.imagenet for data=imagenet)"
        )
        dirs.append(cfg.run_dir)
    return dirs


COMPOSED = [
    (line, words)
    for line, words in COMMANDS
    if (c := invocation(words)) and c.command in ("train", "describe", "figure1")
]


def test_readme_has_commands_to_check():
    assert len(COMPOSED) >= 10 and any(b.run for b in blocks(README_TEXT))


@pytest.mark.parametrize(
    "words", [w for _, w in COMPOSED], ids=[f"line{line}" for line, _ in COMPOSED]
)
def test_each_command_composes_as_written(words):
    run_dirs_of(words)


def segments_match(path: str, run_dir: str, whole: bool) -> bool:
    pattern, parts = Path(path).parts, Path(run_dir).parts
    if len(parts) < len(pattern) or (whole and len(parts) != len(pattern)):
        return False
    return all(fnmatch.fnmatchcase(p, q) for p, q in zip(parts, pattern, strict=False))


def test_report_and_evaluate_read_where_readme_trains():
    written = []
    for _, words in COMPOSED:
        # test_each_command_composes_as_written says what is wrong with a command that fails
        with contextlib.suppress(ConfigError, AssertionError):
            written += run_dirs_of(words)
    for line, words in COMMANDS:
        call = invocation(words)
        if call is None or call.command not in ("report", "evaluate"):
            continue
        for path in overrides_of(call.args, EVALUATE_OPTIONS_WITH_VALUE, None):
            if path.startswith("runs/"):
                whole = call.command == "evaluate"
                assert any(segments_match(path, d, whole) for d in written), (
                    f"README line {line}: {path} is not where any README command trains"
                    f" (they write {sorted(set(written))})"
                )


RUN_BLOCKS = [b for b in blocks(README_TEXT) if b.run]


@pytest.mark.slow
@pytest.mark.parametrize("block", RUN_BLOCKS, ids=[f"line{b.line}" for b in RUN_BLOCKS])
def test_marked_blocks_run(block, tmp_path):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    if block.language == "python":
        runs = [[sys.executable, "-c", block.text]]
    else:
        runs = [["bash", "-c", shlex.join(words)] for _, words in commands(block)]
    for argv in runs:
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"README line {block.line}: {argv[-1]}\n{done.stderr}"
