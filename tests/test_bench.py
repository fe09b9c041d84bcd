"""`bn-repro bench loader` runs every loader and records its numbers with their provenance; the
speeds themselves are measured by running it, never asserted here."""

import json
import subprocess
import sys
from pathlib import Path

BN_REPRO = Path(sys.executable).with_name("bn-repro")


def test_bench_loader_writes_a_record_of_every_loader(prepared_small, tmp_path):
    out = tmp_path / "loader.json"
    result = subprocess.run(
        [
            BN_REPRO,
            "bench",
            "loader",
            "--root",
            prepared_small,
            "--size",
            "32",
            "--batch",
            "8",
            "--workers",
            "1",
            "--warmup",
            "1",
            "--batches",
            "2",
            "--out",
            out,
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(out.read_text())
    rates = record["results"]["images_per_s"]
    assert set(rates) == {"classic", "torch", "dali", "dali-bare"} and min(rates.values()) > 0
    assert record["results"]["ratios"]["dali/classic"] == round(rates["dali"] / rates["classic"], 3)
    assert record["command"][:3] == ["bn-repro", "bench", "loader"]
    assert record["machine"]["cores"] >= 1 and record["versions"]["torch"]
    assert record["settings"]["photometric"] == "none" and record["settings"]["batch"] == 8


def test_bench_loader_refuses_an_unprepared_root(tmp_path):
    result = subprocess.run(
        [BN_REPRO, "bench", "loader", "--root", tmp_path], capture_output=True, text=True
    )
    assert result.returncode == 2 and "has no manifest.json" in result.stderr
