"""scripts/bad_inputs.py, the command-line sweep of issue 26's bad inputs, on a few cases that
need no training (all of them take several minutes: `python scripts/bad_inputs.py`)."""

import subprocess
import sys
from pathlib import Path

from scripts.bad_inputs import CASES

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bad_inputs.py"
# One case of prepare, two of composing a config: about 20 s, most of it importing torch (a
# prepare imports bn_repro.data, which does).
QUICK = ["jpeg_cut_then_end_marker", "batch_per_rank_1_with_bn", "experiment_given_twice"]


def test_the_sweep_names_a_case_for_every_item_of_the_issue():
    assert {case.item for case in CASES} == {str(item) for item in range(1, 12)}
    listed = subprocess.run([sys.executable, SCRIPT, "--list"], capture_output=True, text=True)
    assert listed.stdout.splitlines() == [
        f"{c.name} (issue 26.{c.item}, bn-repro {c.command})" for c in CASES
    ]


def test_quick_cases_end_with_exit_2_or_a_warning_one_line_and_nothing_lost():
    done = subprocess.run(
        [sys.executable, SCRIPT, *QUICK], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.endswith(f"{len(QUICK)} passed, 0 failed\n")
