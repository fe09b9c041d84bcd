"""The ILSVRC2012 classification release: its archive names, its counts, and the devkit's
meta.mat and validation ground truth, read and written."""

import io
from dataclasses import dataclass

import numpy as np
import scipy.io

TRAIN_ARCHIVE = "ILSVRC2012_img_train.tar"  # a tar of one tar per class: <wnid>.tar
VAL_ARCHIVE = "ILSVRC2012_img_val.tar"  # flat: ILSVRC2012_val_00000001.JPEG ...
DEVKIT_ARCHIVE = "ILSVRC2012_devkit_t12.tar.gz"
DEVKIT_META = "ILSVRC2012_devkit_t12/data/meta.mat"
DEVKIT_GROUND_TRUTH = "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"

# The real release, as its devkit and every reproduction count it.
IMAGENET_TRAIN_IMAGES = 1_281_167
IMAGENET_VAL_IMAGES = 50_000
IMAGENET_CLASSES = 1000

SYNSET_FIELDS = (
    "ILSVRC2012_ID",
    "WNID",
    "words",
    "gloss",
    "num_children",
    "children",
    "wordnet_height",
    "num_train_images",
)


@dataclass(frozen=True)
class Synset:
    ilsvrc_id: int  # 1-based; the leaves' ids are NOT in sorted-WNID order
    wnid: str
    words: str
    gloss: str
    children: tuple[int, ...]  # ilsvrc_ids; empty for the 1000 leaf classes
    wordnet_height: int
    num_train_images: int


@dataclass(frozen=True)
class Devkit:
    synsets: tuple[Synset, ...]  # leaves and the WordNet synsets above them
    val_ground_truth: tuple[int, ...]  # the ilsvrc_id of validation image 1, 2, ...

    @property
    def classes(self) -> list[Synset]:
        """The leaf synsets, in class-index order: sorted by WNID."""
        return sorted((s for s in self.synsets if not s.children), key=lambda s: s.wnid)

    def val_wnids(self) -> list[str]:
        """The WNID of validation image 1, 2, ...; ValueError naming the ground truth's lines
        whose ID is not one of the 1000 leaf classes."""
        by_id = {s.ilsvrc_id: s for s in self.synsets}
        wrong = [
            f"line {line}: {i} ({'a synset above the classes' if i in by_id else 'no synset'})"
            for line, i in enumerate(self.val_ground_truth, start=1)
            if i not in by_id or by_id[i].children
        ]
        if wrong:
            raise ValueError(
                "holds IDs that are not a leaf class's ILSVRC2012_ID in meta.mat: " + listed(wrong)
            )
        return [by_id[i].wnid for i in self.val_ground_truth]


def listed(items: list[str], shown: int = 5) -> str:
    """The first few items, then how many more: for errors that list what is wrong."""
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def read_meta_mat(data: bytes) -> list[Synset]:
    """The synsets of meta.mat; ValueError saying what is wrong with a file that holds none."""
    try:
        records = scipy.io.loadmat(io.BytesIO(data), squeeze_me=True)["synsets"]
        return [
            Synset(
                ilsvrc_id=int(r["ILSVRC2012_ID"]),
                wnid=str(r["WNID"]),
                words=str(r["words"]),
                gloss=str(r["gloss"]),
                children=tuple(int(c) for c in np.atleast_1d(r["children"])),
                wordnet_height=int(r["wordnet_height"]),
                num_train_images=int(r["num_train_images"]),
            )
            for r in np.atleast_1d(records)
        ]
    except KeyError as error:
        raise ValueError(f"is a MAT file without {error} (no synsets struct)") from None
    except Exception as error:  # noqa: BLE001 - scipy's MatReadError, ValueError, TypeError ...
        what = "is empty" if not data else f"is not a MAT file of synsets ({error})"
        raise ValueError(what) from None


def write_meta_mat(synsets: list[Synset]) -> bytes:
    """meta.mat as the devkit ships it: a synsets struct array, one row per synset."""
    records = np.empty((len(synsets), 1), dtype=[(f, object) for f in SYNSET_FIELDS])
    for row, s in enumerate(synsets):
        records[row, 0] = (
            np.array([[s.ilsvrc_id]], dtype=np.uint16),
            s.wnid,
            s.words,
            s.gloss,
            np.array([[len(s.children)]], dtype=np.uint8),
            np.array([s.children], dtype=np.uint16).reshape(1, -1),
            np.array([[s.wordnet_height]], dtype=np.uint8),
            np.array([[s.num_train_images]], dtype=np.uint16),
        )
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"synsets": records})
    return buffer.getvalue()


def read_ground_truth(data: bytes) -> tuple[int, ...]:
    """The ILSVRC2012_ID on each line; ValueError naming the first line that holds none."""
    ids = []
    for number, line in enumerate(data.splitlines(), start=1):
        try:
            ids.append(int(line.decode("ascii")))
        except ValueError:  # UnicodeDecodeError is one
            raise ValueError(
                f"line {number} is {line[:40]!r}, not an ILSVRC2012_ID (a number, one a line)"
            ) from None
    return tuple(ids)


def write_ground_truth(ids: list[int]) -> bytes:
    return "".join(f"{i}\n" for i in ids).encode()
