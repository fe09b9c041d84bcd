"""The runs `bn-repro evaluate` evaluates: their checkpoint, the config it carries (with the
evaluation's own data and device settings), and the checks that they can be evaluated on the
same images."""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bn_repro.data.prepared import read_manifest
from bn_repro.errors import UserError
from bn_repro.schema import ConfigError, DataKind, DataLoaderKind, Device, RunConfig, check
from bn_repro.train import checkpoint
from bn_repro.train.plan import Progress


class EvaluateError(UserError, ValueError):
    pass


@dataclass(frozen=True)
class Settings:
    """What the evaluation changes in each run's config: where the images are, how they are read
    and on what it computes (None: as the run trained)."""

    data_root: str | None = None
    loader: DataLoaderKind | None = None
    device: Device | None = None


@dataclass(frozen=True)
class Member:
    run_dir: Path
    checkpoint: Path
    trained: RunConfig  # as the run trained
    cfg: RunConfig  # the same with the evaluation's Settings
    weights: dict
    progress: Progress
    loader_states: list  # each training rank's, for Algorithm 2's batches

    def describe(self) -> dict:
        """The member in a record: the run, the checkpoint and where training stood."""
        return {
            "run": str(self.run_dir.resolve()),
            "name": self.cfg.name,
            "seed": self.cfg.seed,
            "checkpoint": self.checkpoint.name,
            "step": self.progress.step,
            "epoch": self.progress.epoch,
        }


def find_checkpoint(run_dir: Path, which: str) -> Path:
    """latest: the newest step checkpoint; best: checkpoints/best.pt; else a file of the run's
    checkpoints/ folder, or a path."""
    if not (run_dir / "config.json").exists() and not checkpoint.checkpoint_dir(run_dir).is_dir():
        raise EvaluateError(f"{run_dir} is not a run directory (no config.json, no checkpoints/)")
    if which == "latest":
        found = checkpoint.checkpoints(run_dir)
        if not found:
            raise EvaluateError(
                f"{run_dir} has no checkpoint in {checkpoint.checkpoint_dir(run_dir)}: train it"
                " first, or until its first checkpoint"
            )
        return found[-1]
    if which == "best":
        path = checkpoint.best_path(run_dir)
        if not path.exists():
            raise EvaluateError(
                f"{run_dir} has no {path.name} in checkpoints/ (runs save it at their first"
                " evaluation, since this version of bn-repro): use --checkpoint latest"
            )
        return path
    path = checkpoint.checkpoint_dir(run_dir) / which
    if not path.exists():
        path = Path(which)
    if not path.is_file():
        names = sorted(p.name for p in checkpoint.checkpoint_dir(run_dir).glob("*.pt"))
        raise EvaluateError(
            f"--checkpoint {which}: no such file in {checkpoint.checkpoint_dir(run_dir)} (it has"
            f" {', '.join(names) or 'none'}) nor elsewhere: use latest, best or one of them"
        )
    return path


def load_member(run_dir: Path, which: str, settings: Settings) -> Member:
    path = find_checkpoint(run_dir, which)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure to read is the user's to see
        raise EvaluateError(
            f"{path} cannot be read ({error}): choose another --checkpoint"
        ) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("model"), dict):
        raise EvaluateError(
            f"{path} holds no weights (no model state): it is not a checkpoint of `bn-repro"
            " train`; choose another --checkpoint (latest, best, or a step_*.pt of the run)"
        )
    trained = run_config(payload.get("config"), path)
    try:
        progress = Progress(**payload["progress"])
    except (KeyError, TypeError):
        raise EvaluateError(
            f"{path} does not say where its training stood (no progress, or not this version's):"
            " evaluate it with the version of bn-repro that trained it"
        ) from None
    return Member(
        run_dir,
        path,
        trained,
        with_settings(trained, settings),
        payload["model"],
        progress,
        payload.get("loader") or [],
    )


def run_config(saved: dict | None, path: Path) -> RunConfig:
    """The RunConfig a checkpoint was trained with, checked against the current schema."""
    if saved is None:
        raise EvaluateError(f"{path} holds no config: it was not written by bn-repro train")
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), saved))
        check(cfg)
    except (OmegaConfBaseException, UserError) as error:
        reason = str(error).splitlines()[0]
        raise EvaluateError(
            f"{path}: its config does not fit this version of bn-repro ({reason}); evaluate it"
            " with the version that trained it"
        ) from None
    return cfg


def with_settings(cfg: RunConfig, settings: Settings) -> RunConfig:
    data, trainer = cfg.data, cfg.trainer
    if settings.data_root is not None:
        data = dataclasses.replace(data, root=settings.data_root)
    if settings.loader is not None:
        data = dataclasses.replace(data, loader=settings.loader)
    if settings.device is not None:
        trainer = dataclasses.replace(trainer, device=settings.device)
    return dataclasses.replace(cfg, data=data, trainer=trainer)


def data_identity(cfg: RunConfig) -> dict:
    """What the run's validation images are: the classes (by WNID, from the prepared set's
    manifest) and their number, the crop size, and for generated images how they are made."""
    data = cfg.data
    identity = {"classes": data.num_classes, "image_size": data.image_size}
    if data.kind is DataKind.synthetic:
        return identity | {"synthetic": dataclasses.asdict(data.synthetic)}
    manifest = Path(data.root or "") / "manifest.json"
    if not manifest.is_file():
        raise EvaluateError(
            f"{cfg.name}'s data.root={data.root} holds no prepared data (no manifest.json):"
            " give --data-root PREPARED, where `bn-repro prepare` wrote the data it trained on"
        )
    try:
        found = read_manifest(manifest.parent)
    except ConfigError as error:
        raise EvaluateError(str(error)) from None
    wnids = [c["wnid"] for c in found["classes"]]
    if len(wnids) != data.num_classes:
        raise EvaluateError(
            f"{data.root} holds {len(wnids)} classes, and {cfg.name} was trained on"
            f" {data.num_classes}: evaluate it on the data it was trained on (--data-root)"
        )
    return identity | {"wnids": wnids, "val": found["splits"]["val"]}


def check_same_data(members: list[Member]) -> dict:
    """The data every member is evaluated on is the data it was trained on (as far as the run's
    own data.root can still be read) and the same for all; its identity."""
    identities = [data_identity(m.cfg) for m in members]
    for member, identity in zip(members, identities, strict=True):
        original = trained_on(member)
        if original is not None and _differ(identity, original):
            raise EvaluateError(
                f"{member.run_dir} was trained on other data than {member.cfg.data.root}"
                f" (their {_differ(identity, original)} differ): evaluate it on its own data"
            )
    for member, identity in zip(members[1:], identities[1:], strict=True):
        if _differ(identity, identities[0]):
            raise EvaluateError(
                f"the ensemble's members were trained on different data: {members[0].run_dir}"
                f" and {member.run_dir} differ in {_differ(identity, identities[0])}; an"
                " ensemble averages its members' predictions for the same images"
            )
    return identities[0]


def _differ(a: dict, b: dict) -> str:
    return ", ".join(key for key in sorted(a.keys() | b.keys()) if a.get(key) != b.get(key))


def trained_on(member: Member) -> dict | None:
    """The identity of the data the run trained on, when the evaluation reads other data and the
    run's own data.root can still be read; else None."""
    own, used = member.trained.data, member.cfg.data
    if own.kind is DataKind.synthetic or own.root == used.root:
        return None
    try:
        return data_identity(member.trained)
    except EvaluateError:
        return None  # trained elsewhere: the classes' number and the crop size are compared
