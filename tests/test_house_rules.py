"""The house rules every module under bn_repro/ keeps, read from its source: it opens with a
docstring saying what it is for, and no function runs longer than MAX_LINES."""

import ast
import re
from pathlib import Path

import pytest

import bn_repro

PACKAGE = Path(bn_repro.__file__).parent
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_LINES = 50  # a function that needs scrolling is two functions


def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def long_functions(tree: ast.Module, path: Path) -> list[str]:
    """Each function of the module longer than MAX_LINES, decorators and docstring included."""
    return [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({length} lines)"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (length := node.end_lineno - min(d.lineno for d in [node, *node.decorator_list]) + 1)
        > MAX_LINES
    ]


def test_the_package_has_modules_to_check():
    # the glob found the package, its subpackages included
    assert {PACKAGE / "cli.py", PACKAGE / "train" / "loop.py"} <= set(MODULES)


def test_every_module_opens_with_what_it_is_for():
    missing = [
        str(path.relative_to(PACKAGE.parent))
        for path in MODULES
        if not ast.get_docstring(parsed(path))
    ]
    assert missing == [], f"modules without a docstring: {', '.join(missing)}"


def test_no_function_is_longer_than_a_screen():
    offenders = [line for path in MODULES for line in long_functions(parsed(path), path)]
    assert offenders == [], f"functions over {MAX_LINES} lines: {'; '.join(offenders)}"


@pytest.mark.parametrize("lines, flagged", [(MAX_LINES, False), (MAX_LINES + 1, True)])
def test_a_function_is_flagged_from_its_first_line_over_the_limit(lines, flagged):
    body = "".join("    x = 1\n" for _ in range(lines - 2))
    path = PACKAGE / "example.py"  # named as inside the package, never written
    tree = ast.parse(f"@decorator\ndef f():\n{body}")
    assert bool(long_functions(tree, path)) is flagged


def test_comments_cite_the_paper_not_files_users_do_not_have():
    # Design notes and the paper's summary stay with the maintainers; a comment says the fact.
    project = PACKAGE.parent
    sources = [*MODULES, *sorted((project / "configs").rglob("*.yaml"))]
    citing = [
        str(path.relative_to(project))
        for path in sources
        if any(name in path.read_text() for name in ("SPEC.md", "DESIGN.md", "STYLE.md"))
    ]
    assert citing == [], f"files citing notes users do not have: {', '.join(citing)}"


# Words that make a comment go stale: a claim about one machine or one moment, or a measurement
# without the record that holds it (results/bench/ does).
STALE = re.compile(r"\b(this machine|today|we measure)", re.IGNORECASE)


def stale_phrases(path: Path) -> list[str]:
    return [
        f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}"
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if STALE.search(line)
    ]


def test_no_comment_speaks_of_one_machine_or_one_day():
    project = PACKAGE.parent
    sources = [
        *MODULES,
        *sorted((project / "configs").rglob("*.yaml")),
        *sorted((project / "scripts").glob("*.py")),
        *sorted((project / "slurm").iterdir()),
        *sorted(path for path in (project / "tests").glob("*.py") if path != Path(__file__)),
        project / "Makefile",
        project / "pyproject.toml",
    ]
    found = [line for path in sources for line in stale_phrases(path)]
    assert found == [], "say it so that it stays true:\n" + "\n".join(found)
