"""The package's public surface: __all__ is exactly what it exports, and errors form one tree."""

from __future__ import annotations

import importlib.metadata
import inspect
from pathlib import Path

import promstat
from promstat import errors


def test_all_lists_exactly_the_public_names() -> None:
    """Every public attribute is in __all__ and every name in __all__ exists."""
    public = {
        name
        for name, value in vars(promstat).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }
    assert set(promstat.__all__) - {"__version__"} == public
    assert all(hasattr(promstat, name) for name in promstat.__all__)


def test_version_matches_the_distribution() -> None:
    """__version__ is the installed distribution's version."""
    assert promstat.__version__ == importlib.metadata.version("promstat")


def test_every_error_derives_from_promstat_error() -> None:
    """Every exception class in promstat.errors is a PromstatError."""
    classes = [
        value
        for value in vars(errors).values()
        if inspect.isclass(value) and issubclass(value, BaseException)
    ]
    assert len(classes) > 15
    assert all(issubclass(cls, errors.PromstatError) for cls in classes)


def test_builtin_mixins_keep_except_clauses_working() -> None:
    """Timeouts are TimeoutErrors and bad input is a ValueError, as the errors docstring says."""
    assert issubclass(errors.RequestTimeoutError, TimeoutError)
    assert issubclass(errors.QueryTimeoutError, TimeoutError)
    assert issubclass(errors.BadDataError, ValueError)
    assert issubclass(errors.ConfigError, ValueError)
    assert issubclass(errors.BinaryNotFoundError, FileNotFoundError)


def test_every_public_callable_has_a_docstring() -> None:
    """Each name in __all__ that is a class or function is documented."""
    undocumented = [
        name
        for name in promstat.__all__
        if (inspect.isclass(getattr(promstat, name)) or inspect.isfunction(getattr(promstat, name)))
        and not inspect.getdoc(getattr(promstat, name))
    ]
    assert undocumented == []


# What a manager must not pay for at `import promstat`: the agent side, the generators, the
# apps, the CLI, the test kit, and the libraries only they need.
_NOT_AT_IMPORT = (
    "aiohttp.web",
    "argparse",
    "ctypes",
    "jinja2",
    "msgpack",
    "prometheus_client",
    "redis",
    "yaml",
    "graphene",
    "strawberry",
    "promstat.agent",
    "promstat.apps",
    "promstat.cli",
    "promstat.generate",
    "promstat.integrations",
    "promstat.migration",
    "promstat.testing",
)


def test_import_promstat_loads_only_the_core() -> None:
    """A fresh interpreter's `import promstat` loads the core modules and none of the rest."""
    import json
    import subprocess
    import sys

    code = "import json, sys; import promstat; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(json.loads(out.stdout))
    unwanted = sorted(
        m for m in loaded for prefix in _NOT_AT_IMPORT if m == prefix or m.startswith(prefix + ".")
    )
    assert unwanted == []
    core = {m for m in loaded if m.startswith("promstat.")}
    assert {"promstat.service", "promstat.client", "promstat.planner"} <= core
    assert all(m.count(".") == 1 for m in core), core  # nothing below the top level


def test_the_public_api_type_checks_as_a_manager_would_use_it(tmp_path: Path) -> None:
    """mypy --strict accepts a manager's use of the top-level names and rejects a misuse."""
    import subprocess
    import sys

    good = tmp_path / "good.py"
    good.write_text(
        "from promstat import LiveStats, FrozenDict, PromstatError, thaw\n"
        "async def page(ids: list[str]) -> list[dict[str, object] | None]:\n"
        "    async with LiveStats('http://127.0.0.1:9090') as stats:\n"
        "        payloads = await stats.load_kernels(ids)\n"
        "    out: list[dict[str, object] | None] = []\n"
        "    for p in payloads:\n"
        "        if isinstance(p, PromstatError):\n"
        "            raise p\n"
        "        out.append(None if p is None else thaw(p))\n"
        "    return out\n"
        "def is_payload(x: object) -> bool:\n"
        "    return isinstance(x, FrozenDict)\n"
    )
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from promstat import LiveStats\n"
        "async def page() -> None:\n"
        "    async with LiveStats('http://127.0.0.1:9090') as stats:\n"
        "        await stats.load_kernels(42)\n"
    )

    def mypy(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(path)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            cwd=tmp_path,
        )

    ok = mypy(good)
    assert ok.returncode == 0, ok.stdout
    wrong = mypy(bad)
    assert wrong.returncode == 1 and "load_kernels" in wrong.stdout, wrong.stdout
