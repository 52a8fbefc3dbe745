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
import sys
import time
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import torch

from ..devices import resolve_device
from ..robustness.evaluation import ATTACKS, DEFAULT_ATTACKS
from .classifier_flags import add_classifier_arguments, classifier_kwargs

DATASETS = ("cifar10", "cifar100", "digits")


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="msds attack",
        description="Empirical robustness: clean, PGD-k and AutoAttack accuracy of a classifier, per image.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    c = p.add_argument_group("classifier (msds_lightning.models.Classifier: [0,1] pixels -> logits)")
    add_classifier_arguments(c, "--model-name")

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


def build_dataset(args: argparse.Namespace):
    """The evaluated images as an ``IndexedSubset`` yielding ``(image, label, index)``, and its class count."""
    from ..data import CIFAR10DataModule, CIFAR100DataModule, DigitsDataModule

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
    from ..models import Classifier, IDCClassifier

    if args.idc is not None:
        model = IDCClassifier.from_pretrained(args.idc, output=args.idc_output, eta=args.idc_eta).eval()
        if model.num_classes != num_classes:
            raise ValueError(f"{args.idc} has {model.num_classes} label images but {args.data} {num_classes} classes")
        return model

    kwargs = classifier_kwargs(args)
    return Classifier(args.model_name, **{**kwargs, "num_classes": kwargs.get("num_classes", num_classes)}).eval()


SETTINGS = ("model_name", "num_classes", "checkpoint", "mean", "std", "input_size", "interpolation",
            "model_kwargs", "idc", "idc_output", "idc_eta", "data", "split", "digits_size", "digits_channels",
            "norm", "eps", "attacks", "pgd_steps", "pgd_step_size", "pgd_loss", "pgd_restarts", "aa_version",
            "eot_steps", "eot_samples", "eot_step_size", "predict_samples", "seed")  # fmt: skip


def attack_fingerprint(args: argparse.Namespace) -> dict[str, object]:
    """The run fingerprint of an attack run: every setting that changes a row (not ``--root``, batch size,
    workers or device), with ``--checkpoint``/``--idc`` identified by the sha256 of their content."""
    from ..runs import fingerprint

    settings = {k: getattr(args, k) for k in SETTINGS if k not in ("checkpoint", "idc")}
    return fingerprint(settings, {"checkpoint": args.checkpoint, "idc": args.idc})


def main(argv: Sequence[str]) -> int:
    """``msds attack ...``: see ``msds attack --help``."""
    from torch.utils.data import DataLoader, Subset

    from ..robustness.evaluation import (
        AttackSettings,
        AttackTable,
        attack_batch,
        build_attacks,
        columns,
        cost_text,
        describe,
        prediction_rows,
        summary_table,
        write_cost,
    )  # fmt: skip

    args = build_parser().parse_args(argv)
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
    settings = AttackSettings.from_namespace(args)
    attacks = build_attacks(settings, model, device)
    prefixes = list(attacks)
    header = columns(settings.attacks)
    output = Path(args.output)
    size = len(getattr(dataset, "dataset", dataset))  # the whole split: row indices must lie in it
    writer = AttackTable(output, header, attack_fingerprint(args), args.overwrite, size=size)
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
        + summary_table(rows, prefixes, describe(settings))
    )
    cost_path = output.with_suffix(".cost.json")
    if timings:
        cost = write_cost(cost_path, timings, nfe, device)
    else:  # nothing left to do: the cost measured by the run that did the work
        cost = json.loads(cost_path.read_text()) if cost_path.is_file() else None
    if cost is not None:
        table += "\n" + cost_text(cost, describe(settings))
    output.with_suffix(".md").write_text(table)
    sys.stdout.write(table)
    return 0
