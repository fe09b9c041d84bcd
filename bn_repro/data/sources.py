"""What a preparation source holds: every image as (split, WNID, file name, where its bytes are),
read from the official archives without extracting them, from an extracted train/val tree, or
from Kaggle's "ImageNet Object Localization" layout."""

import csv
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from bn_repro.data import ilsvrc
from bn_repro.errors import UserError

WNID = re.compile(r"n\d{8}")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


class PrepareError(UserError, RuntimeError):
    """Bad input to preparation; the message names the file or member and what to do."""


@dataclass(frozen=True, slots=True)
class Sample:
    split: str  # train | val
    wnid: str
    name: str  # the original file name, e.g. n01440764_10026.JPEG
    path: str  # the file that holds the bytes: an archive or the image itself
    offset: int  # where the bytes start in path
    size: int

    def read(self) -> bytes:
        with open(self.path, "rb") as file:
            file.seek(self.offset)
            data = file.read(self.size)
        if len(data) != self.size:
            raise PrepareError(f"{self.path}: {self.name} is cut short (truncated archive?)")
        return data


@dataclass(frozen=True)
class Source:
    kind: str  # archives | tree | kaggle
    path: Path
    samples: list[Sample]
    class_names: dict[str, str]  # WNID -> words, where the source names them
    promised: dict[str, int]  # what the source says it holds: train, val, classes
    promised_per_class: dict[str, int]  # train images per WNID, where the source says


def open_source(path: Path) -> Source:
    if (path / ilsvrc.TRAIN_ARCHIVE).exists() or (path / ilsvrc.DEVKIT_ARCHIVE).exists():
        return scan_archives(path)
    if (path / "LOC_synset_mapping.txt").exists():
        return scan_kaggle(path)
    if (path / "train").is_dir() and (path / "val").is_dir():
        return scan_tree(path)
    raise PrepareError(
        f"{path} is not an ILSVRC2012 source: expected the archives {ilsvrc.TRAIN_ARCHIVE},"
        f" {ilsvrc.VAL_ARCHIVE} and {ilsvrc.DEVKIT_ARCHIVE}; or train/ and val/ folders of WNID"
        " folders; or Kaggle's LOC_synset_mapping.txt, LOC_val_solution.csv and ILSVRC/"
    )


def scan_archives(root: Path) -> Source:
    for name in (ilsvrc.TRAIN_ARCHIVE, ilsvrc.VAL_ARCHIVE, ilsvrc.DEVKIT_ARCHIVE):
        if not (root / name).exists():
            raise PrepareError(f"{root / name} is missing: put all three archives in {root}")
    devkit = read_devkit(root / ilsvrc.DEVKIT_ARCHIVE)
    samples = list(scan_train_archive(root / ilsvrc.TRAIN_ARCHIVE))
    val_path = root / ilsvrc.VAL_ARCHIVE
    wnids = devkit_val_wnids(devkit, root / ilsvrc.DEVKIT_ARCHIVE)
    samples += label_val(list(tar_files(val_path, str(val_path))), wnids, val_path)
    classes = devkit.classes
    return Source(
        "archives",
        root,
        samples,
        {s.wnid: s.words for s in classes},
        {
            "train": sum(s.num_train_images for s in classes),
            "val": len(wnids),
            "classes": len(classes),
        },
        {s.wnid: s.num_train_images for s in classes},
    )


def read_devkit(path: Path) -> ilsvrc.Devkit:
    wanted = (ilsvrc.DEVKIT_META, ilsvrc.DEVKIT_GROUND_TRUTH)
    files = {}
    try:
        with tarfile.open(path, "r:gz") as devkit:
            for member in devkit:
                check_member(member, str(path))
                if member.name in wanted:
                    files[member.name] = devkit.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as error:
        raise PrepareError(f"{path} cannot be read ({error}): download it again") from None
    for needed in wanted:
        if needed not in files:
            raise PrepareError(f"{path} has no {needed}: is it the ILSVRC2012 devkit (t12)?")
    synsets = _devkit_file(path, ilsvrc.DEVKIT_META, ilsvrc.read_meta_mat, files)
    ground_truth = _devkit_file(path, ilsvrc.DEVKIT_GROUND_TRUTH, ilsvrc.read_ground_truth, files)
    return ilsvrc.Devkit(tuple(synsets), ground_truth)


def _devkit_file(path: Path, name: str, read, files: dict[str, bytes]):
    try:
        return read(files[name])
    except ValueError as error:
        raise PrepareError(
            f"{path}: {name} {error}: is it the ILSVRC2012 devkit (t12)? Download it again"
        ) from None


def devkit_val_wnids(devkit: ilsvrc.Devkit, path: Path) -> list[str]:
    try:
        return devkit.val_wnids()
    except ValueError as error:
        raise PrepareError(
            f"{path}: {ilsvrc.DEVKIT_GROUND_TRUTH} {error}: is it the ILSVRC2012 devkit (t12)?"
            " Download it again"
        ) from None


VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG")


def label_val(val: list[tuple[str, int, int]], wnids: list[str], path: Path) -> list[Sample]:
    """Line i of the ground truth labels ILSVRC2012_val_<i, 8 digits>.JPEG: each image is
    labelled by the number in its name, and the archive must hold each number once."""
    found: dict[int, tuple[str, int, int]] = {}
    unknown, twice = [], []
    for name, offset, size in val:
        match = VAL_NAME.fullmatch(name)
        number = int(match[1]) if match else 0
        if not 1 <= number <= len(wnids):
            unknown.append(name)
        elif number in found:
            twice.append(name)
        else:
            found[number] = (name, offset, size)
    missing = [f"ILSVRC2012_val_{n:08d}.JPEG" for n in range(1, len(wnids) + 1) if n not in found]
    problems = [
        f"{len(names)} {what}: {ilsvrc.listed(names)}"
        for names, what in (
            (unknown, "not in the ground truth"),
            (twice, "held twice"),
            (missing, "missing"),
        )
        if names
    ]
    if problems:
        raise PrepareError(
            f"{path} does not hold the images its devkit's ground truth labels"
            f" (ILSVRC2012_val_00000001.JPEG to ILSVRC2012_val_{len(wnids):08d}.JPEG, each once):"
            f" {'; '.join(problems)}. Is the archive incomplete, or from another release?"
            " Download it again"
        )
    return [
        Sample("val", wnids[number - 1], name, str(path), offset, size)
        for number, (name, offset, size) in sorted(found.items())
    ]


def check_member(member: tarfile.TarInfo, archive: str) -> None:
    """Refuse what a safe extraction would refuse, though nothing is extracted by its name."""
    if member.name.startswith("/") or ".." in Path(member.name).parts:
        raise PrepareError(f"{archive}: member {member.name!r} points outside the archive; refused")
    if not (member.isfile() or member.isdir()):
        raise PrepareError(f"{archive}: member {member.name!r} is a link or a device; refused")


def tar_files(path: Path, label: str, fileobj=None, base: int = 0, end: int | None = None):
    """(file name, offset, size) of every file in a tar, offsets counted in `path`. The tar may
    be a member of `path` read through fileobj, starting at byte `base` and ending at `end`."""
    end = path.stat().st_size if end is None else end
    last = "its start"
    try:
        with tarfile.open(None if fileobj else path, "r:", fileobj=fileobj) as tar:
            for member in tar:
                check_member(member, label)
                if member.isfile():
                    if base + member.offset_data + member.size > end:
                        raise PrepareError(f"{label}: {member.name} is cut short (truncated?)")
                    yield Path(member.name).name, base + member.offset_data, member.size
                last = member.name
    except (tarfile.TarError, EOFError) as error:
        raise PrepareError(
            f"{label} is corrupt or truncated after member {last!r} ({error}): download it again"
        ) from None


def scan_train_archive(path: Path):
    """The images inside the per-class tars of the train archive, without extracting them."""
    for wnid, base, size in tar_files(path, str(path)):
        if not wnid.endswith(".tar") or not WNID.fullmatch(wnid.removesuffix(".tar")):
            raise PrepareError(
                f"{path}: unexpected member {wnid!r}; expected one <wnid>.tar per class"
            )
        wnid = wnid.removesuffix(".tar")
        with open(path, "rb") as outer:
            outer.seek(base)
            inner = _Window(outer, base, size)
            for name, offset, length in tar_files(
                path, f"{path}:{wnid}.tar", inner, base, base + size
            ):
                yield Sample("train", wnid, name, str(path), offset, length)


class _Window:
    """The bytes [base, base + size) of an open file, as a file of their own."""

    def __init__(self, file, base: int, size: int):
        self.file, self.base, self.size, self.position = file, base, size, 0

    def read(self, count: int = -1) -> bytes:
        count = self.size - self.position if count < 0 else min(count, self.size - self.position)
        self.file.seek(self.base + self.position)
        data = self.file.read(count)
        self.position += len(data)
        return data

    def seek(self, position: int, whence: int = 0) -> int:
        self.position = {0: 0, 1: self.position, 2: self.size}[whence] + position
        return self.position

    def tell(self) -> int:
        return self.position


def scan_tree(root: Path) -> Source:
    """train/<wnid>/* and val/<wnid>/*, as torchvision's ImageFolder reads them."""
    samples = [s for split in ("train", "val") for s in _folder_images(root / split, split)]
    train_classes = {s.wnid for s in samples if s.split == "train"}
    val_classes = {s.wnid for s in samples if s.split == "val"}
    if train_classes != val_classes:
        raise PrepareError(
            f"{root}: train/ and val/ hold different classes"
            f" (only in train: {sorted(train_classes - val_classes)[:5]},"
            f" only in val: {sorted(val_classes - train_classes)[:5]})"
        )
    return Source("tree", root, samples, {}, _imagenet_promise(len(train_classes)), {})


def scan_kaggle(root: Path) -> Source:
    """Kaggle's ImageNet Object Localization Challenge: ILSVRC/Data/CLS-LOC/{train/<wnid>, val}."""
    names = {}
    for line in (root / "LOC_synset_mapping.txt").read_text().splitlines():
        wnid, _, words = line.partition(" ")
        names[wnid] = words
    data = root / "ILSVRC" / "Data" / "CLS-LOC"
    samples = list(_folder_images(data / "train", "train"))
    solution = root / "LOC_val_solution.csv"
    if not solution.exists():
        raise PrepareError(f"{solution} is missing: it labels the validation images")
    with solution.open() as file:
        # ImageId,PredictionString: the first word of the boxes is the image's WNID
        labels = {
            row["ImageId"]: row["PredictionString"].split()[0] for row in csv.DictReader(file)
        }
    for image_id, wnid in sorted(labels.items()):
        path = data / "val" / f"{image_id}.JPEG"
        if not path.exists():
            raise PrepareError(f"{path} is missing: {solution} lists it")
        samples.append(Sample("val", wnid, path.name, str(path), 0, path.stat().st_size))
    unknown = {s.wnid for s in samples} - names.keys()
    if unknown:
        raise PrepareError(f"classes {sorted(unknown)[:5]} are not in LOC_synset_mapping.txt")
    promised = {**_imagenet_promise(len(names)), "val": len(labels), "classes": len(names)}
    return Source("kaggle", root, samples, names, promised, {})


def _imagenet_promise(classes: int) -> dict[str, int]:
    # An extracted copy of the full release must hold all of it; a subset promises nothing.
    if classes != ilsvrc.IMAGENET_CLASSES:
        return {}
    return {
        "train": ilsvrc.IMAGENET_TRAIN_IMAGES,
        "val": ilsvrc.IMAGENET_VAL_IMAGES,
        "classes": ilsvrc.IMAGENET_CLASSES,
    }


def _folder_images(folder: Path, split: str):
    if not folder.is_dir():
        raise PrepareError(f"{folder} is missing")
    for class_dir in sorted(folder.iterdir()):
        if not class_dir.is_dir() or not WNID.fullmatch(class_dir.name):
            raise PrepareError(
                f"{class_dir}: expected only WNID folders (n01440764 ...) in {folder}"
            )
        for entry in sorted(os.scandir(class_dir), key=lambda e: e.name):
            if entry.is_file() and entry.name.lower().endswith(IMAGE_SUFFIXES):
                yield Sample(split, class_dir.name, entry.name, entry.path, 0, entry.stat().st_size)
