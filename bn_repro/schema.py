"""The typed schema of a run's configuration: plain dataclasses and enums, each constraint beside
its field. No Hydra here: models, data and the training loop take these dataclasses, built by
`bn_repro.compose` from the YAML tree under configs/ or by hand in Python.

Values live in the YAML files (with their sources); the schema says only what may be there."""

import dataclasses
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING

from bn_repro.errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration the user must fix; the message says what and how."""


class Norm(Enum):
    none = "none"
    batchnorm = "batchnorm"


class Activation(Enum):
    relu = "relu"
    sigmoid = "sigmoid"


class Stem(Enum):
    separable = "separable"  # Fig. 5 "convolution*": depthwise 7x7/2, depth multiplier 8, 1x1
    dense = "dense"  # a plain 7x7/2 convolution, as GoogLeNet and most ports


class Photometric(Enum):
    full = "full"
    reduced = "reduced"
    none = "none"


class Shuffle(Enum):
    standard = "standard"
    thorough = "thorough"


class LrScaling(Enum):
    none = "none"
    linear = "linear"
    sqrt = "sqrt"


class DataKind(Enum):
    synthetic = "synthetic"  # made in memory
    prepared = "prepared"  # what `bn-repro prepare` wrote to data.root


class DataLoaderKind(Enum):
    dali = "dali"
    torch = "torch"  # torchvision's decoding and transforms: the fallback


class DataFormat(Enum):
    folder = "folder"  # train/<wnid>/ and val/<wnid>/
    shards = "shards"  # webdataset tars with DALI index files


class DaliDevice(Enum):
    auto = "auto"  # gpu when training on CUDA
    cpu = "cpu"  # the whole pipeline on CPU (device_id=None)
    gpu = "gpu"  # mixed (nvJPEG) decoding, GPU augmentation


class DaliDecode(Enum):
    roi = "roi"  # decode only the random crop's region (fused decode-and-crop)
    full = "full"  # decode whole images, then crop: the JPEG hardware engine takes whole images


class Device(Enum):
    auto = "auto"  # CUDA when there is one
    cpu = "cpu"
    cuda = "cuda"


class Backend(Enum):
    auto = "auto"  # NCCL on GPUs, gloo on CPU
    nccl = "nccl"
    gloo = "gloo"  # on GPUs too: several ranks sharing one GPU, which NCCL refuses


class Precision(Enum):
    auto = "auto"  # bf16 autocast on CUDA, fp32 on CPU
    fp32 = "fp32"
    bf16 = "bf16"


# torch.compile's modes (torch._inductor.list_mode_options()), named here so that checking a
# config does not import the compiler.
COMPILE_MODES = (
    "default",
    "lite",
    "reduce-overhead",
    "max-autotune",
    "max-autotune-no-cudagraphs",
)

# What a constrained number must satisfy, and how the error says it.
RULES = {
    "positive": (lambda v: v > 0, "must be positive"),
    "non_negative": (lambda v: v >= 0, "must be zero or more"),
    "fraction": (lambda v: 0 <= v <= 1, "must lie in [0, 1]"),
    "probability_below_one": (lambda v: 0 <= v < 1, "must lie in [0, 1)"),
}


def positive() -> Any:
    return field(default=MISSING, metadata={"rule": "positive"})


def non_negative() -> Any:
    return field(default=MISSING, metadata={"rule": "non_negative"})


def fraction() -> Any:
    return field(default=MISSING, metadata={"rule": "fraction"})


def probability_below_one() -> Any:
    return field(default=MISSING, metadata={"rule": "probability_below_one"})


def one_of(choices: tuple[str, ...], what: str, null: str) -> Any:
    """A string from choices (`what` they are), or None (which means `null`)."""
    return field(default=MISSING, metadata={"choices": choices, "what": what, "null": null})


def not_empty() -> Any:
    return field(default=MISSING, metadata={"not_empty": True})


@dataclass
class ModelConfig:
    norm: Norm = MISSING
    activation: Activation = MISSING
    lrn: bool = MISSING
    dropout: float = probability_below_one()  # before the classifier; 0: no dropout layer
    stem: Stem = MISSING
    pool_proj_4cd: int = positive()
    aux_heads: bool = MISSING
    bn_eps: float = positive()
    bn_momentum: float = fraction()
    conv_init_scale: float = positive()  # multiplies every convolution's initial weights
    # Inception modules (Fig. 5 names, e.g. 5b) whose BN normalizes each activation on its own
    per_activation_bn: list[str] = MISSING


@dataclass
class OptimConfig:
    base_lr: float = positive()
    lr_multiplier: float = positive()
    lr_scaling: LrScaling = MISSING
    momentum: float = fraction()
    weight_decay: float = non_negative()
    l2_divisor: float = positive()
    lr_decay_factor: float = fraction()
    lr_decay_every_paper_steps: float = positive()
    lr_decay_staircase: bool = MISSING
    decay_speedup: float = positive()
    warmup_paper_steps: float = non_negative()


@dataclass
class SyntheticConfig:
    train_size: int = positive()
    val_size: int = positive()  # evaluation divides by it
    noise: float = non_negative()
    # The images' own seed: a data set of its own, the same for every run seed (which draws the
    # order and the network), as a prepared set is.
    seed: int = 0


@dataclass
class DataConfig:
    kind: DataKind = MISSING
    root: str | None = MISSING
    loader: DataLoaderKind = MISSING
    format: DataFormat = MISSING
    dali_device: DaliDevice = MISSING
    dali_decode: DaliDecode = MISSING
    dali_hw_decoder_load: float = fraction()  # share of JPEGs for the GPU's hardware decoder
    workers: int = non_negative()  # loader processes (torch) or threads (DALI) per rank
    prefetch: int = positive()  # batches prepared ahead: per DALI pipeline, per torch worker
    num_classes: int = positive()
    image_size: int = positive()
    photometric: Photometric = MISSING
    shuffle: Shuffle = MISSING
    target_top1: float | None = MISSING
    synthetic: SyntheticConfig | None = None


@dataclass
class TrainerConfig:
    batch_per_rank: int = positive()  # images a rank steps with; the global batch: x the ranks
    eval_batch_per_rank: int = positive()
    max_paper_steps: float = positive()
    eval_every_paper_steps: float = positive()
    log_every_paper_steps: float = positive()
    checkpoint_every_paper_steps: float = positive()
    checkpoint_every_minutes: float = positive()
    keep_checkpoints: int = positive()
    control_every_steps: int = positive()
    # How long a rank waits for the others in any collective or rendezvous before the run stops
    # (naming the ranks that did not answer: a dead or silent peer, an unreachable node). It
    # must exceed the longest wait a healthy run has: rank 0 alone writing a checkpoint
    # (~100 MB for Inception, fsync'd; up to minutes on a busy shared file system) while the
    # others wait at the next collective; ranks reaching an evaluation or Algorithm 2 apart by
    # their share's imbalance; nodes starting apart (imports, DALI's index), and ranks compiling
    # (trainer.compile: minutes each, more on a rank that misses the compile cache). 10 minutes,
    # NCCL's own default, against gloo's 30.
    collective_timeout_minutes: float = positive()
    population_batches: int = positive()  # per rank: Algorithm 2's statistics at the end
    # The input distribution of named layers at every evaluation (train/probe.py): percentiles
    # of one channel over this many fixed training images; 0: none.
    probe_images: int = non_negative()
    probe_channel: int = non_negative()
    device: Device = MISSING
    backend: Backend = Backend.auto  # torch.distributed's
    precision: Precision = MISSING
    channels_last: bool | None = MISSING
    compile: str | None = one_of(COMPILE_MODES, "a torch.compile mode", "no compile")
    fused_optimizer: bool | None = MISSING
    overlap_copy: bool | None = MISSING
    deterministic: bool = MISSING
    # Images BN normalizes over: a rank's batch is cut into groups of bn_batch, each with its
    # own mean and variance (ghost BN), as that many of the paper's replicas would. None: the
    # rank's whole batch, what a config saved before this key trained with.
    bn_batch: int | None = None
    # The whole step (forward, backward, SGD) captured once as a CUDA graph and replayed
    # (train/step.py); False in configs saved before this key.
    cuda_graph: bool = False
    # The update a run must train with, in images; None: whatever batch_per_rank x ranks gives.
    # A run started on another number of ranks is refused (it would scale the rate otherwise).
    global_batch: int | None = None


@dataclass
class PathsConfig:
    imagenet: str | None = (
        MISSING  # where `bn-repro prepare` wrote ILSVRC2012, on the machine that trains
    )


@dataclass
class RunConfig:
    name: str = MISSING
    seed: int = MISSING
    run_dir: str = not_empty()  # an empty one would train into the current directory
    paths: PathsConfig = field(default_factory=PathsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def check(cfg: RunConfig) -> None:
    """What the types cannot express: each field's rule, and the rules across fields."""
    check_fields(cfg, "")
    if cfg.data.kind == DataKind.synthetic and cfg.data.synthetic is None:
        raise ConfigError("data.kind=synthetic needs a data.synthetic section: use data=synthetic")
    if cfg.model.norm is Norm.batchnorm and cfg.trainer.batch_per_rank < 2:
        raise ConfigError(
            f"trainer.batch_per_rank={cfg.trainer.batch_per_rank} with BN: BN normalizes each"
            " channel over the rank's batch, and one image gives a 1 x 1 map a single value,"
            " without variance (torch's BN stops there: 'Expected more than 1 value per"
            " channel'); give trainer.batch_per_rank=2 or more (the paper's BN batch is 32)"
        )
    check_bn_batch(cfg.trainer, cfg.model.norm)
    check_cuda_graph(cfg.trainer)
    if cfg.model.per_activation_bn and cfg.model.norm is not Norm.batchnorm:
        raise ConfigError(
            f"model.per_activation_bn={cfg.model.per_activation_bn} asks for BN in a network"
            " without it: set model.norm=batchnorm, or model.per_activation_bn=[]"
        )


def check_bn_batch(trainer: TrainerConfig, norm: Norm) -> None:
    """A rank's batch must cut into whole BN groups of at least two images; the update into
    whole ranks' batches."""
    batch, bn_batch = trainer.batch_per_rank, trainer.bn_batch
    global_batch = trainer.global_batch
    if global_batch is not None and (global_batch < 1 or global_batch % batch):
        raise ConfigError(
            f"trainer.global_batch={global_batch} is not a whole number of ranks'"
            f" trainer.batch_per_rank={batch} images: make it a multiple of {batch}, or null"
        )
    if norm is not Norm.batchnorm or bn_batch is None:
        return
    if bn_batch < 2:
        raise ConfigError(
            f"trainer.bn_batch={bn_batch}: BN needs at least 2 images a group to have a"
            " variance; give 2 or more (the paper's BN batch is 32)"
        )
    if batch % bn_batch:
        raise ConfigError(
            f"trainer.batch_per_rank={batch} is not a multiple of trainer.bn_batch={bn_batch}:"
            " BN normalizes a rank's batch in whole groups of bn_batch images; make"
            f" batch_per_rank a multiple of {bn_batch}, or set trainer.bn_batch={batch} (BN over"
            " the whole batch: not the paper's)"
        )
    if trainer.probe_images and bn_batch != batch and trainer.probe_images % bn_batch:
        raise ConfigError(
            f"trainer.probe_images={trainer.probe_images} is not a multiple of"
            f" trainer.bn_batch={bn_batch}: the probe runs its images through BN as a training"
            f" step does, in groups of {bn_batch}; make it a multiple, or 0 (no probe)"
        )


# torch.compile's modes that capture CUDA graphs of their own, which cannot nest in the step's
COMPILE_MODES_WITH_GRAPHS = ("reduce-overhead", "max-autotune")


def check_cuda_graph(trainer: TrainerConfig) -> None:
    """What trainer.cuda_graph cannot capture, known before the run starts."""
    if not trainer.cuda_graph:
        return
    refusals = [
        (trainer.device is Device.cpu, "trainer.device=cpu: CUDA graphs capture CUDA kernels"),
        (
            trainer.backend is Backend.gloo,
            "trainer.backend=gloo: gloo's all-reduce runs on the host, outside any CUDA graph;"
            " ranks sharing one GPU (which need gloo) train eagerly",
        ),
        (
            trainer.fused_optimizer is False,
            "trainer.fused_optimizer=false: the graph updates with fused SGD, the one kernel"
            " that reads the learning rate from the device (the others read it on the host)",
        ),
        (
            trainer.compile in COMPILE_MODES_WITH_GRAPHS,
            f"trainer.compile={trainer.compile}: that mode captures CUDA graphs of its own (of"
            " the forward and backward passes), which cannot nest in the step's graph; use"
            " trainer.compile=default with it, or either alone",
        ),
    ]
    reason = next((reason for refused, reason in refusals if refused), None)
    if reason is not None:
        raise ConfigError(
            f"trainer.cuda_graph=true cannot work with {reason}: set trainer.cuda_graph=false,"
            " or change that setting"
        )


def check_fields(node, prefix: str) -> None:
    """Each field's rule through the nested dataclasses of node (its keys named from prefix);
    ConfigError for the first that breaks one."""
    for spec in dataclasses.fields(node):
        key, value = f"{prefix}{spec.name}", getattr(node, spec.name)
        if dataclasses.is_dataclass(value):
            check_fields(value, f"{key}.")
        elif "rule" in spec.metadata:
            holds, says = RULES[spec.metadata["rule"]]
            if not math.isfinite(value):
                raise ConfigError(f"{key} must be a finite number, got {value}")
            if not holds(value):
                raise ConfigError(f"{key} {says}, got {value}")
        elif "choices" in spec.metadata and value not in (None, *spec.metadata["choices"]):
            meta = spec.metadata
            raise ConfigError(
                f"{key}={value} is not {meta['what']}: use null ({meta['null']}) or one of"
                f" {', '.join(meta['choices'])}"
            )
        elif spec.metadata.get("not_empty") and not str(value).strip():
            raise ConfigError(f"{key} is empty: give it a value")
