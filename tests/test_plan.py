"""`msds plan`: the closed-form radius limit, the N a radius needs, the warm-up estimate and budget advice."""

from __future__ import annotations

import pytest

from msds_lightning.cli import main
from msds_lightning.cli.plan import level_alphas, max_radius, parse_duration, samples_needed
from msds_lightning.smoothing import clopper_pearson_lower
from msds_lightning.smoothing.adaptive import AdaptiveSampling

from .conftest import REPO
from .test_certify_cli import overrides


@pytest.mark.parametrize("sigma,n,alpha", [(0.25, 100_000, 0.001), (0.5, 10, 0.001), (1.0, 200, 0.0005)])
def test_radius_limit_is_the_clopper_pearson_bound_of_n_out_of_n(sigma, n, alpha):
    from scipy.stats import norm

    assert max_radius(sigma, n, alpha) == pytest.approx(
        sigma * norm.ppf(clopper_pearson_lower(n, n, alpha)), rel=1e-9
    )
    if n == 10:  # tiny N (locuslab/smoothing issue 8): 10 samples barely pass p = 1/2 at alpha = 0.001, 9 cannot
        assert 0 < max_radius(sigma, 10, alpha) < 0.002 and max_radius(sigma, 9, alpha) < 0


def test_samples_needed_is_the_smallest_n_reaching_the_radius():
    for radius, sigma, alpha in [(1.0, 0.25, 0.001), (0.5, 0.5, 0.001), (2.0, 1.0, 0.0003)]:
        n = samples_needed(radius, sigma, alpha)
        assert max_radius(sigma, n, alpha) >= radius > max_radius(sigma, n - 1, alpha)


def test_level_alphas_follow_the_rules():
    assert level_alphas(0.001, 3, cascade=True) == [0.001, 0.0005, 0.001 / 3]
    assert level_alphas(0.001, 1, cascade=False) == [0.001]
    adaptive = AdaptiveSampling(1000, 2.0, 0.5)
    assert level_alphas(0.001, 1, False, adaptive, 10_000) == [adaptive.plan(10_000, 0.001).alphas[-1]]


def test_parse_duration():
    assert parse_duration("24h") == 86400 and parse_duration("90m") == 5400 and parse_duration("3600") == 3600
    for bad in ("soon", "-1h", "0s"):
        with pytest.raises(ValueError, match="--budget: expected a positive duration"):
            parse_duration(bad)


def test_plan_on_the_cifar10_config_with_tiny_models(tiny_assets, tmp_path, capsys):
    argv = overrides(tiny_assets, tmp_path / "unused.tsv", "--results.radii=[0, 0.25, 1.5]", "--model.n=500")
    assert main(["plan", *argv, "--budget", "1s", "--warmup-images", "2"]) == 0
    out = capsys.readouterr().out
    assert "| 0.25 | 0.001 | " + f"{max_radius(0.25, 500, 0.001):.4f} |" in out
    assert "warning: radius 1.5 of results.radii exceeds what N = 500 can certify at any level" in out
    assert f"N >= {samples_needed(1.5, 0.25, 0.001):,} at the best level" in out
    assert "estimated wall time:" in out and "7 image(s) to certify" in out
    assert "budget 1 s: does not fit" in out or "budget 1 s: fits as configured" in out
    assert not (tmp_path / "unused.tsv").exists()  # planning writes nothing


def test_plan_on_the_tiny_cascade_config(tiny_assets, capsys):
    argv = [
        "-c", str(REPO / "configs" / "tiny" / "certify_msds.yaml"),
        f"--model.denoiser.init_args.path={tiny_assets / 'denoiser'}",
        f"--model.classifier.init_args.checkpoint={tiny_assets / 'classifier.safetensors'}",
        f"--data.init_args.root={tiny_assets / 'cifar10'}",
    ]  # fmt: skip
    assert main(["plan", *argv, "--budget", "24h"]) == 0
    out = capsys.readouterr().out
    assert "cascade (p0 = 0.5)" in out and "| 0.25 | 0.000333 |" in out
    assert "to" in out.split("estimated wall time:")[1].splitlines()[0]  # a cascade visits 1 to 3 levels
    assert "budget 24.0 h: fits as configured" in out
    assert main(["plan", *argv, "--budget", "soon"]) == 2


def test_replay_reproduces_the_bench_table_on_cohens_results(shared_fixtures):
    """The replay the planner uses is the one behind bench/RESULTS.md: same seed, same samples per image."""
    from msds_lightning.results.analysis import CIFAR10_RADII
    from msds_lightning.results.replay import load_levels, mean_samples

    root = shared_fixtures / "cohen2019"
    sigmas = (0.25, 0.5, 1.0)
    levels = load_levels([root / f for f in ("cifar_0.25", "cifar_0.50", "cifar_1.00")], sigmas)
    adaptive = AdaptiveSampling(radii=tuple(CIFAR10_RADII))
    kw = dict(n0=100, n=100_000, alpha=0.001)
    fixed = mean_samples(levels[:1], sigmas[:1], sampling=None, cascade=False, **kw)
    assert fixed == 100_100  # n0 + N
    # bench/RESULTS.md, "Adaptive sampling (count-level replay)": 12,834 (σ = 0.25) and 16,118 (the cascade)
    assert round(mean_samples(levels[:1], sigmas[:1], sampling=adaptive, cascade=False, **kw)) == 12_834
    assert round(mean_samples(levels, sigmas, sampling=adaptive, cascade=True, **kw)) == 16_118
    with pytest.raises(ValueError, match="give one result file per σ"):
        load_levels([root / "cifar_0.25"], sigmas)


def _single_sigma_results(path, radii, predict):
    lines = ["idx\tlabel\tpredict\tradius\tcorrect\ttime"]
    for i, (r, p) in enumerate(zip(radii, predict)):
        lines.append(f"{i}\t{max(p, 0)}\t{p}\t{r}\t{int(p >= 0)}\t0.1")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_plan_replays_earlier_results_for_the_expected_time(tiny_assets, tmp_path, capsys):
    """A cascade with fixed sampling visits 1 to 3 levels; replaying single-σ results gives the expected
    samples per image in that range, equal to the replay called directly. (N = 5,000: an abstention is
    replayed at p = 0.45, which N = 200 cannot tell from 1/2, so it would stop the cascade instead of falling
    through.)"""
    from msds_lightning.results.replay import load_levels, mean_samples

    sigmas = (1.0, 0.5, 0.25)  # the table's order: highest first
    files = [  # σ = 1.0 abstains on images 0-4, so they fall to σ = 0.5, where 0-1 abstain again
        _single_sigma_results(tmp_path / "s1.tsv", [0.0] * 5 + [1.2] * 5, [-1] * 5 + [1] * 5),
        _single_sigma_results(tmp_path / "s0.5.tsv", [0.0, 0.0] + [0.7] * 8, [-1, -1] + [1] * 8),
        _single_sigma_results(tmp_path / "s0.25.tsv", [0.5] * 10, [1] * 10),
    ]
    argv = [
        "-c", str(REPO / "configs" / "tiny" / "certify_msds.yaml"),
        f"--model.denoiser.init_args.path={tiny_assets / 'denoiser'}",
        f"--model.classifier.init_args.checkpoint={tiny_assets / 'classifier.safetensors'}",
        f"--data.init_args.root={tiny_assets / 'cifar10'}", "--model.n=5000",
    ]  # fmt: skip
    assert main(["plan", *argv, "--budget", "24h", "--replay", *files]) == 0
    out = capsys.readouterr().out
    expected = mean_samples(load_levels(files, sigmas), sigmas, n0=20, n=5000, alpha=0.001, sampling=None,
                            cascade=True)  # fmt: skip
    assert 5020 < expected < 3 * 5020
    pairs = ", ".join(f"σ = {s:g}: {f}" for s, f in zip(sigmas, files))
    assert f"fixed sampling, replayed on 10 image(s) ({pairs}): {expected:,.0f} samples per image" in out
    assert "budget 24.0 h: fits expected (replay)" in out
    assert main(["plan", *argv, "--replay", files[0]]) == 2  # one file for three σ
    assert "give one result file per σ" in capsys.readouterr().err
    assert main(["plan", *argv, "--replay", str(tmp_path / "absent.tsv"), *files[1:]]) == 2
    assert "--replay: result file not found" in capsys.readouterr().err
