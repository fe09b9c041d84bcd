"""Composing configs/figure1.yaml into a checked Figure1Config (config.py), with the shared
composition (bn_repro.compose): an unknown key, a mistyped key or a value of the wrong type fails
and names the key; the schema's own checks follow."""

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from bn_repro.compose import composed, undeclared_keys
from bn_repro.figure1.config import Figure1Config, check_figure1
from bn_repro.schema import ConfigError


def compose_figure1(overrides: list[str]) -> Figure1Config:
    """Figure 1's configuration (configs/figure1.yaml) with these overrides, checked."""
    # configs/figure1.yaml's defaults merge it into the schema stored under this name
    ConfigStore.instance().store(name="figure1_schema", node=Figure1Config)
    cfg = composed("figure1", overrides)
    undeclared = undeclared_keys(cfg, Figure1Config)
    if undeclared:
        raise ConfigError(
            f"unknown config keys {undeclared}: check their spelling against"
            " `bn-repro figure1 --cfg`"
        )
    figure1 = OmegaConf.to_object(cfg)
    check_figure1(figure1)
    return figure1
