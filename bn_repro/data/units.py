"""One unit of `bn-repro prepare`, a class folder or a shard, written in a worker process: each
image decoded to be sure it is whole, re-encoded if a loader could not read it as it is, its EXIF
orientation noted; the files written under temporary names and renamed when whole."""

import errno
import hashlib
import io
import os
import shutil
import tarfile
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import simplejpeg
from PIL import ExifTags, Image

from bn_repro.data.prepared import listing_sha256
from bn_repro.data.sources import PrepareError, Sample


@dataclass(frozen=True)
class Unit:
    name: str  # e.g. folder/train/n01440764 or shards/train-000012
    split: str
    samples: tuple[Sample, ...]


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
    """What a failed unit leaves (a whole one leaves none): the unit is redone whole, and a full
    disk wants the space back."""
    if path.suffix == ".tar":
        for leftover in (path, path.with_suffix(".idx")):
            _temporary(leftover).unlink(missing_ok=True)
    else:
        shutil.rmtree(_temporary(path), ignore_errors=True)


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
        with warnings.catch_warnings():  # PIL's DecompressionBombWarning: check_size says it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
        check_size(image.width, image.height)
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        if image.format == "JPEG":
            check_decodes(data)
            if image.mode in ("RGB", "L"):
                return Cleaned(data, None, orientation)
        rgb = image.convert("RGB")
    except Exception as error:  # PIL's, for a damaged file: OSError, SyntaxError, ValueError ...
        raise BadImage(str(error) or type(error).__name__) from None
    was = f"{image.mode} JPEG" if image.format == "JPEG" else f"{image.format} named {sample.name}"
    buffer = io.BytesIO()
    rgb.save(buffer, "JPEG", quality=95)
    return Cleaned(buffer.getvalue(), was, orientation)


# The most pixels an image may have: PIL's decompression-bomb bound (89,478,485 pixels, 256 MiB
# as RGB), past which the torch loader warns of every such image it decodes and, past twice it,
# fails; DALI sizes its decode buffers to the largest image of a batch and keeps them. A header
# may claim up to 65,535 x 65,535: a few such files would cost every epoch that much memory.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS


def check_size(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise BadImage(
            f"its header claims {width:,} x {height:,} pixels, more than the {MAX_PIXELS:,} the"
            " loaders decode (PIL's decompression-bomb bound)"
        )


def check_decodes(data: bytes) -> None:
    """Decode the JPEG with libjpeg-turbo's warnings as errors: data that ends before the
    header's size is filled ("premature end of data segment": a file cut short, an end marker
    appended), or holds bytes that are not a JPEG's, decodes to an image all the same, with
    grey where the data was missing, and only a warning says so. PIL's decoder drops the
    warnings; simplejpeg's strict mode raises them."""
    # At 1/8 scale libjpeg still decodes every entropy-coded byte, so a file cut short or damaged
    # fails as in a full decode, at a fraction of its cost (the inverse DCTs of 1 coefficient,
    # not 64; one grey channel, no colour conversion); decoding is most of the check's work.
    # 500x375 JPEGs of quality 95 (~110 KB, ImageNet's mean size): the whole check takes 1.1 to
    # 1.25 ms of CPU an image, no more than with PIL's 1/8-scale decode it replaces (1.1 to 1.4).
    try:
        simplejpeg.decode_jpeg(data, "GRAY", min_height=1, min_width=1, min_factor=8, strict=True)
    except ValueError as error:
        raise BadImage(str(error)) from None
