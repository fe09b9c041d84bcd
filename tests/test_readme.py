"""The commands of README.md and of the pages of docs/, checked as written: a command a user
copies from them must not fail on a key that no longer exists, a missing data root, or a path
nothing writes. README stays a front page (under 250 lines, its Layout naming every module of
bn_repro/), and every relative link of README and docs/ reaches a file and, with `#`, a heading.

How a page is read. Each ```bash block is split into commands (a trailing backslash continues a
line, `#` starts a comment, `&&` and `;` separate commands, `VAR=value` prefixes are dropped):
- `bn-repro train ...`, `bn-repro describe ...` and `bn-repro figure1 ...`, also behind a
  launcher (`torchrun ... --no-python`, `srun ...`), `sbatch ... slurm/train.sbatch OVERRIDES`
  and `python slurm/submit_sweep.py ... -- OVERRIDES`: their Hydra overrides are composed and
  checked here, in this process, without training (a sweep, `-m` or submit_sweep.py, job by
  job, as Hydra's sweeper makes them). A run on prepared data must resolve a data root.
- `bn-repro report PATH` and `bn-repro evaluate RUN_DIR`: each path under runs/ must be where
  some training command of README or docs/ writes (report: a run directory or a folder above
  them), on any page: a page may report runs another page trains.
- A block right after the line `<!-- doc-check: run -->` is also run, each command in a shell
  (`bn-repro` is this environment's), or, for a ```python block, the whole block in a fresh
  interpreter; both in a scratch folder, and each must exit 0. Mark only blocks that are quick
  on a CPU and write nothing outside the current folder.
The configs are composed from a copy without configs/local/, so a machine's own settings
(paths.imagenet) cannot hide a command that names no data root.
"""

import contextlib
import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from bn_repro import compose as compose_module
from bn_repro.compose import compose, sweep_jobs, to_object
from bn_repro.figure1.compose import compose_figure1
from bn_repro.schema import ConfigError, DataKind

PROJECT = Path(__file__).resolve().parent.parent
README = PROJECT / "README.md"
PAGES = [README, *sorted((PROJECT / "docs").glob("*.md"))]
README_MAX_LINES = 250  # a front page; the manual is docs/
RUN_MARK = "<!-- doc-check: run -->"
BIN = Path(sys.executable).parent
# a block may be indented, as in a list item
BLOCK = re.compile(r"^[ \t]*```(\w*)\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)
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
    line: int  # in its page, for messages
    page: str = "README.md"  # relative to the project

    @property
    def where(self) -> str:
        return f"{self.page}:line{self.line}"


def blocks(text: str, page: str = "README.md") -> list[Block]:
    found = []
    for match in BLOCK.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        line = text.count("\n", 0, match.start()) + 1
        body = textwrap.dedent(match.group(2))  # a block indented in a list item
        found.append(Block(match.group(1), body, before == RUN_MARK, line, page))
    return found


def commands(block: Block) -> list[tuple[str, list[str]]]:
    """The block's commands, each with its page and line and its words."""
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
                    found.append((f"{block.page}:line{start}", words))
                words = []
            elif words or not re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", word):
                words.append(word)
        pending, start = "", 0
    return found


README_TEXT = README.read_text()
ALL_BLOCKS = [b for p in PAGES for b in blocks(p.read_text(), str(p.relative_to(PROJECT)))]
BASH = [b for b in ALL_BLOCKS if b.language == "bash"]
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
    assert {b.page for b in ALL_BLOCKS} == {str(p.relative_to(PROJECT)) for p in PAGES}, (
        "every page of docs/ was read, and has code to check"
    )


@pytest.mark.parametrize("words", [w for _, w in COMPOSED], ids=[where for where, _ in COMPOSED])
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
                    f"{line}: {path} is not where any command of README or docs/ trains"
                    f" (they write {sorted(set(written))})"
                )


RUN_BLOCKS = [b for b in ALL_BLOCKS if b.run]


@pytest.mark.slow
@pytest.mark.parametrize("block", RUN_BLOCKS, ids=[b.where for b in RUN_BLOCKS])
def test_marked_blocks_run(block, tmp_path):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    if block.language == "python":
        runs = [[sys.executable, "-c", block.text]]
    else:
        runs = [["bash", "-c", shlex.join(words)] for _, words in commands(block)]
    for argv in runs:
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{block.where}: {argv[-1]}\n{done.stderr}"


def test_readme_is_a_front_page():
    lines = README_TEXT.count("\n")
    assert lines < README_MAX_LINES, f"README.md has {lines} lines: move detail into docs/"


def layout_entries(text: str) -> dict[str, str]:
    """README's Layout block: each entry's head (`bn_repro/train/`) and its text, continuation
    lines (indented) included."""
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    block = blocks(section)[0].text
    entries: dict[str, str] = {}
    head = None
    for line in block.splitlines():
        if line and not line[0].isspace():
            head, _, line = line.partition(" ")
            entries[head] = ""
        entries[head] += " " + line
    return entries


def test_readme_layout_names_every_module():
    entries = layout_entries(README_TEXT)
    modules = sorted((PROJECT / "bn_repro").rglob("*.py"))
    missing = [
        str(m.relative_to(PROJECT))
        for m in modules
        if not re.search(
            rf"(?<![\w.]){re.escape(m.name)}\b",
            entries.get(f"{m.parent.relative_to(PROJECT)}/", ""),
        )
    ]
    assert not missing, f"README's Layout does not name {missing} under its package"
    named = [
        f"{head}{name}"
        for head, text in entries.items()
        if head.startswith("bn_repro/")
        for name in re.findall(r"[\w]+\.py\b", text)
    ]
    gone = [n for n in named if not (PROJECT / n).is_file()]
    assert not gone, f"README's Layout names modules that do not exist: {gone}"


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """The text outside code blocks: a `#` line in a yaml block is no heading."""
    return BLOCK.sub("", text)


def anchors(text: str) -> set[str]:
    """GitHub's anchors of the page's headings: lower case, punctuation dropped, spaces as -."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", prose(text), re.MULTILINE):
        found.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return found


LINKS = [
    (page, target)
    for page in PAGES
    for target in sorted(set(LINK.findall(prose(page.read_text()))))
    if not re.match(r"[a-z]+:", target)  # https:, mailto:
]


def test_pages_have_links():
    assert {page for page, _ in LINKS} == set(PAGES), "every page links somewhere"


@pytest.mark.parametrize(
    "page,target", LINKS, ids=[f"{p.relative_to(PROJECT)}->{t}" for p, t in LINKS]
)
def test_each_relative_link_reaches_its_file_and_heading(page, target):
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    where = f"{page.relative_to(PROJECT)}: link {target}"
    assert file.exists(), f"{where}: no file {file}"
    if anchor:
        headings = anchors(file.read_text()) if file.suffix == ".md" else set()
        assert anchor in headings, (
            f"{where}: {file.name} has no #{anchor} (it has {sorted(headings)})"
        )
