"""Tests for the ``ValkeyStatClient`` drop-in: same methods, shapes and ``None`` conventions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgpack
import pytest
from _support.dual_fleet import DualFleet, dual_fleet, fleet_config
from redis.asyncio import from_url

from promstat.client import PrometheusClient
from promstat.errors import ConfigError, TransportError
from promstat.refresh import RefreshConfig
from promstat.service import LiveStats
from promstat.stat_client import PromstatStatClient
from promstat.testing.stub import StubAPI


@pytest.fixture(scope="module")
def fleet() -> Iterator[DualFleet]:
    with dual_fleet(fleet_config(2, 4)) as running:
        yield running

NO_REFRESH = RefreshConfig(enabled=False)


class CountingClient(StubAPI):
    """Forwards to a real client and counts the queries (to see batches being shared)."""

    def __init__(self, inner: PrometheusClient) -> None:
        self.inner = inner
        self.queries: list[str] = []

    async def query_vector(self, query: str, **kwargs: Any) -> Any:
        self.queries.append(query)
        return await self.inner.query_vector(query, **kwargs)


@pytest.fixture
async def compat(fleet: DualFleet) -> AsyncIterator[tuple[PromstatStatClient, CountingClient]]:
    async with PrometheusClient(fleet.prometheus.url) as prom:
        counting = CountingClient(prom)
        # Refresh-ahead off: the tests count queries, and a background refresh would add some.
        async with LiveStats(counting, clock=lambda: fleet.at, refresh=NO_REFRESH) as stats:
            yield PromstatStatClient(stats), counting


async def _legacy(fleet: DualFleet, ids: list[str]) -> list[Any]:
    client = from_url(fleet.redis.url)
    try:
        return [
            None if raw is None else msgpack.unpackb(raw, raw=False, strict_map_key=False)
            for raw in await client.mget(ids)
        ]
    finally:
        await client.aclose()


def _shape(payload: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    return {metric: tuple(sorted(value)) for metric, value in payload.items()}


def _types(payload: dict[str, Any]) -> set[type]:
    return {type(v) for value in payload.values() for v in value.values()}


@pytest.mark.slow
async def test_kernel_methods_are_shaped_like_the_valkey_values(
    fleet: DualFleet, compat: tuple[PromstatStatClient, CountingClient]
) -> None:
    client, _ = compat
    ids = fleet.fleet.kernel_ids(fleet.at)
    legacy = await _legacy(fleet, ids)
    batch = await client.get_session_statistics_batch(
        [*ids, "00000000-0000-0000-0000-000000000000"]
    )
    assert len(batch) == len(ids) + 1 and batch[-1] is None  # missing -> None, in order
    for old, new in zip(legacy, batch, strict=False):
        assert new is not None and old is not None
        assert _shape(new) == _shape(old)  # same metrics, same fields per metric
        assert _types(new) == _types(old) == {str}
    single = await client.get_kernel_statistics(ids[0])
    assert single == batch[0]
    assert await client.get_kernel_statistics("no-such-kernel") is None
    raw = await client.get_user_kernel_statistics_batch([ids[0], "no-such-kernel"])
    assert isinstance(raw[0], bytes) and raw[1] is None
    # What consumers do with MGET's bytes (Backend.AI's msgpack.unpackb options).
    assert msgpack.unpackb(raw[0], raw=False, strict_map_key=False, use_list=False) == batch[0]
    assert await client.get_session_statistics_batch([]) == []


@pytest.mark.slow
async def test_agent_batch_is_shaped_like_the_valkey_values(
    fleet: DualFleet, compat: tuple[PromstatStatClient, CountingClient]
) -> None:
    client, _ = compat
    agent_ids = fleet.fleet.agent_ids()
    legacy = await _legacy(fleet, agent_ids)
    batch = await client.get_agent_statistics_batch([*agent_ids, "i-nowhere"])
    assert batch[-1] is None
    for old, new in zip(legacy, batch, strict=False):
        assert new is not None and old is not None
        assert set(new) == set(old) == {"node", "devices"}
        assert _shape(new["node"]) == _shape(old["node"])
        assert new["node"]["net_rx"]["capacity"] is old["node"]["net_rx"]["capacity"] is None
        for metric, per_device in old["devices"].items():
            assert set(new["devices"][metric]) == set(per_device)
    assert await client.get_agent_statistics_batch([]) == []


@pytest.mark.slow
async def test_concurrent_callers_share_one_batch_and_the_cache(
    fleet: DualFleet, compat: tuple[PromstatStatClient, CountingClient]
) -> None:
    client, counting = compat
    ids = fleet.fleet.kernel_ids(fleet.at)
    assert len(ids) == 8
    # The idle checker's pattern: one GET per kernel, here all at once from many tasks.
    singles = await asyncio.gather(*(client.get_kernel_statistics(k) for k in ids))
    first = len(counting.queries)
    assert all(s is not None for s in singles)
    batch = await client.get_session_statistics_batch(ids)
    assert batch == singles
    assert len(counting.queries) == first  # answered from the shared cache
    # The concurrent singles cost exactly what one batch of all ids costs.
    async with PrometheusClient(fleet.prometheus.url) as prom:
        fresh = CountingClient(prom)
        async with LiveStats(fresh, clock=lambda: fleet.at, refresh=NO_REFRESH) as fresh_stats:
            await PromstatStatClient(fresh_stats).get_session_statistics_batch(ids)
    assert first == len(fresh.queries) < len(ids)


class FailingClient(StubAPI):
    async def query_vector(self, query: str, **kwargs: Any) -> Any:
        raise TransportError("connection refused", url="http://prometheus:9090")


async def test_a_failed_query_raises_or_answers_none() -> None:
    stats = LiveStats(FailingClient())
    with pytest.raises(TransportError, match="connection refused"):
        await PromstatStatClient(stats).get_session_statistics_batch(["k1"])
    assert await PromstatStatClient(stats, errors="none").get_agent_statistics_batch(["a"]) == [
        None
    ]
    with pytest.raises(ConfigError, match="errors must be"):
        PromstatStatClient(stats, errors="ignore")  # type: ignore[arg-type]
