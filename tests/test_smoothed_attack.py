"""The attack on the smoothed classifier g (SmoothAdv ℓ2 PGD, evaluated by PREDICT) against its certificate.

Soundness: an image certified at radius r cannot be flipped by any perturbation of norm <= r (up to the
failure probabilities α of the certificate and of PREDICT), so empirical robust accuracy >= certified
accuracy at every radius. Tightness, on the analytic case of tests/test_linear_soundness.py: a linear
binary classifier's smoothed classifier is the linear classifier itself, its exact robust radius is the
distance d to the hyperplane, and the attack must find it (the perturbation along −w, g flipped just above
d and not below)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from msds_lightning.cli import main
from msds_lightning.results import read_results
from msds_lightning.results.analysis import certified_accuracy
from msds_lightning.results.certification import Results
from msds_lightning.robustness.smoothed import (
    ATTACK_PHASE,
    ENGINE_PHASES,
    SmoothedAttackSettings,
    attack_noise,
    attack_smoothed,
    columns,
    format_gap_csv,
    format_gap_markdown,
    gap_table,
    level_weights,
    smoothed_pgd,
)
from msds_lightning.smoothing import Engine, IgnoreSigma, SmoothingEngine

from .conftest import TemplateClassifier
from .test_certify_cli import overrides
from .test_linear_soundness import LinearBinary
from .tiny_models import tiny_classifier, tiny_denoiser


class CenteredTemplates(TemplateClassifier):
    """:class:`TemplateClassifier` about the grey image: logits_k = <x − 0.5, t_k>, so ``image(c, s)`` has margin
    about s over every other class (the templates are nearly orthogonal)."""

    def forward(self, x):
        return super().forward(x - 0.5)


def results_of(certificates, indices, labels) -> Results:
    """A certification :class:`Results` straight from the engine's certificates (radius unrounded)."""
    predict = np.array([c.prediction for c in certificates], dtype=np.int64)
    label = np.asarray(labels, dtype=np.int64)
    return Results("engine", np.asarray(indices, dtype=np.int64), label, predict,
                   np.array([c.radius for c in certificates]), (predict == label).astype(np.int64), {})  # fmt: skip


def linear_case(distances, sigma_seed: int = 0):
    """One linear binary classifier (boundary through the grey image 0.5) and images of class 1 at the given
    distances d from it, x = 0.5 + d·w/‖w‖ (in [0, 1], and so is every point the attack reaches)."""
    g = torch.Generator().manual_seed(sigma_seed)
    w = torch.randn(1, 4, 4, generator=g)
    unit = w / w.norm()
    grey = torch.full((1, 4, 4), 0.5)
    f = LinearBinary(w, -float((w * grey).sum()))
    x = torch.stack([grey + d * unit for d in distances])
    assert float(unit.abs().max()) * 0.5 < 0.5  # every point within 0.5 of grey lies in [0, 1]: no clipping
    return f, x, unit


def test_linear_attack_finds_the_exact_radius_and_the_certificate_is_tight():
    sigma, distances = 0.25, [0.1, 0.2, 0.3, 0.4]
    f, x, unit = linear_case(distances)
    indices, y = [0, 1, 2, 3], torch.ones(4, dtype=torch.long)
    engine = SmoothingEngine(f, 2, sigma, seed=1, batch_size=20_000)

    # the perturbation found is -ε·w/‖w‖: the exact gradient direction of the soft smoothed classifier
    x_adv = smoothed_pgd(engine.base_classifier, x, y, indices, sigmas=sigma, eps=0.25, steps=10, samples=8)
    delta = (x_adv - x).flatten(1)
    assert torch.allclose(delta.norm(dim=1), torch.full((4,), 0.25), atol=1e-5)
    assert torch.allclose(delta @ unit.flatten() / delta.norm(dim=1), torch.full((4,), -1.0), atol=1e-5)

    certificates = engine.certify(x, indices, 100, 100_000, 0.001)
    for c, d in zip(certificates, distances):
        assert c.prediction == 1 and d - 0.02 < c.radius <= d  # sound, and tight at n = 1e5
    radii = (0.0, 0.05, 0.15, 0.25, 0.35, 0.45)  # 0.05 away from every d: PREDICT decides at n = 1e4
    settings = SmoothedAttackSettings(radii=radii, predict_n=10_000, predict_alpha=0.001, steps=10, samples=8)
    rows = attack_smoothed(engine, x, y, indices, settings)
    for row, d in zip(rows, distances):
        for r in radii:  # robust exactly below d; above it g answers the other class
            assert row[f"eps{r:g}_pred"] == (1 if r < d else 0)
            assert row[f"eps{r:g}_correct"] == int(r < d)
    table = gap_table(rows, results_of(certificates, indices, [1] * 4), radii)
    assert [t.certified for t in table] == [t.empirical for t in table] == [1, 1, 0.75, 0.5, 0.25, 0]
    assert all(t.gap == 0 and t.violations == 0 and t.abstained == 0 for t in table)


@pytest.mark.parametrize("sigmas", [0.25, [0.5, 0.25]], ids=["cohen", "cascade"])
def test_empirical_never_below_certified_on_a_multiclass_model(sigmas):
    f = CenteredTemplates(num_classes=10, shape=(3, 8, 8), seed=0)
    strengths = [0.1, 0.4, 0.7, 0.9, 1.2]
    labels = [k % 10 for k in range(len(strengths))]
    x = torch.stack([f.image(c, s) for c, s in zip(labels, strengths)])
    indices, y = list(range(len(strengths))), torch.tensor(labels)
    engine = Engine(IgnoreSigma(f), 10, sigmas, seed=2, batch_size=20_000)
    certified = results_of(engine.certify(x, indices, 100, 2_000, 0.001), indices, labels)
    radii = (0.0, 0.1, 0.25, 0.5, 0.75)
    settings = SmoothedAttackSettings(radii=radii, predict_n=1_000, predict_alpha=0.001, predict_n0=100,
                                      steps=8, samples=16)  # fmt: skip
    rows = attack_smoothed(engine, x, y, indices, settings)
    table = gap_table(rows, certified, radii)
    for t in table:
        # never a wrong class inside a certified ball; what empirical lacks of certified (the cascade here at
        # r = 0: an image certified at r = 0.005, where PREDICT abstains) is abstentions, the Monte-Carlo error
        assert t.violations == 0 and t.gap + t.abstained / t.images >= 0, t
        if sigmas == 0.25:
            assert t.gap >= 0, t
    assert any(t.certified > 0 for t in table if t.radius > 0)  # not vacuous: certificates at r > 0 ...
    assert table[-1].empirical < table[0].empirical  # ... and the attack breaks some images
    assert all(a.empirical >= b.empirical for a, b in zip(table, table[1:]))  # broken at r: at every r' > r
    assert table[0].empirical == np.mean([r["clean_correct"] for r in rows])  # ε = 0: g on the clean images
    text = format_gap_markdown(table, "title")
    assert text.startswith("title\n\n| radius | certified (%) |") and len(text.splitlines()) == 4 + len(radii)
    csv = format_gap_csv(table).splitlines()
    assert csv[0] == "radius,certified,empirical,gap,certified_abstained,violations,images" and len(
        csv
    ) == 1 + len(radii)


def test_attack_noise_is_keyed_by_index_and_step_and_apart_from_the_engine():
    assert ATTACK_PHASE not in ENGINE_PHASES
    x = torch.zeros(3, 1, 2, 2)
    a = attack_noise(x, [4, 5, 6], 3, seed=0, step=0)
    assert a.shape == (3, 3, 1, 2, 2)
    assert torch.equal(attack_noise(x[1:2], [5], 3, seed=0, step=0)[0], a[1])  # batch-mates do not matter
    assert not torch.equal(attack_noise(x, [4, 5, 6], 3, seed=0, step=1), a)  # fresh noise every step
    assert not torch.equal(attack_noise(x, [4, 5, 6], 3, seed=1, step=0), a)


def test_smoothed_pgd_on_denoised_smoothing_stays_in_the_ball_and_gradients_pass_the_denoiser():
    from msds_lightning.models import DenoiseAndClassify

    base = DenoiseAndClassify(tiny_denoiser(sample_size=16), tiny_classifier(image_size=16)).eval()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([3, 7])
    params = [p.requires_grad for p in base.parameters()]
    x_adv = smoothed_pgd(base, x, y, [0, 1], sigmas=0.25, eps=0.3, steps=2, samples=2)
    norms = (x_adv - x).flatten(1).norm(dim=1)
    assert torch.all(norms <= 0.3 + 1e-5) and torch.all(norms > 0.1)  # moved, within ε
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (
        all(p.grad is None for p in base.parameters())
        and [p.requires_grad for p in base.parameters()] == params
    )
    again = smoothed_pgd(base, x, y, [0, 1], sigmas=0.25, eps=0.3, steps=2, samples=2)
    assert torch.equal(again, x_adv)  # seeded
    assert torch.equal(smoothed_pgd(base, x, y, [0, 1], sigmas=0.25, eps=0.0), x)


def test_level_weights_and_bad_arguments():
    assert level_weights("sum", 3, [2, 0]).tolist() == [[1, 1, 1], [1, 1, 1]]
    assert level_weights("deciding", 3, [2, 0]).tolist() == [[0, 0, 1], [1, 0, 0]]
    with pytest.raises(ValueError, match="cascade target"):
        level_weights("top", 2, [0])
    f = TemplateClassifier(num_classes=3, shape=(1, 2, 2))
    x, y = torch.full((1, 1, 2, 2), 0.5), torch.tensor([0])
    with pytest.raises(ValueError, match="samples must be"):
        smoothed_pgd(IgnoreSigma(f), x, y, [0], sigmas=0.25, eps=0.1, samples=0)
    with pytest.raises(ValueError, match="indices has 2 entries"):
        smoothed_pgd(IgnoreSigma(f), x, y, [0, 1], sigmas=0.25, eps=0.1)
    assert columns([0, 0.25])[4:] == ("eps0_pred", "eps0_correct", "eps0.25_pred", "eps0.25_correct")


def test_gap_table_refuses_other_images():
    rows = [{"idx": 3, "label": 1, "clean_pred": 1, "clean_correct": 1, "eps0_pred": 1, "eps0_correct": 1}]
    cert = Results("c.tsv", np.array([2]), np.array([1]), np.array([1]), np.array([0.5]), np.array([1]), {})
    with pytest.raises(ValueError, match="no certification row for 1 attacked image"):
        gap_table(rows, cert, [0.0])
    cert = Results("c.tsv", np.array([3]), np.array([2]), np.array([1]), np.array([0.5]), np.array([0]), {})
    with pytest.raises(ValueError, match="idx 3 has another label"):
        gap_table(rows, cert, [0.0])


@pytest.fixture(scope="module")
def certified_run(tiny_assets, tmp_path_factory):
    output = tmp_path_factory.mktemp("certified") / "dds.tsv"
    assert main(["certify", *overrides(tiny_assets, output, "--model.n=200")]) == 0
    return output


def test_cli_next_to_a_certification_resumes_and_guards(tiny_assets, certified_run, tmp_path, capsys):
    out = tmp_path / "attack.tsv"
    argv = [*overrides(tiny_assets, certified_run, "--model.n=200", "--data.init_args.max=4"), "--output", str(out),
            "--predict-n", "100", "--radii", "0", "0.25", "--steps", "2", "--samples", "2"]  # fmt: skip
    assert main(["attack-smoothed", *argv]) == 0
    text = capsys.readouterr().out
    assert "SmoothAdv ℓ2 PGD on g (2 steps of 2·ε/steps, m = 2" in text and "PREDICT (n = 100" in text
    assert out.with_suffix(".md").read_text() == text and out.with_suffix(".csv").is_file()
    lines = out.read_text().splitlines()
    assert lines[0].split("\t") == list(columns([0, 0.25])) and len(lines) == 1 + 4
    rows = [dict(zip(lines[0].split("\t"), map(int, line.split("\t")))) for line in lines[1:]]
    assert all(r["eps0_pred"] == r["clean_pred"] for r in rows)
    certified = read_results(certified_run).subset(range(4))  # the first 4 of the 7 images certified
    expected = certified_accuracy(certified.radius, certified.correct, [0.0, 0.25])
    table = [line.split("|") for line in text.splitlines() if line.startswith("| 0")]
    assert [float(t[2]) for t in table] == [round(100 * e, 1) for e in expected]
    assert all(
        int(t[6]) == 0 for t in table
    )  # no image certified correct is answered otherwise after the attack

    assert main(["attack-smoothed", *argv]) == 0  # finished: resumes with nothing to do, same table
    assert capsys.readouterr().out == text
    assert main(["attack-smoothed", *argv[:-1], "3"]) == 2  # other attack settings: refused
    assert "refusing to mix rows" in capsys.readouterr().err
    other_g = [*argv, "--model.sigma=0.5", "--overwrite"]
    assert main(["attack-smoothed", *other_g]) == 2
    err = capsys.readouterr().err
    assert "certified another smoothed classifier" in err and "model.sigma: 0.25 -> 0.5" in err


@pytest.fixture(scope="module")
def digits_models(tmp_path_factory):
    """The demo's denoiser and base classifier on scikit-learn digits (the reduced demo's training)."""
    from msds_lightning.demo import run_demo

    workdir = tmp_path_factory.mktemp("digits")
    run_demo(["pretrain", "classifier"], workdir=workdir, quick=True)
    return workdir


@pytest.mark.slow
@pytest.mark.parametrize(
    "config,extra",
    [("certify_dds.yaml", ["--model.sigma=0.25"]), ("certify_msds.yaml", ["--model.denoiser.init_args.path=outputs/demo/denoiser"])],
    ids=["dds", "cascade"],
)  # fmt: skip
def test_gap_is_never_negative_on_the_digits_demo_models(digits_models, config, extra, monkeypatch, capsys):
    from msds_lightning.demo import CONFIGS, _finish_wandb

    monkeypatch.chdir(digits_models)
    certified = f"outputs/demo/certify/{config}.tsv"
    argv = ["-c", str(CONFIGS / config), *extra, "--model.n=1000", "--model.sampling=fixed",
            "--data.init_args.max=240", "--trainer.enable_progress_bar=false", f"--results.output={certified}"]  # fmt: skip
    assert main(["certify", *argv]) == 0
    _finish_wandb()
    out = f"outputs/demo/attack/{config}.tsv"
    radii = ["0", "0.125", "0.25", "0.5"]
    assert (
        main(["attack-smoothed", *argv, "--output", out, "--radii", *radii, "--steps", "5", "--samples", "8"])
        == 0
    )
    text = capsys.readouterr().out
    table = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| 0")
    ]
    assert len(table) == len(radii)
    images = int(table[0][6])
    for _radius, cert, emp, _gap, abstained, violations, _ in table:
        assert int(violations) == 0, text  # never another class inside a certified ball
        # what empirical lacks of certified can only be abstentions (Monte-Carlo error at the ball's edge)
        assert float(emp) + 100 * int(abstained) / images >= float(cert) - 1e-9, text
    assert float(table[0][1]) > 0 and float(table[-1][2]) < float(
        table[0][2]
    )  # certificates, and the attack bites
