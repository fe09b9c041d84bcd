"""The bad inputs and faults of issue 26, each run through the command line as a user meets it:

    python scripts/bad_inputs.py            # every case; --list names them, NAME ... runs those

Each case builds its input in a folder of its own under a temporary one, runs one `bn-repro`
command there and checks that it ends as every command must end on bad input: exit status 2
(0 where the command repairs or skips what is wrong, as a second `prepare` rebuilds a damaged
manifest), a line `bn-repro CMD: ...` that says what is wrong (a warning, where it goes on), no
traceback, and every file that was there before the command still whole. The builders are
importable: the tests damage their inputs with them. Exit status: the number of failed cases.

Cases of a full disk mount a tmpfs (root only; skipped otherwise); the `report` cases pass once
the report's fixes of issue 26 (items 4 and 9) are merged."""

import argparse
import fnmatch
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BN_REPRO = Path(sys.executable).with_name("bn-repro")

# 4 classes of 6 training images, 12 validation images (ILSVRC2012_val_00000001 to 12).
MINI = ("--classes", "4", "--train-per-class", "6", "--val-per-class", "3", "--size", "40")
TRAIN_ARCHIVE = "ILSVRC2012_img_train.tar"
VAL_ARCHIVE = "ILSVRC2012_img_val.tar"
DEVKIT_ARCHIVE = "ILSVRC2012_devkit_t12.tar.gz"
META = "ILSVRC2012_devkit_t12/data/meta.mat"
GROUND_TRUTH = "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"

# A short run on the CPU: bn_x5 for 8 steps of 8 synthetic 32-pixel images, a checkpoint each
# paper step (32 images).
TINY_RUN = [
    "experiment=bn_x5",
    "data=synthetic",
    "data.synthetic.train_size=64",
    "data.synthetic.val_size=16",
    "trainer.batch_per_rank=8",
    "trainer.bn_batch=8",
    "trainer.eval_batch_per_rank=16",
    "trainer.max_paper_steps=2",
    "trainer.eval_every_paper_steps=1",
    "trainer.log_every_paper_steps=1",
    "trainer.checkpoint_every_paper_steps=1",
    "trainer.population_batches=1",
    "trainer.device=cpu",
]

Members = list[tuple[str, bytes]]


# --- building bad inputs -------------------------------------------------------------------


def read_tar(data: bytes) -> Members:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]


def tar_bytes(members: Members) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def rewrite_val(source: Path, change: Callable[[Members], Members]) -> None:
    path = source / VAL_ARCHIVE
    path.write_bytes(tar_bytes(change(read_tar(path.read_bytes()))))


def rewrite_first_class(source: Path, change: Callable[[Members], Members]) -> None:
    """Change the members of the train archive's first class tar (sorted by WNID)."""
    path = source / TRAIN_ARCHIVE
    classes = read_tar(path.read_bytes())
    first = min(name for name, _ in classes)
    path.write_bytes(
        tar_bytes([(n, tar_bytes(change(read_tar(d))) if n == first else d) for n, d in classes])
    )


def rewrite_devkit(source: Path, name: str, data: bytes) -> None:
    """Replace one file of the devkit."""
    path = source / DEVKIT_ARCHIVE
    with tarfile.open(path, "r:gz") as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for member, content in members:
            content = data if member == name else content
            info = tarfile.TarInfo(member)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    path.write_bytes(buffer.getvalue())


def second_image(change: Callable[[bytes], bytes]) -> Callable[[Members], Members]:
    """A change of a class tar's second image (the first images of the first classes are the
    PNG, the CMYK and the grey JPEG that prepare re-encodes or passes)."""
    return lambda members: [
        (n, change(d) if i == 1 else d) for i, (n, d) in enumerate(sorted(members))
    ]


def renamed_second(name: Callable[[str], str]) -> Callable[[Members], Members]:
    return lambda members: [
        (name(n) if i == 1 else n, d) for i, (n, d) in enumerate(sorted(members))
    ]


def _segment(data: bytes, marker: int) -> int:
    """Where the JPEG's first segment with this marker starts (its 0xFF byte)."""
    at = 2
    while data[at + 1] != marker:
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    return at


def cut_then_end_marker(data: bytes) -> bytes:
    """Cut in the middle of the image data, then the end-of-image marker appended: a decoder
    sees a complete stream."""
    start = _segment(data, 0xDA)
    return data[: (start + len(data)) // 2] + b"\xff\xd9"


def claiming(width: int, height: int) -> Callable[[bytes], bytes]:
    """The JPEG with its frame header saying width x height, its data unchanged."""

    def change(data: bytes) -> bytes:
        at = _segment(data, 0xC0)
        size = height.to_bytes(2, "big") + width.to_bytes(2, "big")
        return data[: at + 5] + size + data[at + 9 :]

    return change


def ground_truth_line_1(text: bytes) -> Callable[[Path], None]:
    def damage(source: Path) -> None:
        with tarfile.open(source / DEVKIT_ARCHIVE, "r:gz") as tar:
            lines = tar.extractfile(GROUND_TRUTH).read().splitlines()
        rewrite_devkit(source, GROUND_TRUTH, b"\n".join([text, *lines[1:]]) + b"\n")

    return damage


# What each bad source is: a change of the three archives make-mini wrote (MINI).
BAD_SOURCES: dict[str, Callable[[Path], None]] = {
    "jpeg_cut_then_end_marker": lambda s: rewrite_first_class(s, second_image(cut_then_end_marker)),
    "jpeg_claims_12000_pixels": lambda s: rewrite_first_class(
        s, second_image(claiming(12_000, 12_000))
    ),
    "jpeg_claims_more_than_its_data": lambda s: rewrite_first_class(
        s, second_image(claiming(4_000, 3_000))
    ),
    "val_renamed_to_an_unknown_id": lambda s: rewrite_val(
        s,
        lambda m: [(n.replace("00000005", "00000013"), d) for n, d in m],
    ),
    "val_held_twice": lambda s: rewrite_val(s, lambda m: [*m[:-1], (m[0][0], m[-1][1])]),
    "val_missing": lambda s: rewrite_val(s, lambda m: m[1:]),
    "ground_truth_parent_id": ground_truth_line_1(b"5"),  # 4 leaves, then their parent
    "ground_truth_unknown_id": ground_truth_line_1(b"999"),
    "ground_truth_text": ground_truth_line_1(b"cat"),
    "ground_truth_not_utf8": ground_truth_line_1(b"\xff\xfe1"),
    "meta_mat_empty": lambda s: rewrite_devkit(s, META, b""),
    "meta_mat_not_a_mat_file": lambda s: rewrite_devkit(s, META, b"MATLAB? no: plain text\n"),
    "member_not_utf8": lambda s: rewrite_first_class(
        s, renamed_second(lambda n: n.replace("_", "_\udcff", 1))
    ),
    "member_with_a_space": lambda s: rewrite_first_class(
        s, renamed_second(lambda n: n.replace("_", " ", 1))
    ),
    "member_with_a_newline": lambda s: rewrite_first_class(
        s, renamed_second(lambda n: n.replace("_", "\n", 1))
    ),
    "member_held_twice": lambda s: rewrite_first_class(
        s, renamed_second(lambda n: n.replace("_2.", "_1."))
    ),
}


def make_mini(out: Path) -> Path:
    _run_ok(["make-mini", str(out), *MINI, "--workers", "1"])
    return out


def _run_ok(argv: list[str], cwd: Path | None = None) -> None:
    done = subprocess.run([BN_REPRO, *argv], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bn-repro {' '.join(argv)} failed:\n{done.stderr[-3000:]}")


# --- the cases -----------------------------------------------------------------------------


@dataclass
class Shared:
    """What several cases start from, made once: the mini archives, their preparation, a
    trained run."""

    root: Path
    made: dict = field(default_factory=dict)
    mounts: list[Path] = field(default_factory=list)  # to unmount at the end

    def get(self, name: str) -> Path:
        if name not in self.made:
            self.made[name] = getattr(self, f"_{name}")(self.root / name)
        return self.made[name]

    def _mini(self, out: Path) -> Path:
        return make_mini(out)

    def _prepared(self, out: Path) -> Path:
        _run_ok(["prepare", "--source", str(self.get("mini")), "--out", str(out), "--workers", "1"])
        return out

    def _run(self, out: Path) -> Path:
        _run_ok(["train", *TINY_RUN, f"run_dir={out}"])
        return out

    def _run_on_another_set(self, out: Path) -> Path:
        _run_ok(["train", *TINY_RUN, "data.synthetic.train_size=128", f"run_dir={out}"])
        return out


@dataclass(frozen=True)
class Case:
    name: str
    item: str  # of issue 26
    command: str
    build: Callable[[Path, Shared], list[str]]  # the input, in the case's folder: the argv
    says: str  # a piece of what the command must say
    code: int = 2
    # files the command may rewrite (it repairs them, or resumes a run): patterns of paths
    # relative to the case's folder
    may_change: tuple[str, ...] = ()
    check: Callable[[Path], list[str]] | None = None  # more: what is wrong after the command


def prepare_case(name: str, item: str, says: str) -> Case:
    def build(work: Path, shared: Shared) -> list[str]:
        source = work / "source"
        shutil.copytree(shared.get("mini"), source)
        BAD_SOURCES[name](source)
        return ["prepare", "--source", "source", "--out", "out", "--workers", "1"]

    return Case(name, item, "prepare", build, says)


def _prepared_copy(work: Path, shared: Shared) -> Path:
    shutil.copytree(shared.get("prepared"), work / "prepared")
    manifest = work / "prepared" / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:100])  # cut short, as by a full disk
    return work / "prepared"


def _rebuilt(work: Path) -> list[str]:
    manifest = json.loads((work / "prepared" / "manifest.json").read_text())
    return [] if manifest["splits"]["val"] == 12 else ["the manifest was not rebuilt"]


def _train_on_prepared(work: Path, shared: Shared) -> list[str]:
    root = _prepared_copy(work, shared)
    return ["train", "experiment=bn_x5", "data=mini", f"data.root={root}", "run_dir=run"]


def _checkpoint_not_a_dict(work: Path, shared: Shared) -> list[str]:
    run = work / "run"
    shutil.copytree(shared.get("run"), run)
    _torch_save([1, 2, 3], run / "checkpoints" / f"step_{9_999_999_999}.pt")  # the newest
    return ["evaluate", "run", "--device", "cpu"]


def _checkpoint_without_weights(work: Path, shared: Shared) -> list[str]:
    run = work / "run"
    shutil.copytree(shared.get("run"), run)
    _torch_save({"config": {}, "progress": {}}, run / "checkpoints" / "weightless.pt")
    return ["evaluate", "run", "--checkpoint", "weightless.pt", "--device", "cpu"]


def _torch_save(payload, path: Path) -> None:
    subprocess.run(
        [sys.executable, "-c", f"import torch; torch.save({payload!r}, {str(path)!r})"],
        check=True,
    )


def _metrics_without_step(work: Path, shared: Shared) -> list[str]:
    """The trained run with a record of its first paper step, less its step, as line 2."""
    run = work / "run"
    shutil.copytree(shared.get("run"), run)
    metrics = run / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    record = json.loads(lines[0])
    record.pop("step")
    metrics.write_text("\n".join([lines[0], json.dumps(record), *lines[1:]]) + "\n")
    (work / "records-before.jsonl").write_text("\n".join([lines[0], *lines[1:]]) + "\n")
    return ["train", *TINY_RUN, "trainer.max_paper_steps=3", f"run_dir={run}"]


def _records_kept(work: Path) -> list[str]:
    """Every record the run had written up to its checkpoint, the last, is still there."""
    before = (work / "records-before.jsonl").read_text().splitlines()
    after = (work / "run" / "metrics.jsonl").read_text().splitlines()
    kept = [json.loads(line) for line in after]
    lost = [line for line in before if json.loads(line) not in kept]
    return [f"{len(lost)} records lost from metrics.jsonl"] if lost else []


def _full_disk(checkpoints: float) -> Callable[[Path, Shared], list[str]]:
    """A run on a tmpfs of room for this many of the run's checkpoints (and its best.pt)."""

    def build(work: Path, shared: Shared) -> list[str]:
        saved = shared.get("run") / "checkpoints"
        one = max(p.stat().st_size for p in saved.glob("step_*.pt"))
        room = int(checkpoints * (one + (saved / "best.pt").stat().st_size))
        disk = work / "disk"
        disk.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={room}", "tmpfs", disk], check=True)
        shared.mounts.append(disk)
        return ["train", *TINY_RUN, f"run_dir={disk / 'run'}"]

    return build


def _older_checkpoints_stay(work: Path) -> list[str]:
    from bn_repro.train import checkpoint

    run = work / "disk" / "run"
    problems = [f"{p} {checkpoint.read(p)[1]}" for p in checkpoint.checkpoints(run)]
    problems = [problem for problem in problems if not problem.endswith(" None")]
    left = [p.name for p in checkpoint.checkpoint_dir(run).glob("*.tmp")]
    return problems + ([f"temporary files left: {left}"] if left else [])


def _report_of(change: Callable[[Path], None]) -> Callable[[Path, Shared], list[str]]:
    """A report of the trained run and a copy of it (another seed) changed."""

    def build(work: Path, shared: Shared) -> list[str]:
        shutil.copytree(shared.get("run"), work / "runs" / "good")
        bad = shutil.copytree(shared.get("run"), work / "runs" / "bad")
        summary = json.loads((bad / "summary.json").read_text())
        (bad / "summary.json").write_text(json.dumps(summary | {"seed": 1}))
        change(bad)
        return ["report", "runs", "--out", "report"]

    return build


def _null_recipe(run: Path) -> None:
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps(summary | {"recipe": None}))


def _eval_without_top1(run: Path) -> None:
    metrics = run / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    for record in records:
        if record["kind"] == "eval":
            record.pop("top1")
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))


def _two_synthetic_sets(work: Path, shared: Shared) -> list[str]:
    """The same experiment and seed trained on synthetic sets of 64 and of 128 images."""
    shutil.copytree(shared.get("run"), work / "runs" / "small")
    shutil.copytree(shared.get("run_on_another_set"), work / "runs" / "large")
    return ["report", "runs", "--out", "report"]


CASES = [
    prepare_case("jpeg_cut_then_end_marker", "1", "premature end of data segment"),
    prepare_case("jpeg_claims_12000_pixels", "2", "12,000 x 12,000 pixels"),
    prepare_case("jpeg_claims_more_than_its_data", "2", "premature end of data segment"),
    prepare_case("val_renamed_to_an_unknown_id", "3", "ILSVRC2012_val_00000013.JPEG"),
    prepare_case("val_held_twice", "3", "1 held twice: ILSVRC2012_val_00000001.JPEG"),
    prepare_case("val_missing", "3", "1 missing: ILSVRC2012_val_00000001.JPEG"),
    prepare_case("ground_truth_parent_id", "5", "line 1: 5 (a synset above the classes)"),
    prepare_case("ground_truth_unknown_id", "5", "line 1: 999 (no synset)"),
    prepare_case("ground_truth_text", "5", "line 1 is b'cat', not an ILSVRC2012_ID"),
    prepare_case("ground_truth_not_utf8", "5", "line 1 is b'\\xff\\xfe1'"),
    prepare_case("meta_mat_empty", "5", "meta.mat is empty"),
    prepare_case("meta_mat_not_a_mat_file", "5", "meta.mat is not a MAT file"),
    prepare_case("member_not_utf8", "6", "is not UTF-8"),
    prepare_case("member_with_a_space", "6", "holds a space or a control character"),
    prepare_case("member_with_a_newline", "6", "holds a space or a control character"),
    prepare_case("member_held_twice", "6", "has the name of"),
    Case(
        "manifest_cut_short_verify",
        "7",
        "verify",
        lambda w, s: ["verify", str(_prepared_copy(w, s)), "--workers", "1"],
        "manifest.json is damaged",
    ),
    Case(
        "manifest_cut_short_prepare_again",
        "7",
        "prepare",
        lambda w, s: [
            "prepare",
            "--source",
            str(s.get("mini")),
            "--out",
            str(_prepared_copy(w, s)),
            "--workers",
            "1",
        ],
        "manifest.json is damaged",
        code=0,
        may_change=("prepared/manifest.json",),
        check=_rebuilt,
    ),
    Case("manifest_cut_short_train", "7", "train", _train_on_prepared, "manifest.json is damaged"),
    Case(
        "disk_full_at_first_checkpoint",
        "8",
        "train",
        _full_disk(0.03),
        "the disk is full",
        check=_older_checkpoints_stay,
    ),
    Case(
        "disk_full_at_second_checkpoint",
        "8",
        "train",
        _full_disk(1.5),
        "the disk is full",
        check=_older_checkpoints_stay,
    ),
    Case("checkpoint_not_a_dict", "9", "evaluate", _checkpoint_not_a_dict, "holds no weights"),
    Case(
        "checkpoint_without_weights",
        "9",
        "evaluate",
        _checkpoint_without_weights,
        "holds no weights",
    ),
    Case(
        "metrics_record_without_step",
        "10",
        "train",
        _metrics_without_step,
        "metrics.jsonl, line 2: a record without step; skipped",
        code=0,
        may_change=("run/*",),  # a resumed run goes on writing its records
        check=_records_kept,
    ),
    Case(
        "batch_per_rank_1_with_bn",
        "11",
        "train",
        lambda w, s: ["train", "experiment=bn_x5", "trainer.batch_per_rank=1", "run_dir=run"],
        "trainer.batch_per_rank=1",
    ),
    Case(
        "experiment_given_twice",
        "11",
        "describe",
        lambda w, s: ["describe", "experiment=bn_x5", "experiment=bn_x30", "--cfg"],
        "the last, experiment=bn_x30, is used",
        code=0,
    ),
    Case(
        "report_two_synthetic_sets",
        "4",
        "report",
        _two_synthetic_sets,
        "data sets",
    ),
    Case("report_null_recipe", "9", "report", _report_of(_null_recipe), "skipped", code=0),
    Case(
        "report_eval_without_top1",
        "9",
        "report",
        _report_of(_eval_without_top1),
        "skipped",
        code=0,
    ),
    Case(
        "report_run_without_metrics",
        "9",
        "report",
        _report_of(lambda run: (run / "metrics.jsonl").unlink()),
        "skipped",
        code=0,
    ),
]


# --- running them --------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[Path, str]:
    """The SHA-256 of every file under folder, by path relative to it."""
    return {
        p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


def run_case(case: Case, shared: Shared, root: Path) -> tuple[list[str], str]:
    """What is wrong with how the command ended (nothing: []), and the line that says what
    was wrong with its input."""
    work = root / case.name
    work.mkdir()
    argv = case.build(work, shared)
    before = snapshot(work)
    done = subprocess.run(
        [BN_REPRO, *argv], cwd=work, capture_output=True, text=True, errors="backslashreplace"
    )
    output = done.stdout + done.stderr
    problems = []
    if done.returncode != case.code:
        problems.append(f"exit status {done.returncode}, not {case.code}")
    prefix = f"bn-repro {case.command}:"
    if case.code == 2 and not any(line.startswith(prefix) for line in done.stderr.splitlines()):
        problems.append(f"no line starts with {prefix!r}")
    if case.says not in output:
        problems.append(f"does not say {case.says!r}")
    if "Traceback" in output:
        problems.append("a traceback")
    after = snapshot(work)
    lost = [
        str(path)
        for path, digest in before.items()
        if not any(fnmatch.fnmatch(str(path), p) for p in case.may_change)
        and after.get(path) != digest
    ]
    if lost:
        problems.append(f"lost or changed what was there: {', '.join(lost[:5])}")
    if case.check is not None:
        problems += case.check(work)
    if problems:
        problems.append(f"its output ended:\n{output[-2000:]}")
    said = next((line for line in output.splitlines() if case.says in line), "")
    return problems, said


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help="only these cases")
    parser.add_argument("--list", action="store_true", help="name the cases and stop")
    args = parser.parse_args(argv)
    by_name = {case.name: case for case in CASES}
    if args.list:
        for case in CASES:
            print(f"{case.name} (issue 26.{case.item}, bn-repro {case.command})")
        return 0
    unknown = set(args.names) - by_name.keys()
    if unknown:
        parser.error(f"no cases {sorted(unknown)}: see --list")
    chosen = [by_name[name] for name in args.names] or CASES
    failed = 0
    with tempfile.TemporaryDirectory(prefix="bad-inputs-") as folder:
        root = Path(folder)
        shared = Shared(root / "shared")
        shared.root.mkdir()
        try:
            for case in chosen:
                if "disk_full" in case.name and os.geteuid() != 0:
                    print(f"skipped {case.name}: mounting a tmpfs needs root")
                    continue
                start = time.monotonic()
                problems, said = run_case(case, shared, root)
                took = f"{time.monotonic() - start:.1f} s"
                print(
                    f"{'FAILED' if problems else 'ok'} {case.name} (26.{case.item}, {took})",
                    flush=True,
                )
                for line in problems or [f"said: {said[:400]}"]:
                    print(f"    {line}", flush=True)
                failed += bool(problems)
        finally:
            for disk in shared.mounts:
                subprocess.run(["umount", disk], check=False)
    print(f"{len(chosen) - failed} passed, {failed} failed")
    return failed


if __name__ == "__main__":
    sys.exit(main())
