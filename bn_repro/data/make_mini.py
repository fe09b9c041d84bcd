"""`bn-repro make-mini`: a generated benchmark written as the three ILSVRC2012 archives, so that
`bn-repro prepare` reads it exactly as it reads the real release."""

import functools
import gzip
import io
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image
from tqdm import tqdm

from bn_repro.data import ilsvrc
from bn_repro.data.mini_images import class_looks, render
from bn_repro.data.pool import worker_pool

# Each worker process draws the class looks once, not once per image.
_looks = functools.lru_cache(maxsize=2)(class_looks)
MTIME = 1_330_000_000  # 2012; fixed, so that the same seed writes the same bytes
CHILDREN_PER_PARENT = 10  # the WordNet synsets above the leaves, as the real meta.mat has


@dataclass(frozen=True)
class MiniSpec:
    classes: int
    train_per_class: int
    val_per_class: int
    size: int  # image width; and height, unless height is set
    seed: int
    height: int | None = None  # e.g. 375 for ImageNet's typical 500x375: the centre band
    quality: int = 90  # JPEG quality


def make_mini(out: Path, spec: MiniSpec, workers: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    leaves, parents = _synsets(spec, rng)
    wnids = [s.wnid for s in leaves]  # in class-index order
    # Validation images come in a random class order, as in the real release.
    val_classes = rng.permutation(np.repeat(np.arange(spec.classes), spec.val_per_class))
    val_jobs = []
    seen = np.zeros(spec.classes, dtype=int)
    for number, c in enumerate(val_classes, start=1):
        val_jobs.append((spec, int(c), int(seen[c]), number))
        seen[c] += 1
    total = spec.classes * (spec.train_per_class + spec.val_per_class)
    with worker_pool(workers) as pool, tqdm(total=total, unit="img") as progress:
        class_tars = pool.map(_class_tar, [(spec, c, wnids[c]) for c in range(spec.classes)])
        _write_tar(out / ilsvrc.TRAIN_ARCHIVE, class_tars, progress, spec.train_per_class)
        val_images = pool.map(_val_image, val_jobs, chunksize=64)
        _write_tar(out / ilsvrc.VAL_ARCHIVE, val_images, progress, 1)
    by_wnid = {s.wnid: s.ilsvrc_id for s in leaves}
    ground_truth = [by_wnid[wnids[c]] for c in val_classes]
    _write_devkit(out / ilsvrc.DEVKIT_ARCHIVE, leaves + parents, ground_truth, spec)


def _synsets(spec: MiniSpec, rng: np.random.Generator):
    parents = -(-spec.classes // CHILDREN_PER_PARENT)
    numbers = rng.choice(10**8, size=spec.classes + parents, replace=False)
    # Leaf c (class index c, drawn with look c) gets the c-th smallest WNID; its ILSVRC2012_ID
    # is unrelated to that order, as in the real devkit, so a label taken as an ID shows.
    wnids = sorted(f"n{n:08d}" for n in numbers[: spec.classes])
    ids = rng.permutation(spec.classes) + 1
    looks = _looks(spec.classes, spec.seed)
    leaves = [
        ilsvrc.Synset(
            int(ids[c]), wnids[c], f"mini class {c}", str(looks[c]), (), 0, spec.train_per_class
        )
        for c in range(spec.classes)
    ]
    groups = []
    for p, number in enumerate(numbers[spec.classes :]):
        members = leaves[p * CHILDREN_PER_PARENT : (p + 1) * CHILDREN_PER_PARENT]
        words = f"mini group {p}"
        groups.append(
            ilsvrc.Synset(
                spec.classes + 1 + p,
                f"n{number:08d}",
                words,
                words,
                tuple(s.ilsvrc_id for s in members),
                1,
                0,
            )
        )
    return leaves, groups


def _render(spec: MiniSpec, c: int, rng: np.random.Generator) -> Image.Image:
    image = render(_looks(spec.classes, spec.seed)[c], rng, spec.size)
    if spec.height is None or spec.height >= spec.size:
        return image
    top = (spec.size - spec.height) // 2
    return image.crop((0, top, spec.size, top + spec.height))


def _image_bytes(image: Image.Image, kind: str | None, quality: int) -> bytes:
    """JPEG bytes; or the known bad files of the real set: a PNG named .JPEG, a CMYK JPEG."""
    buffer = io.BytesIO()
    if kind == "png":
        image.save(buffer, "PNG")
    else:
        mode = {"cmyk": "CMYK", "gray": "L"}.get(kind, "RGB")
        image.convert(mode).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


# The first image of the first three classes: one of each file the real train set is known for.
SPECIAL = {0: "png", 1: "cmyk", 2: "gray"}


def _class_tar(job) -> tuple[str, bytes]:
    """One class's inner tar, <wnid>.tar, as the train archive holds it."""
    spec, c, wnid = job
    files = []
    for j in range(spec.train_per_class):
        rng = np.random.default_rng([spec.seed, 0, c, j])
        kind = SPECIAL.get(c) if j == 0 else None
        files.append(
            (f"{wnid}_{j + 1}.JPEG", _image_bytes(_render(spec, c, rng), kind, spec.quality))
        )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in files:
            tar.addfile(_info(name, len(data)), io.BytesIO(data))
    return f"{wnid}.tar", buffer.getvalue()


# Validation image 2 is a photo as cameras write one: stored wider than high (4:3 even in a
# square set) and tagged EXIF orientation 6, "turn 90 degrees clockwise to show". The loaders
# ignore the tag, as the classic ImageNet recipes do; one that turned it would change its shape.
ORIENTED_VAL = 2


def _val_image(job) -> tuple[str, bytes]:
    spec, c, m, index = job
    rng = np.random.default_rng([spec.seed, 1, c, m])
    image = _render(spec, c, rng)
    name = f"ILSVRC2012_val_{index:08d}.JPEG"
    if index == ORIENTED_VAL:
        return name, _oriented_jpeg(image, spec.quality)
    return name, _image_bytes(image, None, spec.quality)


def _oriented_jpeg(image: Image.Image, quality: int) -> bytes:
    if image.width == image.height:
        image = image.crop((0, 0, image.width, image.height * 3 // 4))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, exif=exif)
    return buffer.getvalue()


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, MTIME, 0o644
    return info


def _write_tar(
    path: Path, files: Iterable[tuple[str, bytes]], progress: tqdm, images_per_file: int
) -> None:
    """Write the files into a tar as they arrive; the tar gets its name once whole."""
    temporary = path.with_suffix(".tar.tmp")
    with tarfile.open(temporary, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in files:
            tar.addfile(_info(name, len(data)), io.BytesIO(data))
            progress.update(images_per_file)
    os.replace(temporary, path)


def _write_devkit(path: Path, synsets, ground_truth: list[int], spec: MiniSpec) -> None:
    readme = (
        f"Generated by bn-repro make-mini: {spec.classes} classes, {spec.train_per_class} train and"
        f" {spec.val_per_class} val images per class, {spec.size} x {spec.height or spec.size} px,"
        f" seed {spec.seed}.\n"
    ).encode()
    files = [
        ("ILSVRC2012_devkit_t12/readme.txt", readme),
        (ilsvrc.DEVKIT_META, ilsvrc.write_meta_mat(synsets)),
        (ilsvrc.DEVKIT_GROUND_TRUTH, ilsvrc.write_ground_truth(ground_truth)),
    ]
    temporary = path.with_suffix(".gz.tmp")
    with (
        open(temporary, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=MTIME) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar,
    ):
        for name, data in files:
            tar.addfile(_info(name, len(data)), io.BytesIO(data))
    os.replace(temporary, path)
