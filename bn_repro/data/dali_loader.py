"""loader=dali: the training and validation pipelines, reading the prepared folder tree (file
reader) or the shards (webdataset reader with index files). dali_device=gpu decodes with nvJPEG
(mixed), sharing the JPEGs with the hardware decoder of A100/H100, and hands the trainer images
and labels already on the GPU; cpu keeps every operator on the CPU and builds with device_id=None.

Transforms match torchvision's (augment.py): the crop ranges, flip, photometric strengths and
the validation resize-then-centre-crop, all with antialiased bilinear interpolation. Images
leave as uint8 (N, H, W, 3); the trainer normalizes them on its device (augment.normalize)."""

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali import math as dali_math
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from bn_repro.data.augment import (
    CROP_AREA,
    CROP_ASPECT,
    FULL_DISTORTION,
    STRENGTH,
    VAL_CROP_FRACTION,
    resize,
)
from bn_repro.data.multicrop import SQUARES, MultiCropSquares, scales
from bn_repro.data.prepared import folder_items, open_prepared, shard_paths
from bn_repro.data.sharding import Share
from bn_repro.data.synthetic import Batch
from bn_repro.schema import DaliDecode, DataConfig, DataFormat, Photometric, Shuffle

log = logging.getLogger(__name__)
READER = "Reader"
SHUFFLE_BUFFER = 4096  # samples the shard reader mixes, on top of the shards' global shuffle


def _read(source: dict, share: Share, order: Shuffle | None):
    """The reader of a split: order is None for validation (in file order, each image once),
    else the training order of Sec. 4.2.1's switch: standard reads the same order every epoch
    (shards as stored, already shuffled by prepare; the file list in one seeded permutation), so
    the same examples meet in a mini-batch epoch after epoch; thorough reshuffles every epoch
    (shards through a buffer of SHUFFLE_BUFFER samples; the file list as a whole)."""
    # Every reader pads its shard so all ranks see as many batches; validation keeps its shard
    # (stick_to_shard) and reads in order, so PARTIAL batches cover every image exactly once.
    train, thorough = order is not None, order is Shuffle.thorough
    common = dict(
        shard_id=share.rank, num_shards=share.world_size, pad_last_batch=True, name=READER
    )
    if "shards" in source:
        return fn.readers.webdataset(
            paths=source["shards"],
            index_paths=source["indexes"],
            ext=["jpg", "label"],
            dtypes=[types.UINT8, types.INT64],
            missing_component_behavior="error",
            random_shuffle=thorough,
            initial_fill=SHUFFLE_BUFFER,
            stick_to_shard=not train,
            seed=share.seed + share.rank,
            **common,
        )
    files, labels = source["files"], source["labels"]
    if train:  # the same seeded permutation on every rank, each reading its part
        permutation = np.random.default_rng(share.seed).permutation(len(files))
        files, labels = [files[i] for i in permutation], [labels[i] for i in permutation]
    # thorough: a fresh global permutation every epoch, the same on every rank (the run's seed)
    shuffle = {"shuffle_after_epoch": True, "shuffle_after_epoch_seed": share.seed}
    return fn.readers.file(
        files=files,
        labels=labels,
        stick_to_shard=not train,
        **(shuffle if thorough else {}),
        **common,
    )


def _distort(images, strength: Photometric):
    scale = STRENGTH[strength]
    if scale == 0:
        return images
    full = FULL_DISTORTION

    def factor(spread: float):
        return fn.random.uniform(range=[1 - spread * scale, 1 + spread * scale])

    return fn.color_twist(
        images,
        brightness=factor(2 * full["brightness"]),  # as ColorJitter's factor, augment.py
        contrast=factor(full["contrast"]),
        saturation=factor(full["saturation"]),
        hue=fn.random.uniform(range=[-360 * full["hue"] * scale, 360 * full["hue"] * scale]),
    )


def _decoder(cfg: DataConfig, gpu: bool, as_libjpeg: bool = False) -> dict:
    """as_libjpeg: nvJPEG upsamples chroma as libjpeg-turbo does (PIL's and DALI's CPU decoder),
    for validation pixels as the torchvision loader's; training's crops and distortions dwarf
    the difference, so they keep nvJPEG's own upsampling."""
    if not gpu:
        return {"device": "cpu"}
    options = {"device": "mixed", "hw_decoder_load": cfg.dali_hw_decoder_load}
    return {**options, "jpeg_fancy_upsampling": True} if as_libjpeg else options


def _val_decode(jpegs, cfg: DataConfig, gpu: bool):
    """Validation's decoding, at 1 crop and at several (Figure 4): the same pixels for both."""
    return fn.decoders.image(
        jpegs, output_type=types.RGB, adjust_orientation=False, **_decoder(cfg, gpu, True)
    )


def _on_device(labels, gpu: bool):
    # The step reads labels on the GPU; a host copy of its own would wait for the steps before.
    return labels.gpu() if gpu else labels


class _CpuResize:
    """fn.python_function on the CPU: uint8 HWC images resized by augment.resize, the batch split
    over `threads` threads (torch's kernel runs without the GIL). DALI's own CPU resize is not
    vectorized: 1 ms a 224 x 224 crop against torch's 0.12 ms on this project's 2-core machine,
    where it halved the pipeline's images/s."""

    def __init__(self, size: list[int], threads: int):
        self.size, self.threads = size, threads
        self.pool = ThreadPoolExecutor(threads)

    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]:
        part = -(-len(images) // self.threads)
        parts = [images[start : start + part] for start in range(0, len(images), part)]
        return [image for done in self.pool.map(self._resize, parts) for image in done]

    def _resize(self, images: list[np.ndarray]) -> list[np.ndarray]:
        return [resize(torch.from_numpy(image), self.size).numpy() for image in images]


def _resize(images, size: list[int], cfg: DataConfig, gpu: bool):
    """Antialiased bilinear, to [height, width]; on the CPU also to [shorter side]."""
    if not gpu:
        return fn.python_function(
            images,
            function=_CpuResize(size, _threads(cfg)),
            batch_processing=True,
            output_layouts="HWC",
        )
    return fn.resize(
        images, interp_type=types.INTERP_LINEAR, antialias=True, resize_y=size[0], resize_x=size[1]
    )


def _val_resize(images, jpegs, shorter: int, cfg: DataConfig, gpu: bool):
    if gpu:
        return resize_shorter(images, jpegs, shorter)
    return _resize(images, [shorter], cfg, gpu)  # augment.resize: torchvision's own


def resize_shorter(images, jpegs, shorter: int):
    """fn.resize of the decoded JPEGs to `shorter` pixels on their shorter side, the longer one
    floored as torchvision's resize has it, and the image mapped onto those whole pixels. DALI's
    resize_shorter rounds the longer side (1 pixel more on 427 x 640, which shifts the centre
    crop) and keeps the fractional scale: 0.7 grey levels from torch's resize on average, up
    to 7, on smooth 500 x 375 images with DALI's CPU kernels; this way 0.17 and 1."""
    # (H, W, C) as the decoders give it: EXIF orientation ignored, as the torchvision loader does
    shape = fn.peek_image_shape(jpegs, adjust_orientation=False)
    height, width = shape[0], shape[1]
    short = dali_math.min(height, width)
    size = fn.stack(height * shorter // short, width * shorter // short)
    return fn.resize(
        images,
        size=fn.cast(size, dtype=types.FLOAT),
        interp_type=types.INTERP_LINEAR,
        antialias=True,
        subpixel_scale=False,
    )


@pipeline_def
def train_pipeline(cfg: DataConfig, source: dict, share: Share, gpu: bool):
    jpegs, labels = _read(source, share, cfg.shuffle)
    crop = dict(random_area=list(CROP_AREA), random_aspect_ratio=list(CROP_ASPECT), num_attempts=10)
    size = cfg.image_size
    if cfg.dali_decode is DaliDecode.roi:  # decode only the random crop's region, then resize it
        images = fn.decoders.image_random_crop(
            jpegs, output_type=types.RGB, adjust_orientation=False, **crop, **_decoder(cfg, gpu)
        )
        images = _resize(images, [size, size], cfg, gpu)
    else:
        images = fn.decoders.image(
            jpegs, output_type=types.RGB, adjust_orientation=False, **_decoder(cfg, gpu)
        )
        images = fn.random_resized_crop(
            images, size=[size, size], **crop, interp_type=types.INTERP_LINEAR, antialias=True
        )
    images = _distort(images, cfg.photometric)
    images = fn.flip(images, horizontal=fn.random.coin_flip(probability=0.5))
    return images, _on_device(labels, gpu)


@pipeline_def
def val_pipeline(cfg: DataConfig, source: dict, share: Share, gpu: bool):
    jpegs, labels = _read(source, share, None)
    images = _val_decode(jpegs, cfg, gpu)
    images = _val_resize(images, jpegs, round(cfg.image_size / VAL_CROP_FRACTION), cfg, gpu)
    size = cfg.image_size
    images = fn.crop(images, crop=(size, size), crop_pos_x=0.5, crop_pos_y=0.5)
    return images, _on_device(labels, gpu)


@pipeline_def
def multicrop_pipeline(
    cfg: DataConfig, source: dict, share: Share, gpu: bool, crops: int, native: bool
):
    """Validation at `crops` crops: each image's squares at every scale (multicrop.py). native:
    with DALI's own slice and resize (on the GPU); else augment.resize's, as the fallback."""
    jpegs, labels = _read(source, share, None)
    images = _val_decode(jpegs, cfg, gpu)
    if native:
        parts = _native_squares(images, cfg, crops)
    else:
        parts = fn.python_function(
            images,
            function=_CpuMultiCrop(cfg.image_size, crops, _threads(cfg)),
            batch_processing=True,
            num_outputs=len(scales(cfg.image_size, crops)) + 1,
        )
    return (*parts, _on_device(labels, gpu))


def _native_squares(images, cfg: DataConfig, crops: int) -> list:
    """multicrop.MultiCropSquares in DALI's operators: the squares of multicrop.squares, each
    resized to every scale and to the crop size, stacked (3, L, L, 3)."""
    shape = images.shape()
    height, width = shape[0], shape[1]
    side = dali_math.min(height, width)
    cut = [
        fn.slice(
            images,
            fn.stack(((height - side) * k + 1) // 2, ((width - side) * k + 1) // 2),
            fn.stack(side, side),
            axes=[0, 1],
        )
        for k in range(SQUARES)
    ]
    sizes = (*scales(cfg.image_size, crops), cfg.image_size)
    return [fn.stack(*[_resize(c, [size, size], cfg, True) for c in cut]) for size in sizes]


class _CpuMultiCrop:
    """fn.python_function on the CPU: MultiCropSquares for each image of the batch, the images
    shared among `threads` threads (torch's resize runs without the GIL)."""

    def __init__(self, size: int, crops: int, threads: int):
        self.transform = MultiCropSquares(size, crops)
        self.pool = ThreadPoolExecutor(threads)

    def __call__(self, images: list[np.ndarray]) -> tuple[list[np.ndarray], ...]:
        done = list(self.pool.map(self._cut, images))
        return tuple(list(outputs) for outputs in zip(*done, strict=True))

    def _cut(self, image: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(part.numpy() for part in self.transform(torch.from_numpy(image)))


def dali_train_pipeline(
    cfg: DataConfig, source: dict, share: Share, device_id: int | None, state: str | None = None
):
    """The training pipeline of this rank over source (dali_source) on the GPU device_id (None:
    the CPU), restored from a DALI checkpoint when given one."""
    # Augmentation draws differ per rank; the reader's permutation is the run's, shared.
    return train_pipeline(
        cfg,
        source,
        share,
        device_id is not None,
        seed=share.seed * 1000 + share.rank,
        enable_checkpointing=True,
        checkpoint=state,
        **_pipeline_options(cfg, share.batch, device_id),
    )


def _threads(cfg: DataConfig) -> int:
    return max(1, cfg.workers)


def _pipeline_options(cfg: DataConfig, batch: int, device_id: int | None) -> dict:
    return dict(
        batch_size=batch,
        num_threads=_threads(cfg),
        device_id=device_id,
        prefetch_queue_depth=cfg.prefetch,
    )


class DaliData:
    def __init__(self, cfg: DataConfig, share: Share, gpu: bool, state: dict | None = None):
        """gpu: the pipelines run on the share's GPU (else on the CPU, their batches pinned
        where the share trains on a GPU, for the trainer's copy); state: a loader state of the
        checkpoint (state())."""
        prepared = open_prepared(cfg, share.world_size, share.batch)
        self.val_size = prepared.size("val")
        train, val = (
            dali_source(prepared.root, prepared.manifest, cfg.format, split)
            for split in ("train", "val")
        )
        device_id = share.device.index if gpu else None
        self.pipeline = "dali-gpu" if gpu else "dali-cpu"
        checkpoint = _restorable(state, self.pipeline)
        self.restored = checkpoint is not None
        train_pipe = dali_train_pipeline(cfg, train, share, device_id, checkpoint)
        val_pipe = val_pipeline(
            cfg,
            val,
            share,
            gpu,
            seed=share.seed,
            **_pipeline_options(cfg, share.val_batch, device_id),
        )
        self.train = _iterator(train_pipe, ["images", "labels"], LastBatchPolicy.DROP)
        self.val = _iterator(val_pipe, ["images", "labels"], LastBatchPolicy.PARTIAL)
        # pinned host batches let the trainer's copy stream overlap the step before (Compute)
        self.pin_memory = share.on_gpu and not gpu
        self.multicrop_source = (cfg, val, share, device_id)

    def train_epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        # A restored pipeline continues where its checkpoint left it; without a state of its
        # own (a run that began with another loader or pipeline) the epoch's first batches are
        # read and skipped.
        skip = 0 if self.restored else start_batch
        self.restored = False
        for index, outputs in enumerate(self.train):
            if index >= skip:
                yield _batch(outputs, self.pin_memory)
        self.train.reset()

    def val_batches(self) -> Iterator[Batch]:
        for outputs in self.val:
            images, labels = _batch(outputs, self.pin_memory)
            if len(labels):  # PARTIAL can leave a rank an empty last batch
                yield images, labels
        self.val.reset()

    def state(self) -> dict:
        """The train pipeline's position and random state, for the checkpoint, with the pipeline
        it belongs to: a run resumed on another device builds the other one."""
        return {"pipeline": self.pipeline, "checkpoint": self.train.checkpoints()[0]}

    def multicrop_batches(self, batch: int, crops: int) -> Iterator[Batch]:
        cfg, source, share, device_id = self.multicrop_source
        gpu = device_id is not None
        pipe = multicrop_pipeline(
            cfg,
            source,
            share,
            gpu,
            crops,
            gpu,  # DALI's operators on the GPU; augment.resize on the CPU
            seed=share.seed,
            **_pipeline_options(cfg, batch, device_id),
        )
        parts = [f"part{k}" for k in range(len(scales(cfg.image_size, crops)) + 1)]
        reader = _iterator(pipe, [*parts, "labels"], LastBatchPolicy.PARTIAL)
        for outputs in reader:
            labels = outputs[0]["labels"].reshape(-1).to(torch.int64)
            if len(labels):  # PARTIAL can leave a rank an empty last batch
                yield tuple(outputs[0][name] for name in parts), labels


def _iterator(pipe, outputs: list[str], policy: LastBatchPolicy) -> DALIGenericIterator:
    """The pipeline's batches by epoch, as its reader splits them."""
    return DALIGenericIterator([pipe], outputs, reader_name=READER, last_batch_policy=policy)


def _restorable(state: dict | None, pipeline: str) -> str | None:
    """The DALI checkpoint of a loader state, if this pipeline wrote it: DALI refuses, or
    misreads, a checkpoint of other operators (a run started on CPU and resumed on a GPU)."""
    if state is None:
        return None
    written_by = state.get("pipeline") if isinstance(state, dict) else "an untagged pipeline"
    if written_by != pipeline:
        log.warning(
            "the checkpoint's loader state is %s's and this run reads with %s: it reads the"
            " epoch's first batches again and skips them",
            written_by,
            pipeline,
        )
        return None
    return state["checkpoint"]


def _batch(outputs: list[dict], pin: bool) -> Batch:
    images, labels = outputs[0]["images"], outputs[0]["labels"].reshape(-1).to(torch.int64)
    return (images.pin_memory(), labels.pin_memory()) if pin else (images, labels)


def dali_source(root: Path, manifest: dict, data_format: DataFormat, split: str) -> dict:
    """What a DALI reader reads for the split: shards and their indexes, or files and labels."""
    if data_format is DataFormat.shards:
        shards, indexes = shard_paths(root, manifest, split)
        return {"shards": shards, "indexes": indexes}
    items = folder_items(root, manifest, split)
    return {"files": [i.path for i in items], "labels": [i.label for i in items]}
