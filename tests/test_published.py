"""The registry of published results: every number has a source, Cohen et al.'s entries equal what our
analysis computes from their released files, and `msds analyze --compare` prints ours under theirs."""

from __future__ import annotations

import pytest

from msds_lightning.cli import main
from msds_lightning.results import read_results
from msds_lightning.results.analysis import average_certified_radius, certified_accuracy
from msds_lightning.results.published import published_result, published_results

COHEN = {
    "cohen2019-cifar10-sigma0.12": "cifar_0.12", "cohen2019-cifar10-sigma0.25": "cifar_0.25",
    "cohen2019-cifar10-sigma0.50": "cifar_0.50", "cohen2019-cifar10-sigma1.00": "cifar_1.00",
    "cohen2019-imagenet-sigma0.25": "imagenet_0.25", "cohen2019-imagenet-sigma0.50": "imagenet_0.50",
    "cohen2019-imagenet-sigma1.00": "imagenet_1.00",
}  # fmt: skip


def test_every_entry_has_a_source_and_valid_numbers():
    entries = published_results()
    assert set(COHEN) <= set(entries)
    for entry in entries.values():
        assert entry.paper and entry.source and entry.data, entry.name
        assert entry.radii and all(r >= 0 and 0 <= a <= 1 for r, a in entry.radii.items()), entry.name


@pytest.mark.parametrize("name", sorted(COHEN))
def test_cohen_entries_equal_our_analysis_of_the_released_files(shared_fixtures, name):
    entry = published_result(name)
    res = read_results(shared_fixtures / "cohen2019" / COHEN[name])
    radii = sorted(entry.radii)
    ours = certified_accuracy(res.radius, res.correct, radii)
    assert [round(float(a), 3) for a in ours] == [entry.radii[r] for r in radii]
    assert round(average_certified_radius(res.radius, res.correct), 4) == entry.acr


def test_cli_compare_prints_ours_under_the_published_row(shared_fixtures, capsys):
    path = str(shared_fixtures / "cohen2019" / "cifar_0.50")
    assert main(["analyze", path, "--compare", "cohen2019-cifar10-sigma0.25"]) == 0
    out = capsys.readouterr().out
    assert "| cohen2019-cifar10-sigma0.25 (published) | 0.748 | 0.600 | 0.428 |" in out
    assert "| cifar_0.50 − published | -0.096 | -0.054 | -0.014 |" in out  # 0.652 - 0.748, ...
    assert "Source: the per-image files released in locuslab/smoothing" in out
    assert main(["analyze", path, "--compare", "nope"]) == 2
    assert "no published result 'nope'; known: " in capsys.readouterr().err
    assert main(["analyze", "--compare", "list"]) == 0
    assert "msds2023-cifar10-cascade: Jeong & Shin" in capsys.readouterr().out
