"""The demo's learning-rate claim in the form a short run can test (the network without BN at
BN-x30's rate), a divergence counted against the side that diverged, and the README saying, per
claim, what runs this short can and cannot show."""

from pathlib import Path

import pytest

from bn_repro.report import write_report
from bn_repro.report.claims import short_run
from tests.test_report import record
from tests.test_report_updates import claims

AT_30X = "Without BN, BN-x30's rate trains worse: BN-x30 beats Inception's recipe at 30x"


def at_30x(root: Path, inception: list[list], status: str = "diverged", length: int = 150) -> Path:
    """BN-x30 (maxima 30% and 32%) and Inception at 30x, each two seeds, `length` steps long."""
    for seed in (0, 1):
        record(
            root, f"bn_x30/{seed}", "bn_x30", seed, [(length // 2, 0.2), (length, 0.3 + seed / 50)]
        )
        record(root, f"inception/{seed}", "inception", seed, [(length, 0.25)])
        record(root, f"x30/{seed}", "inception", seed, inception[seed], status=status, lr=30)
    return root


def verdict_at_30x(out: Path) -> str:
    return next(v for claim, v in claims(out).items() if claim.startswith(AT_30X))


def test_inception_at_30x_that_diverges_before_its_first_evaluation_counts_at_chance(tmp_path):
    # one run diverged at once (chance: 10% of 10 classes), one after an evaluation at 12%
    write_report([at_30x(tmp_path / "runs", [[], [(15, 0.12)]])], tmp_path / "out")
    assert verdict_at_30x(tmp_path / "out") == "holds beyond the spread"
    table = (tmp_path / "out" / "figure3.md").read_text()
    assert (
        "max top-1 31.00% ± 1.41 (n=2) vs 11.00% ± 1.41 (n=2) (0 of 2 and 2 of 2 diverged)" in table
    )


@pytest.mark.parametrize(
    ("inception", "verdict"),
    [
        ([[(150, 0.35)], [(150, 0.36)]], "does not hold"),  # trains as well at 30x
        ([[(150, 0.25)], [(150, 0.33)]], "holds by the means only"),  # 29% vs 31%, overlapping
    ],
)
def test_inception_at_30x_that_trains_is_judged_on_its_maximum(tmp_path, inception, verdict):
    write_report([at_30x(tmp_path / "runs", inception, "finished")], tmp_path / "out")
    assert verdict_at_30x(tmp_path / "out") == verdict


def test_the_readme_says_per_claim_what_runs_this_short_can_show(tmp_path):
    write_report([at_30x(tmp_path / "runs", [[], []])], tmp_path / "out")
    readme = (tmp_path / "out" / "README.md").read_text()
    section = readme.split("## What runs this short can show")[1].split("## The runs")[0]
    assert "The longest of these runs is 150 paper steps; the paper's fastest network" in section
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    texts = short_run()
    assert len(rows) == 1 + len(texts) == 1 + len(claims(tmp_path / "out"))
    for row, text in zip(rows[1:], texts, strict=True):
        assert row.endswith(f" | {text} |")
    assert any(row.startswith(f"| {AT_30X}") and "| Can: " in row for row in rows)


def test_runs_as_long_as_the_papers_get_no_short_run_section(tmp_path):
    write_report([at_30x(tmp_path / "runs", [[], []], length=3_000_000)], tmp_path / "out")
    assert "## What runs this short can show" not in (tmp_path / "out" / "README.md").read_text()
