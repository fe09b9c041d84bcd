"""`bn-repro prepare`: ILSVRC2012, from any source, into what the loaders stream. That is a
folder tree (train/<wnid>/, val/<wnid>/) and/or webdataset shards with DALI index files, and a
manifest.

The work is cut into units (one class folder, or one shard), each written under a temporary name
and renamed when whole, then recorded in OUT/.progress/; an interrupted run skips the recorded
units and redoes the rest, so nothing half-written ever looks complete. The records stay: a run
on a finished OUT whose files no longer match its manifest (missing, or of another size) redoes
the units that wrote them."""

import json
import random
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from itertools import repeat
from pathlib import Path

from tqdm import tqdm

from bn_repro import __version__
from bn_repro.data.ilsvrc import listed
from bn_repro.data.pool import worker_pool
from bn_repro.data.prepared import Problem, damaged, read_manifest
from bn_repro.data.sources import PrepareError, Sample, Source, open_source
from bn_repro.data.units import Unit, os_error, write_unit
from bn_repro.files import write_json
from bn_repro.schema import ConfigError

FORMATS = ("folder", "shards")


@dataclass(frozen=True)
class PrepareOptions:
    formats: tuple[str, ...]
    workers: int
    shard_size: int  # images per training shard; 1,281,167 / 1250 = 1025 shards for ImageNet
    seed: int  # of the training shards' global shuffle


def prepare(source_path: Path, out: Path, options: PrepareOptions) -> dict:
    """Prepare OUT from the source. A finished OUT with the same settings is left as it is, but
    for the units whose files are missing or of another size: those are written again."""
    check_apart(source_path, out)
    if out.exists() and not out.is_dir():
        raise PrepareError(f"--out {out} is a file, not a folder: choose another --out")
    try:
        return _prepare(source_path, out, options)
    except OSError as error:
        raise os_error(error, out) from None


def _prepare(source_path: Path, out: Path, options: PrepareOptions) -> dict:
    finished = _finished(out, source_path, options)
    if finished:
        return finished
    progress = out / ".progress"
    progress.mkdir(parents=True, exist_ok=True)  # the first write: a bad --out fails here, at once
    source = open_source(source_path)
    check_names(source)
    check_counts(source)
    classes = sorted({s.wnid for s in source.samples})
    units = plan(source, options)
    _check_same_plan(progress / "plan.json", source, options, units)
    done = {p.stem: json.loads(p.read_text()) for p in progress.glob("unit-*.json")}
    todo = [u for u in units if _record_name(u.name) not in done]
    written, bad = _write_units(todo, out, classes, options.workers)
    if bad:
        raise bad_images_error(out, bad)
    (out / BAD_IMAGES).unlink(missing_ok=True)  # an earlier run's
    records = done | written
    manifest = build_manifest(
        source, options, classes, [records[_record_name(u.name)] for u in units]
    )
    write_json(out / "manifest.json", manifest)
    return manifest


def _write_units(
    units: list[Unit], out: Path, classes: list[str], workers: int
) -> tuple[dict[str, dict], list[dict]]:
    """Write the units in parallel, recording each whole one in OUT/.progress as it comes: the
    records by name, and the images found bad."""
    index = {wnid: i for i, wnid in enumerate(classes)}
    records, bad = {}, []
    total = sum(len(u.samples) for u in units)
    with worker_pool(workers) as pool, tqdm(total=total, unit="img", desc=f"prepare {out}") as bar:
        for unit, record in zip(
            units, pool.map(write_unit, units, repeat(out), repeat(index)), strict=True
        ):
            bad += record["bad"]
            if not record["bad"]:
                records[_record_name(unit.name)] = record
                write_json(out / ".progress" / f"{_record_name(unit.name)}.json", record)
            bar.update(len(unit.samples))
    return records, bad


BAD_IMAGES = "bad-images.txt"  # in OUT, while images of the source cannot be decoded


def bad_images_error(out: Path, bad: list[dict]) -> PrepareError:
    """Every image that cannot be decoded, in OUT/bad-images.txt and (the first 20) the error."""
    unique = {(e["split"], e["name"]): e for e in bad}  # folder and shard units find the same
    lines = [f"{s} {n} (in {e['source']}): {e['why']}" for (s, n), e in sorted(unique.items())]
    (out / BAD_IMAGES).write_text("".join(f"{line}\n" for line in lines))
    more = f"\n  and {len(lines) - 20} more" if len(lines) > 20 else ""
    return PrepareError(
        f"{len(lines)} images of the source cannot be decoded (cut short, damaged or too large);"
        f" all are listed in {out / BAD_IMAGES}:\n  " + "\n  ".join(lines[:20]) + more + "\n"
        f"{out} holds no manifest, so no loader reads it. Replace these files with whole copies"
        " (download the source again), then run the same command: it redoes only the class"
        " folders and shards that hold them"
    )


def check_apart(source: Path, out: Path) -> None:
    """Refuse an OUT that is, holds or lies inside the source, symbolic links resolved: prepare
    would write into the source (rewriting its images in place) or read what it writes."""
    source_real, out_real = source.resolve(), out.resolve()
    if out_real == source_real:
        relation = "is"
    elif out_real.is_relative_to(source_real):
        relation = "lies inside"
    elif source_real.is_relative_to(out_real):
        relation = "holds"
    else:
        return
    raise PrepareError(
        f"--out {out} {relation} --source {source} ({out_real}, {source_real}): prepare would"
        " write into its own source. Choose an --out outside the source, and not above it"
    )


def check_counts(source: Source) -> None:
    """The source holds what it promises (its devkit's counts, or the release's)."""
    per_class = Counter(s.wnid for s in source.samples if s.split == "train")
    found = Counter(s.split for s in source.samples)
    problems = [
        f"{wnid} has {per_class[wnid]} training images, the devkit says {n}"
        for wnid, n in sorted(source.promised_per_class.items())
        if per_class[wnid] != n
    ]
    if "classes" in source.promised and len(per_class) != source.promised["classes"]:
        problems.append(
            f"{len(per_class)} classes have training images, not {source.promised['classes']}"
        )
    for split in ("train", "val"):
        if split in source.promised and found[split] != source.promised[split]:
            problems.append(f"{found[split]:,} {split} images, not {source.promised[split]:,}")
    if problems:
        listed = "; ".join(problems[:10]) + (
            f"; and {len(problems) - 10} more" if len(problems) > 10 else ""
        )
        raise PrepareError(
            f"{source.path} does not hold what it promises: {listed}. Is an archive incomplete? "
            "Download it again, or prepare from a complete copy."
        )


def check_names(source: Source) -> None:
    """Every image's name can be written where the loaders read it: UTF-8 (the manifest, the
    tar headers), without spaces or control characters (DALI's index files separate their fields
    by whitespace, a line per sample), and unique in its split up to its first dot (the key that
    names a sample in a shard, and the file in a class folder)."""
    problems, first = [], {}
    for sample in source.samples:
        name, where = sample.name, f"{sample.path} ({sample.split}, {sample.wnid})"
        key = (sample.split, name.split(".")[0])
        try:
            name.encode()
        except UnicodeEncodeError:
            shown = name.encode(errors="surrogateescape")
            problems.append(f"{where}: {shown!r} is not UTF-8")
            continue
        if " " in name or not name.isprintable():  # other whitespace is not printable
            problems.append(f"{where}: {name!r} holds a space or a control character")
        elif key in first:
            problems.append(f"{where}: {name!r} has the name of {first[key]}, up to its first dot")
        first.setdefault(key, f"{name!r} in {where}")
    if problems:
        raise PrepareError(
            f"{source.path} holds images whose names the prepared set cannot keep:"
            f" {listed(problems)}. Rename them (or remove them), then run the same command"
        )


def plan(source: Source, options: PrepareOptions) -> list[Unit]:
    units = []
    if "folder" in options.formats:
        for split in ("train", "val"):
            by_class: dict[str, list[Sample]] = {}
            for sample in source.samples:
                if sample.split == split:
                    by_class.setdefault(sample.wnid, []).append(sample)
            units += [
                Unit(f"folder/{split}/{w}", split, tuple(s)) for w, s in sorted(by_class.items())
            ]
    if "shards" in options.formats:
        train = sorted((s for s in source.samples if s.split == "train"), key=lambda s: s.name)
        # Shards hold a global permutation, so any stretch of them mixes many classes for a
        # tool that reads them in their stored order; the loaders read the run's own order
        # (sharding.epoch_order).
        random.Random(options.seed).shuffle(train)
        val = sorted((s for s in source.samples if s.split == "val"), key=lambda s: s.name)
        for split, samples in (("train", train), ("val", val)):
            count = max(1, -(-len(samples) // options.shard_size))
            for k in range(count):
                # as equal as can be: the first len % count shards hold one more
                part = samples[k * len(samples) // count : (k + 1) * len(samples) // count]
                units.append(Unit(f"shards/{split}-{k:06d}", split, tuple(part)))
    return units


def _written(records: list[dict], kind: str, fields: tuple[str, ...]) -> dict[str, list[dict]]:
    """What the units of a kind (folder, shards) wrote, by split, in unit order."""
    return {
        split: [
            {k: r[k] for k in fields}
            for r in records
            if r["unit"].startswith(f"{kind}/") and r["split"] == split
        ]
        for split in ("train", "val")
    }


def _record_name(unit: str) -> str:
    return "unit-" + unit.replace("/", "-")


def _finished(out: Path, source_path: Path, options: PrepareOptions) -> dict | None:
    if not (out / "manifest.json").exists():
        return None
    try:
        manifest = read_manifest(out)
    except ConfigError as error:  # the units' records in OUT/.progress rebuild it
        print(f"bn-repro prepare: {error}; rebuilding it", file=sys.stderr)
        (out / "manifest.json").unlink()
        return None
    settings = (manifest["source"]["path"], manifest["formats"], manifest["shard_size"])
    wanted = (str(source_path.resolve()), list(options.formats), options.shard_size)
    if settings != wanted or manifest["shuffle_seed"] != options.seed:
        raise PrepareError(
            f"{out} already holds a preparation of {manifest['source']['path']} with formats"
            f" {manifest['formats']}, shard size {manifest['shard_size']} and seed"
            f" {manifest['shuffle_seed']}: prepare into another --out"
        )
    problems = damaged(out, manifest)
    if not problems:
        return manifest
    _forget(out, problems)
    return None


def _forget(out: Path, problems: list[Problem]) -> None:
    """Make OUT unfinished again, forgetting the units that wrote the damaged files (the others
    stay recorded as done), so that the run redoes those."""
    listed = "\n  ".join(map(str, problems))
    print(f"{out} no longer matches its manifest, preparing again:\n  {listed}", file=sys.stderr)
    (out / "manifest.json").unlink()  # first: nothing looks complete until the repair is
    for problem in problems:
        kind, name = problem.path.parent.name, problem.path.name  # shards, or the split
        unit = f"shards/{name.rsplit('.', 1)[0]}" if kind == "shards" else f"folder/{kind}/{name}"
        (out / ".progress" / f"{_record_name(unit)}.json").unlink(missing_ok=True)


def _check_same_plan(
    path: Path, source: Source, options: PrepareOptions, units: list[Unit]
) -> None:
    fingerprint = {
        "source": str(source.path.resolve()),
        "options": asdict(options) | {"workers": None},
        "units": len(units),
        "images": len(source.samples),
    }
    fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back: tuples become lists
    if path.exists() and json.loads(path.read_text()) != fingerprint:
        raise PrepareError(
            f"{path.parent.parent} holds an interrupted preparation with other options or another"
            " source: rerun it with the same ones, or prepare into an empty --out"
        )
    write_json(path, fingerprint)


def build_manifest(
    source: Source, options: PrepareOptions, classes: list[str], records: list[dict]
) -> dict:
    counts = {split: Counter() for split in ("train", "val")}
    # folder and shard units re-encode the same files: list each once
    reencoded = {(e["split"], e["name"]): e for r in records for e in r["reencoded"]}
    oriented = {(e["split"], e["name"]): e for r in records for e in r["exif_oriented"]}
    for record in records:
        if record["unit"].startswith(f"{options.formats[0]}/"):  # each image once
            counts[record["split"]].update(record["classes"])
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "bn_repro": __version__,
        "command": sys.argv,
        "source": {"kind": source.kind, "path": str(source.path.resolve())},
        "formats": list(options.formats),
        "shard_size": options.shard_size,
        "shuffle_seed": options.seed,
        "splits": {split: sum(c.values()) for split, c in counts.items()},
        "classes": [
            {
                "index": i,
                "wnid": wnid,
                "words": source.class_names.get(wnid, ""),
                "train": counts["train"][wnid],
                "val": counts["val"][wnid],
            }
            for i, wnid in enumerate(classes)
        ],
        "folders": _written(records, "folder", ("folder", "images", "bytes", "sha256")),
        "shards": _written(
            records,
            "shards",
            ("file", "index", "images", "bytes", "sha256", "index_bytes", "index_sha256"),
        ),
        "reencoded": [reencoded[key] for key in sorted(reencoded)],
        # stored turned, to be shown turned by the tag, which both loaders ignore as ImageNet's
        # recipes do: kept as they are, counted here
        "exif_oriented": {
            "count": len(oriented),
            "images": [oriented[key] for key in sorted(oriented)],
        },
    }
