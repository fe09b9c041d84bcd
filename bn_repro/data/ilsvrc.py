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
        by_id = {s.ilsvrc_id: s.wnid for s in self.synsets if not s.children}
        return [by_id[i] for i in self.val_ground_truth]


def read_meta_mat(data: bytes) -> list[Synset]:
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
        for r in records
    ]


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
    return tuple(int(line) for line in data.decode().split())


def write_ground_truth(ids: list[int]) -> bytes:
    return "".join(f"{i}\n" for i in ids).encode()
