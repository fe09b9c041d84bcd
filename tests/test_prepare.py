"""make-mini writes the official formats; prepare reads them (and the other layouts) correctly."""

import dataclasses
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torchvision
from PIL import ExifTags, Image

from bn_repro import cli
from bn_repro.data import ilsvrc, units
from bn_repro.data.make_mini import MiniSpec, make_mini
from bn_repro.data.prepare import PrepareOptions, prepare
from bn_repro.data.sources import PrepareError
from tests.helpers import bn_repro

BN_REPRO = Path(sys.executable).with_name("bn-repro")
SPEC = MiniSpec(classes=12, train_per_class=16, val_per_class=5, size=40, seed=3)
OPTIONS = PrepareOptions(formats=("folder", "shards"), workers=2, shard_size=48, seed=0)


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mini")
    make_mini(out, SPEC, workers=2)
    return out


@pytest.fixture(scope="module")
def prepared(mini, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("prepared")
    return out, prepare(mini, out, OPTIONS)


def folder_labels(root: Path, split: str) -> dict[str, str]:
    return {p.name: p.parent.name for p in (root / split).glob("*/*")}


def shard_records(root: Path, split: str) -> list[tuple[str, int]]:
    """(key, class index) of every sample in the split's shards, in order."""
    found = []
    for shard in sorted((root / "shards").glob(f"{split}-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".cls"):
                    found.append((member.name[:-4], int(tar.extractfile(member).read())))
    return found


def test_the_archives_are_in_the_official_formats(mini):
    with tarfile.open(mini / ilsvrc.TRAIN_ARCHIVE) as train:
        inner = train.getnames()
        assert len(inner) == SPEC.classes and all(n.endswith(".tar") for n in inner)
    with tarfile.open(mini / ilsvrc.VAL_ARCHIVE) as val:
        assert val.getnames()[:2] == [
            "ILSVRC2012_val_00000001.JPEG",
            "ILSVRC2012_val_00000002.JPEG",
        ]
    with tarfile.open(mini / ilsvrc.DEVKIT_ARCHIVE) as devkit:
        synsets = ilsvrc.read_meta_mat(devkit.extractfile(ilsvrc.DEVKIT_META).read())
        truth = ilsvrc.read_ground_truth(devkit.extractfile(ilsvrc.DEVKIT_GROUND_TRUTH).read())
    leaves = [s for s in synsets if not s.children]
    assert len(leaves) == SPEC.classes and len(synsets) > SPEC.classes  # non-leaf synsets too
    by_wnid = sorted(leaves, key=lambda s: s.wnid)
    assert [s.ilsvrc_id for s in by_wnid] != sorted(s.ilsvrc_id for s in leaves)  # not WNID order
    assert len(truth) == SPEC.classes * SPEC.val_per_class


def test_torchvision_reads_the_archives_and_agrees_on_every_label(
    mini, prepared, tmp_path, monkeypatch
):
    # torchvision's own ImageNet class, a second opinion from code we did not write; it checks
    # the real archives' MD5 sums, which generated archives cannot have.
    monkeypatch.setattr(
        torchvision.datasets.imagenet,
        "check_integrity",
        lambda path, md5=None: os.path.exists(path),
    )
    root = tmp_path / "torchvision"
    root.mkdir()
    for name in (ilsvrc.TRAIN_ARCHIVE, ilsvrc.VAL_ARCHIVE, ilsvrc.DEVKIT_ARCHIVE):
        (root / name).symlink_to(mini / name)
    out, manifest = prepared
    wnids = [c["wnid"] for c in manifest["classes"]]
    for split in ("train", "val"):
        dataset = torchvision.datasets.ImageNet(root, split=split)
        theirs = {Path(path).name: wnids[label] for path, label in dataset.samples}
        assert theirs == folder_labels(out, split)
        in_shards = {f"{key}.JPEG": wnids[label] for key, label in shard_records(out, split)}
        assert in_shards == theirs


def test_counts_per_class_and_the_manifest_match_the_files(prepared):
    out, manifest = prepared
    assert manifest["splits"] == {"train": 12 * 16, "val": 12 * 5}
    for entry in manifest["classes"]:
        assert len(list((out / "train" / entry["wnid"]).iterdir())) == entry["train"] == 16
        assert len(list((out / "val" / entry["wnid"]).iterdir())) == entry["val"] == 5
    for split in ("train", "val"):
        shards = manifest["shards"][split]
        assert sum(s["images"] for s in shards) == manifest["splits"][split]
        for shard in shards:
            assert (out / shard["file"]).stat().st_size == shard["bytes"]
            header = (out / shard["index"]).read_text().splitlines()[0]
            assert header == f"v1.2 {shard['images']}"
    assert not list(out.rglob("*.tmp"))
    for split in ("train", "val"):
        for folder in manifest["folders"][split]:
            files = sorted((out / folder["folder"]).iterdir())
            assert folder["images"] == len(files) and folder["bytes"] == sum(
                f.stat().st_size for f in files
            )
        for shard in manifest["shards"][split]:
            assert (out / shard["index"]).stat().st_size == shard["index_bytes"]


def test_bad_files_are_reencoded_as_rgb_jpeg_and_grayscale_passes(prepared):
    out, manifest = prepared
    was = sorted(e["was"] for e in manifest["reencoded"])
    assert len(was) == 2 and was[0] == "CMYK JPEG" and was[1].startswith("PNG named")
    for entry in manifest["reencoded"]:
        image = Image.open(next(out.glob(f"train/*/{entry['name']}")))
        assert (image.format, image.mode) == ("JPEG", "RGB")
    modes = {Image.open(p).mode for p in out.glob("train/*/*_1.JPEG")}
    assert "L" in modes  # the grayscale image kept as it was


def test_an_exif_oriented_image_is_counted_and_kept_as_stored(prepared):
    out, manifest = prepared
    name = "ILSVRC2012_val_00000002.JPEG"
    entry = {"split": "val", "name": name, "orientation": 6}
    assert manifest["exif_oriented"] == {"count": 1, "images": [entry]}
    for path in [*out.glob(f"val/*/{name}"), out / "shards" / "val-000000.tar"]:
        if path.suffix == ".tar":
            with tarfile.open(path) as tar:
                path = io.BytesIO(tar.extractfile(name.replace(".JPEG", ".jpg")).read())
        image = Image.open(path)
        assert image.size == (SPEC.size, SPEC.size * 3 // 4)  # 4:3 though the set is square
        assert image.getexif()[ExifTags.Base.Orientation] == 6


def test_training_shards_are_globally_shuffled(prepared):
    out, _ = prepared
    first_batch = [label for _, label in shard_records(out, "train")[:32]]
    assert len(set(first_batch)) >= 8  # of 12 classes, in 32 images
    val = [key for key, _ in shard_records(out, "val")]
    assert val == sorted(val)  # validation in a fixed order


def test_dali_reads_the_shards_with_their_index_files(prepared):
    from nvidia.dali import fn, pipeline_def, types

    out, manifest = prepared
    shards = manifest["shards"]["val"]

    @pipeline_def(batch_size=60, num_threads=1, device_id=None)
    def pipeline():
        jpegs, labels = fn.readers.webdataset(
            paths=[str(out / s["file"]) for s in shards],
            index_paths=[str(out / s["index"]) for s in shards],
            ext=["jpg", "label"],
            dtypes=[types.UINT8, types.INT64],
            missing_component_behavior="error",
        )
        return fn.decoders.image(jpegs, device="cpu"), labels

    reader = pipeline()
    reader.build()
    images, labels = reader.run()
    expected = [label for _, label in shard_records(out, "val")]
    assert [int(labels.at(i)[0]) for i in range(60)] == expected
    assert images.at(0).shape == (SPEC.size, SPEC.size, 3)


def test_webdataset_reads_every_shard_and_label(prepared):
    import webdataset

    out, manifest = prepared
    index = {c["wnid"]: c["index"] for c in manifest["classes"]}
    for split in ("train", "val"):
        expected = {
            Path(name).stem: index[wnid] for name, wnid in folder_labels(out, split).items()
        }
        shards = [str(out / s["file"]) for s in manifest["shards"][split]]
        found = {}
        for sample in webdataset.WebDataset(shards, shardshuffle=False):
            label = int(sample["cls"])
            assert int.from_bytes(sample["label"], "little", signed=True) == label
            with Image.open(io.BytesIO(sample["jpg"])) as image:
                assert image.format == "JPEG"
            found[sample["__key__"]] = label
        assert found == expected, split  # every image once, with its folder's class


def kaggle_layout(prepared: Path, manifest: dict, kaggle: Path) -> Path:
    """The prepared images in Kaggle's ImageNet Object Localization layout."""
    data = kaggle / "ILSVRC" / "Data" / "CLS-LOC"
    shutil.copytree(prepared / "train", data / "train")
    (data / "val").mkdir(parents=True)
    rows = ["ImageId,PredictionString"]
    for path in sorted((prepared / "val").glob("*/*")):
        shutil.copy(path, data / "val" / path.name)
        rows.append(f"{path.stem},{path.parent.name} 1 2 30 40")
    (kaggle / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    mapping = [f"{c['wnid']} {c['words']}" for c in manifest["classes"]]
    (kaggle / "LOC_synset_mapping.txt").write_text("\n".join(mapping) + "\n")
    return kaggle


def test_a_kaggle_layout_and_an_extracted_tree_prepare_alike(prepared, tmp_path):
    out, manifest = prepared
    kaggle = kaggle_layout(out, manifest, tmp_path / "kaggle")
    options = PrepareOptions(("folder",), 1, 48, 0)
    from_kaggle = prepare(kaggle, tmp_path / "from_kaggle", options)
    from_tree = prepare(out, tmp_path / "from_tree", options)  # train/ and val/ of WNID folders
    for result, root in (
        (from_kaggle, tmp_path / "from_kaggle"),
        (from_tree, tmp_path / "from_tree"),
    ):
        assert result["classes"] == manifest["classes"] or result["source"]["kind"] == "tree"
        for split in ("train", "val"):
            assert folder_labels(root, split) == folder_labels(out, split)


def test_an_interrupted_preparation_resumes_to_the_same_bytes(mini, prepared, tmp_path):
    out, _ = prepared
    again = tmp_path / "again"
    command = [
        BN_REPRO,
        "prepare",
        "--source",
        mini,
        "--out",
        again,
        "--workers",
        "1",
        "--shard-size",
        "48",
    ]
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL, start_new_session=True)
    while len(list((again / ".progress").glob("unit-*.json"))) < 3 and process.poll() is None:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (again / "manifest.json").exists(), "finished before it could be interrupted"
    # what a kill can leave: a half-written shard under its temporary name
    (again / "shards").mkdir(exist_ok=True)
    (again / "shards" / "train-000002.tar.tmp").write_bytes(b"half")
    subprocess.run(command, check=True, capture_output=True)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for name in files:
        if name.name != "manifest.json":
            assert (again / name).read_bytes() == (out / name).read_bytes(), name
    mine, theirs = (json.loads((d / "manifest.json").read_text()) for d in (again, out))
    for key in ("created", "command"):
        mine.pop(key), theirs.pop(key)
    assert mine == theirs


def copy_archives(mini: Path, to: Path) -> Path:
    to.mkdir()
    for name in (ilsvrc.TRAIN_ARCHIVE, ilsvrc.VAL_ARCHIVE, ilsvrc.DEVKIT_ARCHIVE):
        shutil.copy(mini / name, to / name)
    return to


def add_member(archive: Path, info: tarfile.TarInfo, data: bytes = b"") -> None:
    with tarfile.open(archive, "a") as tar:
        tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("dotdot", "member '../evil.JPEG' points outside the archive; refused"),
        ("symlink", "member 'link.JPEG' is a link or a device; refused"),
        ("truncated", "is cut short"),
        ("missing_class", "has 0 training images, the devkit says 16"),
        ("no_devkit", "ILSVRC2012_devkit_t12.tar.gz is missing"),
    ],
)
def test_bad_sources_give_an_error_naming_what_is_wrong(mini, tmp_path, damage, expected):
    source = copy_archives(mini, tmp_path / "source")
    val = source / ilsvrc.VAL_ARCHIVE
    if damage == "dotdot":
        add_member(val, _info("../evil.JPEG", 4), b"evil")
    elif damage == "symlink":
        link = tarfile.TarInfo("link.JPEG")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        add_member(val, link)
    elif damage == "truncated":
        os.truncate(val, val.stat().st_size // 2)
    elif damage == "missing_class":
        train = source / ilsvrc.TRAIN_ARCHIVE
        with tarfile.open(mini / ilsvrc.TRAIN_ARCHIVE) as full, tarfile.open(train, "w") as fewer:
            for member in full.getmembers()[1:]:
                fewer.addfile(member, full.extractfile(member))
    else:
        (source / ilsvrc.DEVKIT_ARCHIVE).unlink()
    result = bn_repro("prepare", "--source", source, "--out", tmp_path / "out", "--workers", "1")
    assert result.returncode == 2
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.startswith("bn-repro prepare: ")


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    return info


def test_a_finished_preparation_is_kept_and_other_settings_refused(mini, prepared):
    out, manifest = prepared
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert prepare(mini, out, OPTIONS) == manifest
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    with pytest.raises(PrepareError, match="already holds a preparation"):
        prepare(mini, out, dataclasses.replace(OPTIONS, shard_size=10))


def source_of(layout: str, mini: Path, prepared: tuple[Path, dict], to: Path) -> Path:
    """A source of the layout at `to`; an extracted tree gets a PNG named .JPEG, as the real
    train set has, which prepare would re-encode."""
    out, manifest = prepared
    to.parent.mkdir(parents=True)
    if layout == "archives":
        return copy_archives(mini, to)
    if layout == "kaggle":
        return kaggle_layout(out, manifest, to)
    for split in ("train", "val"):
        shutil.copytree(out / split, to / split)
    png = next((to / "train").glob("*/*.JPEG"))
    Image.open(png).save(png, "PNG")
    return to


def snapshot(folder: Path) -> dict[Path, bytes]:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("layout", ["archives", "tree", "kaggle"])
@pytest.mark.parametrize("relation", ["same", "out_inside", "source_inside", "symlink"])
def test_an_out_overlapping_the_source_is_refused_before_anything_is_written(
    mini, prepared, tmp_path, layout, relation
):
    source = source_of(layout, mini, prepared, tmp_path / "parent" / "source")
    out = {
        "same": source,
        "out_inside": source / "prepared",
        "source_inside": source.parent,
        "symlink": tmp_path / "link",
    }[relation]
    if relation == "symlink":
        out.symlink_to(source)
    before = snapshot(tmp_path)
    with pytest.raises(PrepareError, match="prepare would write into its own source"):
        prepare(source, out, OPTIONS)
    assert snapshot(tmp_path) == before


def children(pid: int) -> set[int]:
    """The processes whose parent is pid, from /proc/*/stat."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()  # after "pid (command)"
        except OSError:  # ended meanwhile
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("command", ["prepare", "make-mini"])
def test_workers_die_with_their_killed_parent(mini, tmp_path, command):
    args = {
        "prepare": ["prepare", "--source", mini, "--out", tmp_path / "out", "--shard-size", "48"],
        "make-mini": ["make-mini", tmp_path / "mini", "--train-per-class", "100", "--size", "64"],
    }[command]
    process = subprocess.Popen([BN_REPRO, *args, "--workers", "2"], stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    try:
        while len(workers) < 2 and process.poll() is None:
            workers = children(process.pid)
            time.sleep(0.01)
        assert process.poll() is None, "finished before it could be killed"
        process.kill()
        process.wait()
        waited = 0
        while any(alive(pid) for pid in workers) and waited < 100:  # 5 s at most
            time.sleep(0.05)
            waited += 1
        assert not [pid for pid in workers if alive(pid)]
    finally:
        for pid in workers:  # leave no worker behind when the test fails
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


class FillingFile(io.FileIO):
    """A file on a disk with `room` bytes left in all, failing with `error` once they are used."""

    room, error = 0, errno.ENOSPC

    def write(self, data) -> int:
        if len(data) > FillingFile.room:
            raise OSError(FillingFile.error, os.strerror(FillingFile.error))
        FillingFile.room -= len(data)
        return super().write(data)


@pytest.mark.parametrize(
    "error, room, what_to_do",
    [
        (errno.ENOSPC, 60_000, "the disk is full: free space"),  # after two class folders
        (errno.EROFS, 0, "the file system is read-only: choose an --out you can write to"),
        (errno.EACCES, 0, "no permission to write there: choose an --out you can write to"),
    ],
)
def test_write_errors_name_the_path_and_what_to_do_and_leave_nothing_half_done(
    mini, prepared, tmp_path, monkeypatch, error, room, what_to_do
):
    out = tmp_path / "out"
    monkeypatch.setattr(FillingFile, "room", room)
    monkeypatch.setattr(FillingFile, "error", error)
    monkeypatch.setattr(units, "_create", lambda path: FillingFile(path, "wb"))
    with pytest.raises(PrepareError, match=what_to_do) as caught:
        prepare(mini, out, dataclasses.replace(OPTIONS, workers=1))
    assert f"{out}/train/" in str(caught.value)  # the unit being written
    assert not (out / "manifest.json").exists() and not list(out.rglob("*.tmp"))
    recorded = {p.name for p in (out / ".progress").glob("unit-*.json")}
    for folder in out.glob("*/n*"):  # what has its final name is whole, and recorded
        assert f"unit-folder-{folder.parent.name}-{folder.name}.json" in recorded
    monkeypatch.undo()
    prepare(mini, out, OPTIONS)  # then resumes to the same files
    assert snapshot(out).keys() == snapshot(prepared[0]).keys()


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_an_out_that_is_or_lies_under_a_file_is_refused(mini, tmp_path, capsys, where):
    file = tmp_path / "file"
    file.write_text("not a folder")
    out = file if where == "file" else file / "out"
    assert cli.main(["prepare", "--source", str(mini), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("bn-repro prepare: ") and "choose another --out" in error
    assert str(file) in error and "Traceback" not in error


def test_images_cut_short_or_damaged_are_listed_and_nothing_looks_complete(prepared, tmp_path):
    source = tmp_path / "tree"
    for split in ("train", "val"):
        shutil.copytree(prepared[0] / split, source / split)
    train, val = next((source / "train").glob("*/*")), next((source / "val").glob("*/*"))
    whole = {path: path.read_bytes() for path in (train, val)}
    train.write_bytes(whole[train][:-100])  # cut in its image data: the header reads fine
    val.write_bytes(whole[val][:100])  # cut in its header
    out = tmp_path / "out"
    with pytest.raises(PrepareError, match="2 images of the source cannot be decoded") as caught:
        prepare(source, out, OPTIONS)
    for path, split in ((train, "train"), (val, "val")):
        assert f"{split} {path.name} (in {path}): " in str(caught.value)
        assert f"{split} {path.name} (in {path}): " in (out / "bad-images.txt").read_text()
        assert not (out / split / path.parent.name).exists()  # its class folder, unfinished
    assert not (out / "manifest.json").exists() and not list(out.rglob("*.tmp"))
    in_shards = {key for split in ("train", "val") for key, _ in shard_records(out, split)}
    assert in_shards and not {train.stem, val.stem} & in_shards
    for path, data in whole.items():
        path.write_bytes(data)
    manifest = prepare(source, out, OPTIONS)
    assert manifest["splits"] == {"train": 12 * 16, "val": 12 * 5}
    assert not (out / "bad-images.txt").exists()
