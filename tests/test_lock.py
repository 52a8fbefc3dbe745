"""The environment under test is the locked one (constraints.txt): the README's exact numbers hold for
these versions, and CI tests exactly what `make install` installs."""

import re
from importlib import metadata
from pathlib import Path

LOCK = Path(__file__).resolve().parents[1] / "constraints.txt"


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_installed_versions_are_the_locked_ones():
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            pins[_normalized(name)] = version.strip()
    assert {"torch", "torchvision", "lightning", "numpy", "scipy", "diffusers", "timm"} <= set(pins)
    installed = {_normalized(d.metadata["Name"]): d.version for d in metadata.distributions()}
    # torch's local tag (+cu132, +cpu) names the build, not the version the lock pins
    wrong = {n: (installed.get(n), v) for n, v in pins.items() if installed.get(n, "").split("+")[0] != v}
    assert not wrong, (
        f"installed (found, locked) versions differ from constraints.txt: {wrong}; run `make install` "
        "(or, after a deliberate upgrade, `make lock` and rerun the tests)"
    )
