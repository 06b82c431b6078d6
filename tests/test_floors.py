"""The dependency floors are real: requirements/floors.txt pins exactly pyproject's ``>=`` floors.

``./dev test`` installs requirements/floors.txt as constraints into the Python 3.11 environment
that runs the fast tier, so a floor raised or added in pyproject.toml without the pin (or the
reverse) would silently stop being tested; this keeps the two equal.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
#: Extras whose floors are runtime floors (``bench`` and the test/dev tooling are not).
RUNTIME_EXTRAS = ("graphene", "strawberry", "prometheus", "valkey")


def _pins(path: Path) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{path.name}: {line!r} must pin with =="
            pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def _floors() -> dict[str, Version]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    lines = list(project["dependencies"])
    for extra in RUNTIME_EXTRAS:
        lines += project["optional-dependencies"][extra]
    floors: dict[str, Version] = {}
    for line in lines:
        req = Requirement(line)
        lows = [Version(s.version) for s in req.specifier if s.operator == ">="]
        assert len(lows) == 1, f"pyproject.toml: {line!r} needs exactly one >= floor"
        name = canonicalize_name(req.name)
        floors[name] = max(lows[0], floors.get(name, lows[0]))
    return floors


def test_floors_file_pins_exactly_the_declared_floors() -> None:
    assert _pins(ROOT / "requirements" / "floors.txt") == _floors()


def test_backendai_is_pinned_to_one_version() -> None:
    pins = _pins(ROOT / "requirements" / "backendai-26.9.txt")
    assert set(pins) >= {"backend-ai-common", "backend-ai-agent", "backend-ai-manager"}
    assert len(set(pins.values())) == 1, pins
