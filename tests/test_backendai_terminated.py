"""Terminated kernels through the usage-statistics consumers, as the 24 h Valkey key answered.

A fleet with kernel churn, two hours of it: Prometheus holds its series (a terminated kernel's
frozen for the 600 s detention, then gone), redis what the agent wrote (a terminated kernel's
last payload stays, 24 h TTL). The installed 26.9.6 usage statistics read every kernel through
``get_user_kernel_statistics_batch``; on :class:`PromstatStatClient` they must get the same
numbers for kernels live, detained, and gone from Prometheus within ``terminated_window``, and
nothing for kernels gone longer (their Valkey key would have expired).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
from _support.bai_consumers import kernel_row, monthly_stats, project_stats, usage_groups
from _support.bai_manager import real_valkey_stat

from promstat import RefreshConfig
from promstat.client import PrometheusClient
from promstat.migration.publisher import ValkeyPublisher, replay
from promstat.service import LiveStats
from promstat.stat_client import PromstatStatClient
from promstat.testing import lab
from promstat.testing.sim import ChurnConfig, FleetConfig, SimulatedFleet, fleet_openmetrics

#: Every request the tests count comes from their own loads.
NO_REFRESH = RefreshConfig(enabled=False)

pytestmark = [pytest.mark.slow, pytest.mark.backendai]

EPOCH = 1_700_000_010  # a multiple of the step
STEP = 15
HISTORY = 7200
AT = EPOCH + HISTORY
#: The stat client's window in this test (24 h in production): kernels whose series ended
#: longer ago are not answered, as their Valkey key would have expired.
WINDOW = 3000.0
CONFIG = FleetConfig(
    agents=2,
    kernels_per_agent=3,
    gpu_agent_ratio=0.5,
    churn=ChurnConfig(mean_lifetime=1200, min_lifetime=120, max_gap=30),
    epoch=EPOCH,
    node_interval=STEP,
    measure_interval=STEP,
    seed=2026,
)


@dataclass
class Churned:
    prometheus: lab.PrometheusProcess
    redis: lab.ManagedProcess
    fleet: SimulatedFleet
    #: kernel id -> (end or None, "live" | "detained" | "recent" | "expired")
    kernels: dict[str, tuple[float | None, str]]


def _kind(end: float | None) -> str:
    if end is None or end > AT:
        return "live"
    last_sample = end + CONFIG.detention
    if last_sample + 300 > AT:  # still exported, or within the lookback of its last sample
        return "detained"
    return "recent" if last_sample >= AT - WINDOW else "expired"


@pytest.fixture(scope="module")
def churned() -> Iterator[Churned]:
    text = fleet_openmetrics(CONFIG, EPOCH, AT, STEP)
    with lab.start_prometheus(openmetrics=text) as prom, lab.start_redis() as redis:
        now = [0.0]
        publisher = ValkeyPublisher.from_url(redis.url, node_interval=STEP, auto_flush=False)
        fleet = SimulatedFleet(CONFIG, clock=lambda: now[0], listeners=[publisher])

        async def publish() -> None:
            for t in range(EPOCH, AT + 1, STEP):
                now[0] = t
                await replay(fleet, publisher, [t])
            await publisher.close()

        asyncio.run(publish())
        # Every kernel the agent wrote a key for (agent keys are not UUIDs).
        keys = asyncio.run(_keys(redis.url))
        ids: dict[str, tuple[float | None, str]] = {}
        for key in sorted(keys):
            with contextlib.suppress(ValueError):
                uuid.UUID(key)
                end = fleet.kernel(key).end
                ids[key] = (end, _kind(end))
        yield Churned(prom, redis, fleet, ids)


async def _keys(url: str) -> list[str]:
    from redis.asyncio import from_url

    client = from_url(url)
    try:
        return [k.decode() for k in await client.keys("*")]
    finally:
        await client.aclose()


class CountingClient:
    """Forwards to a real client and counts the queries."""

    def __init__(self, inner: PrometheusClient) -> None:
        self.inner = inner
        self.queries: list[str] = []

    @property
    def timeout(self) -> float:
        return self.inner.timeout

    async def query_vector(self, query: str, **kwargs: Any) -> Any:
        self.queries.append(query)
        return await self.inner.query_vector(query, **kwargs)

    async def query_range(self, query: str, **kwargs: Any) -> Any:
        return await self.inner.query_range(query, **kwargs)

    async def rules(self, *args: Any) -> Any:
        return await self.inner.rules(*args)

    async def aclose(self) -> None:
        return None  # borrowed: the test closes the real client


def test_the_fleet_has_every_kind_of_kernel(churned: Churned) -> None:
    kinds = [kind for _, kind in churned.kernels.values()]
    assert {kinds.count(k) > 0 for k in ("live", "detained", "recent", "expired")} == {True}


async def test_usage_statistics_of_terminated_kernels_agree(churned: Churned) -> None:
    answered = {k for k, (_, kind) in churned.kernels.items() if kind != "expired"}
    expired = set(churned.kernels) - answered
    async with (
        real_valkey_stat(churned.redis.url) as valkey,
        PrometheusClient(churned.prometheus.url) as prom,
    ):
        counting = CountingClient(prom)
        async with LiveStats(
            counting, clock=lambda: AT, refresh=NO_REFRESH
        ) as stats:
            # The terminated lookups use the LiveStats' clock (pinned to AT here).
            client = PromstatStatClient(stats, valkey, terminated_window=WINDOW)
            ids = list(churned.kernels)
            # The raw reads first: every kernel redis has is answered the same, except those
            # gone from Prometheus for longer than the window.
            old_raw = await valkey.get_user_kernel_statistics_batch(ids)
            new_raw = await client.get_user_kernel_statistics_batch(ids)
            assert all(v is not None for v in old_raw)  # the key outlives the kernel
            for k, old, new in zip(ids, old_raw, new_raw, strict=True):
                if k in expired:
                    assert new is None, k
                    continue
                assert new is not None, (k, churned.kernels[k])
                old_stat, new_stat = msgpack.unpackb(old), msgpack.unpackb(new)
                for path in (
                    ("cpu_used", "current"),
                    ("mem", "capacity"),
                    ("io_read", "current"),
                    ("io_write", "current"),
                    ("io_scratch_size", "stats.max"),
                    ("cpu_util", "current"),  # the agent's own rate: frozen, so exact too
                ):
                    assert old_stat[path[0]][path[1]] == new_stat[path[0]][path[1]], (k, path)
            # Batched: one last-seen query for all ids the live path had nothing for, then the
            # final stats of all of them packed per stat (raw plan: five stats), not per kernel.
            last_seen = [q for q in counting.queries if "(timestamp(" in q]
            finals = [q for q in counting.queries if q.startswith("last_over_time(")]
            recent = sum(kind == "recent" for _, kind in churned.kernels.values())
            assert len(last_seen) == 1
            assert 5 <= len(finals) <= 2 * 5 < 5 * recent, (len(finals), recent)

            # The consumers, on the kernels both sources answer.
            rows = [
                kernel_row(churned.fleet, k, ended=end or AT)
                for k, (end, kind) in churned.kernels.items()
                if kind != "expired"
            ]
            old_u, new_u = [await usage_groups(c, rows) for c in (valkey, client)]
            assert old_u == new_u
            assert all(u.mem_used > 0 for _, u in old_u)
            old_p, new_p = [await project_stats(c, rows) for c in (valkey, client)]
            assert old_p == new_p
            old_m, new_m = [
                await monthly_stats(c, [str(r.id) for r in rows]) for c in (valkey, client)
            ]
            assert [{k: v for k, v in b.items() if k != "date"} for b in old_m] == [
                {k: v for k, v in b.items() if k != "date"} for b in new_m
            ]
            # Answers for the terminated are final: asked again, Prometheus is asked only
            # whether the never-found ids have appeared (they may be kernels yet to start);
            # the terminated ones come from the caches (the live ones from the shared cache).
            before = len(counting.queries)
            assert await client.get_user_kernel_statistics_batch(ids) == new_raw
            (again,) = counting.queries[before:]
            assert "(timestamp(" in again
            assert {k for k in churned.kernels if k in again} == expired


async def test_without_a_window_a_gone_kernel_is_none(churned: Churned) -> None:
    recent = [k for k, (_, kind) in churned.kernels.items() if kind == "recent"]
    async with LiveStats(
        churned.prometheus.url, clock=lambda: AT, refresh=NO_REFRESH
    ) as stats:
        client = PromstatStatClient(stats, terminated_window=None)
        assert await client.get_user_kernel_statistics_batch(recent) == [None] * len(recent)
        with_window = PromstatStatClient(stats, terminated_window=WINDOW, clock=lambda: float(AT))
        assert None not in await with_window.get_session_statistics_batch(recent)
        assert await with_window.get_kernel_statistics(recent[0]) is not None
