"""What `bn-repro prepare` wrote to data.root, listed for the loaders: the manifest, the images
of the folder tree, and the samples of the shards (from their DALI index files)."""

import json
from dataclasses import dataclass
from pathlib import Path

from bn_repro.schema import ConfigError


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


def read_manifest(root: Path) -> dict:
    path = root / "manifest.json"
    if not path.exists():
        raise ConfigError(
            f"data.root={root} has no manifest.json: prepare it with"
            f" `bn-repro prepare --source SOURCE --out {root}`"
        )
    return json.loads(path.read_text())


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
    wnids = [c["wnid"] for c in manifest["classes"]]
    items = [
        Item(str(path), 0, -1, label)
        for label, wnid in enumerate(wnids)
        for path in sorted((root / split / wnid).iterdir())
    ]
    _check_count(items, manifest, split, root / split)
    return items


def shard_items(root: Path, manifest: dict, split: str) -> list[Item]:
    """Every sample of the split's shards in stored order, located through the index files."""
    if "shards" not in manifest["formats"]:
        raise ConfigError(f"{root} was prepared without --formats shards: use data.format=folder")
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
    _check_count(items, manifest, split, root / "shards")
    return items


def shard_paths(root: Path, manifest: dict, split: str) -> tuple[list[str], list[str]]:
    """The split's shards and their index files, for DALI's webdataset reader."""
    shards = manifest["shards"][split]
    return [str(root / s["file"]) for s in shards], [str(root / s["index"]) for s in shards]


def _check_count(items: list[Item], manifest: dict, split: str, where: Path) -> None:
    if len(items) != manifest["splits"][split]:
        raise ConfigError(
            f"{where} holds {len(items)} {split} images, the manifest {manifest['splits'][split]}:"
            " prepare it again"
        )
