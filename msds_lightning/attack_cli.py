"""``msds attack``: empirical robustness of a classifier under PGD-k, EOT-PGD and AutoAttack (torchattacks).

Example (CIFAR-10, ℓ∞ 8/255, the DM-Improves-AT evaluation)::

    msds attack --model-name wide_resnet28_10_swish --num-classes 10 --checkpoint weights-best.safetensors \\
        --mean 0.4914 0.4822 0.4465 --std 0.2471 0.2435 0.2616 \\
        --data cifar10 --root data/cifar10 --norm linf --eps 8/255 --output outputs/attack/cifar10.tsv

An image-to-image diffusion classifier (IDC; stochastic, so attack it with EOT-PGD as well)::

    msds attack --idc outputs/idc/cifar10 --data cifar10 --eps 8/255 --attacks pgd eot-pgd autoattack \\
        --eot-steps 200 --eot-samples 20 --output outputs/attack/idc_cifar10.tsv

Output: a tab-separated file with one row per image (see :func:`columns`), a markdown summary (``OUTPUT``
with suffix ``.md``, also printed) and the measured cost (``OUTPUT`` with suffix ``.cost.json``: network
evaluations per prediction, seconds per image of the clean prediction and of each attack). An existing output
is resumed (finished indices skipped) when it was written with the same settings (the run fingerprint
``OUTPUT`` with suffix ``.fingerprint.json``, checkpoints identified by content; the output is locked while a run writes it);
``--overwrite`` starts afresh. A stochastic model's resumed run draws other noise than an uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import torch

from .devices import resolve_device
from .results import _drop_partial_last_line

ATTACKS = ("pgd", "eot-pgd", "autoattack")
DEFAULT_ATTACKS = ("pgd", "autoattack")  # EOT-PGD equals PGD on deterministic models, at eot-samples times the cost
# Column prefix of each attack in the result file.
PREFIX = {"pgd": "pgd", "eot-pgd": "eot", "autoattack": "aa"}
DATASETS = ("cifar10", "cifar100", "digits")


def columns(attacks: Sequence[str]) -> tuple[str, ...]:
    """Header of the result file for the attacks run, e.g. for PGD and AutoAttack::

        idx label clean_pred pgd_pred aa_pred clean_correct pgd_correct aa_correct worst_correct

    ``*_pred`` are predicted classes (an attack's prediction on an image misclassified when clean is the
    clean prediction: such images are not attacked). ``clean_correct`` is 1 if the clean prediction is the
    label; ``{attack}_correct`` is 1 if the image is classified correctly clean *and* after the attack;
    ``worst_correct`` is 1 if it is correct clean and after every attack run (robust to all of them).
    """
    names = [PREFIX[a] for a in attacks]
    return ("idx", "label", "clean_pred", *(f"{n}_pred" for n in names), "clean_correct",
            *(f"{n}_correct" for n in names), "worst_correct")  # fmt: skip


COLUMNS = columns(DEFAULT_ATTACKS)


def parse_eps(text: str) -> float:
    """``"8/255"``, ``"0.5"`` or ``"128/255"`` → float (>= 0)."""
    try:
        value = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(
            f"expected a number or a fraction like 8/255, got {text!r}"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"eps must be >= 0, got {text!r}")
    return value


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"invalid JSON ({err}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"in_chans\": 1}}', got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="msds attack",
        description="Empirical robustness: clean, PGD-k and AutoAttack accuracy of a classifier, per image.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    c = p.add_argument_group("classifier (msds_lightning.models.Classifier: [0,1] pixels -> logits)")
    c.add_argument(
        "--model-name", default=None, help="timm model name, e.g. msds_small_cnn or wide_resnet28_10"
    )
    c.add_argument("--num-classes", type=int, default=None, help="logits (None: the data set's class count)")
    c.add_argument("--checkpoint", default=None, help="local weight file (.safetensors, .pt, .pth)")
    c.add_argument(
        "--mean",
        type=float,
        nargs="+",
        default=None,
        help="per-channel mean (None: timm's pretrained config)",
    )
    c.add_argument(
        "--std", type=float, nargs="+", default=None, help="per-channel std (None: timm's pretrained config)"
    )
    c.add_argument("--input-size", type=int, default=None, help="resize inputs to N x N before the model")
    c.add_argument("--interpolation", default="bicubic", choices=("nearest", "bilinear", "bicubic", "area"))
    c.add_argument("--model-kwargs", type=_json_object, default={}, metavar="JSON",
                   help='extra timm.create_model arguments, e.g. \'{"in_chans": 1}\'')  # fmt: skip

    i = p.add_argument_group("or an image-to-image diffusion classifier (instead of --model-name/--checkpoint)")
    i.add_argument("--idc", default=None, metavar="DIR",
                   help="IDC folder (IDCClassifier.save_pretrained; the export_dir of msds train-idc)")  # fmt: skip
    i.add_argument("--idc-output", choices=("logits", "scores"), default="logits",
                   help="what attacks see: logits -d/tau (cross-entropy = -log score), or the scores "
                   "softmax(-d/tau) as if they were logits (the official wrapper; weaker gradients)")  # fmt: skip
    i.add_argument("--idc-eta", type=float, default=None, help="sampler noise scale (None: as saved, 1 = the "
                   "paper's stochastic sampler; 0 = deterministic)")  # fmt: skip

    d = p.add_argument_group("data (images in [0, 1]; index = position in the split, as in certification)")
    d.add_argument("--data", choices=DATASETS, default="cifar10")
    d.add_argument("--root", default=None, help="data folder (cifar10: holds cifar-10-batches-py/; cifar100: "
                   "cifar-100-python/); None: data/cifar10 or data/cifar100")  # fmt: skip
    d.add_argument("--split", choices=("test", "train"), default="test")
    d.add_argument("--skip", type=int, default=1, help="every SKIP-th image")
    d.add_argument("--max", type=int, default=-1, help="only indices below MAX (negative: all)")
    d.add_argument("--digits-size", type=int, default=8, help="digits: image size (the demo's: 8)")
    d.add_argument("--digits-channels", type=int, choices=(1, 3), default=1, help="digits: channels")
    d.add_argument("--num-workers", type=int, default=2, help="DataLoader workers")

    a = p.add_argument_group("threat model and attacks")
    a.add_argument("--norm", choices=("linf", "l2"), default="linf")
    a.add_argument("--eps", type=parse_eps, default=parse_eps("8/255"),
                   help="radius in [0,1] pixel units; fractions allowed (8/255, 128/255)")  # fmt: skip
    a.add_argument("--attacks", nargs="+", choices=ATTACKS, default=list(DEFAULT_ATTACKS))
    a.add_argument("--pgd-steps", type=int, default=20)
    a.add_argument("--pgd-step-size", type=parse_eps, default=None,
                   help="None: 2.5*eps/steps (linf), 2*eps/steps (l2)")  # fmt: skip
    a.add_argument("--pgd-loss", choices=("ce", "cw"), default="ce", help="cw: margin loss (DM-Improves-AT's "
                   "checkpoint selection uses PGD-40 with it)")  # fmt: skip
    a.add_argument("--pgd-restarts", type=int, default=1, help="worst case over restarts")
    a.add_argument("--aa-version", choices=("standard", "plus", "rand"), default="standard",
                   help="rand: for stochastic models (EOT inside APGD)")  # fmt: skip
    a.add_argument("--eot-steps", type=int, default=20, help="EOT-PGD steps (IDC's code: 200)")
    a.add_argument("--eot-samples", type=int, default=20,
                   help="EOT-PGD: gradients summed per step over this many forward passes (IDC's code: 20)")  # fmt: skip
    a.add_argument("--eot-step-size", type=parse_eps, default=None, help="None: as --pgd-step-size")
    a.add_argument("--predict-samples", type=int, default=1, help="clean and adversarial predictions are "
                   "majority votes over this many forward passes (stochastic models; 1: one pass)")  # fmt: skip

    r = p.add_argument_group("run")
    r.add_argument("--batch-size", type=int, default=128)
    r.add_argument("--seed", type=int, default=0, help="PGD starts and AutoAttack's seed")
    r.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    r.add_argument("--output", required=True, help="result TSV; the summary goes to the same name with .md")
    r.add_argument("--overwrite", action="store_true", help="replace an existing output instead of resuming")
    return p


# ------------------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------------------


def build_dataset(args: argparse.Namespace):
    """The evaluated images as an ``IndexedSubset`` yielding ``(image, label, index)``, and its class count."""
    from .data import CIFAR10DataModule, CIFAR100DataModule, DigitsDataModule

    common = dict(predict_split=args.split, skip=args.skip, max=args.max, batch_size=args.batch_size)
    if args.data == "digits":
        if args.root is not None:
            raise ValueError("--root: the digits ship with scikit-learn; leave --root out")
        module = DigitsDataModule(image_size=args.digits_size, channels=args.digits_channels, num_workers=0,
                                  augment=False, **common)  # fmt: skip
        return module.predict_dataset(), module.num_classes
    # CIFAR-10/100 from a local folder, read by the restricted unpickler (a data file cannot run code)
    module_cls = CIFAR10DataModule if args.data == "cifar10" else CIFAR100DataModule
    module = module_cls(root=args.root or f"data/{args.data}", num_workers=args.num_workers, augment=False,
                        **common)  # fmt: skip
    return module.predict_dataset(), module.num_classes


def build_classifier(args: argparse.Namespace, num_classes: int) -> torch.nn.Module:
    """The attacked model: a timm :class:`Classifier` or an :class:`IDCClassifier` (``--idc``)."""
    from .models import Classifier, IDCClassifier

    if args.idc is not None:
        model = IDCClassifier.from_pretrained(args.idc, output=args.idc_output, eta=args.idc_eta).eval()
        if model.num_classes != num_classes:
            raise ValueError(f"{args.idc} has {model.num_classes} label images but {args.data} {num_classes} classes")
        return model

    return Classifier(
        args.model_name,
        args.num_classes or num_classes,
        checkpoint=args.checkpoint,
        input_size=args.input_size,
        mean=args.mean,
        std=args.std,
        interpolation=args.interpolation,
        model_kwargs=args.model_kwargs,
    ).eval()


def build_attacks(args: argparse.Namespace, model: torch.nn.Module, device: torch.device) -> dict:
    """``{column prefix: attack(x, y) -> x_adv}`` for the requested attacks, in the order given."""
    from .attacks import autoattack, pgd_with_restarts

    attacks = {}
    for name in dict.fromkeys(args.attacks):  # de-duplicated, order kept
        if name in ("pgd", "eot-pgd"):
            generator = torch.Generator(device=device).manual_seed(args.seed)
            eot = name == "eot-pgd"
            attacks[PREFIX[name]] = lambda x, y, g=generator, eot=eot: pgd_with_restarts(
                model, x, y, restarts=args.pgd_restarts, eps=args.eps, norm=args.norm,
                steps=args.eot_steps if eot else args.pgd_steps,
                step_size=(args.eot_step_size or args.pgd_step_size) if eot else args.pgd_step_size,
                loss=args.pgd_loss, generator=g, eot_samples=args.eot_samples if eot else 1,
            )  # fmt: skip
        else:
            attacks[PREFIX[name]] = lambda x, y: autoattack(
                model, x, y, eps=args.eps, norm=args.norm, version=args.aa_version, seed=args.seed,
                batch_size=args.batch_size,
            )  # fmt: skip
    return attacks


def describe(args: argparse.Namespace) -> dict[str, str]:
    """Row labels of the summary table, per column prefix."""
    eps = Fraction(args.eps).limit_denominator(1000)
    threat = f"{'ℓ∞' if args.norm == 'linf' else 'ℓ2'} ε={eps} ({args.eps:.4g})"
    restarts = f", {args.pgd_restarts} restarts" if args.pgd_restarts > 1 else ""
    return {
        "clean": "clean",
        "pgd": f"PGD-{args.pgd_steps} ({args.pgd_loss.upper()}{restarts}), {threat}",
        "eot": f"EOT-PGD-{args.eot_steps} ({args.eot_samples} samples per step, {args.pgd_loss.upper()}{restarts}), "
        f"{threat}",
        "aa": f"AutoAttack ({args.aa_version}), {threat}",
        "worst": "worst case (robust to every attack run)",
    }


SETTINGS = ("model_name", "num_classes", "checkpoint", "mean", "std", "input_size", "interpolation",
            "model_kwargs", "idc", "idc_output", "idc_eta", "data", "split", "digits_size", "digits_channels",
            "norm", "eps", "attacks", "pgd_steps", "pgd_step_size", "pgd_loss", "pgd_restarts", "aa_version",
            "eot_steps", "eot_samples", "eot_step_size", "predict_samples", "seed")  # fmt: skip


def attack_fingerprint(args: argparse.Namespace) -> dict[str, object]:
    """The run fingerprint of an attack run: every setting that changes a row (not ``--root``, batch size,
    workers or device), with ``--checkpoint``/``--idc`` identified by the sha256 of their content."""
    from .runs import fingerprint

    settings = {k: getattr(args, k) for k in SETTINGS if k not in ("checkpoint", "idc")}
    return fingerprint(settings, {"checkpoint": args.checkpoint, "idc": args.idc})


def row_problem(cells: Sequence[str], head: Sequence[str], size: int | None = None) -> str | None:
    """Why a line is not a valid attack row (see :func:`columns`): integer cells, idx in the data set,
    0/1 ``*_correct`` columns."""
    if len(cells) != len(head):
        return f"{len(cells)} fields, the header has {len(head)}"
    try:
        row = {c: int(v) for c, v in zip(head, cells)}
    except ValueError as err:
        return f"unreadable value ({err})"
    if row["idx"] < 0 or (size is not None and row["idx"] >= size):
        return f"idx {row['idx']} outside the data set"
    if any(row[c] not in (0, 1) for c in head if c.endswith("_correct")):
        return "a *_correct value is not 0/1"
    return None


class TsvWriter:
    """Appends rows to the result TSV, flushing (and fsyncing) each batch, like the certification writer.

    The output is locked for the run (:class:`~msds_lightning.runs.OutputLock`), and resumed only when its
    run fingerprint (``<output stem>.fingerprint.json``) matches; existing rows are validated (malformed
    ones reported with file and line, and their images attacked again)."""

    def __init__(self, path: Path, header: Sequence[str], fingerprint: dict, overwrite: bool,
                 size: int | None = None) -> None:  # fmt: skip
        from .runs import (
            OutputLock,
            check_fingerprint,
            check_output_path,
            fingerprint_path,
            write_fingerprint,
        )

        self.path, self.header, self.size = path, tuple(header), size
        check_output_path(path, "--output")
        self.lock = OutputLock(path, hint="give another --output").acquire()
        try:
            if overwrite:
                for old in (path, path.with_suffix(".md"), path.with_suffix(".cost.json"), fingerprint_path(path)):
                    old.unlink(missing_ok=True)
            has_rows = path.is_file() and path.stat().st_size > 0
            if check_fingerprint(fingerprint_path(path), fingerprint, has_rows, str(path), "--overwrite"):
                write_fingerprint(fingerprint_path(path), fingerprint)
            if not has_rows:
                self.done: set[int] = set()
                self._file = path.open("a")
                self._write(["\t".join(self.header)])
                return
            found = path.open().readline().rstrip("\n")
            if found != "\t".join(self.header):
                raise ValueError(f"{path} has header {found!r}, expected {chr(9).join(self.header)!r}; "
                                 f"use --overwrite or another --output")  # fmt: skip
            _drop_partial_last_line(path)
            scan = self.scan()
            if scan.problems:
                print(f"[attack] {len(scan.problems)} malformed row(s) skipped; their images are attacked again:\n  "
                      + "\n  ".join(scan.problems[:10]), file=sys.stderr)  # fmt: skip
            self.done = set(scan.rows)
            self._file = path.open("a")
        except BaseException:
            self.lock.release()
            raise

    def scan(self):
        from .results import scan_result_files

        return scan_result_files([self.path], self.size, check=row_problem, volatile=())

    def _write(self, lines: Sequence[str]) -> None:
        try:
            self._file.write("".join(line + "\n" for line in lines))
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as err:
            raise OSError(err.errno, f"cannot write to {self.path} ({err.strerror})") from None

    def write(self, rows: Sequence[dict]) -> None:
        self._write(["\t".join(str(row[c]) for c in self.header) for row in rows])

    def rows(self) -> list[dict[str, int]]:
        """The valid rows written so far, one per idx, as ``{column: int}``."""
        head = self.header
        return [dict(zip(head, map(int, line.split("\t")))) for line, _ in self.scan().rows.values()]

    def compact(self) -> None:
        """Rewrite the file with its valid rows only, sorted by idx (drops malformed and repeated rows)."""
        from .results import merge_result_files

        self._file.close()
        merge_result_files([self.path], self.path, size=self.size, check=row_problem, volatile=())

    def close(self) -> None:
        self._file.close()
        self.lock.release()


def read_rows(path: str | os.PathLike) -> list[dict[str, int]]:
    """The valid rows of a finished `msds attack` TSV as ``{column: int}``, one per idx, sorted by idx.

    Raises ValueError naming the file and line of the first malformed row (a finished output has been
    compacted, so any such row means the file was edited or damaged)."""
    from .results import scan_result_files

    path = Path(path)
    with path.open() as f:
        head = f.readline().rstrip("\n").split("\t")
    scan = scan_result_files([path], None, check=row_problem, volatile=())
    if scan.problems:
        raise ValueError(f"{path} has malformed rows: " + "; ".join(scan.problems[:3]))
    return [dict(zip(head, map(int, scan.rows[i][0].split("\t")))) for i in sorted(scan.rows)]


def summary_table(rows: Sequence[dict], prefixes: Sequence[str], labels: dict[str, str]) -> str:
    """Markdown table: accuracy (%) and count per row kind (clean, each attack, worst case)."""
    n = len(rows)
    lines = ["| evaluation | accuracy (%) | correct | images |", "|---|---:|---:|---:|"]
    for key in ("clean", *prefixes, "worst"):
        correct = sum(r[f"{key}_correct"] for r in rows)
        acc = f"{100 * correct / n:.2f}" if n else "n/a"
        lines.append(f"| {labels[key]} | {acc} | {correct} | {n} |")
    return "\n".join(lines) + "\n"


def write_cost(path: Path, timings: dict[str, list[float]], nfe: int, device: torch.device) -> dict:
    """Write the cost measured by this invocation (the images it attacked): ``{"nfe_per_prediction", "device", "seconds_per_image": {key: s},
    "images": {key: n}}`` (``clean``: the clean prediction of every image; each attack prefix: the attack on the
    images it got, i.e. those correct when clean). Returns the dictionary."""
    cost = {
        "nfe_per_prediction": int(nfe),
        "device": str(device),
        "seconds_per_image": {k: (t / n if n else None) for k, (t, n) in timings.items()},
        "images": {k: int(n) for k, (_, n) in timings.items()},
    }
    path.write_text(json.dumps(cost, indent=1) + "\n")
    return cost


def cost_text(cost: dict, labels: dict[str, str]) -> str:
    """Markdown lines for :func:`write_cost`'s dictionary."""
    lines = [f"Cost on {cost['device']} (measured by the last run that attacked images); network evaluations "
             f"per prediction: {cost['nfe_per_prediction']}"]  # fmt: skip
    for key, seconds in cost["seconds_per_image"].items():
        if seconds is not None:
            what = "clean prediction" if key == "clean" else labels.get(key, key)
            lines.append(f"- {what}: {1000 * seconds:.1f} ms per image ({cost['images'][key]} images)")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------
# Command
# ------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader, Subset

    from .attacks import attack_batch, prediction_rows

    for flag in ("batch_size", "pgd_steps", "pgd_restarts", "skip", "eot_steps", "eot_samples", "predict_samples"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.idc is None and (args.model_name is None or args.checkpoint is None):
        raise ValueError("give the classifier (--model-name and --checkpoint) or an IDC model folder (--idc)")
    if args.idc is not None and (args.model_name is not None or args.checkpoint is not None):
        raise ValueError("--idc replaces --model-name/--checkpoint; give one or the other")
    if args.idc_eta is not None and args.idc_eta < 0:
        raise ValueError(f"--idc-eta must be >= 0, got {args.idc_eta}")
    device = resolve_device(args.device)
    dataset, num_classes = build_dataset(args)
    model = build_classifier(args, num_classes).to(device)
    attacks = build_attacks(args, model, device)
    prefixes = list(attacks)
    header = columns([a for a in dict.fromkeys(args.attacks)])
    output = Path(args.output)
    size = len(getattr(dataset, "dataset", dataset))  # the whole split: row indices must lie in it
    writer = TsvWriter(output, header, attack_fingerprint(args), args.overwrite, size=size)
    todo = [i for i, index in enumerate(dataset.indices) if index not in writer.done]
    if len(todo) < len(dataset):
        print(f"[attack] resuming {output}: {len(dataset) - len(todo)} of {len(dataset)} images done",
              file=sys.stderr)  # fmt: skip
    loader = DataLoader(Subset(dataset, todo), batch_size=args.batch_size, shuffle=False,
                        num_workers=args.num_workers if args.data != "digits" else 0)  # fmt: skip
    torch.manual_seed(args.seed)
    started, seen, timings = time.time(), 0, {}
    try:
        for x, y, idx in loader:
            x, y = x.to(device), y.to(device)
            if seen == 0:
                with torch.no_grad():
                    logits = model(x[:1]).shape[1]
                if int(y.max()) >= logits:
                    raise ValueError(f"labels up to {int(y.max())} but the classifier has {logits} logits")
            predictions = attack_batch(model, x, y, attacks, args.predict_samples, timings)
            writer.write(prediction_rows(idx.tolist(), y, predictions, prefixes))
            seen += len(x)
            print(f"[attack] {seen}/{len(todo)} images, {time.time() - started:.0f} s", file=sys.stderr)
        writer.compact()
        selected = set(dataset.indices)  # the file may hold other indices from runs with other --skip/--max
        rows = [row for row in writer.rows() if row["idx"] in selected]
    finally:
        writer.close()
    nfe = getattr(model, "nfe", 1) * args.predict_samples
    model_text = f"IDC {args.idc} ({model.nfe} U-Net evaluations per pass, eta {model.eta})" if args.idc else (
        f"{args.model_name} ({args.checkpoint})")  # fmt: skip
    table = (
        f"{args.data} {args.split}, {model_text}; {len(rows)} images\n\n"
        + summary_table(rows, prefixes, describe(args))
    )
    cost_path = output.with_suffix(".cost.json")
    if timings:
        cost = write_cost(cost_path, timings, nfe, device)
    else:  # nothing left to do: the cost measured by the run that did the work
        cost = json.loads(cost_path.read_text()) if cost_path.is_file() else None
    if cost is not None:
        table += "\n" + cost_text(cost, describe(args))
    output.with_suffix(".md").write_text(table)
    sys.stdout.write(table)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``msds attack ...``: see ``msds attack --help``. Returns 0, or 2 on bad input (message on stderr)."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return run(args)
    except (ValueError, OSError) as err:
        print(f"msds attack: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
