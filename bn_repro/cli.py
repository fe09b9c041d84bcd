"""The `bn-repro` command."""

import argparse
import os
import statistics
import sys
from pathlib import Path

from omegaconf import OmegaConf

from bn_repro.bench.commands import RESULTS, add_bench_cost, add_bench_train
from bn_repro.bench.loader import LOADERS, LoaderBench, run
from bn_repro.bench.record import write_record
from bn_repro.config import ConfigError, DataFormat, Photometric, compose, to_object
from bn_repro.data.make_mini import MiniSpec, make_mini
from bn_repro.data.prepare import FORMATS, PrepareOptions, prepare
from bn_repro.data.prepared import read_manifest
from bn_repro.data.sources import PrepareError
from bn_repro.describe import describe
from bn_repro.report import ReportError, write_report
from bn_repro.report.reference import write_paper_tables


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
    describe_parser.set_defaults(run=run_describe)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:  # Hydra parses the rest itself: overrides, -m, --cfg, --help
        return train(argv[1:])
    add_prepare(commands)
    add_make_mini(commands)
    add_verify(commands)
    add_bench(commands)
    add_report(commands)
    add_paper(commands)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (ConfigError, PrepareError, ReportError) as error:
        print(f"bn-repro {args.command}: {error}", file=sys.stderr)
        return 2
    return 0


def run_describe(args: argparse.Namespace) -> None:
    cfg = compose(args.overrides)
    print(OmegaConf.to_yaml(cfg) if args.cfg else describe(to_object(cfg)))


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
        raise ConfigError("--workers must be at least 1")
    print(verify(args.root, args.workers))


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


def add_bench(commands) -> None:
    parser = commands.add_parser("bench", help="benchmarks, recorded as JSON under results/bench/")
    benches = parser.add_subparsers(dest="bench", required=True, metavar="BENCH")
    loader = benches.add_parser(
        "loader",
        help="training-pipeline images/s of the loaders, side by side",
        description="Images/s of training batches at the trainer's output size after a warm-up:"
        " the classic PyTorch ImageNet recipe, loader=torch, loader=dali, and the DALI pipeline"
        " bare. Reads a prepared dataset (bn-repro prepare --formats folder,shards).",
    )
    loader.add_argument("--root", type=Path, required=True, help="a prepared dataset")
    loader.add_argument("--loaders", default=",".join(LOADERS), help=f"from {', '.join(LOADERS)}")
    loader.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="DALI's device")
    loader.add_argument("--format", choices=("folder", "shards"), default="folder")
    loader.add_argument("--size", type=int, default=224, help="output crop, pixels")
    loader.add_argument(
        "--photometric",
        choices=[p.value for p in Photometric],
        default="none",
        help="our loaders' distortion (default none: the classic recipe does none)",
    )
    loader.add_argument("--batch", type=int, default=64)
    loader.add_argument("--workers", type=int, default=os.cpu_count(), help="processes/threads")
    loader.add_argument("--warmup", type=int, default=5, help="batches before timing a round")
    loader.add_argument("--batches", type=int, default=30, help="batches timed a round")
    loader.add_argument(
        "--rounds", type=int, default=3, help="turns of the loaders; each gets its median"
    )
    loader.add_argument(
        "--out", type=Path, help="default results/bench/loader-DEVICE-PHOTOMETRIC.json"
    )
    loader.set_defaults(run=run_bench_loader)
    add_bench_train(benches)
    add_bench_cost(benches)


def run_bench_loader(args: argparse.Namespace) -> None:
    names = tuple(name for name in args.loaders.split(",") if name)
    if not names or set(names) - set(LOADERS):
        raise ConfigError(f"--loaders {args.loaders}: choose from {', '.join(LOADERS)}")
    bench = LoaderBench(
        args.root,
        names,
        args.device,
        DataFormat(args.format),
        args.size,
        Photometric(args.photometric),
        args.batch,
        args.workers,
        args.warmup,
        args.batches,
        args.rounds,
    )
    read_manifest(args.root)  # a clear error before any loader starts
    rounds = {name: [round(rate, 1) for rate in rates] for name, rates in run(bench).items()}
    results = {name: statistics.median(rates) for name, rates in rounds.items()}
    ratios = {
        f"{a}/{b}": round(results[a] / results[b], 3)
        for a, b in (("dali", "classic"), ("dali", "dali-bare"), ("torch", "classic"))
        if a in results and b in results
    }
    settings = {k: getattr(v, "value", v) for k, v in vars(bench).items()}
    settings["root"] = str(bench.root)
    out = args.out or RESULTS / f"loader-{args.device}-{args.photometric}.json"
    write_record(out, settings, {"images_per_s": results, "ratios": ratios, "rounds": rounds})
    for name, rate in results.items():
        print(f"{name:>10}: {rate:8.1f} images/s (median of {rounds[name]})")
    for name, ratio in ratios.items():
        print(f"{name:>16}: {ratio:.2f}")
    print(f"written to {out}")


def add_report(commands) -> None:
    parser = commands.add_parser(
        "report",
        help="the Figure 3 table, Figure 2 curves and learning-rate comparison of runs",
        description="Read the runs under RUN_OR_SWEEP_DIR (their metrics.jsonl and summary.json)"
        " and write figure3.md/.csv, figure2.png/.svg, lr_multipliers.md/.png and README.md to"
        " --out, beside the paper's numbers.",
    )
    parser.add_argument("paths", type=Path, nargs="+", metavar="RUN_OR_SWEEP_DIR")
    parser.add_argument("--out", type=Path, required=True)
    parser.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> None:
    rows = write_report(args.paths, args.out)
    print(f"{len(rows)} variants; {args.out}/figure3.md, figure2.png, lr_multipliers.png")


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
    for path in write_paper_tables(args.out):
        print(path)
