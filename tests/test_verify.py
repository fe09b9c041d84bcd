"""A prepared set checked against its manifest: quickly by the loaders (sizes and counts), whole by
`bn-repro verify` (SHA-256), and repaired by running prepare again."""

import json
import shutil
from pathlib import Path

import pytest

from bn_repro import cli
from bn_repro.data.prepare import PrepareOptions, prepare
from bn_repro.data.prepared import (
    folder_items,
    open_prepared,
    read_manifest,
    shard_items,
    shard_paths,
)
from bn_repro.schema import ConfigError, DataConfig

OPTIONS = PrepareOptions(("folder", "shards"), 2, 20, 0)  # as conftest prepared it


@pytest.fixture
def root(prepared_small, tmp_path) -> Path:
    return shutil.copytree(prepared_small, tmp_path / "prepared")


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def first_image(root: Path, split: str) -> Path:
    return sorted((root / split).glob("*/*"))[0]


def damage(root: Path) -> list[Path]:
    """Five kinds of damage, each to another unit; what verify should name."""
    shards = root / "shards"
    truncated, flipped = shards / "train-000000.tar", shards / "train-000001.tar"
    truncated.write_bytes(truncated.read_bytes()[:1000])
    flip_a_byte(flipped)  # the same size: only its SHA-256 tells
    (shards / "val-000000.idx").unlink()
    changed, removed = first_image(root, "train"), first_image(root, "val")
    flip_a_byte(changed)
    removed.unlink()
    return [truncated, flipped, shards / "val-000000.idx", changed.parent, removed.parent]


def verify(root: Path, capsys) -> tuple[int, str, str]:
    status = cli.main(["verify", str(root), "--workers", "2"])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_verify_passes_a_whole_set_and_lists_every_damaged_file(root, capsys):
    status, out, _ = verify(root, capsys)
    assert status == 0 and out.startswith("ok: all ") and str(root / "manifest.json") in out
    bad = damage(root)
    status, _, error = verify(root, capsys)
    assert status == 2 and "\nbn-repro verify: 5 files and class folders of" in error
    for path in bad:
        assert f"\n  {path} " in error
    manifest = read_manifest(root)
    assert f"run `bn-repro prepare --source {manifest['source']['path']} --out {root}" in error


def test_loaders_refuse_missing_and_resized_files_naming_them(root):
    manifest = json.loads((root / "manifest.json").read_text())
    shard = root / "shards" / "train-000000.tar"
    shard.write_bytes(shard.read_bytes()[:1000])
    for items in (shard_paths, shard_items):
        with pytest.raises(ConfigError, match=f"{shard} has 1,000 bytes, the manifest says"):
            items(root, manifest, "train")
    (root / "shards" / "val-000000.idx").unlink()
    with pytest.raises(ConfigError, match=f"run `bn-repro verify {root}`, then prepare it again"):
        shard_paths(root, manifest, "val")
    image = first_image(root, "val")
    image.unlink()
    with pytest.raises(ConfigError, match=f"{image.parent} holds 4 images, the manifest says 5"):
        folder_items(root, manifest, "val")
    shutil.rmtree(image.parent)
    with pytest.raises(ConfigError, match=f"{image.parent} is missing"):
        folder_items(root, manifest, "val")


def unit_of(path: Path) -> Path:
    """A shard's or index file's path without suffix (its unit), an image's class folder."""
    return path.with_suffix("") if path.parent.name == "shards" else path.parent


def test_preparing_again_after_verify_rewrites_the_damaged_units_only(prepared_small, root):
    bad = damage(root)
    images = [p for p in root.rglob("*") if p.is_file() and ".progress" not in p.parts]
    before = {p: p.stat().st_mtime_ns for p in images if p.name != "manifest.json"}
    shutil.rmtree(bad[3])  # verify's advice for what only SHA-256 tells: delete it
    bad[1].unlink()
    source = Path(read_manifest(root)["source"]["path"])
    prepare(source, root, OPTIONS)
    damaged_units = {path.with_suffix("") if path.suffix else path for path in bad}
    for path, mtime in before.items():
        if unit_of(path) not in damaged_units:
            assert path.stat().st_mtime_ns == mtime, path  # not rewritten
    for path in (root / "shards").iterdir():
        assert path.read_bytes() == (prepared_small / "shards" / path.name).read_bytes()
    for path in (root / "val").glob("*/*"):
        assert path.read_bytes() == (prepared_small / path.relative_to(root)).read_bytes()
    assert cli.main(["verify", str(root)]) == 0


def test_a_damaged_manifest_is_said_with_the_command_that_rebuilds_it(root, capsys):
    manifest = read_manifest(root)
    (root / "manifest.json").write_text(json.dumps(manifest)[:100])  # cut short
    status, _, error = verify(root, capsys)
    rebuild = (
        f"`bn-repro prepare --source {manifest['source']['path']} --out {root} --formats"
        " folder,shards --shard-size 20 --seed 0`"
    )
    assert status == 2 and error.startswith(f"bn-repro verify: {root / 'manifest.json'} is damaged")
    assert rebuild in error and "Traceback" not in error
    with pytest.raises(ConfigError, match="manifest.json is damaged"):
        open_prepared(DataConfig(root=str(root), num_classes=6), world_size=1, batch=8)


def test_a_second_prepare_rebuilds_a_damaged_manifest_and_rewrites_no_image(root, capsys):
    manifest = read_manifest(root)
    (root / "manifest.json").write_text(json.dumps(manifest)[:100])
    images = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.suffix in (".JPEG", ".tar")}
    rebuilt = prepare(Path(manifest["source"]["path"]), root, OPTIONS)
    assert "manifest.json is damaged" in capsys.readouterr().err
    for key in ("created", "command"):
        rebuilt.pop(key), manifest.pop(key)
    assert rebuilt == manifest and read_manifest(root)["splits"] == manifest["splits"]
    assert {p: p.stat().st_mtime_ns for p in images} == images
