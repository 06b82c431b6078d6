"""Shared pytest fixtures: real local servers from :mod:`promstat.testing.lab`; Hypothesis profiles.

Session-scoped servers (``prometheus_empty``, ``victoria_metrics``, ``redis_server``) are
started on first use and shared; tests that write into a shared server must use metric names
of their own. Factory fixtures (``start_prometheus``, ``start_victoria_metrics``,
``start_vmalert``) start private servers with any :mod:`promstat.testing.lab` keyword arguments and
stop
them when the test ends. Missing binaries fail with an install hint; nothing is skipped.

Hypothesis profiles: ``dev`` (default) and ``ci`` (``./dev test`` and CI select it through
``HYPOTHESIS_PROFILE=ci``); neither has a deadline, because wall-clock limits make tests flaky.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings

from promstat.testing import lab

P = TypeVar("P", bound=lab.ManagedProcess)

settings.register_profile("dev", deadline=None)
settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop any lab server a test forgot, so a test run never leaks processes."""
    lab.stop_all()


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    """Path of the ``prometheus`` executable (fails with an install hint when missing)."""
    return lab.require_binary("prometheus")


@pytest.fixture(scope="session")
def lab_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide scratch directory for rule files, OpenMetrics inputs and the like."""
    return tmp_path_factory.mktemp("lab")


@pytest.fixture(scope="session")
def prometheus_empty() -> Iterator[lab.PrometheusProcess]:
    """A running Prometheus with no data and no scrape targets, shared by the session."""
    with lab.start_prometheus() as proc:
        yield proc


@pytest.fixture(scope="session")
def victoria_metrics() -> Iterator[lab.VictoriaMetricsProcess]:
    """A running single-node VictoriaMetrics shared by the session (response cache disabled).

    Import with ``victoria_metrics.import_openmetrics(text)`` using metric names unique to
    the test; the data is queryable when the call returns.
    """
    with lab.start_victoria_metrics() as proc:
        yield proc


@pytest.fixture(scope="session")
def redis_server() -> Iterator[lab.ManagedProcess]:
    """A running redis-server without persistence; ``url`` is ``redis://127.0.0.1:PORT``."""
    with lab.start_redis() as proc:
        yield proc


def _factory(start: Callable[..., P]) -> Iterator[Callable[..., P]]:
    started: list[P] = []

    def factory(**kwargs: Any) -> P:
        proc = start(**kwargs)
        started.append(proc)
        return proc

    try:
        yield factory
    finally:
        for proc in reversed(started):
            proc.stop()


@pytest.fixture
def start_prometheus() -> Iterator[Callable[..., lab.PrometheusProcess]]:
    """Factory: ``start_prometheus(**kwargs)`` calls :func:`promstat.testing.lab.start_prometheus`.

    Every server it started is stopped when the test ends.
    """
    yield from _factory(lab.start_prometheus)


@pytest.fixture
def start_victoria_metrics() -> Iterator[Callable[..., lab.VictoriaMetricsProcess]]:
    """Factory for :func:`~promstat.testing.lab.start_victoria_metrics`; stops its servers at
    teardown."""
    yield from _factory(lab.start_victoria_metrics)


@pytest.fixture
def start_vmalert() -> Iterator[Callable[..., lab.ManagedProcess]]:
    """Factory for :func:`promstat.testing.lab.start_vmalert`; stops its processes at teardown."""
    yield from _factory(lab.start_vmalert)
