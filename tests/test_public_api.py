"""The package's public surface: __all__ is exactly what it exports, and errors form one tree."""

from __future__ import annotations

import importlib.metadata
import inspect

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
