"""`bn-repro bench loader`, `bench train` and `bench cost`: their arguments, and the records they
write and read under results/bench/. What a benchmark runs is imported when it runs, so that
`bn-repro --help` does not wait for torch and DALI."""

import argparse
import os
import re
import statistics
from pathlib import Path

from bn_repro import paper
from bn_repro.bench.cost import MODES
from bn_repro.errors import UserError
from bn_repro.schema import ConfigError, DataConfig

RESULTS = Path("results/bench")
DATA = ("synthetic", "dali", "torch")
DEFAULT_BATCH = 256  # bench train's images per GPU and step: (b) of its table, 8 BN groups of 32
LOADERS = ("classic", "torch", "dali", "dali-bare")  # as bench/loader.py makes them
# The classic recipe reads the folder tree and distorts no colour: bench loader compares like
# with like unless its overrides say otherwise.
LIKE_THE_CLASSIC = ("data.format=folder", "data.photometric=none")


def add_bench(commands) -> None:
    parser = commands.add_parser("bench", help="benchmarks, recorded as JSON under results/bench/")
    benches = parser.add_subparsers(dest="bench", required=True, metavar="BENCH")
    add_bench_loader(benches)
    add_bench_train(benches)
    add_bench_cost(benches)


def add_bench_loader(benches) -> None:
    parser = benches.add_parser(
        "loader",
        help="training-pipeline images/s of the loaders, side by side",
        description="Images/s of training batches at the trainer's output size after a warm-up:"
        " the classic PyTorch ImageNet recipe, loader=torch, loader=dali, and the DALI pipeline"
        " bare. Reads a prepared dataset (bn-repro prepare --formats folder,shards) with the"
        " experiment's data config (configs/data/imagenet.yaml and its changes), set like the"
        f" classic recipe ({' '.join(LIKE_THE_CLASSIC)}), then the KEY=VALUE overrides;"
        " data.dali_device decides where DALI decodes (auto: on the GPU where torch sees one).",
    )
    parser.add_argument("--root", type=Path, required=True, help="a prepared dataset")
    parser.add_argument("--experiment", default="bn_x5", help="whose data config (default bn_x5)")
    parser.add_argument("--loaders", default=",".join(LOADERS), help=f"from {', '.join(LOADERS)}")
    parser.add_argument("--batch", type=int, default=64, help="images a batch (default 64)")
    parser.add_argument("--warmup", type=int, default=5, help="batches before timing a round")
    parser.add_argument("--batches", type=int, default=30, help="batches timed a round")
    parser.add_argument(
        "--rounds", type=int, default=3, help="turns of the loaders; each gets its median"
    )
    parser.add_argument("--tag", help="appended to the default record name")
    parser.add_argument(
        "--out", type=Path, help=f"default {RESULTS}/loader-DEVICE-PHOTOMETRIC[-TAG].json"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="data.KEY=VALUE",
        help="data config overrides, e.g. data.photometric=full data.format=shards"
        " data.workers=8 data.dali_device=gpu",
    )
    parser.set_defaults(run=run_bench_loader)


def run_bench_loader(args: argparse.Namespace) -> None:
    names = tuple(name for name in args.loaders.split(",") if name)
    if not names or set(names) - set(LOADERS):
        raise ConfigError(f"--loaders {args.loaders}: choose from {', '.join(LOADERS)}")
    data, overrides = loader_data(args.experiment, args.root, args.overrides)
    from bn_repro.bench.loader import LoaderBench, feeds, run  # torch and DALI only here
    from bn_repro.bench.record import write_record

    bench = LoaderBench(
        data, names, feeds(data), args.batch, args.warmup, args.batches, args.rounds
    )
    rounds = {name: [round(rate, 1) for rate in rates] for name, rates in run(bench).items()}
    results = {name: statistics.median(rates) for name, rates in rounds.items()}
    ratios = {
        f"{a}/{b}": round(results[a] / results[b], 3)
        for a, b in (("dali", "classic"), ("dali", "dali-bare"), ("torch", "classic"))
        if a in results and b in results
    }
    device = "cpu" if bench.cuda_device is None else "gpu"
    settings = {
        "root": str(args.root),
        "loaders": list(names),
        "device": device,
        **{name: getattr(args, name) for name in ("batch", "warmup", "batches", "rounds")},
        "overrides": overrides,
        "data": _section(data),
    }
    tag = f"-{args.tag}" if args.tag else ""
    out = args.out or RESULTS / f"loader-{device}-{data.photometric.value}{tag}.json"
    write_record(out, settings, {"images_per_s": results, "ratios": ratios, "rounds": rounds})
    for name, rate in results.items():
        print(f"{name:>10}: {rate:8.1f} images/s (median of {rounds[name]})")
    for name, ratio in ratios.items():
        print(f"{name:>16}: {ratio:.2f}")
    print(f"written to {out}")


def loader_data(experiment: str, root: Path, overrides: list[str]) -> tuple[DataConfig, list[str]]:
    """bench loader's data config: the experiment's, composed from configs/, for the prepared set
    at root; and the overrides that made it."""
    from bn_repro.compose import compose, to_object
    from bn_repro.data.prepared import read_manifest

    others = [o for o in overrides if not o.startswith("data.")]
    if others:
        raise ConfigError(f"{' '.join(others)}: bench loader takes data.KEY=VALUE overrides only")
    classes = len(read_manifest(root)["classes"])  # a clear error before any loader starts
    place = [f"experiment={experiment}", f"data.root={root}", f"data.num_classes={classes}"]
    overrides = [*place, *LIKE_THE_CLASSIC, *overrides]
    return to_object(compose(overrides)).data, overrides


TRAIN_DESCRIPTION = (
    "Train an experiment with the trainer's own objects and step for --warmup"
    " steps, then time --steps more: images/s per GPU, the share of time waiting for data,"
    " peak GPU memory, the host synchronizations inside a step (CUDA) and the model FLOP"
    " utilization (training FLOPs per image = 3 x 2 x forward multiply-adds, over the GPU's"
    " dense bf16 peak). KEY=VALUE overrides set the rest of the config (e.g."
    " trainer.precision=fp32 trainer.channels_last=false trainer.compile=default"
    " trainer.cuda_graph=true data.workers=8); left out, its defaults (the fast path on"
    " CUDA). Run it under torchrun for several GPUs. With --table it times, each in a"
    " process of its own, what a Figure 3 sweep can run on one GPU: (a) 32 images a step,"
    " (b) --groups x 32 in BN groups of 32, each eager, compiled, graphed and both, on"
    " synthetic images and through the GPU DALI pipeline (--root), and --shared processes"
    " of (a) sharing the GPU; a cell that cannot be measured without a GPU says why."
)


def add_bench_train(benches) -> None:
    parser = benches.add_parser(
        "train",
        help="training images/s per GPU, data wait, peak memory and MFU of an experiment; with"
        " --table, of every way a sweep can train on one GPU",
        description=TRAIN_DESCRIPTION,
    )
    parser.add_argument("--experiment", default="bn_x5", help="default bn_x5")
    parser.add_argument(
        "--batch", type=int, help=f"images per GPU and step (default {DEFAULT_BATCH})"
    )
    parser.add_argument(
        "--bn-batch",
        type=int,
        help=f"images BN normalizes over, in groups of a batch (default the paper's"
        f" {paper.BATCH_SIZE}, or the batch where it is smaller)",
    )
    parser.add_argument("--data", choices=DATA, help="default synthetic")
    parser.add_argument("--root", type=Path, help="the prepared set --data dali and torch read")
    parser.add_argument("--size", type=int, default=224, help="image size, pixels (default 224)")
    parser.add_argument("--warmup", type=int, default=30, help="steps before timing (default 30)")
    parser.add_argument("--steps", type=int, default=100, help="steps timed (default 100)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="then profile --profile-steps steps: a trace (.trace.json.gz) and a table"
        " (.profile.txt) beside the record",
    )
    parser.add_argument("--profile-steps", type=int, default=5, help="default 5")
    parser.add_argument(
        "--tag", help="appended to the default record name, e.g. the setting a sweep varies"
    )
    parser.add_argument(
        "--out", type=Path, help=f"default {RESULTS}/train-DEVICE-EXPERIMENT-DATA[-TAG].json"
    )
    add_table_arguments(parser)
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. trainer.precision=fp32 trainer.compile=default"
        " data.workers=8 data.dali_decode=full",
    )
    parser.set_defaults(run=run_bench_train)


def add_table_arguments(parser) -> None:
    parser.add_argument(
        "--start-together",
        type=int,
        metavar="N",
        help="N benchmarks sharing the GPU start their timed steps together, meeting in"
        " --meet-at (what --table runs for its processes sharing a GPU)",
    )
    parser.add_argument("--meet-at", type=Path, help="the folder --start-together meets in")
    parser.add_argument(
        "--table",
        action="store_true",
        help="time the table of what a sweep can run on one GPU (README, Speed); each cell's"
        " record goes to --out-dir, the table to its table-DEVICE-EXPERIMENT.json",
    )
    parser.add_argument(
        "--groups", type=int, default=8, help="BN groups of 32 a step in (b) (default 8: 256)"
    )
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"the table's columns, from {', '.join(MODES)}"
    )
    parser.add_argument(
        "--shared", default="1,2,4", help="processes of (a) sharing the GPU (default 1,2,4)"
    )
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help=f"default {RESULTS}")


def run_bench_train(args: argparse.Namespace) -> None:
    if args.table:
        return run_bench_table(args)
    import torch

    from bn_repro.bench import train as bench  # the trainer and torch.distributed only here
    from bn_repro.bench.cost import mode_of
    from bn_repro.bench.record import write_record
    from bn_repro.compose import compose, to_object
    from bn_repro.train.distributed import launch_env, pick_device

    data, batch = args.data or "synthetic", args.batch or DEFAULT_BATCH
    bn_batch = args.bn_batch or min(batch, paper.BATCH_SIZE)
    check_train_arguments(args, data, batch, bn_batch)
    env = launch_env(os.environ)
    overrides = bench.overrides(
        args.experiment, data, args.root, args.size, (batch, bn_batch), env.world_size
    )
    overrides += args.overrides
    cfg = to_object(compose(overrides))
    device = pick_device(cfg.trainer.device, env.local_rank, torch.cuda.device_count())
    tag = f"-{args.tag}" if args.tag else ""
    out = args.out or RESULTS / f"train-{_slug(device)}-{cfg.name}-{data}{tag}.json"
    profile_steps = args.profile_steps if args.profile else 0
    together = (args.start_together, args.meet_at) if args.start_together else None
    timing = bench.TrainBench(args.warmup, args.steps, profile_steps, out, together)
    results = bench.run(cfg, timing)
    if results is None:  # not rank 0
        return
    mode = mode_of(cfg.trainer.compile, cfg.trainer.cuda_graph)
    settings = {
        "experiment": cfg.name,
        "data": data,
        "root": None if args.root is None else str(args.root),
        "image_size": cfg.data.image_size,
        "batch_per_gpu": batch,
        "bn_batch": bn_batch,
        "mode": mode,
        "processes_per_gpu": args.start_together or 1,
        "warmup": args.warmup,
        "steps": args.steps,
        "overrides": overrides,
        "config": {"trainer": _section(cfg.trainer), "data": _section(cfg.data)},
    }
    write_record(out, settings, results)
    print_train_result(cfg, settings, results)
    print(f"written to {out}")


def check_train_arguments(args: argparse.Namespace, data: str, batch: int, bn_batch: int) -> None:
    if (data == "synthetic") == (args.root is not None):
        raise ConfigError(
            "--data dali and --data torch read a prepared set --root DIR; synthetic none"
        )
    if min(batch, args.size, args.steps, args.profile_steps) < 1 or args.warmup < 0:
        raise ConfigError("--batch, --size, --steps and --profile-steps must be at least 1")
    if bn_batch < 1 or batch % bn_batch:
        raise ConfigError(f"--bn-batch {bn_batch}: give a number of images that divides --batch")
    if (args.start_together is None) != (args.meet_at is None) or (args.start_together or 1) < 1:
        raise ConfigError("--start-together N and --meet-at DIR go together, N at least 1")


def print_train_result(cfg, settings: dict, results: dict) -> None:
    resolved = results["resolved"]
    mfu = "-" if results["mfu"] is None else f"{100 * results['mfu']:.1f}%"
    memory = results["peak_memory_gib"]
    print(
        f"{cfg.name} on {results['device']}, {settings['data']} data, batch"
        f" {settings['batch_per_gpu']} in BN groups of {settings['bn_batch']},"
        f" {resolved['precision']}, channels_last {resolved['channels_last']},"
        f" compile {cfg.trainer.compile}, {settings['mode']}:"
        f" {results['images_per_s_per_gpu']:,.1f} images/s per GPU, data wait"
        f" {100 * results['data_wait']:.1f}%, MFU {mfu},"
        f" peak memory {'-' if memory is None else f'{memory} GiB'}"
    )


def run_bench_table(args: argparse.Namespace) -> None:
    chosen = ("batch", "bn_batch", "data", "out", "tag", "start_together")
    given = [f"--{name.replace('_', '-')}" for name in chosen if getattr(args, name) is not None]
    if given or args.profile or args.overrides:
        raise ConfigError(
            f"--table chooses the batches, data, modes and record names itself: leave out"
            f" {', '.join(given + ['--profile'] * args.profile + args.overrides)}"
        )
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise ConfigError("--table starts a process for each cell: run it without torchrun")
    modes = tuple(mode for mode in args.modes.split(",") if mode)
    if not modes or set(modes) - set(MODES):
        raise ConfigError(f"--modes {args.modes}: choose from {', '.join(MODES)}")
    shared = tuple(int(n) for n in args.shared.split(",") if n.strip().isdigit())
    if len(shared) != len([n for n in args.shared.split(",") if n]) or min(shared or [1]) < 1:
        raise ConfigError(f"--shared {args.shared}: give numbers of processes, e.g. 1,2,4")
    if min(args.groups, args.size, args.steps) < 1 or args.warmup < 0:
        raise ConfigError("--groups, --size and --steps must be at least 1")
    write_table(args, modes, shared)


def write_table(args: argparse.Namespace, modes: tuple[str, ...], shared: tuple[int, ...]) -> None:
    import torch

    from bn_repro.bench import table as bench_table
    from bn_repro.bench.record import write_record

    cuda = torch.cuda.is_available()
    device = _slug(torch.device("cuda", 0) if cuda else torch.device("cpu"))
    table = bench_table.Table(
        args.experiment,
        args.size,
        args.warmup,
        args.steps,
        args.root,
        args.groups,
        modes,
        shared,
        args.out_dir,
        device,
        cuda,
    )
    cells = bench_table.measure(table)
    markdown = bench_table.markdown(table, cells)
    out = args.out_dir / f"table-{device}-{args.experiment}.json"
    settings = {key: getattr(table, key) for key in ("experiment", "size", "warmup", "steps")}
    settings |= {"root": args.root and str(args.root), "groups": args.groups}
    settings |= {"modes": list(modes), "shared": list(shared)}
    found = [
        {"row": row.label, "data": row.data, "mode": mode, "images_per_s_per_gpu": c.images_per_s}
        | {"reason": c.reason, "record": c.record and str(c.record)}
        for (row, mode), c in cells.items()
    ]
    write_record(out, settings, {"cells": found, "table": markdown})
    print(markdown)
    print(f"written to {out}")
    failed = [cell["reason"] for cell in found if (cell["reason"] or "").startswith("failed")]
    if failed:
        raise UserError(f"{len(failed)} cells of the table failed, the first: {failed[0]}")


def _slug(device) -> str:
    if device.type != "cuda":
        return "cpu"
    import torch

    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def _section(config) -> dict:
    """A config dataclass (RunConfig's trainer, data) as plain JSON values."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(config), enum_to_str=True)


def add_bench_cost(benches) -> None:
    parser = benches.add_parser(
        "cost",
        help="throughput per GPU and Figure 3's GPU-hours, from bench train's records",
        description="Print, from the records of `bn-repro bench train` at 224 pixels on GPUs,"
        " every measured rate; the GPU-hours of a sweep (--sweep) at each configuration's rate"
        " (images a step, BN batch, processes a GPU, eager, compiled or graphed), and at each"
        " rate given with --stated, marked so; and the GPU-hours of each Figure 3 variant: to"
        " the paper's steps to 72.2% (Fig. 3) and for a default run (trainer.max_paper_steps),"
        " at the fastest rate with real data (else synthetic), as Markdown.",
    )
    parser.add_argument(
        "records", nargs="*", type=Path, help=f"default: every {RESULTS}/train-*.json"
    )
    parser.add_argument(
        "--sweep",
        default="figure3",
        help="the sweep preset (configs/sweep/) whose GPU-hours each configuration's rate gives"
        " (default figure3)",
    )
    parser.add_argument(
        "--stated",
        action="append",
        default=[],
        metavar="CONFIGURATION=IMAGES_PER_S",
        help="a rate not measured (a target, a projection), per GPU, shown as stated beside the"
        " measured ones; repeatable",
    )
    parser.set_defaults(run=run_bench_cost)


def run_bench_cost(args: argparse.Namespace) -> None:
    from bn_repro.bench.cost import cost_report, read_rates, stated_rate
    from bn_repro.compose import compose, sweep_jobs

    stated = tuple(stated_rate(text) for text in args.stated)
    paths = args.records or sorted(RESULTS.glob("train-*.json"))
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise ConfigError(f"no such record: {', '.join(missing)}")
    rates, left_out = read_rates(paths)
    jobs = sweep_jobs([f"sweep={args.sweep}"])
    runs = [next(o for o in job if o.startswith("experiment=")).split("=", 1)[1] for job in jobs]
    experiments = {row.experiment for row in paper.FIGURE_3} | set(runs)
    run_paper_steps = {
        name: compose([f"experiment={name}"]).trainer.max_paper_steps for name in experiments
    }
    print(cost_report(rates, run_paper_steps, (args.sweep, runs), stated))
    for reason in left_out:
        print(f"left out {reason}")
