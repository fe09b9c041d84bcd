"""The `bn-repro` command. Each subcommand imports what it needs when it runs: torch, DALI,
Hydra and matplotlib take seconds to import, and `--help` or a mistyped key should not wait."""

import argparse
import os
import sys
from pathlib import Path

from bn_repro.bench.commands import add_bench
from bn_repro.errors import UserError, explain_os_error
from bn_repro.figure1.command import add_figure1

# bn_repro.data.multicrop.CROP_COUNTS, named here so that checking the arguments of evaluate does
# not import torch: 1, or 36 for each of GoogLeNet's 4 scales used (144: all of them).
CROP_COUNTS = (1, 36, 72, 108, 144)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:  # Hydra parses the rest itself: overrides, -m, --cfg, --help
        return train(argv[1:])
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
    for add in (
        add_describe,
        add_prepare,
        add_make_mini,
        add_verify,
        add_bench,
        add_figure1,
        add_evaluate,
        add_report,
        add_paper,
    ):
        add(commands)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except UserError as error:
        print(f"bn-repro {args.command}: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"bn-repro {args.command}: {explain_os_error(error)}", file=sys.stderr)
        return 2
    return 0


def add_describe(commands) -> None:
    parser = commands.add_parser(
        "describe",
        help="print an experiment's effective hyperparameters and layer table",
        description="Print the effective hyperparameters and the layer table of an experiment,"
        " ending with its parameter and multiply-add counts.",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="Hydra overrides, e.g. experiment=bn_x5 model.stem=dense",
    )
    parser.add_argument(
        "--world-size",
        type=int,
        default=1,
        metavar="RANKS",
        help="the number of ranks (GPUs) the run will have: the global batch and the scaled"
        " learning rate follow from it (default 1)",
    )
    parser.add_argument(
        "--images-per-s",
        type=float,
        metavar="RATE",
        help="training images/s per GPU (bench train measures it): prints the run's GPU-hours",
    )
    parser.add_argument(
        "--cfg", action="store_true", help="print the composed config as YAML instead"
    )
    parser.set_defaults(run=run_describe)


def run_describe(args: argparse.Namespace) -> None:
    from omegaconf import OmegaConf

    from bn_repro.compose import compose, to_object

    if args.world_size < 1 or (args.images_per_s is not None and args.images_per_s <= 0):
        raise UserError("--world-size must be at least 1 and --images-per-s positive")
    cfg = compose(args.overrides)
    if args.cfg:
        print(OmegaConf.to_yaml(cfg))
        return
    from bn_repro.describe import describe  # torch and the model: after the config is checked

    print(describe(to_object(cfg), args.world_size, args.images_per_s))


def add_prepare(commands) -> None:
    parser = commands.add_parser(
        "prepare",
        help="ILSVRC2012 archives, an extracted tree or Kaggle's layout -> folders and shards",
        description="Prepare ILSVRC2012 (or the make-mini benchmark) for the loaders: a folder"
        " tree OUT/{train,val}/<wnid>/ and/or webdataset shards OUT/shards/ with DALI index files,"
        " and OUT/manifest.json. Interrupted, it resumes where it stopped when run again.",
    )
    parser.add_argument("--source", type=Path, required=True, help="folder with the source")
    parser.add_argument("--out", type=Path, required=True, help="where to write")
    parser.add_argument(
        "--formats", default="folder,shards", help="folder, shards or both (default: both)"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="parallel processes")
    parser.add_argument(
        "--shard-size",
        type=int,
        default=1250,
        help="images per shard (default 1250: 1025 shards"
        " for ImageNet's train set, enough for 128 GPUs x 8 loader workers)",
    )
    parser.add_argument("--seed", type=int, default=0, help="of the training shards' shuffle")
    parser.set_defaults(run=run_prepare)


def run_prepare(args: argparse.Namespace) -> None:
    from bn_repro.data.prepare import FORMATS, PrepareOptions, prepare
    from bn_repro.data.sources import PrepareError

    formats = tuple(f for f in args.formats.split(",") if f)
    unknown = set(formats) - set(FORMATS)
    if unknown or not formats:
        raise PrepareError(f"--formats {args.formats}: choose from {', '.join(FORMATS)}")
    if args.workers < 1 or args.shard_size < 1:
        raise PrepareError("--workers and --shard-size must be at least 1")
    options = PrepareOptions(formats, args.workers, args.shard_size, args.seed)
    manifest = prepare(args.source, args.out, options)
    print(
        f"prepared {manifest['splits']} images of {len(manifest['classes'])} classes in {args.out}"
    )


def add_make_mini(commands) -> None:
    parser = commands.add_parser(
        "make-mini",
        help="generate a small benchmark as the three ILSVRC2012 archives",
        description="Write ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and"
        " ILSVRC2012_devkit_t12.tar.gz of generated, learnable images into OUT, in the official"
        " formats, for `bn-repro prepare --source OUT`.",
    )
    parser.add_argument("out", type=Path, metavar="OUT")
    # The defaults make what data=mini expects: the benchmark of `make demo`.
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--val-per-class", type=int, default=50)
    parser.add_argument("--size", type=int, default=40, help="image width (and height), pixels")
    parser.add_argument(
        "--height", type=int, help="a smaller height: the centre band (ImageNet-like: 500 x 375)"
    )
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.set_defaults(run=run_make_mini)


def run_make_mini(args: argparse.Namespace) -> None:
    from bn_repro.data.make_mini import MiniSpec, make_mini
    from bn_repro.data.sources import PrepareError

    spec = MiniSpec(
        args.classes,
        args.train_per_class,
        args.val_per_class,
        args.size,
        args.seed,
        args.height,
        args.quality,
    )
    if (
        min(spec.classes, spec.train_per_class, spec.val_per_class, args.workers) < 1
        or spec.size < 16
    ):
        raise PrepareError("make-mini needs at least 1 class, image and worker, and 16 pixels")
    make_mini(args.out, spec, args.workers)
    print(f"wrote the ILSVRC2012 archives of {spec.classes} generated classes to {args.out}")


def add_verify(commands) -> None:
    parser = commands.add_parser(
        "verify",
        help="check a prepared dataset's files against its manifest: sizes and SHA-256",
        description="Read every shard, index file and class folder that `bn-repro prepare` wrote"
        " to ROOT and compare their sizes and SHA-256 sums with ROOT/manifest.json. Exits 0 when"
        " all match; else lists every file that does not and exits 2.",
    )
    parser.add_argument("root", type=Path, metavar="ROOT", help="a prepared dataset")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="parallel processes")
    parser.set_defaults(run=run_verify)


def run_verify(args: argparse.Namespace) -> None:
    from bn_repro.data.verify import verify

    if args.workers < 1:
        raise UserError("--workers must be at least 1")
    print(verify(args.root, args.workers))


def train(overrides: list[str]) -> int:
    from bn_repro.compose import compose, register

    if not any(arg.startswith("-") for arg in overrides):  # one run, no Hydra flags (-m, --cfg)
        try:  # the errors describe gives, before Hydra resolves anything or torch is imported
            run_dir = Path(compose(overrides).run_dir)
            # Hydra makes its run dir, the run_dir, before the trainer runs: say here why not
            run_dir.mkdir(parents=True, exist_ok=True)
        except UserError as error:
            print(f"bn-repro train: {error}", file=sys.stderr)
            return 2
        except OSError as error:
            print(f"bn-repro train: {explain_os_error(error)}", file=sys.stderr)
            return 2
    register()
    from bn_repro.train.main import hydra_main  # torch.distributed and friends, only to train

    sys.argv = ["bn-repro train", *overrides]
    hydra_main()
    return 0


def add_evaluate(commands) -> None:
    parser = commands.add_parser(
        "evaluate",
        help="evaluate trained runs at 1 or 144 crops, alone or as an ensemble (Figure 4)",
        description="Evaluate each RUN_DIR's checkpoint on the validation set, every image once"
        " over the ranks (one process, torchrun or srun, as train). Several RUN_DIRs are also an"
        " ensemble: the mean of their class probabilities (Sec. 4.2.3), recorded beside each"
        " member's own numbers. Records are appended to every RUN_DIR/evaluations.jsonl;"
        " `bn-repro report` makes figure4.md from them.",
    )
    parser.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    parser.add_argument(
        "--checkpoint",
        default="latest",
        metavar="WHICH",
        help="latest (the newest step checkpoint, the default), best (checkpoints/best.pt: the"
        " evaluation with the run's best top-1), or a file of RUN_DIR/checkpoints/ or a path",
    )
    parser.add_argument(
        "--bn-stats",
        choices=("population", "running"),
        default="population",
        help="BN statistics: recomputed over training batches as Algorithm 2 does, as the"
        " trainer's final evaluation (the default), or the checkpoint's running averages",
    )
    parser.add_argument(
        "--population-batches",
        type=int,
        metavar="N",
        help="training batches per rank for Algorithm 2 (default: each run's"
        " trainer.population_batches)",
    )
    _add_evaluate_setup(parser)
    parser.set_defaults(run=run_evaluate)


def _add_evaluate_setup(parser: argparse.ArgumentParser) -> None:
    """How `evaluate` reads the validation set: crops, batch, data and device."""
    parser.add_argument(
        "--crops",
        default="1",
        metavar="1|144|1,144",
        help="1: the shorter side resized, the centre crop (training's evaluation); 144:"
        " GoogLeNet's 4 scales x 3 squares x 6 crops x 2 mirrors; 36, 72 or 108: its first 1, 2"
        " or 3 scales only (quicker); several, comma-separated, in one run (default 1)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        metavar="IMAGES",
        help="images per rank and batch (default: the run's trainer.eval_batch_per_rank at 1"
        " crop, 1/32 of it at several)",
    )
    parser.add_argument(
        "--crops-per-pass",
        type=int,
        metavar="CROPS",
        help="at several crops, the most crops one forward pass takes, whatever --batch is: it"
        " bounds the GPU memory (default 1024, about 2 GB of activations at 224 pixels)",
    )
    parser.add_argument("--data-root", help="the prepared data, if not the runs' data.root")
    parser.add_argument("--loader", choices=("dali", "torch"), help="default: the runs' loader")
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), help="default: the runs' trainer.device"
    )


def run_evaluate(args: argparse.Namespace) -> None:
    from bn_repro.schema import DataLoaderKind, Device

    try:
        crops = tuple(int(c) for c in args.crops.split(","))
    except ValueError:
        crops = ()
    if not crops or set(crops) - set(CROP_COUNTS) or len(set(crops)) < len(crops):
        raise UserError(
            f"--crops {args.crops}: give one or more of {', '.join(map(str, CROP_COUNTS))},"
            " e.g. 1,144"
        )
    if any(n is not None and n < 1 for n in (args.batch, args.population_batches)) or (
        args.crops_per_pass is not None and args.crops_per_pass < 1
    ):
        raise UserError("--batch, --population-batches and --crops-per-pass must be at least 1")
    from bn_repro.evaluate.members import Settings  # torch: after the arguments are checked
    from bn_repro.evaluate.run import CROPS_PER_PASS, Options, evaluate

    settings = Settings(
        args.data_root,
        args.loader and DataLoaderKind(args.loader),
        args.device and Device(args.device),
    )
    options = Options(
        args.checkpoint,
        args.bn_stats,
        args.population_batches,
        crops,
        args.batch,
        args.crops_per_pass or CROPS_PER_PASS,
        settings,
    )
    for record in evaluate(args.run_dirs, options):
        names = " + ".join(member["run"] for member in record["members"])
        print(
            f"{names}: {record['crops']} crop(s), {record['bn_stats']} BN statistics:"
            f" top-1 {record['top1']:.4f}, top-5 {record['top5']:.4f} ({record['count']} images)"
        )


def add_report(commands) -> None:
    parser = commands.add_parser(
        "report",
        help="the Figure 3 table, Figure 2 curves and learning-rate comparison of runs;"
        " Figure 1 of figure1 runs",
        description="Read the runs under RUN_OR_SWEEP_DIR (their metrics.jsonl and summary.json)"
        " and write figure3.md/.csv, figure2.png/.svg, lr_multipliers.md/.png,"
        " input_distributions.png/.csv (where the runs recorded them) and README.md to --out,"
        " beside the paper's numbers; for runs of `bn-repro figure1`, figure1.md/.png/.csv and"
        " figure1_landscape.png/.csv; figure4.md/.csv where runs have evaluations (bn-repro"
        " evaluate).",
    )
    parser.add_argument("paths", type=Path, nargs="+", metavar="RUN_OR_SWEEP_DIR")
    parser.add_argument("--out", type=Path, required=True)
    parser.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> None:
    from bn_repro.report import write_report

    rows = write_report(args.paths, args.out)
    tables = ", ".join(sorted(path.name for path in args.out.glob("*.md")))
    print(f"{len(rows)} variants of Figure 3; in {args.out}: {tables}")


def add_paper(commands) -> None:
    parser = commands.add_parser(
        "paper",
        help="write the paper's Figure 3 and Figure 4 numbers as CSV",
        description="Write figure3.csv, figure4.csv and README.md with the paper's numbers, as"
        " bn_repro/paper.py holds them, to --out (results/paper in the repository).",
    )
    parser.add_argument("--out", type=Path, default=Path("results/paper"))
    parser.set_defaults(run=run_paper)


def run_paper(args: argparse.Namespace) -> None:
    from bn_repro.report.reference import write_paper_tables

    for path in write_paper_tables(args.out):
        print(path)
