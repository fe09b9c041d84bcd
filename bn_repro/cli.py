"""The `bn-repro` command."""

import argparse
import sys

from omegaconf import OmegaConf

from bn_repro.config import ConfigError, compose, to_object
from bn_repro.describe import describe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bn-repro",
        description="Reproduce the ImageNet experiments of Ioffe & Szegedy (2015).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "train",
        add_help=False,
        help="train an experiment: bn-repro train experiment=NAME [overrides] (Hydra's --help,"
        " -m for sweeps)",
    )
    describe_parser = commands.add_parser(
        "describe",
        help="print an experiment's effective hyperparameters and layer table",
        description="Print the effective hyperparameters and the layer table of an experiment,"
        " ending with its parameter and multiply-add counts.",
    )
    describe_parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="Hydra overrides, e.g. experiment=bn_x5 model.stem=dense",
    )
    describe_parser.add_argument(
        "--cfg", action="store_true", help="print the composed config as YAML instead"
    )
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:  # Hydra parses the rest itself: overrides, -m, --cfg, --help
        return train(argv[1:])
    args = parser.parse_args(argv)
    try:
        cfg = compose(args.overrides)
        print(OmegaConf.to_yaml(cfg) if args.cfg else describe(to_object(cfg)))
    except ConfigError as error:
        print(f"bn-repro {args.command}: {error}", file=sys.stderr)
        return 2
    return 0


def train(overrides: list[str]) -> int:
    from bn_repro.train.main import hydra_main  # torch.distributed and friends, only to train

    if not any(arg.startswith("-") for arg in overrides):  # one run, no Hydra flags (-m, --cfg)
        try:  # the errors describe gives, before Hydra resolves anything
            compose(overrides)
        except ConfigError as error:
            print(f"bn-repro train: {error}", file=sys.stderr)
            return 2
    sys.argv = ["bn-repro train", *overrides]
    hydra_main()
    return 0
