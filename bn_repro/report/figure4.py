"""The Figure 4 table from `bn-repro evaluate`'s records (each run's evaluations.jsonl): single
crop, 144 crops and ensembles, top-1 and top-5 error with the evaluation's method, beside the
paper's rows."""

import csv
import logging
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bn_repro import paper
from bn_repro.evaluate import evaluations
from bn_repro.report.runs import Run
from bn_repro.report.tables import ORDER, Stat

log = logging.getLogger(__name__)

PAPER_ROWS = {row.model: row for row in paper.FIGURE_4}
# What the table reads of each record of `bn-repro evaluate` and of each of its members.
RECORD_KEYS = (
    "id",
    "time",
    "checkpoint",
    "crops",
    "crop_size",
    "data",
    "members",
    "top1",
    "top5",
    "count",
)
MEMBER_KEYS = ("run", "name", "bn_stats")
# Which of the paper's rows a reproduced one stands beside: (several crops, ensemble) -> Fig. 4's
# row (its multicrop rows have 144; a row of fewer says so in its crops and scales).
PAPER_MATCH = {
    (False, False): "BN-Inception single crop",
    (True, False): "BN-Inception multicrop",
    (True, True): "BN-Inception ensemble",
}
COLUMNS = (
    "model",
    "members",
    "runs",
    "crops",
    "scales",
    "checkpoint",
    "bn_stats",
    "top1_error",
    "top1_error_spread",
    "top5_error",
    "top5_error_spread",
    "images",
    "paper_model",
    "paper_top1_error",
    "paper_top5_error",
)


@dataclass(frozen=True)
class Row:
    model: str  # the run's experiment, or the ensemble's members
    members: int
    runs: int  # evaluations averaged: one per seed for a single network
    crops: int
    scales: str  # the shorter sides of the several crops; "" at 1 crop
    checkpoint: str  # latest, best or a file name, as asked
    bn_stats: str  # and over how many batches per rank, for Algorithm 2's
    top1_error: Stat
    top5_error: Stat
    images: int
    paper: paper.Figure4Row | None


def read_records(runs: list[Run]) -> list[dict]:
    """Every evaluation of the runs once: an ensemble's record is in each member's file. One
    command's records share an id: its members, crops and ensemble tell them apart. A record
    the table cannot read is skipped with a line that names it."""
    seen, found = set(), []
    for run in runs:
        for number, record in enumerate(evaluations.read(run.path), start=1):
            why = unreadable(record)
            if why:
                log.warning("%s, record %d: skipped: %s", run.path / evaluations.FILE, number, why)
                continue
            key = (record["id"], tuple(m["run"] for m in record["members"]), record["crops"])
            if key not in seen:
                seen.add(key)
                found.append(record)
    return found


def unreadable(record) -> str | None:
    """What keeps an evaluation record out of the table, or None."""
    if not isinstance(record, dict):
        return "not a JSON object"
    lacking = [key for key in RECORD_KEYS if key not in record]
    members = record.get("members")
    if lacking:
        return f"it lacks {', '.join(lacking)}"
    if not all(_number(record[key]) for key in ("top1", "top5", "count")):
        return "its top1, top5 or count is not a number"
    if not isinstance(members, list) or not members:
        return "its members are not a list of runs"
    for member in members:
        if not isinstance(member, dict):
            return "a member is not a JSON object"
        population = member.get("bn_stats") == "population"
        needs = MEMBER_KEYS + (("population_batches",) if population else ())
        if any(key not in member for key in needs):
            return f"a member lacks one of {', '.join(needs)}"
    return None


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def figure4(found: list[dict]) -> list[Row]:
    """A row per network and method, its runs' (seeds') latest evaluations averaged, then a row
    per ensemble and method; in Fig. 3's order of networks, single crop first."""
    latest: dict[tuple, dict] = {}
    for record in sorted(found, key=lambda r: r["time"]):
        runs = tuple(sorted(m["run"] for m in record["members"]))
        latest[(runs, _method(record))] = record  # the last evaluation of the same kind counts
    groups: dict[tuple, list[dict]] = {}
    for (runs, method), record in latest.items():
        label = _label(record) if len(runs) > 1 else record["members"][0]["name"]
        groups.setdefault((len(runs) > 1, label, method), []).append(record)
    return [
        _row(label, method, group)
        for (_, label, method), group in sorted(groups.items(), key=_order)
    ]


def _method(record: dict) -> tuple:
    stats = sorted({_bn_stats(m) for m in record["members"]})
    scales = "/".join(map(str, record.get("scales", [])))
    return (record["crops"], scales, record["checkpoint"], ", ".join(stats))


def _bn_stats(member: dict) -> str:
    if member["bn_stats"] == "population":
        return f"population ({member['population_batches']} batches/rank)"
    return member["bn_stats"]


def _label(record: dict) -> str:
    names = Counter(m["name"] for m in record["members"])
    parts = [f"{name} x{n}" if n > 1 else name for name, n in sorted(names.items(), key=_rank)]
    return f"ensemble of {len(record['members'])}: {', '.join(parts)}"


def _rank(item: tuple) -> tuple:
    name = item[0]
    return (ORDER.index(name) if name in ORDER else len(ORDER), name)


def _order(item: tuple) -> tuple:
    (ensemble, label, method), _ = item
    return (ensemble, *_rank((label,)), method)


def _row(label: str, method: tuple, group: list[dict]) -> Row:
    crops, scales, checkpoint, bn_stats = method
    members = len(group[0]["members"])
    return Row(
        model=label,
        members=members,
        runs=len(group),
        crops=crops,
        scales=scales,
        checkpoint=checkpoint,
        bn_stats=bn_stats,
        top1_error=Stat.of([1 - r["top1"] for r in group]),
        top5_error=Stat.of([1 - r["top5"] for r in group]),
        images=statistics.mode(r["count"] for r in group),
        paper=PAPER_ROWS.get(PAPER_MATCH.get((crops > 1, members > 1), "")),
    )


def write_figure4(runs: list[Run], out: Path) -> list[Row]:
    """figure4.md and figure4.csv in out, when the runs have evaluation records; the rows."""
    found = read_records(runs)
    rows = figure4(found)
    if rows:
        _write_csv(out / "figure4.csv", rows)
        data = ", ".join(sorted({r["data"] for r in found}))
        sizes = " or ".join(str(size) for size in sorted({r["crop_size"] for r in found}))
        (out / "figure4.md").write_text(_markdown(rows, f"{data}, crops of {sizes} pixels"))
    return rows


def _percent(stat: Stat) -> str:
    spread = f" ± {100 * stat.spread:.2f}" if stat.n > 1 else ""
    return f"{100 * stat.mean:.2f}%{spread}"


def _paper_error(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _markdown(rows: list[Row], data: str) -> str:
    lines = [
        "# Figure 4, reproduced",
        "",
        f"Data: {data}. Errors over every validation image once (images), from the records of",
        "`bn-repro evaluate`; a network's row averages its runs (mean ± sample standard deviation",
        "over seeds), an ensemble predicts the mean of its members' class probabilities",
        "(Sec. 4.2.3). Crops: 1 is the shorter side resized to crop/0.875 and the centre crop, as",
        "training evaluates; 144 is GoogLeNet's 4 scales x 3 squares x 6 crops x 2 mirrors, its",
        "shorter sides 256, 288, 320 and 352 for 224-pixel crops, in proportion for other crops",
        "(scales); 36, 72 or 108 crops take its first 1, 2 or 3 scales only.",
        "",
        "| model | crops | scales | models | runs | checkpoint | BN statistics | images"
        " | top-1 error | top-5 error | paper: row | paper: top-1 | paper: top-5 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        printed = r.paper
        lines.append(
            f"| {r.model} | {r.crops} | {r.scales or '-'} | {r.members} | {r.runs}"
            f" | {r.checkpoint} | {r.bn_stats} | {r.images:,} | {_percent(r.top1_error)}"
            f" | {_percent(r.top5_error)} | {printed.model if printed else '-'}"
            f" | {_paper_error(printed and printed.top1_error)}"
            f" | {_paper_error(printed and printed.top5_error)} |"
        )
    lines += [
        "",
        "The paper's Fig. 4 (50,000 ILSVRC2012 validation images):",
        "",
        "| model | resolution | crops | models | top-1 error | top-5 error |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for p in paper.FIGURE_4:
        lines.append(
            f"| {p.model} | {p.resolution or 'variable'} | {p.crops or '-'} | {p.models or '-'}"
            f" | {_paper_error(p.top1_error)} | {_paper_error(p.top5_error)} |"
        )
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, rows: list[Row]) -> None:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(COLUMNS)
        for r in rows:
            printed = r.paper
            writer.writerow(
                [
                    r.model,
                    r.members,
                    r.runs,
                    r.crops,
                    r.scales,
                    r.checkpoint,
                    r.bn_stats,
                    r.top1_error.mean,
                    r.top1_error.spread,
                    r.top5_error.mean,
                    r.top5_error.spread,
                    r.images,
                    printed and printed.model,
                    printed and printed.top1_error,
                    printed and printed.top5_error,
                ]
            )
