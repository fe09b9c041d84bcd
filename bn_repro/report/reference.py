"""`bn-repro paper`: the paper's Figure 3 and Figure 4 numbers as CSV, from bn_repro/paper.py."""

import csv
import dataclasses
import io
from pathlib import Path

from bn_repro import paper
from bn_repro.files import write_bytes

SOURCE = "Ioffe & Szegedy (2015), arXiv:1502.03167v3"


def _csv(table: list[dict]) -> bytes:
    """One CSV row per dict, its keys as columns (None, not given in the paper, is empty)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(table[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    return text.getvalue().encode()


def write_paper_tables(out: Path) -> list[Path]:
    figure3 = [
        dataclasses.asdict(row) | {"initial_lr": paper.LEARNING_RATES[row.experiment]}
        for row in paper.FIGURE_3
    ]
    files = {
        "figure3.csv": _csv(figure3),
        "figure4.csv": _csv([dataclasses.asdict(row) for row in paper.FIGURE_4]),
        "README.md": (
            f"# The paper's numbers\n\nFrom {SOURCE}, as written in `bn_repro/paper.py`;"
            " produced by `bn-repro paper --out DIR`.\n\n"
            "- `figure3.csv`: Fig. 3, training steps (of 32 images) to reach Inception's"
            f" maximum top-1 of {100 * paper.TARGET_TOP1:.1f}% (empty: never reached) and each"
            " network's maximum single-crop validation top-1; `initial_lr` from Sec. 4.2.2.\n"
            "- `figure4.csv`: Fig. 4, top-1 and top-5 errors on the 50,000 ILSVRC2012 validation"
            " images (empty: not given); the BN-Inception ensemble's top-5 error on the"
            f" 100,000 test images is {100 * paper.ENSEMBLE_TEST_TOP5_ERROR:.2f}%.\n"
        ).encode(),
    }
    for name, data in files.items():
        write_bytes(out / name, data)
    return [out / name for name in files]
