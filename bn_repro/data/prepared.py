"""What `bn-repro prepare` wrote to data.root, listed for the loaders: the manifest, the images
of the folder tree, and the samples of the shards (from their DALI index files); and the files
that no longer match the manifest, found without reading them."""

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from bn_repro.schema import ConfigError, DataConfig


@dataclass(frozen=True, slots=True)
class Item:
    path: str  # an image file, or the shard that holds the image
    offset: int  # of the JPEG bytes in path (0 for a file)
    size: int  # of the JPEG bytes (-1: the whole file)
    label: int

    def read(self) -> bytes:
        with open(self.path, "rb") as file:
            file.seek(self.offset)
            return file.read(self.size)


class Problem(NamedTuple):
    path: Path  # a shard, an index file or a class folder
    what: str  # e.g. "is missing"

    def __str__(self) -> str:
        return f"{self.path} {self.what}"


@dataclass(frozen=True)
class Prepared:
    """data.root as a loader opens it: where it is and the manifest prepare wrote there."""

    root: Path
    manifest: dict

    def size(self, split: str) -> int:
        return self.manifest["splits"][split]


def open_prepared(cfg: DataConfig, world_size: int, batch: int) -> Prepared:
    """What every loader checks first: data.root holds a prepared set of data.num_classes
    classes, with training images for at least one global batch of `batch` images per rank."""
    root = Path(cfg.root)
    manifest = read_manifest(root)
    check_classes(root, manifest, cfg.num_classes)
    prepared = Prepared(root, manifest)
    if prepared.size("train") < batch * world_size:
        raise ConfigError(
            f"{root} has fewer training images than one global batch of {batch * world_size}"
        )
    return prepared


def read_manifest(root: Path) -> dict:
    path = root / "manifest.json"
    if not path.exists():
        raise ConfigError(
            f"data.root={root} has no manifest.json: prepare it with"
            f" `bn-repro prepare --source SOURCE --out {root}`"
        )
    try:
        manifest = json.loads(path.read_bytes())
    except ValueError:  # JSONDecodeError, UnicodeDecodeError: cut short by a full disk, edited
        manifest = None
    if not isinstance(manifest, dict) or not manifest.keys() >= MANIFEST_KEYS:
        raise ConfigError(
            f"{path} is damaged (not the JSON object `bn-repro prepare` writes): rebuild it with"
            f" `{_prepare_command(root)}`, which keeps the images written and writes the manifest"
            " again"
        )
    return manifest


def _prepare_command(root: Path) -> str:
    """The command that prepared root, as its record of the plan (OUT/.progress) says."""
    try:
        plan = json.loads((root / ".progress" / "plan.json").read_bytes())
        options = plan["options"]
        return (
            f"bn-repro prepare --source {plan['source']} --out {root} --formats"
            f" {','.join(options['formats'])} --shard-size {options['shard_size']} --seed"
            f" {options['seed']}"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return f"bn-repro prepare --source SOURCE --out {root}, with the options that prepared it"


# What the loaders, verify and a second prepare read of every manifest.
MANIFEST_KEYS = {"source", "formats", "shard_size", "shuffle_seed", "splits", "classes", "shards"}


def check_classes(root: Path, manifest: dict, num_classes: int) -> None:
    found = len(manifest["classes"])
    if found != num_classes:
        raise ConfigError(
            f"{root} holds {found} classes but data.num_classes={num_classes}:"
            f" set data.num_classes={found}"
        )


def folder_items(root: Path, manifest: dict, split: str) -> list[Item]:
    """Every image of the split's folder tree with its class index, in a fixed order."""
    if "folder" not in manifest["formats"]:
        raise ConfigError(f"{root} was prepared without --formats folder: use data.format=shards")
    items, problems = [], []
    for label, paths, problem in _class_folders(root, manifest, split):
        items += [Item(str(path), 0, -1, label) for path in paths]
        problems += problem
    _check(root, problems)
    return items


def shard_items(root: Path, manifest: dict, split: str) -> list[Item]:
    """Every sample of the split's shards in stored order, located through the index files."""
    if "shards" not in manifest["formats"]:
        raise ConfigError(f"{root} was prepared without --formats shards: use data.format=folder")
    _check(root, shard_problems(root, manifest, split))
    items = []
    for shard in manifest["shards"][split]:
        tar = str(root / shard["file"])
        with open(tar, "rb") as data:
            for line in (root / shard["index"]).read_text().splitlines()[1:]:
                fields = line.split()
                parts = {
                    fields[i]: (int(fields[i + 1]), int(fields[i + 2]))
                    for i in range(0, len(fields), 4)
                }
                data.seek(parts["label"][0])
                label = int.from_bytes(data.read(8), "little", signed=True)
                items.append(Item(tar, *parts["jpg"], label))
    if len(items) != manifest["splits"][split]:
        raise ConfigError(
            f"{root / 'shards'} holds {len(items)} {split} images, the manifest"
            f" {manifest['splits'][split]}: prepare it again"
        )
    return items


def shard_paths(root: Path, manifest: dict, split: str) -> tuple[list[str], list[str]]:
    """The split's shards and their index files, for DALI's webdataset reader."""
    _check(root, shard_problems(root, manifest, split))
    shards = manifest["shards"][split]
    return [str(root / s["file"]) for s in shards], [str(root / s["index"]) for s in shards]


def damaged(root: Path, manifest: dict) -> list[Problem]:
    """Every shard, index file and class folder that is missing, of another size or holds
    another number of images than the manifest says: for ImageNet about 2,000 stat calls and
    2,000 folder listings, no reading."""
    problems = []
    for split in ("train", "val"):
        if "shards" in manifest["formats"]:
            problems += shard_problems(root, manifest, split)
        if "folder" in manifest["formats"]:
            problems += [
                p for _, _, problem in _class_folders(root, manifest, split) for p in problem
            ]
    return problems


def shard_problems(root: Path, manifest: dict, split: str) -> list[Problem]:
    problems = []
    for shard in manifest["shards"][split]:
        problems += _size_problem(root / shard["file"], shard["bytes"])
        # manifests written before index files had their size recorded: present is all we know
        problems += _size_problem(root / shard["index"], shard.get("index_bytes"))
    return problems


def listing_sha256(files: Iterable[tuple[str, str]]) -> str:
    """The SHA-256 of a folder's files, given as (name, SHA-256): that of the listing
    `sha256sum *` prints, sorted by name."""
    listing = "".join(f"{digest}  {name}\n" for name, digest in sorted(files))
    return hashlib.sha256(listing.encode()).hexdigest()


def _class_folders(
    root: Path, manifest: dict, split: str
) -> Iterator[tuple[int, list[Path], list[Problem]]]:
    """Each class folder of the split: (class index, its files sorted, its problems)."""
    for label, entry in enumerate(manifest["classes"]):
        folder = root / split / entry["wnid"]
        if not folder.is_dir():
            yield label, [], [Problem(folder, "is missing")]
            continue
        paths = sorted(folder.iterdir())
        problem = (
            []
            if len(paths) == entry[split]
            else [Problem(folder, f"holds {len(paths)} images, the manifest says {entry[split]}")]
        )
        yield label, paths, problem


def _size_problem(path: Path, size: int | None) -> list[Problem]:
    try:
        found = path.stat().st_size
    except FileNotFoundError:
        return [Problem(path, "is missing")]
    if size is not None and found != size:
        return [Problem(path, f"has {found:,} bytes, the manifest says {size:,}")]
    return []


def _check(root: Path, problems: list[Problem]) -> None:
    if problems:
        more = f" (and {len(problems) - 1} more files)" if len(problems) > 1 else ""
        raise ConfigError(
            f"{problems[0]}{more}: run `bn-repro verify {root}`, then prepare it again"
        )
