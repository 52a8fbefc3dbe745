"""The embedded default: the whole MSDS story on real data (scikit-learn digits) on a CPU in minutes.

Stages (each one of the project's own configs under ``configs/digits/``, run in this process):

1. ``pretrain``   — DDPM pre-training of a small denoiser          → outputs/demo/denoiser/
2. ``classifier`` — training of the base classifier (clean digits)  → outputs/demo/classifier.safetensors
3. ``noisy_classifier`` — the same CNN trained with noise σ' = 0.125 (DiffSmooth's local-smoothing
   classifier)                                                     → outputs/demo/classifier_noise0.125.safetensors
4. ``finetune``   — MSDS fine-tuning of the denoiser                → outputs/demo/denoiser_msds/
5. ``certify``    — the test split, same seeds and N for every row: denoised smoothing at σ = 0.125, 0.25,
   0.5; DiffSmooth at σ = 0.25 (σ' = 0.125, m = 5); the cascade with the pretrained denoiser; the cascade
   with the fine-tuned one                                          → outputs/demo/certify/
6. ``generator``  — a class-conditional diffusion model on the digits → outputs/demo/generator/
7. ``generate``   — 100 generated digits per class (EDM Heun, 20 steps) → outputs/demo/generated_digits.npz
8. ``adversarial`` — TRADES on real digits, and on real + generated (half of each batch); clean and
   PGD-20 accuracy of both                                   → outputs/demo/attack/
9. ``idc``        — an image-to-image diffusion classifier (4-step Brownian bridge to label images); clean,
   PGD-20 and EOT-PGD accuracy and its cost                  → outputs/demo/idc/, outputs/demo/attack/idc.tsv
10. ``report``    — markdown tables + certified-accuracy plot       → outputs/demo/report/

Asking for a stage also runs the earlier stages whose outputs are missing. Retraining a model deletes the
certification results made with the old one. Paths are relative to ``workdir`` (default: the current
directory).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

STAGES = (
    "pretrain",
    "classifier",
    "noisy_classifier",
    "finetune",
    "certify",
    "generator",
    "generate",
    "adversarial",
    "idc",
    "report",
)
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "digits"
OUT = Path("outputs/demo")
RADII = (0.0, 0.125, 0.25, 0.375, 0.5, 0.75, 1.0)
# Noise levels scaled to 8×8 digits: at σ = 1.0 they are pure noise (denoised smoothing certified 9% at
# r = 0 in a first run), so σ = 0.5 plays the role σ = 1.0 plays on CIFAR-10.
SIGMAS = (0.125, 0.25, 0.5)

# (file stem, label in the report, certify config, extra overrides)
CERTIFY_RUNS = [
    *((f"dds_sigma{s:g}", f"denoised smoothing, σ = {s:g}", "certify_dds.yaml", [f"--model.sigma={s}"])
      for s in SIGMAS),
    ("diffsmooth_sigma0.25", "DiffSmooth, σ = 0.25 (local σ' = 0.125, m = 5)", "certify_diffsmooth.yaml", []),
    ("msds_pretrained", "cascade {0.125, 0.25, 0.5}, pretrained denoiser", "certify_msds.yaml",
     [f"--model.denoiser.init_args.path={OUT / 'denoiser'}"]),
    ("msds_finetuned", "cascade {0.125, 0.25, 0.5}, MSDS fine-tuned denoiser", "certify_msds.yaml",
     [f"--model.denoiser.init_args.path={OUT / 'denoiser_msds'}"]),
]  # fmt: skip

QUICK = {  # a reduced demo: the same code path with few steps and images (tests)
    "pretrain": ["--trainer.max_steps=20", "--trainer.val_check_interval=10"],
    "classifier": ["--trainer.max_epochs=1"],
    "noisy_classifier": ["--trainer.max_epochs=1"],
    "finetune": ["--trainer.max_steps=4", "--trainer.val_check_interval=2"],
    "certify": ["--model.n0=10", "--model.n=40", "--data.init_args.max=24"],
    "generator": ["--trainer.max_steps=20", "--trainer.val_check_interval=10"],
    "generate": ["--num-per-class", "20", "--steps", "3"],
    "adversarial": ["--trainer.max_epochs=2", "--trainer.limit_train_batches=2", "--model.attack_steps=2"],
    "attack": ["--max", "24", "--pgd-steps", "3"],
    "idc": ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
            "--trainer.check_val_every_n_epoch=1"],
    "idc_attack": ["--max", "24", "--pgd-steps", "2", "--eot-steps", "2", "--eot-samples", "2"],
}
CERTIFY_INPUTS = ("pretrain", "classifier", "noisy_classifier", "finetune")  # retraining them voids results
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
    from .cli import main

    code = main([command, "-c", str(CONFIGS / config), *extra])
    _finish_wandb()
    if code:
        raise SystemExit(f"demo: `msds {command} -c configs/digits/{config}` failed (exit {code})")


def _run_plain(command: str, argv: Sequence[str]) -> None:
    """An argparse ``msds`` command (generate, attack) in this process."""
    from .cli import main

    code = main([command, *argv])
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


def report(quick: bool = False) -> str:
    """Write report.md and certified_accuracy.png from the certification TSVs; return the markdown."""
    from .analysis import format_markdown, plot_certified_accuracy, summarize
    from .results import read_results

    results = [read_results(OUT / "certify" / f"{stem}.tsv", name=label) for stem, label, *_ in CERTIFY_RUNS]
    table = format_markdown([summarize(r, RADII) for r in results])
    folder = OUT / "report"
    folder.mkdir(parents=True, exist_ok=True)
    plot_certified_accuracy(results, str(folder / "certified_accuracy.png"),
                            title="scikit-learn digits (8×8): certified accuracy")  # fmt: skip
    n = len(results[0])
    text = (
        "# msds-lightning demo: scikit-learn digits\n\n"
        f"{n} test images (8×8 gray), the same seed and N0/N for every row; radii in [0,1] pixel units (l2).\n"
        f"Base classifier, clean test accuracy (no noise, no denoiser): {_clean_accuracy():.3f}.\n"
        + ("(quick mode: tiny training and N; the numbers mean nothing)\n" if quick else "")
        + "\nCertified accuracy at radius r (r=0: accuracy of the smoothed classifier), ACR, abstention rate;"
        " then, for the cascades, how many images each level (0 = σ 0.5, 1 = σ 0.25, 2 = σ 0.125) answered"
        " and their accuracy.\n\n"
        + table
        + "\n![certified accuracy](certified_accuracy.png)\n"
        + _adversarial_table()
    )
    (folder / "report.md").write_text(text)
    return text


def _adversarial_table() -> str:
    """Empirical robustness and cost of the TRADES classifiers and of IDC (from the `msds attack` outputs)."""
    import json

    from .attack_cli import read_rows

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


@contextlib.contextmanager
def _workdir(path: Path):
    previous = Path.cwd()
    path.mkdir(parents=True, exist_ok=True)
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def run_demo(
    stages: Sequence[str] = STAGES, workdir: str | Path = ".", quick: bool = False, force: bool = False
):
    """Run the requested stages (plus missing prerequisites) in ``workdir``; returns the report text."""
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown demo stage(s) {sorted(unknown)}; stages are {STAGES}")
    last = max(STAGES.index(s) for s in stages)
    with _workdir(Path(workdir)):
        todo = [
            s
            for s in STAGES[: last + 1]
            if s in stages or (s in STAGE_OUTPUT and not STAGE_OUTPUT[s].exists())
        ]
        if force:
            todo = [s for s in STAGES[: last + 1] if s in stages or s in STAGE_OUTPUT]
        if any(s in todo for s in CERTIFY_INPUTS) and (OUT / "certify").exists():
            shutil.rmtree(OUT / "certify")  # results of older models must not be resumed
        if "report" in todo and "certify" not in todo:
            missing = [stem for stem, *_ in CERTIFY_RUNS if not (OUT / "certify" / f"{stem}.tsv").exists()]
            if missing:
                todo.insert(todo.index("report"), "certify")
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
            elif stage == "certify":
                for stem, label, config, overrides in CERTIFY_RUNS:
                    print(f"[demo]   certify: {label}", flush=True)
                    output = OUT / "certify" / f"{stem}.tsv"
                    os.environ["WANDB_NAME"] = stem  # the W&B run name (the configs leave it unset)
                    _run("certify", config, [*overrides, f"--results.output={output}", *extra])
                os.environ.pop("WANDB_NAME", None)
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
            elif stage == "report":
                text = report(quick)
                print(text, flush=True)
            print(f"[demo] {stage} done in {time.time() - t0:.0f} s", flush=True)
        print(
            f"[demo] finished in {time.time() - started:.0f} s; report: {Path(workdir) / OUT / 'report'}",
            flush=True,
        )
    return text


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="msds demo", description=__doc__.splitlines()[0])
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES, help="stages to run")
    p.add_argument("--workdir", default=".", help="outputs go to WORKDIR/outputs/demo")
    p.add_argument("--quick", action="store_true", help="reduced demo (few steps and images): a smoke test")
    p.add_argument("--force", action="store_true", help="retrain models even when their outputs exist")
    args = p.parse_args(argv)
    run_demo(args.stages, args.workdir, args.quick, args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
