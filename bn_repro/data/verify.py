"""`bn-repro verify ROOT`: every shard, index file and class folder that `bn-repro prepare`
wrote, read whole and checked against the sizes and SHA-256 sums of ROOT/manifest.json, in
parallel."""

import hashlib
from pathlib import Path
from typing import NamedTuple

from tqdm import tqdm

from bn_repro.data.pool import worker_pool
from bn_repro.data.prepared import Problem, damaged, listing_sha256, read_manifest
from bn_repro.data.sources import PrepareError


class Check(NamedTuple):
    path: Path  # a shard, an index file, or a class folder
    size: int  # bytes, of the folder's files in all
    sha256: str  # a folder's: prepared.listing_sha256 of its files


def verify(root: Path, workers: int) -> str:
    """A one-line summary when every file matches the manifest; else a PrepareError that lists
    every file that does not, and what to do."""
    manifest = read_manifest(root)
    problems = damaged(root, manifest)  # missing, or of another size: found without reading
    bad = {problem.path for problem in problems}
    checks = [check for check in recorded(root, manifest) if check.path not in bad]
    total = sum(check.size for check in checks)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"verify {root}")
    with worker_pool(workers) as pool, bar:
        for check, problem in zip(checks, pool.map(check_file, checks), strict=True):
            problems += problem
            bar.update(check.size)
    if problems:
        raise PrepareError(_what_to_do(root, manifest, problems))
    return (
        f"ok: all {len(checks)} shards, index files and class folders ({total / 1e9:.2f} GB)"
        f" match {root / 'manifest.json'}"
    )


def recorded(root: Path, manifest: dict) -> list[Check]:
    """What the manifest records a SHA-256 of (manifests before verify recorded none for index
    files and class folders)."""
    checks = []
    for split in ("train", "val"):
        for shard in manifest["shards"][split]:
            checks.append(Check(root / shard["file"], shard["bytes"], shard["sha256"]))
            if "index_sha256" in shard:
                checks.append(
                    Check(root / shard["index"], shard["index_bytes"], shard["index_sha256"])
                )
        for folder in manifest.get("folders", {}).get(split, []):
            checks.append(Check(root / folder["folder"], folder["bytes"], folder["sha256"]))
    return checks


def check_file(check: Check) -> list[Problem]:
    """Read the file (or the folder's files) whole, in a worker process."""
    if check.path.is_dir():
        files = [(path.name, _sha256(path)) for path in check.path.iterdir()]
        found = listing_sha256(files)
    else:
        found = _sha256(check.path)
    if found == check.sha256:
        return []
    return [Problem(check.path, f"has SHA-256 {found}, the manifest says {check.sha256}")]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _what_to_do(root: Path, manifest: dict, problems: list[Problem]) -> str:
    listed = "\n  ".join(map(str, problems))
    command = (
        f"bn-repro prepare --source {manifest['source']['path']} --out {root}"
        f" --formats {','.join(manifest['formats'])} --shard-size {manifest['shard_size']}"
        f" --seed {manifest['shuffle_seed']}"
    )
    return (
        f"{len(problems)} files and class folders of {root} do not match its manifest:\n"
        f"  {listed}\nDelete them and run `{command}`: it writes them again, and only them"
    )
