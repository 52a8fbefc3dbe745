"""The package as a user installs it: a built wheel holds the configs, and the demo finds them there."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_ships_the_configs_and_the_demo_finds_them(tmp_path):
    source = tmp_path / "src"  # a copy, so that the build leaves no build/ or egg-info in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "msds_lightning", source / "msds_lightning", ignore=shutil.ignore_patterns("__pycache__"))
    build = "from setuptools import build_meta; print(build_meta.build_wheel(r'{}'))".format(tmp_path / "dist")
    name = subprocess.run([sys.executable, "-c", build], cwd=source, check=True, capture_output=True,
                          text=True).stdout.strip().splitlines()[-1]  # fmt: skip
    wheel = tmp_path / "dist" / name
    with zipfile.ZipFile(wheel) as archive:
        shipped = {n for n in archive.namelist() if n.startswith("msds_lightning/configs/")}
        archive.extractall(tmp_path / "site")
    expected = {f"msds_lightning/configs/{p.relative_to(REPO / 'msds_lightning' / 'configs')}"
                for p in (REPO / "msds_lightning" / "configs").rglob("*.yaml")}  # fmt: skip
    assert expected and shipped == expected
    assert not any(n.startswith("tests/") for n in zipfile.ZipFile(wheel).namelist())
    assert "msds_lightning/results/published.yaml" in zipfile.ZipFile(wheel).namelist()  # msds analyze --compare

    # the installed package (first on the path, away from the checkout) resolves the demo's configs inside it
    probe = ("import msds_lightning.demo as d; print(d.CONFIGS); "
             "print(all((d.CONFIGS / c).is_file() for _, _, c, *_ in d.CERTIFY_RUNS))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, check=True, capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"}).stdout.split()  # fmt: skip
    assert Path(out[0]) == tmp_path / "site" / "msds_lightning" / "configs" / "digits"
    assert out[1] == "True"
