"""Fixtures of the real-Backend.AI tier: the installed 26.9 packages, or a failure saying how
to install them (never a skip: a missing Backend.AI must not pass unnoticed).

The tests import ``ai.backend`` only through these fixtures, so the tier collects everywhere
and ``-m "not backendai"`` (the Python 3.11 floor run) deselects it without importing it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "requirements" / "backendai-26.9.txt"


def pinned_version() -> str:
    """The Backend.AI version of requirements/backendai-26.9.txt (the one place it is set)."""
    for line in REQUIREMENTS.read_text(encoding="utf-8").splitlines():
        if line.startswith("backend.ai-agent=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{REQUIREMENTS} pins no backend.ai-agent")


def _how_to_install(problem: str) -> str:
    return (
        f"{problem}\nThe backendai tests run the real Backend.AI {pinned_version()} "
        f"(Python 3.13 only; this is Python {sys.version.split()[0]}). Install it with\n"
        "    ./dev setup        (Python 3.13 .venv with promstat[dev] and Backend.AI)\n"
        "or by hand into a Python 3.13 venv:\n"
        f"    pip install -e '.[dev]' -r {REQUIREMENTS.relative_to(ROOT)}"
    )


@pytest.fixture(scope="session")
def backendai() -> ModuleType:
    """``ai.backend.agent`` at the pinned version, or a failure with install instructions."""
    problem = None
    try:
        agent = importlib.import_module("ai.backend.agent")
        importlib.import_module("ai.backend.agent.stats")
    except ImportError as exc:
        problem = f"cannot import Backend.AI: {exc}"
    if problem is not None:  # outside the except block: the message alone, no traceback chain
        pytest.fail(_how_to_install(problem), pytrace=False)
    version = getattr(agent, "__version__", "?")
    if version != pinned_version():
        pytest.fail(
            _how_to_install(f"Backend.AI {version} is installed, not {pinned_version()}"),
            pytrace=False,
        )
    return agent


@pytest.fixture
async def rig(backendai: ModuleType, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    """A fresh :class:`backendai.harness.AgentRig` (real StatContext + promstat) per test."""
    harness = importlib.import_module("backendai.harness")
    rig = harness.AgentRig(monkeypatch)
    try:
        yield rig
    finally:
        await rig.close()
