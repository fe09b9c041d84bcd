"""Composing the Hydra tree under configs/ into a checked RunConfig (bn_repro.schema).

Every group file is merged into the schema's dataclasses, so an unknown key, a mistyped key or a
value of the wrong type fails at composition and names the key; the schema's own checks follow.
The `${paper:NAME}` resolver and the schema's place in Hydra's ConfigStore are registered by
`register()`, which every entry point here calls first."""

import dataclasses
import functools
import itertools
import sys
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from bn_repro import paper
from bn_repro.schema import ConfigError, RunConfig, check

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def _paper_value(name: str):
    value = paper
    for part in name.split("."):
        if not hasattr(value, part):
            raise ConfigError(f"${{paper:{name}}}: bn_repro/paper.py has no '{part}'")
        value = getattr(value, part)
    return value


@functools.cache
def register() -> None:
    """What configs/train.yaml needs of Python: the schema it merges into, the paper's numbers."""
    OmegaConf.register_new_resolver("paper", _paper_value, replace=True)
    ConfigStore.instance().store(name="run_schema", node=RunConfig)


def experiments() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def compose(overrides: list[str]) -> DictConfig:
    """The run configuration for these Hydra overrides, checked; ConfigError if it is wrong."""
    warn_if_repeated(overrides, "experiment")
    cfg = composed("train", overrides)
    validate(cfg)
    return cfg


def warn_if_repeated(overrides: list[str], group: str) -> None:
    """Hydra composes the last of several `group=` overrides without a word: say which."""
    given = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+~") == group]
    if len(given) > 1:
        print(
            f"bn-repro: {group}= is given {len(given)} times ({', '.join(given)}): the last,"
            f" {group}={given[-1]}, is used",
            file=sys.stderr,
        )


def composed(config_name: str, overrides: list[str]) -> DictConfig:
    """configs/<config_name>.yaml with these overrides, resolved; ConfigError for what Hydra
    or OmegaConf refuse."""
    if not CONFIG_DIR.is_dir():
        raise ConfigError(
            f"no configs/ folder at {CONFIG_DIR}: install bn-repro from a clone (pip install -e .)"
        )
    register()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=overrides)
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(explain(error)) from None
    return cfg


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The jobs of `bn-repro train -m OVERRIDES`, each as its overrides, made as Hydra's basic
    sweeper makes them: a sweep preset's hydra.sweeper.params, then the command line's (which
    win), crossed in order of first mention."""
    register()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            parser = OverridesParser.create(GlobalHydra.instance().config_loader())
            fixed = [
                o.input_line for o in parser.parse_overrides(overrides) if not o.is_sweep_override()
            ]
            cfg = hydra_compose(config_name="train", overrides=fixed, return_hydra_config=True)
            params = cfg.hydra.sweeper.params or {}
            preset = [f"{key}={value}" for key, value in params.items()]
            choices: dict[str, list[str]] = {}
            for override in parser.parse_overrides(preset + overrides):
                choices[override.get_key_element()] = _values(override)
            return [list(job) for job in itertools.product(*choices.values())]
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(explain(error)) from None


def _values(override: Override) -> list[str]:
    key = override.get_key_element()
    if not override.is_sweep_override():
        return [f"{key}={override.get_value_element_as_str()}"]
    if not override.is_discrete_sweep():
        raise ConfigError(f"{override.input_line}: sweep a list of values (a,b,c) or glob(...)")
    return [f"{key}={value}" for value in override.sweep_string_iterator()]


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


def undeclared_keys(node: DictConfig, schema: type, prefix: str = "") -> list[str]:
    """The keys of node that the dataclass schema does not declare, nested ones included."""
    fields = {f.name: f.type for f in dataclasses.fields(schema)}
    undeclared = []
    for key in node:
        if key not in fields:
            undeclared.append(f"{prefix}{key}")
        elif dataclasses.is_dataclass(fields[key]):
            undeclared += undeclared_keys(node[key], fields[key], f"{prefix}{key}.")
    return undeclared


def validate(cfg: DictConfig) -> None:
    """What composition lets through: no experiment, keys added with +, and the schema's checks."""
    if OmegaConf.is_missing(cfg, "name"):
        raise ConfigError(f"no experiment chosen: add experiment=NAME, one of {experiments()}")
    undeclared = undeclared_keys(cfg, RunConfig)
    if undeclared:
        raise ConfigError(
            f"unknown config keys {undeclared}: check their spelling against"
            " `bn-repro describe experiment=NAME --cfg`"
        )
    check(to_object(cfg))


def to_object(cfg: DictConfig) -> RunConfig:
    return OmegaConf.to_object(cfg)
