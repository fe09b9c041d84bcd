"""What each entry point imports: the core runs without Hydra, and the command line answers
`--help` and a mistyped key without importing torch, DALI or matplotlib (seconds each)."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import bn_repro
from tests.helpers import TINY

HEAVY = ("torch", "torchvision", "nvidia", "matplotlib", "hydra")


def imported_after(code: str) -> set[str]:
    """The top-level packages among HEAVY that a fresh interpreter has imported after code."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    modules = json.loads(result.stdout.splitlines()[-1])
    return {name.split(".")[0] for name in modules} & set(HEAVY)


def test_models_data_and_the_training_loop_run_without_hydra():
    assert "hydra" not in imported_after(
        "import bn_repro.models, bn_repro.data, bn_repro.train.loop"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["describe", "experiment=bn_x7"],
        ["train", "experiment=bn_x5", "optim.lr_multiplyer=5"],
        ["bench", "--help"],
        ["report", "--help"],
        ["figure1", "--help"],
        ["figure1", "train.lrr=1"],
        ["evaluate", "--help"],
        ["evaluate", "runs/x", "--crops", "12"],  # checked before any import
    ],
)
def test_help_and_config_errors_import_no_torch_dali_or_matplotlib(argv):
    code = (
        "import contextlib, io\n"
        "from bn_repro.cli import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()),"
        " contextlib.redirect_stderr(io.StringIO()):\n"
        f"    main({json.dumps(argv)})"
    )
    assert imported_after(code) <= {"hydra"}


def test_a_training_on_synthetic_data_imports_no_torchvision(tmp_path):
    # torchvision, its models and ops, is imported only where a run reads images through its
    # transforms
    run = [*TINY, "experiment=bn_x5", "trainer.max_paper_steps=1", f"run_dir={tmp_path}"]
    code = f"from bn_repro.cli import main\nassert not main({json.dumps(['train', *run])})"
    assert "torchvision" not in imported_after(code)


PACKAGE = Path(bn_repro.__file__).parent
FIGURE1 = "bn_repro.figure1"
# Figure 1's study is a package of its own that the ImageNet layers never use: from outside it
# come in only the command line's subcommand and the report's part for Figure 1.
FIGURE1_ENTRIES = {
    "bn_repro/cli.py": {"bn_repro.figure1.command"},
    "bn_repro/report/__init__.py": {"bn_repro.figure1.report"},
}


def imported(tree: ast.Module, module: str) -> set[str]:
    """Every module or name that the import statements of `module` (dotted) name, absolute:
    `from a.b import c` names a.b and a.b.c, relative imports resolved."""
    package = module.removesuffix(".__init__").split(".")
    if not module.endswith(".__init__"):
        package = package[:-1]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            source = ".".join([*base, *filter(None, [node.module])])
            names |= {source} | {f"{source}.{alias.name}" for alias in node.names}
    return names


def figure1_imports(tree: ast.Module, module: str) -> set[str]:
    """The modules of bn_repro.figure1 (or the package itself) that `module` imports."""
    return {
        ".".join(name.split(".")[:3])  # bn_repro.figure1.<module>, without the name imported
        for name in imported(tree, module)
        if name == FIGURE1 or name.startswith(f"{FIGURE1}.")
    }


def test_only_the_command_line_and_the_report_import_the_figure1_package():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent)
        if relative.parts[:2] == ("bn_repro", "figure1"):
            continue
        module = ".".join(relative.with_suffix("").parts)
        if names := figure1_imports(ast.parse(path.read_text()), module):
            found[relative.as_posix()] = names
    assert found == FIGURE1_ENTRIES


@pytest.mark.parametrize(
    "module, code, names",
    [
        (
            "bn_repro.train.loop",
            "from bn_repro.figure1.training import fit",
            {f"{FIGURE1}.training"},
        ),
        ("bn_repro.train.loop", "import bn_repro.figure1.data as data", {f"{FIGURE1}.data"}),
        ("bn_repro.report.tables", "from bn_repro import figure1", {FIGURE1}),
        ("bn_repro.report.tables", "from ..figure1 import report", {FIGURE1, f"{FIGURE1}.report"}),
        ("bn_repro.report.__init__", "from ..figure1.model import MLP", {f"{FIGURE1}.model"}),
        ("bn_repro.report.__init__", "from .figure4 import write_figure4", set()),
        ("bn_repro.train.loop", "from bn_repro.figures import figure1", set()),
    ],
)
def test_every_form_of_import_into_the_figure1_package_is_seen(module, code, names):
    assert figure1_imports(ast.parse(code), module) == names


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def import_graph() -> dict[str, set[str]]:
    """Each module of bn_repro (a package as its __init__) and the modules of bn_repro it
    imports, at the top or inside a function."""
    modules = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}

    def resolved(name: str) -> str | None:
        return next((m for m in (name, f"{name}.__init__") if m in modules), None)

    return {
        module: {
            found
            for name in imported(ast.parse(path.read_text()), module)
            if (found := resolved(name)) not in (None, module)
        }
        for module, path in modules.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles a depth-first walk meets, each from a module back to itself."""
    state, path, found = {}, [], []

    def visit(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for other in sorted(graph[module]):
            if state.get(other) == "open":
                found.append([*path[path.index(other) :], other])
            elif other not in state:
                visit(other)
        path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return found


def test_no_module_imports_back_up():
    # each concern in its module, imported downwards only (a type-only import counts too)
    assert [" -> ".join(cycle) for cycle in cycles(import_graph())] == []


def test_a_cycle_is_found_however_long():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert cycles(graph) == [["a", "b", "c", "a"]]


def test_only_the_command_line_imports_the_training_entry_point():
    # the builders live in train/build.py and train/run.py: train/main.py holds the entry alone
    importers = {m for m, names in import_graph().items() if "bn_repro.train.main" in names}
    assert importers == {"bn_repro.cli"}
