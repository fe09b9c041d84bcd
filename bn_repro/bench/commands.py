"""`bn-repro bench loader`, `bench train` and `bench cost`: their arguments, and the records they
write and read under results/bench/. What a benchmark runs is imported when it runs, so that
`bn-repro --help` does not wait for torch and DALI."""

import argparse
import os
import re
import statistics
from pathlib import Path

from bn_repro import paper
from bn_repro.schema import ConfigError, DataConfig

RESULTS = Path("results/bench")
DATA = ("synthetic", "dali", "torch")
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


def add_bench_train(benches) -> None:
    parser = benches.add_parser(
        "train",
        help="training images/s per GPU, data wait, peak memory and MFU of an experiment",
        description="Train an experiment with the trainer's own objects and step for --warmup"
        " steps, then time --steps more: images/s per GPU, the share of time waiting for data,"
        " peak GPU memory, the host synchronizations inside a step (CUDA) and the model FLOP"
        " utilization (training FLOPs per image = 3 x 2 x forward multiply-adds, over the GPU's"
        " dense bf16 peak). KEY=VALUE overrides set the rest of the config (e.g."
        " trainer.precision=fp32 trainer.channels_last=false trainer.compile=default"
        " data.workers=8); left out, its defaults (the fast path on CUDA). Run it under torchrun"
        " for several GPUs.",
    )
    parser.add_argument("--experiment", default="bn_x5", help="default bn_x5")
    parser.add_argument(
        "--batch", type=int, default=256, help="images per GPU and step (default 256)"
    )
    parser.add_argument("--data", choices=DATA, default="synthetic", help="default synthetic")
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
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. trainer.precision=fp32 trainer.compile=default"
        " data.workers=8 data.dali_decode=full",
    )
    parser.set_defaults(run=run_bench_train)


def run_bench_train(args: argparse.Namespace) -> None:
    import torch

    from bn_repro.bench import train as bench  # the trainer and torch.distributed only here
    from bn_repro.bench.record import write_record
    from bn_repro.compose import compose, to_object
    from bn_repro.train.distributed import launch_env, pick_device

    if (args.data == "synthetic") == (args.root is not None):
        raise ConfigError(
            "--data dali and --data torch read a prepared set --root DIR; synthetic none"
        )
    if min(args.batch, args.size, args.steps, args.profile_steps) < 1 or args.warmup < 0:
        raise ConfigError("--batch, --size, --steps and --profile-steps must be at least 1")
    env = launch_env(os.environ)
    overrides = bench.overrides(
        args.experiment, args.data, args.root, args.size, args.batch, env.world_size
    )
    overrides += args.overrides
    cfg = to_object(compose(overrides))
    device = pick_device(cfg.trainer.device, env.local_rank, torch.cuda.device_count())
    tag = f"-{args.tag}" if args.tag else ""
    out = args.out or RESULTS / f"train-{_slug(device)}-{cfg.name}-{args.data}{tag}.json"
    profile_steps = args.profile_steps if args.profile else 0
    results = bench.run(cfg, bench.TrainBench(args.warmup, args.steps, profile_steps, out))
    if results is None:  # not rank 0
        return
    settings = {
        "experiment": cfg.name,
        "data": args.data,
        "root": None if args.root is None else str(args.root),
        "image_size": cfg.data.image_size,
        "batch_per_gpu": args.batch,
        "warmup": args.warmup,
        "steps": args.steps,
        "overrides": overrides,
        "config": {"trainer": _section(cfg.trainer), "data": _section(cfg.data)},
    }
    write_record(out, settings, results)
    resolved = results["resolved"]
    mfu = "-" if results["mfu"] is None else f"{100 * results['mfu']:.1f}%"
    memory = results["peak_memory_gib"]
    print(
        f"{cfg.name} on {results['device']}, {args.data} data, batch {args.batch},"
        f" {resolved['precision']}, channels_last {resolved['channels_last']},"
        f" compile {cfg.trainer.compile}: {results['images_per_s_per_gpu']:,.1f} images/s per"
        f" GPU, data wait {100 * results['data_wait']:.1f}%, MFU {mfu},"
        f" peak memory {'-' if memory is None else f'{memory} GiB'}"
    )
    print(f"written to {out}")


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
        " every measured rate and the GPU-hours of each Figure 3 variant: to the paper's steps to"
        " 72.2% (Fig. 3) and for a default run (trainer.max_paper_steps), at the fastest rate"
        " with real data (else synthetic), as Markdown.",
    )
    parser.add_argument(
        "records", nargs="*", type=Path, help=f"default: every {RESULTS}/train-*.json"
    )
    parser.set_defaults(run=run_bench_cost)


def run_bench_cost(args: argparse.Namespace) -> None:
    from bn_repro.bench.cost import cost_report, read_rates
    from bn_repro.compose import compose

    paths = args.records or sorted(RESULTS.glob("train-*.json"))
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise ConfigError(f"no such record: {', '.join(missing)}")
    rates, left_out = read_rates(paths)
    run_paper_steps = {
        row.experiment: compose([f"experiment={row.experiment}"]).trainer.max_paper_steps
        for row in paper.FIGURE_3
    }
    print(cost_report(rates, run_paper_steps))
    for reason in left_out:
        print(f"left out {reason}")
