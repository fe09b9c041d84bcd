"""loader=dali: the training and validation pipelines. Training reads this rank's samples from
the prepared folder tree or the shards in the order every loader reads (TrainStream, sharding.py);
validation reads with the file reader or the webdataset reader (index files). dali_device=gpu
decodes with nvJPEG (mixed), sharing the JPEGs with the hardware decoder of A100/H100, and hands
the trainer images and labels already on the GPU; cpu keeps every operator on the CPU and builds
with device_id=None.

The transforms are the torchvision loader's (augment.py, distort.py), not torchvision's own: the
same crop ranges and flip, TF-slim's photometric distortion in the same formulas (in DALI's
operators on the GPU, by torch on the CPU), the validation resize-then-centre-crop with the same
rounding, all with antialiased bilinear interpolation. The random crops are DALI's: the same
area and aspect ranges and 10 attempts, sampled (and replaced after 10 misses) as DALI samples
them, from its generators, not torch's. Images leave as uint8 (N, H, W, 3); the trainer
normalizes them on its device (normalize.py)."""

import logging
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali import math as dali_math
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from bn_repro.data.augment import CROP_AREA, CROP_ASPECT, VAL_CROP_FRACTION, resize
from bn_repro.data.distort import ORDERS, STRENGTH, TORCH, Draw, distort, ranges
from bn_repro.data.multicrop import SQUARES, MultiCropSquares, scales
from bn_repro.data.prepared import Item, folder_items, open_prepared, shard_items, shard_paths
from bn_repro.data.sharding import Share, batches_per_epoch, epoch_order, train_batches
from bn_repro.data.synthetic import Batch
from bn_repro.schema import DaliDecode, DataConfig, DataFormat, Photometric, Shuffle

log = logging.getLogger(__name__)
READER = "Reader"
READ_AHEAD = 2  # training batches read ahead of DALI's calls, beyond its own prefetch queue


def _read_val(source: dict, share: Share):
    """The reader of the validation split: in file order, each image once over the ranks. Every
    reader pads its shard so all ranks see as many batches; validation keeps its shard
    (stick_to_shard) and reads in order, so PARTIAL batches cover every image exactly once."""
    common = dict(
        shard_id=share.rank,
        num_shards=share.world_size,
        pad_last_batch=True,
        stick_to_shard=True,
        name=READER,
    )
    if "shards" in source:
        return fn.readers.webdataset(
            paths=source["shards"],
            index_paths=source["indexes"],
            ext=["jpg", "label"],
            dtypes=[types.UINT8, types.INT64],
            missing_component_behavior="error",
            **common,
        )
    return fn.readers.file(files=source["files"], labels=source["labels"], **common)


class TrainStream:
    """fn.external_source's source for training: this rank's batches of JPEG bytes and labels,
    epoch after epoch without end, in the order every loader reads (sharding.epoch_order, cut
    by sharding.train_batches). DALI's own readers cannot follow it: the shard reader reads each
    rank's slice of the shards in their stored order (or through a shuffle buffer), the file
    reader draws its own permutations. DALI's k-th call is the k-th batch from `start` (the
    trainer's epoch and batch when the pipeline was built), and its checkpoints restore k.
    Bytes are read READ_AHEAD batches ahead, in threads, so that the training loop, which runs
    this source, waits for no file."""

    def __init__(self, items: list[Item], share: Share, thorough: bool, start: tuple[int, int]):
        self.items, self.share, self.thorough, self.start = items, share, thorough, start
        self.per_epoch = batches_per_epoch(len(items), share.world_size, share.batch)
        self.reads = ThreadPoolExecutor(READ_AHEAD)
        self.ahead: dict[int, Future] = {}
        self.epoch: tuple[int, list[torch.Tensor]] | None = None  # the last epoch's batches

    def position(self, iteration: int) -> tuple[int, int]:
        """The (epoch, batch) of the stream's batch number `iteration`."""
        first = self.start[0] * self.per_epoch + self.start[1]
        return divmod(first + iteration, self.per_epoch)

    def __call__(self, iteration: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        for k in range(iteration, iteration + READ_AHEAD):
            if k not in self.ahead:
                self.ahead[k] = self.reads.submit(_read_items, self._items(k))
        return self.ahead.pop(iteration).result()

    def _items(self, iteration: int) -> list[Item]:
        epoch, batch = self.position(iteration)
        if self.epoch is None or self.epoch[0] != epoch:
            share = self.share
            order = epoch_order(len(self.items), share.seed, epoch, self.thorough)
            self.epoch = epoch, train_batches(order, share.rank, share.world_size, share.batch)
        return [self.items[index] for index in self.epoch[1][batch].tolist()]


def _read_items(items: list[Item]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    jpegs = [np.frombuffer(item.read(), dtype=np.uint8) for item in items]
    return jpegs, [np.array([item.label], dtype=np.int64) for item in items]


class DaliOps:
    """distort.py's Ops in DALI's operators, on a batch of float (H, W, 3) data nodes, on the CPU
    or the GPU: the same formulas as the torchvision loader's."""

    maximum, minimum = staticmethod(dali_math.max), staticmethod(dali_math.min)
    floor, clamp = staticmethod(dali_math.floor), staticmethod(dali_math.clamp)

    @staticmethod
    def channels(images) -> tuple:
        return images[:, :, 0:1], images[:, :, 1:2], images[:, :, 2:3]

    @staticmethod
    def stack(*channels):
        return fn.cat(*channels, axis=2)

    @staticmethod
    def channel_mean(images):
        return fn.reductions.mean(images, axes=[0, 1], keep_dims=True)

    @staticmethod
    def mask(condition):
        return condition  # a boolean counts as 0 or 1 in DALI's arithmetic, fused with it

    @staticmethod
    def to_float(images):
        return fn.cast(images, dtype=types.FLOAT)

    @staticmethod
    def to_uint8(images):
        return fn.cast(images, dtype=types.UINT8)


DALI_OPS = DaliOps()


def dali_draw(strength: Photometric, gpu: bool) -> Draw:
    """A Draw a sample from DALI's generators (checkpointed with the pipeline): the order on the
    CPU, where DALI's conditionals read it; the values where the images are."""
    values = {
        key: fn.random.uniform(range=list(bounds)) for key, bounds in ranges(strength).items()
    }
    if gpu:
        values = {key: value.gpu() for key, value in values.items()}
    order = fn.random.uniform(values=list(range(len(ORDERS))), dtype=types.INT32)
    return Draw(order=order, **values)


def _distort(images, cfg: DataConfig, gpu: bool):
    if STRENGTH[cfg.photometric] == 0:
        return images
    return distorted(images, dali_draw(cfg.photometric, gpu), gpu)


def distorted(images, draw: Draw, gpu: bool):
    """distort.py's distortion of the images as the draw says: on the GPU in DALI's operators
    (DALI_OPS), on the CPU by torch (_CpuDistort)."""
    if gpu:
        return distort(images, draw, DALI_OPS)
    fields = [draw.order, draw.brightness, draw.saturation, draw.hue, draw.contrast]
    return fn.python_function(
        images,
        *fields,
        function=_CpuDistort(),
        batch_processing=True,
        output_layouts="HWC",
    )


class _CpuDistort:
    """fn.python_function on the CPU that distorts the batch's crops (all of one size) by torch
    (distort.TORCH), the images of each order at once. A 32-pixel crop alone took 0.75 ms,
    most of it Python's, and DALI's CPU arithmetic took 3 times torch's time on 224-pixel
    ones."""

    def __call__(self, images: list[np.ndarray], *fields: list[np.ndarray]) -> list[np.ndarray]:
        batch = torch.from_numpy(np.stack(images))
        orders = torch.from_numpy(np.stack(fields[0])).flatten()
        values = [torch.from_numpy(np.stack(f)).float().view(-1, 1, 1, 1) for f in fields[1:]]
        out = torch.empty_like(batch)
        for order in range(len(ORDERS)):
            chosen = (orders == order).nonzero().flatten()
            if len(chosen):
                draw = Draw(order, *(value[chosen] for value in values))
                out[chosen] = distort(batch[chosen], draw, TORCH)
        return list(out.numpy())


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
    vectorized: on 2 cores it took 1 ms a 224 x 224 crop against torch's 0.12 ms and halved the
    pipeline's images/s."""

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


@pipeline_def(enable_conditionals=True)  # distort's order, drawn per image
def train_pipeline(cfg: DataConfig, stream: TrainStream, gpu: bool):
    jpegs, labels = fn.external_source(
        source=stream, num_outputs=2, batch=True, dtype=[types.UINT8, types.INT64]
    )
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
    images = _distort(images, cfg, gpu)
    images = fn.flip(images, horizontal=fn.random.coin_flip(probability=0.5))
    return images, _on_device(labels, gpu)


@pipeline_def
def val_pipeline(cfg: DataConfig, source: dict, share: Share, gpu: bool):
    jpegs, labels = _read_val(source, share)
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
    jpegs, labels = _read_val(source, share)
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
    cfg: DataConfig,
    source: dict,
    share: Share,
    device_id: int | None,
    state: str | None = None,
    start: tuple[int, int] = (0, 0),
):
    """The training pipeline of this rank over source (dali_source) on the GPU device_id (None:
    the CPU) from the trainer's (epoch, batch) `start`, restored from a DALI checkpoint when
    given one (of a pipeline that started at `start`)."""
    stream = TrainStream(source["items"], share, cfg.shuffle is Shuffle.thorough, start)
    # Augmentation draws differ per rank; the order is the run's, shared (TrainStream).
    return train_pipeline(
        cfg,
        stream,
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
        self.train_source, val = (
            dali_source(prepared.root, prepared.manifest, cfg.format, split)
            for split in ("train", "val")
        )
        self.cfg, self.share = cfg, share
        self.device_id = share.device.index if gpu else None
        self.pipeline = "dali-gpu" if gpu else "dali-cpu"
        self.given = state
        self.restore = _restorable(state, self.pipeline)
        self.train: DALIGenericIterator | None = None  # built at the first epoch, from its start
        val_pipe = val_pipeline(
            cfg,
            val,
            share,
            gpu,
            seed=share.seed,
            **_pipeline_options(cfg, share.val_batch, self.device_id),
        )
        self.val = _iterator(val_pipe, ["images", "labels"], LastBatchPolicy.PARTIAL)
        # pinned host batches let the trainer's copy stream overlap the step before (Compute)
        self.pin_memory = share.on_gpu and not gpu
        self.multicrop_source = (cfg, val, share, self.device_id)

    def train_epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        if self.train is None:
            self._start(epoch, start_batch)
        per_epoch = batches_per_epoch(self.train_size, self.share.world_size, self.share.batch)
        for _ in range(start_batch, per_epoch):
            yield _batch(next(self.train), self.pin_memory)

    def _start(self, epoch: int, batch: int) -> None:
        """The training pipeline, from the checkpoint's state where this pipeline wrote it (it
        continues where it stopped, its augmentation draws too), else from (epoch, batch) with
        fresh draws."""
        checkpoint, start = None, (epoch, batch)
        if self.restore is not None:
            checkpoint, start = self.restore["checkpoint"], tuple(self.restore["start"])
        self.start = start
        pipe = dali_train_pipeline(
            self.cfg, self.train_source, self.share, self.device_id, checkpoint, start
        )
        self.train = DALIGenericIterator([pipe], ["images", "labels"])

    @property
    def train_size(self) -> int:
        return len(self.train_source["items"])

    def val_batches(self) -> Iterator[Batch]:
        for outputs in self.val:
            images, labels = _batch(outputs, self.pin_memory)
            if len(labels):  # PARTIAL can leave a rank an empty last batch
                yield images, labels
        self.val.reset()

    def state(self) -> dict | None:
        """The train pipeline's position and random state, for the checkpoint, with the pipeline
        it belongs to (a run resumed on another device builds the other one) and the (epoch,
        batch) it started from; before any training batch, the state it was given."""
        if self.train is None:
            return self.given
        checkpoint = self.train.checkpoints()[0]
        return {"pipeline": self.pipeline, "checkpoint": checkpoint, "start": list(self.start)}

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


def _restorable(state: dict | None, pipeline: str) -> dict | None:
    """The loader state, if this pipeline wrote it: DALI refuses, or misreads, a checkpoint of
    other operators (a run started on CPU and resumed on a GPU, or a state without a start,
    written when DALI's own readers read the training set)."""
    if state is None:
        return None
    written_by = state.get("pipeline") if isinstance(state, dict) else "an untagged pipeline"
    if written_by == pipeline and "start" in state:
        return state
    if written_by == pipeline:
        written_by = "an earlier reader"
    log.warning(
        "the checkpoint's loader state is %s's and this run reads with %s: it continues from"
        " the trainer's epoch and batch, with fresh augmentation draws",
        written_by,
        pipeline,
    )
    return None


def _batch(outputs: list[dict], pin: bool) -> Batch:
    images, labels = outputs[0]["images"], outputs[0]["labels"].reshape(-1).to(torch.int64)
    return (images.pin_memory(), labels.pin_memory()) if pin else (images, labels)


def dali_source(root: Path, manifest: dict, data_format: DataFormat, split: str) -> dict:
    """What the DALI pipelines read of the split: for training every sample (TrainStream reads
    them); for validation the shards and their indexes, or the files and labels."""
    if split == "train":
        items = shard_items if data_format is DataFormat.shards else folder_items
        return {"items": items(root, manifest, split)}
    if data_format is DataFormat.shards:
        shards, indexes = shard_paths(root, manifest, split)
        return {"shards": shards, "indexes": indexes}
    items = folder_items(root, manifest, split)
    return {"files": [i.path for i in items], "labels": [i.label for i in items]}
