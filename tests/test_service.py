"""Tests for promstat.service.LiveStats on a real Prometheus: batching, sharing, caching."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from _support.planner_data import (
    AT,
    EXPECTED_AGENTS,
    EXPECTED_KERNELS,
    K1,
    K2,
    K3,
    scenario_openmetrics,
)

from promstat.client import ClientConfig, PrometheusClient
from promstat.errors import ConfigError, TransportError
from promstat.loader import CacheConfig
from promstat.planner import PlannerConfig
from promstat.refresh import RefreshConfig
from promstat.selfmetrics import PromstatMetrics
from promstat.service import LiveStats
from promstat.testing import lab
from promstat.testing.stub import StubAPI

NO_REFRESH = RefreshConfig(enabled=False)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prom() -> Iterator[lab.PrometheusProcess]:
    """A real Prometheus holding the backfilled planner scenario."""
    with lab.start_prometheus(openmetrics=scenario_openmetrics()) as proc:
        yield proc


@pytest.fixture
async def counted(prom: lab.PrometheusProcess) -> AsyncIterator[tuple[LiveStats, PromstatMetrics]]:
    """LiveStats whose clock sits inside the scenario, counting HTTP queries.

    Refresh-ahead is off so that no background refresh lands in the query counts.
    """
    metrics = PromstatMetrics()
    config = PlannerConfig(use_recorded=False, fleet_fraction=None)
    async with (
        PrometheusClient(prom.url, observer=metrics) as client,
        LiveStats(
            client, planner=config, metrics=metrics, clock=lambda: AT, refresh=NO_REFRESH
        ) as stats,
    ):
        yield stats, metrics


async def test_a_request_loader_answers_the_legacy_payloads(
    counted: tuple[LiveStats, PromstatMetrics],
) -> None:
    """Per-request loaders return the expected kernel and agent payloads."""
    stats, _ = counted
    kernels, agents = stats.kernel_loader(), stats.agent_loader()
    got_k = await asyncio.gather(*(kernels.load(k) for k in EXPECTED_KERNELS))
    got_a = await asyncio.gather(*(agents.load(a) for a in EXPECTED_AGENTS))
    assert dict(zip(EXPECTED_KERNELS, got_k, strict=True)) == EXPECTED_KERNELS
    assert dict(zip(EXPECTED_AGENTS, got_a, strict=True)) == EXPECTED_AGENTS


async def test_concurrent_requests_share_queries_and_the_cache(
    counted: tuple[LiveStats, PromstatMetrics],
) -> None:
    """Two requests at once cost one plan; a third within the TTL costs no query at all."""
    stats, metrics = counted
    shapes = len(stats.planner.shapes("kernel", recorded=False))
    await stats.learn_profile()
    await stats.planner.detect("kernel", at=AT)
    before = metrics.snapshot().queries
    one, two = stats.kernel_loader(), stats.kernel_loader()
    await asyncio.gather(
        asyncio.gather(*(one.load(k) for k in (K1, K2))),
        asyncio.gather(*(two.load(k) for k in (K1, K2, K3))),
    )
    # K1 and K2 in flight are shared; the second request only adds K3
    assert metrics.snapshot().queries - before <= 2 * shapes
    cached = metrics.snapshot().queries
    three = stats.kernel_loader()
    assert await three.load(K1) == EXPECTED_KERNELS[K1]
    assert metrics.snapshot().queries == cached
    assert metrics.snapshot().cache_hits >= 1


async def test_unreachable_server_errors_every_key_and_caches_nothing() -> None:
    """A dead server gives each key a TransportError; nothing is cached, so a retry asks again."""
    metrics = PromstatMetrics()
    url = f"http://127.0.0.1:{lab.free_port()}"
    async with PrometheusClient(url, observer=metrics, timeout=2) as client:
        config = PlannerConfig(use_recorded=False, detect_backoff=0)
        stats = LiveStats(client, planner=config, metrics=metrics)
        first = await stats.load_kernels([K1, K2])
        assert all(isinstance(v, TransportError) for v in first)
        calls = metrics.snapshot().queries
        second = await stats.load_kernels([K1])
        assert isinstance(second[0], TransportError)
        assert metrics.snapshot().queries > calls


async def test_a_failed_detection_is_skipped_but_loads_still_ask() -> None:
    """Within detect_backoff a load skips detection, yet sends its own queries: a failure
    is never the answer of a load that did not ask the server."""
    metrics = PromstatMetrics()
    url = f"http://127.0.0.1:{lab.free_port()}"
    async with LiveStats(
        url,
        planner=PlannerConfig(detect_backoff=60),
        metrics=metrics,
        client=ClientConfig(timeout=2),
    ) as stats:
        first = await stats.load_kernels([K1, K2])
        calls = metrics.snapshot().queries
        second = await stats.load_kernels([K3])
        shapes = len(stats.planner.shapes("kernel", recorded=False))
    assert all(isinstance(v, TransportError) for v in first + second)
    assert second[0] is not first[0]  # its own query's error, not a remembered one
    # The second load: no detection, one query per raw shape.
    assert metrics.snapshot().queries == calls + shapes


def test_negative_cache_ttl_is_a_config_error() -> None:
    """A negative TTL is rejected with a message naming it."""

    with pytest.raises(ConfigError, match=r"CacheConfig.ttl"):
        LiveStats(StubAPI(), cache=CacheConfig(ttl=-1))
    with pytest.raises(ConfigError, match=r"CacheConfig.ttl.*seconds"):
        CacheConfig(ttl="15s")  # type: ignore[arg-type]
