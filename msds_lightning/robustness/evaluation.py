"""Empirical robustness evaluation: attack a model image by image and keep one resumable row per image.

Library side of ``msds attack`` (the command builds the model and data from its flags and calls this):
:class:`AttackSettings` (threat model and attack budgets), :func:`build_attacks`, :func:`attack_batch` /
:func:`robust_accuracy` (predictions clean and under attack), the result file (:func:`columns`,
:class:`AttackTable`, :func:`read_rows`; rows written with :mod:`msds_lightning.results.tsv`, like
certification's), the summary table and the measured cost.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..results.tsv import RowAppender, merge_row_files, scan_row_files
from .attacks import Attack, autoattack, evaluation_mode, pgd_with_restarts

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




@dataclass(frozen=True)
class AttackSettings:
    """The threat model and the attacks' budgets (``msds attack``'s flags of the same names).

    ``eps`` and step sizes in [0, 1] pixel units (``None`` step size: 2.5·eps/steps for ℓ∞, 2·eps/steps
    for ℓ2); ``attacks`` names from :data:`ATTACKS`, run in the order given."""

    norm: str = "linf"
    eps: float = 8 / 255
    attacks: tuple[str, ...] = DEFAULT_ATTACKS
    pgd_steps: int = 20
    pgd_step_size: float | None = None
    pgd_loss: str = "ce"
    pgd_restarts: int = 1
    aa_version: str = "standard"
    eot_steps: int = 20
    eot_samples: int = 20
    eot_step_size: float | None = None
    predict_samples: int = 1
    seed: int = 0
    batch_size: int = 128

    @classmethod
    def from_namespace(cls, namespace) -> AttackSettings:
        """The settings of an object with these attributes (e.g. the command's parsed flags)."""
        values = {name: getattr(namespace, name) for name in cls.__dataclass_fields__}
        return cls(**{**values, "attacks": tuple(dict.fromkeys(values["attacks"]))})  # de-duplicated, order kept


def build_attacks(args: AttackSettings, model: torch.nn.Module, device: torch.device) -> dict[str, Attack]:
    """``{column prefix: attack(x, y) -> x_adv}`` for the requested attacks, in the order given."""
    attacks = {}
    for name in args.attacks:
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


def describe(args: AttackSettings) -> dict[str, str]:
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


class AttackTable:
    """The resumable result file of an attack run, appended batch by batch (each write flushed and fsynced).

    The output is locked for the run (:class:`~msds_lightning.runs.OutputLock`), and resumed only when its
    run fingerprint (``<output stem>.fingerprint.json``) matches; existing rows are validated (malformed
    ones reported with file and line, and their images attacked again). ``done``: the indices with a row."""

    def __init__(self, path: Path, header: Sequence[str], fingerprint: dict, overwrite: bool,
                 size: int | None = None) -> None:  # fmt: skip
        from ..runs import (
            OutputLock,
            check_fingerprint,
            check_output_path,
            fingerprint_path,
            write_fingerprint,
        )

        self.path, self.header, self.size = Path(path), tuple(header), size
        check_output_path(self.path, "--output")
        self.lock = OutputLock(self.path, hint="give another --output").acquire()
        try:
            if overwrite:
                for old in (path, path.with_suffix(".md"), path.with_suffix(".cost.json"), fingerprint_path(path)):
                    old.unlink(missing_ok=True)
            has_rows = path.is_file() and path.stat().st_size > 0
            if check_fingerprint(fingerprint_path(path), fingerprint, has_rows, str(path), "--overwrite"):
                write_fingerprint(fingerprint_path(path), fingerprint)
            self._file = RowAppender(path, self.header, hint="; use --overwrite or another --output")
            scan = self.scan()
            if scan.problems:
                print(f"[attack] {len(scan.problems)} malformed row(s) skipped; their images are attacked again:\n  "
                      + "\n  ".join(scan.problems[:10]), file=sys.stderr)  # fmt: skip
            self.done: set[int] = set(scan.rows)
        except BaseException:
            self.lock.release()
            raise

    def scan(self):
        return scan_row_files([self.path], row_problem, self.size)

    def write(self, rows: Sequence[dict]) -> None:
        self._file.write_lines(["\t".join(str(row[c]) for c in self.header) for row in rows])

    def rows(self) -> list[dict[str, int]]:
        """The valid rows written so far, one per idx (sorted by idx), as ``{column: int}``."""
        return self.scan().dicts()

    def compact(self) -> None:
        """Rewrite the file with its valid rows only, sorted by idx (drops malformed and repeated rows)."""
        self._file.close()
        merge_row_files([self.path], self.path, row_problem, "\t".join(self.header), size=self.size)

    def close(self) -> None:
        self._file.close()
        self.lock.release()


def read_rows(path: str | Path) -> list[dict[str, int]]:
    """The valid rows of a finished `msds attack` TSV as ``{column: int}``, one per idx, sorted by idx.

    Raises ValueError naming the file and line of the first malformed row (a finished output has been
    compacted, so any such row means the file was edited or damaged)."""
    scan = scan_row_files([path], row_problem)
    if scan.problems:
        raise ValueError(f"{path} has malformed rows: " + "; ".join(scan.problems[:3]))
    return scan.dicts()


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



def predict_labels(model: nn.Module, x: torch.Tensor, samples: int = 1) -> torch.Tensor:
    """``model(x).argmax(1)`` without gradient; with ``samples > 1`` the majority vote of that many forward
    passes of a stochastic model (ties: the smallest class)."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    with torch.no_grad():
        first = model(x)
        if samples == 1:
            return first.argmax(dim=1)
        votes = F.one_hot(first.argmax(dim=1), first.shape[1])
        for _ in range(samples - 1):
            votes += F.one_hot(model(x).argmax(dim=1), first.shape[1])
    return votes.argmax(dim=1)


def attack_batch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Mapping[str, Attack],
    predict_samples: int = 1,
    timings: dict[str, list[float]] | None = None,
) -> dict[str, torch.Tensor]:
    """Predictions [B] (int64, on ``x``'s device) on clean and attacked images: ``{"clean": ..., name: ...}``.

    The model runs in eval mode (restored afterwards). Each attack gets only the examples classified
    correctly when clean; for the others its prediction is the clean one (they count as broken anyway).
    ``predict_samples``: predictions (clean and adversarial) are majority votes over that many forward passes
    (for stochastic models; 1 = one pass, as the IDC paper's torchattacks evaluation). ``timings``, if given,
    accumulates ``[seconds, images]`` per key: ``"clean"`` (the clean predictions) and each attack (the
    attack itself on the images it got, without the prediction afterwards).
    """
    reserved = [name for name in attacks if name in ("clean", "worst", "idx", "label")]
    if reserved:
        raise ValueError(f"attack names {reserved} are reserved (result columns); rename them")

    def timed(key: str, count: int, fn, *args):
        if timings is None:
            return fn(*args)
        _synchronize(x.device)
        start = time.perf_counter()
        result = fn(*args)
        _synchronize(x.device)
        entry = timings.setdefault(key, [0.0, 0])
        entry[0] += time.perf_counter() - start
        entry[1] += count
        return result

    with evaluation_mode(model):
        clean = timed("clean", len(x), predict_labels, model, x, predict_samples)
        predictions = {"clean": clean}
        correct = (clean == y).nonzero().flatten()
        for name, attack in attacks.items():
            pred = clean.clone()
            if len(correct):
                x_adv = timed(name, len(correct), attack, x[correct], y[correct])
                pred[correct] = predict_labels(model, x_adv, predict_samples)
            predictions[name] = pred
    return predictions


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def robust_accuracy(
    model: nn.Module,
    loader: Iterable,
    attacks: Mapping[str, Attack],
    device: torch.device | str = "cpu",
    predict_samples: int = 1,
) -> list[dict[str, int]]:
    """Attack every batch of ``loader`` (``(x, y)`` or ``(x, y, index)``) and return one row per image
    (``predict_samples``: majority votes for stochastic models, see :func:`attack_batch`).

    Row keys: ``idx`` (the yielded index, or the running position), ``label``, ``clean_pred``,
    ``{name}_pred`` per attack, ``clean_correct``, ``{name}_correct`` (1 if the image is classified
    correctly clean *and* after the attack) and ``worst_correct`` (correct clean and after every attack:
    an image is robust only if it survives all of them). Accuracies are the means of the ``*_correct``
    columns (see :func:`accuracies`).
    """
    rows: list[dict[str, int]] = []
    position = 0
    for batch in loader:
        x, y = batch[0].to(device), batch[1].to(device)
        idx = batch[2].tolist() if len(batch) > 2 else list(range(position, position + len(x)))
        position += len(x)
        rows += prediction_rows(idx, y, attack_batch(model, x, y, attacks, predict_samples), list(attacks))
    return rows


def prediction_rows(
    idx: Iterable[int], y: torch.Tensor, predictions: Mapping[str, torch.Tensor], names: Iterable[str]
) -> list[dict[str, int]]:
    """Rows of :func:`robust_accuracy` from :func:`attack_batch`'s predictions (clean and ``names``)."""
    names = list(names)
    y = y.cpu()
    preds = {k: v.cpu() for k, v in predictions.items()}
    clean_ok = preds["clean"] == y
    ok = {name: clean_ok & (preds[name] == y) for name in names}
    worst = clean_ok.clone()
    for name in names:
        worst &= ok[name]
    rows = []
    for i, index in enumerate(idx):
        row = {"idx": int(index), "label": int(y[i]), "clean_pred": int(preds["clean"][i])}
        row.update({f"{name}_pred": int(preds[name][i]) for name in names})
        row["clean_correct"] = int(clean_ok[i])
        row.update({f"{name}_correct": int(ok[name][i]) for name in names})
        row["worst_correct"] = int(worst[i])
        rows.append(row)
    return rows


def accuracies(rows: Iterable[Mapping[str, int]], names: Iterable[str]) -> dict[str, float]:
    """``{"clean": acc, name: robust acc, ..., "worst": acc}`` from rows (NaN without rows)."""
    rows = list(rows)
    keys = ["clean", *names, "worst"]
    if not rows:
        return {k: float("nan") for k in keys}
    return {k: sum(int(r[f"{k}_correct"]) for r in rows) / len(rows) for k in keys}
