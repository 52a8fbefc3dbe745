"""The embedded default: the MSDS experiment on real data (scikit-learn digits) on a CPU in minutes.

The story (``make demo`` = ``msds demo``), each stage one of the project's own configs under
``configs/digits/``, run in this process:

1. ``pretrain``   — DDPM pre-training of a small denoiser          → outputs/demo/denoiser/
2. ``classifier`` — training of the base classifier (clean digits)  → outputs/demo/classifier.safetensors
3. ``finetune``   — MSDS fine-tuning of the denoiser                → outputs/demo/denoiser_msds/
4. ``certify``    — the paper's protocol for every row (N0 = 100, a budget of N = 10,000 with adaptive
   sampling, α = 0.001, p0 = 0.5, seed 0) on every 8th test digit: denoised smoothing at σ = 0.125, 0.25,
   0.5; the cascade {0.25, 0.125} (levels chosen on the validation split) with the pretrained denoiser and
   with the fine-tuned one → outputs/demo/certify/
5. ``report``     — tables, paired comparisons (``msds compare``), the cascade's per-level breakdown and
   the certified-accuracy plot                                       → outputs/demo/report/

The rest (``make demo-all`` = ``msds demo --all``): ``noisy_classifier`` (the CNN trained with noise
σ' = 0.125) and ``diffsmooth`` (DiffSmooth at σ = 0.25, σ' = 0.125, m = 5, same protocol); ``generator``,
``generate``, ``adversarial`` (TRADES on real, and on real + generated digits, PGD-20); ``idc`` (an
image-to-image diffusion classifier under PGD and EOT-PGD, with its cost); ``shift`` (the fine-tuned cascade
certified on the test digits under five of CIFAR-10-C's corruptions at severities 1-3, a table per corruption
and severity: ``configs/digits/shift/certify_msds_digits_c.yaml``).

Every training stage holds out 270 digits of the train split (``val_fraction: 0.2``) for validation; the
test split is only certified. Asking for a stage also runs the stages it needs whose outputs are missing.
Retraining a model deletes the certification results made with the old one. Paths are relative to
``workdir`` (default: the current directory).
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

STAGES = (
    "pretrain",
    "classifier",
    "finetune",
    "certify",
    "noisy_classifier",
    "diffsmooth",
    "generator",
    "generate",
    "adversarial",
    "idc",
    "shift",
    "report",
)
STORY = ("pretrain", "classifier", "finetune", "certify", "report")  # `make demo`
NEEDS = {  # stage -> the stages whose outputs it reads
    "finetune": ("pretrain", "classifier"),
    "certify": ("pretrain", "classifier", "finetune"),
    "diffsmooth": ("pretrain", "noisy_classifier"),
    "generate": ("generator",),
    "adversarial": ("generate",),
    "shift": ("pretrain", "classifier", "finetune"),
}
# The configs ship inside the package (package data), so an installed wheel finds them too.
CONFIGS = Path(str(importlib.resources.files("msds_lightning") / "configs" / "digits"))
OUT = Path("outputs/demo")
RADII = (0.0, 0.125, 0.25, 0.375, 0.5, 0.75, 1.0)
# Noise levels scaled to 8×8 digits: at σ = 1.0 they are pure noise (denoised smoothing certified 9% at
# r = 0 in a first run), so σ = 0.5 plays the role σ = 1.0 plays on CIFAR-10.
SIGMAS = (0.125, 0.25, 0.5)  # the single-σ rows
# The cascade's levels, chosen on the validation split: {0.125, 0.25} had ACR 0.4953 there against 0.3127 for
# {0.125, 0.25, 0.5} (68 validation digits, fine-tuned denoisers; README "demo").
CASCADE = (0.125, 0.25)
SKIP = 8  # every 8th test digit (the certify configs' data.skip): 57 of 449, for the time budget
PROTOCOL = "N0 = 100, a budget of N = 10,000 (adaptive sampling), α = 0.001, p0 = 0.5, seed 0"

# (file stem, label in the report, certify config, extra overrides, stage, models it certifies)
CERTIFY_RUNS = [
    *((f"dds_sigma{s:g}", f"denoised smoothing, σ = {s:g}", "certify_dds.yaml", [f"--model.sigma={s}"],
       "certify", ("pretrain", "classifier")) for s in SIGMAS),
    ("msds_pretrained", "cascade {0.125, 0.25}, pretrained denoiser", "certify_msds.yaml",
     [f"--model.denoiser.init_args.path={OUT / 'denoiser'}"], "certify", ("pretrain", "classifier")),
    ("msds_finetuned", "cascade {0.125, 0.25}, MSDS fine-tuned denoiser", "certify_msds.yaml",
     [f"--model.denoiser.init_args.path={OUT / 'denoiser_msds'}"], "certify", ("pretrain", "classifier", "finetune")),
    ("diffsmooth_sigma0.25", "DiffSmooth, σ = 0.25 (local σ' = 0.125, m = 5)", "certify_diffsmooth.yaml", [],
     "diffsmooth", ("pretrain", "noisy_classifier")),
]  # fmt: skip

QUICK = {  # a reduced demo: the same code path with few steps and images (tests)
    "pretrain": ["--trainer.max_steps=20", "--trainer.val_check_interval=10"],
    "classifier": ["--trainer.max_epochs=1"],
    "noisy_classifier": ["--trainer.max_epochs=1"],
    "finetune": ["--trainer.max_steps=4", "--trainer.val_check_interval=2"],
    "certify": ["--model.n0=10", "--model.n=40", "--data.init_args.skip=1", "--data.init_args.max=24"],
    "generator": ["--trainer.max_steps=20", "--trainer.val_check_interval=10"],
    "generate": ["--num-per-class", "20", "--steps", "3"],
    "adversarial": ["--trainer.max_epochs=2", "--trainer.limit_train_batches=2", "--model.attack_steps=2"],
    "attack": ["--max", "24", "--pgd-steps", "3"],
    "idc": ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
            "--trainer.check_val_every_n_epoch=1"],
    "idc_attack": ["--max", "24", "--pgd-steps", "2", "--eot-steps", "2", "--eot-samples", "2"],
}
QUICK["diffsmooth"] = QUICK["certify"]
QUICK["shift"] = ["--model.n0=10", "--model.n=40", "--data.init_args.skip=1", "--data.init_args.max=2",
                  "--data.init_args.severities=[1, 2]"]  # fmt: skip
SHIFT_CONFIG = "shift/certify_msds_digits_c.yaml"
SHIFT = OUT / "shift" / "msds_finetuned_digits_c.tsv"  # the shift stage's rows (made with the fine-tuned cascade)
GENERATED = OUT / "generated_digits.npz"
ADVERSARIAL_RUNS = [  # (stem, label in the report, config)
    ("trades_real", "TRADES, real digits only", "adversarial_real.yaml"),
    ("trades_generated", "TRADES, real + generated (1 : 1 per batch)", "adversarial_generated.yaml"),
]
ATTACK_EPS = "0.1"  # l∞, as the training configs
IDC = OUT / "idc"
# The IDC row: the paper's 4-step stochastic sampler, so EOT-PGD (4 gradient samples per step) besides PGD-20
IDC_ATTACK = ["--attacks", "pgd", "eot-pgd", "--pgd-steps", "20", "--eot-steps", "20", "--eot-samples", "4"]

STAGE_OUTPUT = {
    "pretrain": OUT / "denoiser" / "denoiser_config.json",
    "classifier": OUT / "classifier.safetensors",
    "noisy_classifier": OUT / "classifier_noise0.125.safetensors",
    "finetune": OUT / "denoiser_msds" / "denoiser_config.json",
    "generator": OUT / "generator" / "denoiser_config.json",
    "generate": OUT / "generated_digits.npz",
    "idc": IDC / "idc_config.json",
}


def _run(command: str, config: str, extra: Sequence[str]) -> None:
    from .cli import run_command

    code = run_command(command, ["-c", str(CONFIGS / config), *extra])
    _finish_wandb()
    if code:
        raise SystemExit(f"demo: `msds {command} -c configs/digits/{config}` failed (exit {code})")


def _run_plain(command: str, argv: Sequence[str]) -> None:
    """An argparse ``msds`` command (generate, attack) in this process."""
    from .cli import run_command

    code = run_command(command, argv)
    if code:
        raise SystemExit(f"demo: `msds {command} {' '.join(argv)}` failed (exit {code})")


def _finish_wandb() -> None:
    """End this stage's W&B run: in one process, a WandbLogger would otherwise reuse the open run."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


def _clean_accuracy() -> float:
    """Accuracy of the base classifier on the clean test split (no noise, no denoiser)."""
    import torch

    from .data import DigitsDataModule
    from .models import Classifier

    data = DigitsDataModule(image_size=8, channels=1)
    images, labels, _ = zip(*data.predict_dataset(), strict=True)
    classifier = Classifier("msds_small_cnn", 10, checkpoint=OUT / "classifier.safetensors", mean=[0.5], std=[0.5],
                            model_kwargs={"in_chans": 1}).eval()  # fmt: skip
    with torch.no_grad():
        predictions = classifier(torch.stack(images)).argmax(1)
    return float((predictions == torch.tensor(labels)).float().mean())


def _certify_paths() -> dict[str, Path]:
    """stem -> TSV of the certification rows that exist, in CERTIFY_RUNS order."""
    paths = {stem: OUT / "certify" / f"{stem}.tsv" for stem, *_ in CERTIFY_RUNS}
    return {stem: path for stem, path in paths.items() if path.is_file()}


def report(quick: bool = False) -> str:
    """Write report.md and certified_accuracy.png from the certification TSVs; return the markdown."""
    from .results import read_results
    from .results.analysis import format_markdown, plot_certified_accuracy, summarize

    labels = {stem: label for stem, label, *_ in CERTIFY_RUNS}
    paths = _certify_paths()
    results = {stem: read_results(path, name=labels[stem]) for stem, path in paths.items()}
    table = format_markdown([summarize(r, RADII) for r in results.values()])
    folder = OUT / "report"
    folder.mkdir(parents=True, exist_ok=True)
    plot_certified_accuracy(list(results.values()), str(folder / "certified_accuracy.png"),
                            title="scikit-learn digits (8×8): certified accuracy")  # fmt: skip
    n = len(next(iter(results.values())))
    protocol = ("quick mode: tiny training, N0 = 10, N = 40; the numbers mean nothing" if quick
                else f"{PROTOCOL}, every {SKIP}th test digit")  # fmt: skip
    text = (
        "# msds-lightning demo: scikit-learn digits\n\n"
        f"Protocol, the same for every row: {protocol}. {n} test images (8×8 gray); radii in [0,1] pixel "
        "units (l2). Adaptive sampling draws the N0 selection samples, then estimation samples up to the "
        "budget at fixed checkpoints (1,000, 2,000, 4,000, 8,000, 10,000) and stops once more samples could "
        "not certify a further radius of the table; the bounds are split over the checkpoints so the "
        "certificate holds at α = 0.001 whatever the stopping point. samples/image: the mean forward passes "
        "spent (selection + estimation, all levels visited).\n"
        f"Base classifier, clean test accuracy (no noise, no denoiser): {_clean_accuracy():.3f}.\n\n"
        + CHOICES
        + "\n## Certified accuracy\n\nCertified accuracy at radius r (r=0: accuracy of the smoothed classifier), "
        "ACR, abstention rate, samples per image; then, for the cascades, how many images each level "
        "(0 = σ 0.25, 1 = σ 0.125) answered and their accuracy.\n\n"
        + table
        + "\n![certified accuracy](certified_accuracy.png)\n"
        + _claims(paths, labels)
        + _breakdown(results)
        + _adversarial_table()
        + _shift_table()
    )
    (folder / "report.md").write_text(text)
    return text


CHOICES = (
    "## Settings, and where they come from\n\n"
    "Every model is trained on 1,078 train digits and validated on 270 other train digits "
    "(`val_fraction: 0.2`); the test digits are only certified. Chosen on the validation split (every 4th "
    "validation digit, 68, this protocol, ACR of the fine-tuned cascade):\n\n"
    "* the cascade's levels: {0.125, 0.25} (ACR 0.4953, r = 0 accuracy 0.971) over {0.125, 0.25, 0.5} "
    "(0.3127, 0.941), where the top level σ = 0.5 answered most digits with small radii;\n"
    "* the fine-tuning settings, one changed at a time from M = 4 copies, λ_ac = λ_dm = 1, 300 steps, "
    "learning rate 5e-4 and recoverability by the point-estimate cascade (ACR 0.4953): 600 steps 0.5049, "
    "lr 1e-3 0.4948, lr 2.5e-4 0.4956, λ_ac = 2 0.4961, λ_ac = 0.5 0.4941, M = 2 0.4936, recoverability "
    "by the majority vote at the drawn σ 0.4993. Rule: the best ACR among the settings that do not make "
    "the demo longer; 600 steps (+60 s) would not fit the 10-minute budget. So: recoverability = "
    "the majority vote (the most frequent class of the M copies at the drawn σ, ties to the lowest "
    "class), the rest unchanged; the library's default stays the cascade. The differences (≤ 0.01 "
    "ACR on 68 digits) are within noise.\n\n"
    "The single-σ rows include σ = 0.5 as a reference.\n"
)

# (question, baseline stem, radii, metric row, points the target allows (None: must be above, interval > 0))
CLAIMS = (
    ("accuracy at r = 0 vs the lowest σ (target: within 3 points)", "dds_sigma0.125", (0.0,), "r=0", 0.03),
    ("certified accuracy at r = 0.75 vs the highest level, σ = 0.25 (target: within 1 point)", "dds_sigma0.25",
     (0.75,), "r=0.75", 0.01),
    ("certified accuracy at r = 0.5 vs σ = 0.25", "dds_sigma0.25", (0.5,), "r=0.5", 0.01),
    ("ACR vs σ = 0.125 (target: above, interval excludes 0)", "dds_sigma0.125", (0.0,), "ACR", None),
    ("ACR vs σ = 0.25 (target: above, interval excludes 0)", "dds_sigma0.25", (0.0,), "ACR", None),
    ("ACR vs σ = 0.5 (target: above, interval excludes 0)", "dds_sigma0.5", (0.0,), "ACR", None),
    ("ACR vs the pretrained cascade (target: above, interval excludes 0)", "msds_pretrained", (0.0,), "ACR", None),
)  # fmt: skip
COMPARE_RESAMPLES = 10_000


def _claims(paths: dict[str, Path], labels: dict[str, str]) -> str:
    """The paper's claim, answered: the fine-tuned cascade minus each baseline, paired over the same images
    (exact McNemar and Tango interval for certified accuracy, seeded BCa bootstrap for the ACR)."""
    from .results.compare import compare_files

    if "msds_finetuned" not in paths:
        return ""
    lines, comparisons = [], {}  # one paired comparison per baseline, over every radius the claims name
    radii = sorted({r for _, _, claim_radii, _, _ in CLAIMS for r in claim_radii})
    for question, baseline, _, metric, allowed in CLAIMS:
        if baseline not in paths:
            continue
        if baseline not in comparisons:
            comparisons[baseline] = compare_files(paths["msds_finetuned"], paths[baseline], radii,
                                                  COMPARE_RESAMPLES, seed=0)  # fmt: skip
        row = next(r for r in comparisons[baseline].rows if r.metric == metric)
        digits = 4 if metric == "ACR" else 3
        if allowed is None:
            verdict = "holds" if row.low > 0 else ("missed (above, but the interval includes 0)" if row.difference > 0
                                                    else "missed")  # fmt: skip
        else:
            verdict = "holds" if row.difference >= -allowed else f"missed by {-row.difference - allowed:.3f}"
        p = "-" if row.p_value is None else f"{row.p_value:.3g}"
        lines.append(f"| {question} | {row.a:.{digits}f} | {row.b:.{digits}f} | {row.difference:+.{digits}f} | "
                     f"[{row.low:+.{digits}f}, {row.high:+.{digits}f}] | {p} | {verdict} |")  # fmt: skip
    return (
        "\n## The claim, with paired 95% intervals\n\nA = the cascade with the MSDS fine-tuned denoiser, B = "
        "the baseline; both certified the same images with the same noise streams (seed 0), so the per-image "
        "outcomes are paired (`msds compare A.tsv B.tsv`: exact McNemar p-value and Tango's score interval "
        f"for certified accuracy, a paired BCa bootstrap with {COMPARE_RESAMPLES:,} resamples, seed 0, for "
        "the ACR).\n\n| question | A | B | A − B | 95% interval | p | target |\n|---|---:|---:|---:|---|---:|---|\n"
        + "\n".join(lines)
        + "\n"
    )


def level_breakdown(results, sigmas: Sequence[float] = CASCADE, p0: float = 0.5) -> list[dict]:
    """Per level of a cascade result (highest σ first): images that reached it, answered correctly,
    answered wrongly (confidently wrong: the lower bound of a wrong class reached p0), abstained on a
    straddle (pL < p0 <= pU: the cascade stops undecided), and fell through (pU < p0: on to the next
    level, or an abstention after the last)."""
    import numpy as np

    rows = []
    for s in sorted(sigmas, reverse=True):
        key = f"{s:g}"
        visited = np.array([v != "" for v in results.columns[f"N@{key}"]])
        p_lower, p_upper, chosen = (
            np.array([float(v) if v != "" else np.nan for v in results.columns[f"{name}@{key}"]])
            for name in ("pL", "pU", "c")
        )
        answered = visited & (p_lower >= p0)
        rows.append(dict(
            sigma=s, reached=int(visited.sum()),
            correct=int((answered & (chosen == results.label)).sum()),
            wrong=int((answered & (chosen != results.label)).sum()),
            straddle=int((visited & (p_lower < p0) & (p_upper >= p0)).sum()),
            fell_through=int((visited & (p_upper < p0)).sum()),
        ))  # fmt: skip
    return rows


def _breakdown(results: dict) -> str:
    cascades = [(stem, r) for stem, r in results.items() if stem.startswith("msds_") and f"N@{CASCADE[-1]:g}" in r.columns]
    if not cascades:
        return ""
    lines = []
    for _, r in cascades:
        for row in level_breakdown(r):
            lines.append(f"| {r.name} | {row['sigma']:g} | {row['reached']} | {row['correct']} | {row['wrong']} | "
                         f"{row['straddle']} | {row['fell_through']} |")  # fmt: skip
    return (
        "\n## Where the cascades answer\n\nPer level, highest σ first: images that reached the level, answered "
        "there correctly, answered wrongly (confidently wrong: over-confidence), abstained because the "
        "interval straddles p0 (the cascade stops undecided), and fell through to the next level (pU < p0; "
        "after the last level, an abstention). Fine-tuning aims to turn high-σ straddles and wrong answers "
        "into either correct answers (recoverable images) or clean fall-throughs (unrecoverable ones).\n\n"
        "| run | σ | reached | correct | wrong | straddle (abstain) | fell through |\n|---|---:|---:|---:|---:|---:|---:|\n"
        + "\n".join(lines)
        + "\n"
    )


def _adversarial_table() -> str:
    """Empirical robustness and cost of the TRADES classifiers and of IDC (from the `msds attack` outputs)."""
    import json

    from .robustness.evaluation import read_rows

    columns = {"clean_correct": "clean", "pgd_correct": "PGD-20", "eot_correct": "EOT-PGD-20 ×4",
               "worst_correct": "worst case"}  # fmt: skip
    runs = [(stem, label) for stem, label, _ in ADVERSARIAL_RUNS]
    runs.append(("idc", "IDC: 4-step Brownian bridge to label images (stochastic sampler)"))
    lines = []
    for stem, label in runs:
        path = OUT / "attack" / f"{stem}.tsv"
        if not path.is_file():
            continue
        rows = read_rows(path)
        cells = [f"{sum(r[k] for r in rows) / len(rows):.3f}" if k in rows[0] else "—" for k in columns]
        cost_path = path.with_suffix(".cost.json")
        if cost_path.is_file():
            cost = json.loads(cost_path.read_text())
            cells += [str(cost["nfe_per_prediction"]), f"{1000 * cost['seconds_per_image']['clean']:.2f}"]
        else:
            cells += ["?", "?"]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {len(rows)} |")
    if not lines:
        return ""
    return (
        f"\n## Empirical robustness: adversarial training with generated data, and IDC\n\nl∞ ε = {ATTACK_EPS} "
        "(digits are 8×8: 8/255 would be meaningless). The TRADES rows are the CNN above trained with TRADES "
        "(β = 5, 10-step PGD), the second with half of every batch sampled from the class-conditional "
        "diffusion model. IDC is a diffusion model as the classifier: a small U-Net translates the digit to "
        "its class's label image in 4 stochastic steps; attacks differentiate through all of them, and "
        "EOT-PGD sums 4 gradient samples per step (the deterministic CNNs need no EOT: —). An image counts as "
        "robust only if it is classified correctly clean and after the attack. Cost: network evaluations "
        "per prediction and milliseconds per image of the clean prediction on this machine (`msds attack`; "
        "AutoAttack is left to the command, it would double the demo's time).\n\n| model | "
        + " | ".join(columns.values())
        + " | NFE | ms / image | images |\n|---|"
        + "---|" * (len(columns) + 3)
        + "\n"
        + "\n".join(lines)
        + "\n"
    )


def _shift_table() -> str:
    """The fine-tuned cascade under CIFAR-10-C's corruptions (the ``shift`` stage), per corruption and severity."""
    from .results import read_results
    from .results.analysis import format_shift, summarize_shift

    if not SHIFT.is_file():
        return ""
    table = format_shift(summarize_shift(read_results(SHIFT, name="cascade {0.125, 0.25}, MSDS fine-tuned"), RADII))
    return (
        "\n## Under distribution shift: the digits with CIFAR-10-C's corruptions\n\nThe fine-tuned cascade, same "
        "protocol, on the test digits under five of CIFAR-10-C's corruptions with its parameters (Gaussian, shot "
        "and impulse noise, contrast, Gaussian blur; `configs/digits/shift/certify_msds_digits_c.yaml`). Each "
        "image's noise is keyed by an index that encodes corruption and severity (docs/shift.md).\n\n" + table
    )


@contextlib.contextmanager
def _workdir(path: Path):
    previous = Path.cwd()
    path.mkdir(parents=True, exist_ok=True)
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def _with_needs(stages: Sequence[str], force: bool) -> list[str]:
    """The requested stages plus, transitively, the stages they need whose outputs are missing (with
    ``force``: all of them), in STAGES order."""
    todo, queue = set(stages), list(stages)
    while queue:
        for need in NEEDS.get(queue.pop(), ()):
            if need not in todo and (force or not STAGE_OUTPUT[need].exists()):
                todo.add(need)
                queue.append(need)
    return [s for s in STAGES if s in todo]


def _certify(stage: str, extra: Sequence[str]) -> None:
    for stem, label, config, overrides, row_stage, _ in CERTIFY_RUNS:
        if row_stage != stage:
            continue
        print(f"[demo]   certify: {label}", flush=True)
        output = OUT / "certify" / f"{stem}.tsv"
        os.environ["WANDB_NAME"] = stem  # the W&B run name (the configs leave it unset)
        _run("certify", config, [*overrides, f"--results.output={output}", *extra])
    os.environ.pop("WANDB_NAME", None)


def run_demo(
    stages: Sequence[str] = STORY, workdir: str | Path = ".", quick: bool = False, force: bool = False
):
    """Run the requested stages (plus the missing stages they need) in ``workdir``; returns the report text
    (empty if ``report`` is not among them)."""
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown demo stage(s) {sorted(unknown)}; stages are {STAGES}")
    with _workdir(Path(workdir)):
        todo = _with_needs(stages, force)
        for stem, *_, models in CERTIFY_RUNS:  # results of older models must not be resumed
            if any(m in todo for m in models):
                for old in (OUT / "certify").glob(f"{stem}.*"):
                    old.unlink()
        if any(m in todo for m in NEEDS["shift"]):  # the shift rows were made with these models
            for old in SHIFT.parent.glob(f"{SHIFT.stem}.*"):
                old.unlink()
        if "report" in todo and "certify" not in todo and not (OUT / "certify" / "msds_finetuned.tsv").exists():
            todo = _with_needs([*todo, "certify"], force)
        text = ""
        started = time.time()
        common = ["--trainer.enable_progress_bar=false"] if quick else []
        for number, stage in enumerate(todo, 1):
            t0 = time.time()
            print(f"[demo] stage {number}/{len(todo)}: {stage}", flush=True)
            extra = [*common, *(QUICK.get(stage, []) if quick else [])]
            if stage == "pretrain":
                _run("pretrain-denoiser", "pretrain_denoiser.yaml", extra)
            elif stage == "classifier":
                _run("train-classifier", "train_classifier.yaml", extra)
            elif stage == "noisy_classifier":
                _run("train-classifier", "train_classifier_noisy.yaml", extra)
            elif stage == "finetune":
                _run("finetune", "finetune_msds.yaml", extra)
            elif stage in ("certify", "diffsmooth"):
                _certify(stage, extra)
            elif stage == "generator":
                _run("pretrain-denoiser", "pretrain_generator.yaml", extra)
            elif stage == "generate":
                _run_plain("generate", ["--denoiser", str(OUT / "generator"), "--num-per-class", "100",
                                        "--num-classes", "10", "--steps", "20", "--output", str(GENERATED),
                                        *(QUICK["generate"] if quick else [])])  # fmt: skip
            elif stage == "adversarial":
                for stem, label, config in ADVERSARIAL_RUNS:
                    print(f"[demo]   adversarial training: {label}", flush=True)
                    _run("adversarial-train", config, extra)
                    weights = OUT / f"classifier_{stem}.safetensors"
                    _run_plain("attack", ["--model-name", "msds_small_cnn", "--checkpoint", str(weights),
                                          "--mean", "0.5", "--std", "0.5", "--model-kwargs", '{"in_chans": 1}',
                                          "--data", "digits", "--norm", "linf", "--eps", ATTACK_EPS,
                                          "--attacks", "pgd",
                                          "--output", str(OUT / "attack" / f"{stem}.tsv"), "--overwrite",
                                          *(QUICK["attack"] if quick else [])])  # fmt: skip
            elif stage == "idc":
                _run("train-idc", "train_idc.yaml", extra)
                _run_plain("attack", ["--idc", str(IDC), "--data", "digits", "--norm", "linf", "--eps", ATTACK_EPS,
                                      *IDC_ATTACK, "--output", str(OUT / "attack" / "idc.tsv"), "--overwrite",
                                      *(QUICK["idc_attack"] if quick else [])])  # fmt: skip
            elif stage == "shift":
                _run("certify", SHIFT_CONFIG, extra)
            elif stage == "report":
                text = report(quick)
                print(text, flush=True)
            print(f"[demo] {stage} done in {time.time() - t0:.0f} s", flush=True)
        where = (f"report: {Path(workdir) / OUT / 'report'}" if "report" in todo
                 else "`msds demo --stages report` adds these results to the report")  # fmt: skip
        print(f"[demo] finished in {time.time() - started:.0f} s; {where}", flush=True)
    return text
