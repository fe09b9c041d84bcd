"""`bn-repro prepare`: ILSVRC2012, from any source, into what the loaders stream: a folder tree
(train/<wnid>/, val/<wnid>/) and/or webdataset shards with DALI index files, and a manifest.

The work is cut into units (one class folder, or one shard), each written under a temporary name
and renamed when whole, then recorded in OUT/.progress/; an interrupted run skips the recorded
units and redoes the rest, so nothing half-written ever looks complete. The records stay: a run
on a finished OUT whose files no longer match its manifest (missing, or of another size) redoes
the units that wrote them."""

import errno
import hashlib
import io
import json
import os
import random
import shutil
import sys
import tarfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

from PIL import ExifTags, Image
from tqdm import tqdm

from bn_repro import __version__
from bn_repro.data.pool import worker_pool
from bn_repro.data.prepared import damaged, listing_sha256
from bn_repro.data.sources import PrepareError, Sample, Source, open_source
from bn_repro.files import write_json

FORMATS = ("folder", "shards")


@dataclass(frozen=True)
class PrepareOptions:
    formats: tuple[str, ...]
    workers: int
    shard_size: int  # images per training shard; 1,281,167 / 1250 = 1025 shards for ImageNet
    seed: int  # of the training shards' global shuffle


@dataclass(frozen=True)
class Unit:
    name: str  # e.g. folder/train/n01440764 or shards/train-000012
    split: str
    samples: tuple[Sample, ...]


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
    check_counts(source)
    classes = sorted({s.wnid for s in source.samples})
    units = plan(source, options)
    _check_same_plan(progress / "plan.json", source, options, units)
    done = {p.stem: json.loads(p.read_text()) for p in progress.glob("unit-*.json")}
    todo = [u for u in units if _record_name(u.name) not in done]
    index = {wnid: i for i, wnid in enumerate(classes)}
    bar = tqdm(total=sum(len(u.samples) for u in todo), unit="img", desc=f"prepare {out}")
    bad = []
    with worker_pool(options.workers) as pool:
        records = pool.map(write_unit, todo, [out] * len(todo), [index] * len(todo))
        for unit, record in zip(todo, records, strict=True):
            bad += record["bad"]
            if not record["bad"]:
                write_json(progress / f"{_record_name(unit.name)}.json", record)
                done[_record_name(unit.name)] = record
            bar.update(len(unit.samples))
    bar.close()
    if bad:
        raise bad_images_error(out, bad)
    (out / BAD_IMAGES).unlink(missing_ok=True)  # an earlier run's
    manifest = build_manifest(source, options, classes, [done[_record_name(u.name)] for u in units])
    write_json(out / "manifest.json", manifest)
    return manifest


# What to do when writing fails, by errno; a finished unit stays, so a rerun resumes.
WHAT_TO_DO = {
    errno.ENOSPC: "the disk is full: free space, or choose an --out on a disk with more, and run"
    " the same command again (it resumes where it stopped)",
    errno.EDQUOT: "the disk quota is used up: free space, or choose an --out with room, and run the"
    " same command again (it resumes where it stopped)",
    errno.EROFS: "the file system is read-only: choose an --out you can write to",
    errno.EACCES: "no permission to write there: choose an --out you can write to",
    errno.EPERM: "no permission to write there: choose an --out you can write to",
    errno.ENOTDIR: "a file stands where a folder is needed: choose another --out",
    errno.EEXIST: "a file stands where a folder is needed: choose another --out",
}


def os_error(error: OSError, where: Path) -> PrepareError:
    """The error as a PrepareError naming the path (error's, or else `where`) and what to do."""
    what_to_do = WHAT_TO_DO.get(error.errno, "fix that and run the same command again")
    return PrepareError(f"{error.filename or where}: {error.strerror or error}: {what_to_do}")


BAD_IMAGES = "bad-images.txt"  # in OUT, while images of the source cannot be decoded


def bad_images_error(out: Path, bad: list[dict]) -> PrepareError:
    """Every image that cannot be decoded, in OUT/bad-images.txt and (the first 20) the error."""
    unique = {(e["split"], e["name"]): e for e in bad}  # folder and shard units find the same
    lines = [f"{s} {n} (in {e['source']}): {e['why']}" for (s, n), e in sorted(unique.items())]
    (out / BAD_IMAGES).write_text("".join(f"{line}\n" for line in lines))
    more = f"\n  and {len(lines) - 20} more" if len(lines) > 20 else ""
    return PrepareError(
        f"{len(lines)} images of the source cannot be decoded (cut short or damaged); all are"
        f" listed in {out / BAD_IMAGES}:\n  " + "\n  ".join(lines[:20]) + more + "\n"
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
        # Sec. 4.2.1: shuffle thoroughly. Shards hold a global permutation, so every shard, and
        # every batch read from one, mixes many classes.
        random.Random(options.seed).shuffle(train)
        val = sorted((s for s in source.samples if s.split == "val"), key=lambda s: s.name)
        for split, samples in (("train", train), ("val", val)):
            count = max(1, -(-len(samples) // options.shard_size))
            for k in range(count):
                # as equal as can be: the first len % count shards hold one more
                part = samples[k * len(samples) // count : (k + 1) * len(samples) // count]
                units.append(Unit(f"shards/{split}-{k:06d}", split, tuple(part)))
    return units


def write_unit(unit: Unit, out: Path, index: dict[str, int]) -> dict:
    """Write one unit (in a worker process), one image in memory at a time; its record. A unit
    holding images that cannot be decoded keeps no file; its record lists them under "bad"."""
    classes = dict(Counter(s.wnid for s in unit.samples))
    record = {"unit": unit.name, "split": unit.split, "classes": classes}
    record |= {"reencoded": [], "exif_oriented": [], "bad": []}

    def images():
        for sample in unit.samples:
            about = {"split": sample.split, "name": sample.name}
            try:
                cleaned = clean_jpeg(sample)
            except BadImage as error:
                record["bad"].append(about | {"source": sample.path, "why": str(error)})
                continue
            if cleaned.was:
                record["reencoded"].append(about | {"was": cleaned.was})
            if cleaned.orientation in TURNED:
                record["exif_oriented"].append(about | {"orientation": cleaned.orientation})
            yield sample, cleaned.data
        if record["bad"]:
            raise _HoldsBadImages  # before the unit's files get their final names

    folder = unit.name.startswith("folder/")
    path = out / unit.name.removeprefix("folder/") if folder else out / f"{unit.name}.tar"
    try:
        record |= write_folder(path, images()) if folder else write_shard(path, images(), index)
    except _HoldsBadImages:
        pass  # listed in the record
    except OSError as error:
        raise os_error(error, path) from None
    finally:
        _remove_temporaries(path)
    return record


class BadImage(Exception):
    """An image that cannot be decoded whole: cut short, damaged, or no image at all."""


class _HoldsBadImages(Exception):
    pass


def _create(path: Path):
    """A new file to write, as every image, shard and index file is (tests fill the disk here)."""
    return open(path, "wb")


def _temporary(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def _remove_temporaries(path: Path) -> None:
    # What a failed unit leaves (a whole one leaves none): it is redone whole, and a full disk
    # wants the space back.
    shutil.rmtree(_temporary(path), ignore_errors=True)
    for leftover in (_temporary(path), _temporary(path.with_suffix(".idx"))):
        leftover.unlink(missing_ok=True)


def write_folder(folder: Path, images: Iterable[tuple[Sample, bytes]]) -> dict:
    """A class folder of image files, written as <folder>.tmp and renamed when whole; its
    images, bytes and SHA-256 (prepared.listing_sha256)."""
    temporary = _temporary(folder)
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    files, size = [], 0
    for sample, data in images:
        with _create(temporary / sample.name) as file:
            file.write(data)
        files.append((sample.name, hashlib.sha256(data).hexdigest()))
        size += len(data)
    shutil.rmtree(folder, ignore_errors=True)  # an earlier, damaged copy
    os.replace(temporary, folder)
    return {
        "folder": str(Path(folder.parent.name) / folder.name),
        "images": len(files),
        "bytes": size,
        "sha256": listing_sha256(files),
    }


class Cleaned(NamedTuple):
    data: bytes  # what to write
    was: str | None  # what it was, if re-encoded
    orientation: int  # its EXIF orientation tag (1, as an untagged image: shown as stored)


TURNED = range(2, 9)  # EXIF orientations that turn or mirror the stored image to show it


def clean_jpeg(sample: Sample) -> Cleaned:
    """The image's bytes as they are, once a decode has shown them whole (BadImage if not),
    unless it is one of the known bad files of the real train set (a PNG named .JPEG, a CMYK
    JPEG): those become RGB JPEGs. Grayscale JPEGs pass."""
    data = sample.read()
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        if image.format == "JPEG" and image.mode in ("RGB", "L"):
            _decode_small(image)
            return Cleaned(data, None, orientation)
        was = (
            f"{image.mode} JPEG"
            if image.format == "JPEG"
            else f"{image.format} named {sample.name}"
        )
        rgb = image.convert("RGB")
    except Exception as error:  # PIL's, for a damaged file: OSError, SyntaxError, ValueError ...
        raise BadImage(str(error) or type(error).__name__) from None
    buffer = io.BytesIO()
    rgb.save(buffer, "JPEG", quality=95)
    return Cleaned(buffer.getvalue(), was, orientation)


def _decode_small(image: Image.Image) -> None:
    # At 1/8 scale libjpeg still decodes every entropy-coded byte, so a file cut short or damaged
    # fails as in a full decode, at 2/3 of its cost: on 500x375 quality-95 JPEGs, 1.2 ms an
    # image against 1.8 ms (reading the bytes and the header: 0.06 ms).
    image.draft(image.mode, (image.width // 8, image.height // 8))
    image.load()


def write_shard(path: Path, images: Iterable[tuple[Sample, bytes]], index: dict[str, int]) -> dict:
    """A webdataset shard of <key>.jpg (the JPEG bytes), <key>.cls (the class index as text, the
    webdataset convention) and <key>.label (int64 little-endian, for DALI's typed reader), with
    its DALI index file (format v1.2, as DALI's wds2idx writes it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary(path)
    lines = []
    with (
        _create(temporary) as file,
        tarfile.open(fileobj=file, mode="w", format=tarfile.GNU_FORMAT) as tar,
    ):
        for sample, data in images:
            key = sample.name.split(".")[0]  # no dots: webdataset and DALI split at the first
            label = index[sample.wnid]
            parts = []
            for extension, payload in (
                ("jpg", data),
                ("cls", str(label).encode()),
                ("label", label.to_bytes(8, "little", signed=True)),
            ):
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size, info.mtime, info.mode = len(payload), 0, 0o644
                offset = tar.offset + len(info.tobuf(tar.format, tar.encoding, tar.errors))
                tar.addfile(info, io.BytesIO(payload))
                parts.append(f"{extension} {offset} {len(payload)} {info.name}")
            lines.append(" ".join(parts))
    index_path = path.with_suffix(".idx")
    index_data = "".join(f"{line}\n" for line in [f"v1.2 {len(lines)}", *lines]).encode()
    with _create(_temporary(index_path)) as file:
        file.write(index_data)
    os.replace(_temporary(index_path), index_path)
    digest = hashlib.sha256()
    with open(temporary, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    os.replace(temporary, path)  # last: a shard that exists is whole, and so is its index
    return {
        "file": str(Path(path.parent.name) / path.name),
        "index": str(Path(index_path.parent.name) / index_path.name),
        "images": len(lines),
        "bytes": path.stat().st_size,
        "sha256": digest.hexdigest(),
        "index_bytes": len(index_data),
        "index_sha256": hashlib.sha256(index_data).hexdigest(),
    }


SHARD_FIELDS = ("file", "index", "images", "bytes", "sha256")


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
    manifest = json.loads((out / "manifest.json").read_text())
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
    listed = "\n  ".join(map(str, problems))
    print(f"{out} no longer matches its manifest, preparing again:\n  {listed}", file=sys.stderr)
    (out / "manifest.json").unlink()  # first: nothing looks complete until the repair is
    for problem in problems:  # the units to redo; the others are recorded as done
        record = out / ".progress" / f"{_record_name(_unit_of(out, problem.path))}.json"
        record.unlink(missing_ok=True)
    return None


def _unit_of(out: Path, path: Path) -> str:
    """The unit that wrote a shard, index file or class folder."""
    split, name = path.relative_to(out).parts[-2:]
    if split == "shards":
        return f"shards/{name.rsplit('.', 1)[0]}"
    return f"folder/{split}/{name}"


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
        "shards": _written(records, "shards", (*SHARD_FIELDS, "index_bytes", "index_sha256")),
        "reencoded": [reencoded[key] for key in sorted(reencoded)],
        # stored turned, to be shown turned by the tag, which both loaders ignore as ImageNet's
        # recipes do: kept as they are, counted here
        "exif_oriented": {
            "count": len(oriented),
            "images": [oriented[key] for key in sorted(oriented)],
        },
    }
