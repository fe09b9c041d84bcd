"""The typed schema of `bn-repro figure1`'s configuration (configs/figure1.yaml): plain
dataclasses, each constraint beside its field, checked by the shared schema's rules. No Hydra
here: the data, the network and the training take these dataclasses, built by
bn_repro.figure1.compose or by hand in Python."""

from dataclasses import dataclass, field

from omegaconf import MISSING

from bn_repro.schema import (
    ConfigError,
    Norm,
    check_fields,
    fraction,
    non_negative,
    not_empty,
    positive,
)


@dataclass
class MnistConfig:
    test_per_class: int = positive()  # held-out digits of each class; the rest train
    split_seed: int = MISSING
    threshold: int = positive()  # a pixel of this grey level (0-255) or more is 1, else 0


@dataclass
class MlpConfig:
    hidden_layers: int = positive()
    hidden_units: int = positive()
    init_std: float = positive()  # of the Gaussian every weight is drawn from
    bn_eps: float = positive()
    bn_momentum: float = fraction()


@dataclass
class Figure1TrainConfig:
    steps: int = positive()
    batch: int = positive()
    lr: float = positive()  # plain SGD
    eval_every: int = positive()  # steps between evaluations (and input percentiles)
    probe_examples: int = positive()  # fixed training digits the percentiles are taken over
    probe_unit: int = non_negative()  # the probed unit of each hidden layer
    population_batches: int = positive()  # Algorithm 2's statistics at the end
    threads: int = positive()  # torch's CPU threads for each network
    jobs: int = positive()  # networks trained at once, each in a process of its own


@dataclass
class SanturkarConfig:
    measurements: int = positive()  # in a run, log-spaced over the steps
    step_multiples: list[float] = MISSING  # the landscape's steps along the gradient, x train.lr


@dataclass
class Figure1Config:
    """`bn-repro figure1`: Figure 1's MNIST network trained with and without BN (Sec. 4.1),
    and Santurkar et al.'s measurements on it; configs/figure1.yaml."""

    seed: int = MISSING
    run_dir: str = not_empty()
    norms: list[Norm] = MISSING  # the networks trained, each in run_dir/<norm>
    data: MnistConfig = field(default_factory=MnistConfig)
    model: MlpConfig = field(default_factory=MlpConfig)
    train: Figure1TrainConfig = field(default_factory=Figure1TrainConfig)
    santurkar: SanturkarConfig = field(default_factory=SanturkarConfig)


def check_figure1(cfg: Figure1Config) -> None:
    check_fields(cfg, "")
    if not cfg.norms or len(set(cfg.norms)) != len(cfg.norms):
        raise ConfigError(f"norms={cfg.norms}: list each of none, batchnorm at most once")
    multiples = cfg.santurkar.step_multiples
    if not multiples or min(multiples) <= 0:
        raise ConfigError(f"santurkar.step_multiples={multiples}: give positive multiples")
    if cfg.train.probe_unit >= cfg.model.hidden_units:
        raise ConfigError(
            f"train.probe_unit={cfg.train.probe_unit}: the hidden layers have"
            f" {cfg.model.hidden_units} units, numbered from 0"
        )
    if cfg.data.threshold > 255:
        raise ConfigError(f"data.threshold={cfg.data.threshold}: grey levels go up to 255")
