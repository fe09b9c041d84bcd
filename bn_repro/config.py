"""Typed schemas of the Hydra tree under configs/, and composing it with clear errors.

Every group file is merged into these dataclasses, so an unknown key, a mistyped key or a
value of the wrong type fails at composition and names the key. Values live in the YAML
files (with their sources); the schemas say only what may be there.
"""

import dataclasses
import math
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from bn_repro import paper

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


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


class Precision(Enum):
    auto = "auto"  # bf16 autocast on CUDA, fp32 on CPU
    fp32 = "fp32"
    bf16 = "bf16"


@dataclass
class ModelConfig:
    norm: Norm = MISSING
    activation: Activation = MISSING
    lrn: bool = MISSING
    dropout: bool = MISSING
    stem: Stem = MISSING
    pool_proj_4cd: int = MISSING
    aux_heads: bool = MISSING
    bn_eps: float = MISSING
    bn_momentum: float = MISSING


@dataclass
class OptimConfig:
    base_lr: float = MISSING
    lr_multiplier: float = MISSING
    lr_scaling: LrScaling = MISSING
    momentum: float = MISSING
    weight_decay: float = MISSING
    l2_divisor: float = MISSING
    lr_decay_factor: float = MISSING
    lr_decay_every_paper_steps: float = MISSING
    lr_decay_staircase: bool = MISSING
    decay_speedup: float = MISSING
    warmup_paper_steps: float = MISSING


@dataclass
class SyntheticConfig:
    train_size: int = MISSING
    val_size: int = MISSING
    noise: float = MISSING


@dataclass
class DataConfig:
    kind: DataKind = MISSING
    root: str | None = MISSING
    loader: DataLoaderKind = MISSING
    format: DataFormat = MISSING
    dali_device: DaliDevice = MISSING
    dali_decode: DaliDecode = MISSING
    dali_hw_decoder_load: float = MISSING  # share of JPEGs for the GPU's hardware decoder
    workers: int = MISSING  # loader processes (torch) or threads (DALI) per rank
    prefetch: int = MISSING  # batches prepared ahead: per DALI pipeline, per torch worker
    num_classes: int = MISSING
    image_size: int = MISSING
    photometric: Photometric = MISSING
    shuffle: Shuffle = MISSING
    target_top1: float | None = MISSING
    synthetic: SyntheticConfig | None = None


@dataclass
class TrainerConfig:
    global_batch: int = MISSING
    eval_global_batch: int = MISSING
    max_paper_steps: float = MISSING
    eval_every_paper_steps: float = MISSING
    log_every_paper_steps: float = MISSING
    checkpoint_every_paper_steps: float = MISSING
    checkpoint_every_minutes: float = MISSING
    keep_checkpoints: int = MISSING
    control_every_steps: int = MISSING
    device: Device = MISSING
    precision: Precision = MISSING
    channels_last: bool | None = MISSING
    compile: str | None = MISSING
    fused_optimizer: bool | None = MISSING
    overlap_copy: bool | None = MISSING
    deterministic: bool = MISSING


@dataclass
class RunConfig:
    name: str = MISSING
    seed: int = MISSING
    run_dir: str = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


class ConfigError(ValueError):
    """A configuration the user must fix; the message says what and how."""


def _paper_value(name: str):
    value = paper
    for part in name.split("."):
        if not hasattr(value, part):
            raise ConfigError(f"${{paper:{name}}}: bn_repro/paper.py has no '{part}'")
        value = getattr(value, part)
    return value


OmegaConf.register_new_resolver("paper", _paper_value, replace=True)
ConfigStore.instance().store(name="run_schema", node=RunConfig)


def experiments() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def compose(overrides: list[str]) -> DictConfig:
    """The run configuration for these Hydra overrides, validated; ConfigError if it is wrong."""
    if not CONFIG_DIR.is_dir():
        raise ConfigError(
            f"no configs/ folder at {CONFIG_DIR}: install bn-repro from a clone (pip install -e .)"
        )
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name="train", overrides=overrides)
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(explain(error)) from None
    validate(cfg)
    return cfg


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The jobs of `bn-repro train -m OVERRIDES`, each as its overrides, made as Hydra's sweeper
    makes them: a sweep preset's hydra.sweeper.params, then the command line's (which win),
    crossed."""
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            parser = OverridesParser.create(GlobalHydra.instance().config_loader())
            fixed = [
                o.input_line for o in parser.parse_overrides(overrides) if not o.is_sweep_override()
            ]
            cfg = hydra_compose(config_name="train", overrides=fixed, return_hydra_config=True)
            params = cfg.hydra.sweeper.params or {}
            preset = [f"{key}={value}" for key, value in params.items()]
            return BasicSweeper.split_arguments(parser.parse_overrides(preset + overrides), None)[0]
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(explain(error)) from None


def explain(error: BaseException) -> str:
    """Hydra's and OmegaConf's messages down the chain of causes, and the valid keys for an
    unknown one, without the advice to add keys with + (the schema refuses them anyway)."""
    lines = []
    while error is not None:
        message = str(error).split("\n    full_key:")[0].split("\nConfig search path:")[0]
        lines += [
            line
            for line in message.splitlines()
            if line.strip() and not line.startswith("To append")
        ]
        schema = getattr(error, "object_type", None)
        if isinstance(error, ConfigAttributeError | ConfigKeyError) and dataclasses.is_dataclass(
            schema
        ):
            lines.append(
                f"valid keys here: {', '.join(f.name for f in dataclasses.fields(schema))}"
            )
        error = error.__cause__
    return "\n".join(lines)


def _undeclared_keys(node: DictConfig, schema: type, prefix: str = "") -> list[str]:
    fields = {f.name: f.type for f in dataclasses.fields(schema)}
    undeclared = []
    for key in node:
        if key not in fields:
            undeclared.append(f"{prefix}{key}")
        elif dataclasses.is_dataclass(fields[key]):
            undeclared += _undeclared_keys(node[key], fields[key], f"{prefix}{key}.")
    return undeclared


POSITIVE = (
    "trainer.max_paper_steps",
    "trainer.eval_every_paper_steps",
    "trainer.log_every_paper_steps",
    "trainer.checkpoint_every_paper_steps",
    "trainer.checkpoint_every_minutes",
    "trainer.keep_checkpoints",
    "trainer.control_every_steps",
    "optim.base_lr",
    "optim.lr_multiplier",
    "optim.l2_divisor",
    "optim.lr_decay_every_paper_steps",
    "optim.decay_speedup",
    "model.pool_proj_4cd",
    "model.bn_eps",
    "data.num_classes",
    "data.image_size",
    "trainer.global_batch",
    "trainer.eval_global_batch",
    "data.prefetch",
)
NON_NEGATIVE = ("optim.weight_decay", "optim.warmup_paper_steps", "data.workers")
FRACTIONS = (
    "optim.momentum",
    "optim.lr_decay_factor",
    "model.bn_momentum",
    "data.dali_hw_decoder_load",
)
# torch.compile's modes (torch._inductor.list_mode_options()), named here so that validating a
# config does not import the compiler.
COMPILE_MODES = (
    "default",
    "lite",
    "reduce-overhead",
    "max-autotune",
    "max-autotune-no-cudagraphs",
)


def validate(cfg: DictConfig) -> None:
    """What the schema's types cannot express: keys added with +, and ranges."""
    if OmegaConf.is_missing(cfg, "name"):
        raise ConfigError(f"no experiment chosen: add experiment=NAME, one of {experiments()}")
    undeclared = _undeclared_keys(cfg, RunConfig)
    if undeclared:
        raise ConfigError(
            f"unknown config keys {undeclared}: check their spelling against"
            " `bn-repro describe experiment=NAME --cfg`"
        )
    for key in POSITIVE + NON_NEGATIVE + FRACTIONS:
        value = OmegaConf.select(cfg, key)
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value}")
        if key in POSITIVE and value <= 0:
            raise ConfigError(f"{key} must be positive, got {value}")
        if key in NON_NEGATIVE and value < 0:
            raise ConfigError(f"{key} must be zero or more, got {value}")
        if key in FRACTIONS and not 0 <= value <= 1:
            raise ConfigError(f"{key} must lie in [0, 1], got {value}")
    compile_mode = cfg.trainer.compile
    if compile_mode is not None and compile_mode not in COMPILE_MODES:
        raise ConfigError(
            f"trainer.compile={compile_mode} is not a torch.compile mode: use null (no compile)"
            f" or one of {', '.join(COMPILE_MODES)}"
        )
    if cfg.data.kind == DataKind.synthetic and cfg.data.synthetic is None:
        raise ConfigError("data.kind=synthetic needs a data.synthetic section: use data=synthetic")


def to_object(cfg: DictConfig) -> RunConfig:
    return OmegaConf.to_object(cfg)
