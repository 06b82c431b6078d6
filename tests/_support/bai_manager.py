"""Shared helpers of the tests that run the real Backend.AI 26.9.6 manager code.

They need ``backend.ai-common`` / ``backend.ai-manager`` 26.9.6 importable (Python 3.13).
Missing packages fail the test with how to install them; nothing is skipped.
"""

from __future__ import annotations

import importlib
import pathlib
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from types import ModuleType
from typing import Any

import pytest

_PIN = pathlib.Path(__file__).resolve().parents[2] / "requirements" / "backendai-26.9.txt"

#: The release pinned in requirements/backendai-26.9.txt (the one place it is set).
BACKENDAI_VERSION = next(
    line.split("==", 1)[1].strip()
    for line in _PIN.read_text(encoding="utf-8").splitlines()
    if line.startswith("backend.ai-manager==")
)

INSTALL_HINT = (
    f"the real-Backend.AI tests need backend.ai-common and backend.ai-manager {BACKENDAI_VERSION} "
    "on Python 3.13: `./dev setup` installs them into the 3.13 .venv; by hand: "
    "`python3.13 -m venv V && V/bin/pip install -e '.[dev]' -r requirements/backendai-26.9.txt` "
    "and run pytest with V/bin/python"
)


@contextmanager
def upstream_deprecations() -> Iterator[None]:
    """Ignore DeprecationWarning inside Backend.AI code that triggers its dependencies' ones.

    (``ClientPool()`` walks ``inspect.stack()``, which touches glide's deprecated module
    aliases.) Scoped to the call, so promstat's own warnings stay errors.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def require(module: str) -> ModuleType:
    """Import ``module`` from ``ai.backend`` or fail the test saying how to install it.

    The suite turns warnings into errors; Backend.AI's own imports raise deprecation warnings
    of its dependencies (click's ``parser.split_arg_string``), not of promstat: ignored while
    importing, and only then.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return importlib.import_module(module)
    except ImportError as exc:
        pytest.fail(f"cannot import {module} ({exc}); {INSTALL_HINT}", pytrace=False)


def manager_root() -> pathlib.Path:
    """The installed ``ai/backend/manager`` package directory."""
    manager = require("ai.backend.manager")
    return pathlib.Path(next(iter(manager.__path__)))


def valkey_stat_class() -> Any:
    """The real ``ValkeyStatClient`` class."""
    module = require("ai.backend.common.clients.valkey_client.valkey_stat.client")
    return module.ValkeyStatClient


@asynccontextmanager
async def real_valkey_stat(redis_url: str) -> AsyncIterator[Any]:
    """The real ``ValkeyStatClient`` connected to the redis-server at ``redis_url`` (DB 0)."""
    types = require("ai.backend.common.types")
    client = await valkey_stat_class().create(
        types.ValkeyTarget(addr=redis_url.removeprefix("redis://")),
        db_id=0,
        human_readable_name="promstat-test",
    )
    try:
        yield client
    finally:
        await client.close()
