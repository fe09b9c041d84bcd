"""What each entry point imports: the core runs without Hydra, and the command line answers
`--help` and a mistyped key without importing torch, DALI or matplotlib (seconds each)."""

import json
import subprocess
import sys

import pytest

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
