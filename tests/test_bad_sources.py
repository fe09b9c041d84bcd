"""Sources that look whole but are not: images whose data does not fill their header (or whose
header claims too much), validation images renamed, devkits and member names that are wrong.
Each is refused by `prepare` with an error that names what is wrong, before a manifest says the
set is ready; the damage is made by scripts/bad_inputs.py, which also runs them as commands."""

import shutil
from pathlib import Path

import pytest

from bn_repro.data import ilsvrc
from bn_repro.data.make_mini import MiniSpec, make_mini
from bn_repro.data.prepare import PrepareOptions, prepare
from bn_repro.data.sources import PrepareError
from scripts.bad_inputs import BAD_SOURCES, CASES, rewrite_val

SPEC = MiniSpec(classes=4, train_per_class=6, val_per_class=3, size=40, seed=0)
OPTIONS = PrepareOptions(formats=("folder", "shards"), workers=1, shard_size=10, seed=0)
SAYS = {case.name: case.says for case in CASES}


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mini")
    make_mini(out, SPEC, workers=1)
    return out


def damaged(mini: Path, to: Path, damage: str) -> Path:
    source = to / "source"
    shutil.copytree(mini, source)
    BAD_SOURCES[damage](source)
    return source


def test_the_mini_set_prepares_as_it_is(mini, tmp_path):
    assert prepare(mini, tmp_path / "out", OPTIONS)["splits"] == {"train": 24, "val": 12}


@pytest.mark.parametrize(
    "damage",
    ["jpeg_cut_then_end_marker", "jpeg_claims_12000_pixels", "jpeg_claims_more_than_its_data"],
)
def test_an_image_whose_data_does_not_fill_its_header_is_listed_and_nothing_looks_ready(
    mini, tmp_path, damage
):
    out = tmp_path / "out"
    with pytest.raises(PrepareError, match="1 images of the source cannot be decoded") as caught:
        prepare(damaged(mini, tmp_path, damage), out, OPTIONS)
    assert SAYS[damage] in str(caught.value)
    bad = (out / "bad-images.txt").read_text()
    assert bad.startswith("train n") and "_2.JPEG (in " in bad and SAYS[damage] in bad
    assert not (out / "manifest.json").exists()


@pytest.mark.parametrize(
    "damage", ["val_renamed_to_an_unknown_id", "val_held_twice", "val_missing"]
)
def test_validation_images_are_labelled_by_the_number_in_their_name(mini, tmp_path, damage):
    with pytest.raises(PrepareError, match="does not hold the images its devkit's ground truth"):
        prepare(damaged(mini, tmp_path, damage), tmp_path / "out", OPTIONS)


def test_the_unknown_name_and_the_missing_one_are_both_named(mini, tmp_path):
    source = damaged(mini, tmp_path, "val_renamed_to_an_unknown_id")
    with pytest.raises(PrepareError) as caught:
        prepare(source, tmp_path / "out", OPTIONS)
    assert "1 not in the ground truth: ILSVRC2012_val_00000013.JPEG" in str(caught.value)
    assert "1 missing: ILSVRC2012_val_00000005.JPEG" in str(caught.value)


def test_labels_follow_the_names_not_the_order_in_the_archive(mini, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(mini, source)
    rewrite_val(source, lambda members: members[::-1])
    prepare(source, tmp_path / "reversed", OPTIONS)
    prepare(mini, tmp_path / "as_made", OPTIONS)
    reversed_labels, labels = (
        {p.name: p.parent.name for p in (tmp_path / out / "val").glob("*/*")}
        for out in ("reversed", "as_made")
    )
    assert reversed_labels == labels and len(labels) == 12


@pytest.mark.parametrize(
    "damage",
    [
        "ground_truth_parent_id",
        "ground_truth_unknown_id",
        "ground_truth_text",
        "ground_truth_not_utf8",
        "meta_mat_empty",
        "meta_mat_not_a_mat_file",
    ],
)
def test_a_damaged_devkit_names_its_file_the_line_and_what_was_expected(mini, tmp_path, damage):
    with pytest.raises(PrepareError) as caught:
        prepare(damaged(mini, tmp_path, damage), tmp_path / "out", OPTIONS)
    message = str(caught.value)
    assert message.startswith(str(tmp_path / "source" / ilsvrc.DEVKIT_ARCHIVE))
    assert SAYS[damage] in message and "Download it again" in message


@pytest.mark.parametrize(
    "damage",
    ["member_not_utf8", "member_with_a_space", "member_with_a_newline", "member_held_twice"],
)
def test_member_names_the_loaders_cannot_keep_are_refused_by_name(mini, tmp_path, damage):
    out = tmp_path / "out"
    with pytest.raises(PrepareError, match="holds images whose names") as caught:
        prepare(damaged(mini, tmp_path, damage), out, OPTIONS)
    assert SAYS[damage] in str(caught.value) and "(train, n" in str(caught.value)
    assert not (out / "manifest.json").exists()
