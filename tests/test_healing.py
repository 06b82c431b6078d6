"""Faults that heal, heal at once: the first load after a server recovers gets data.

A failed plan detection used to be remembered for two seconds, and every load in that window
got the remembered error without a query being sent: a Prometheus restart cost every page two
seconds more than the outage. Now a failed detection only makes later loads skip detection (they
take the last plan that worked, or the raw plan) and every load sends its own queries. Each test
here loads a page while the server fails, makes it healthy, and requires the very next load to
get data from queries that reached the server, cold (the fault from the start) and warm (after
loads that worked).
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from _support.waiting import poll_until

from promstat.api import VectorResult
from promstat.client import ClientConfig, RetryPolicy
from promstat.conventions import SeriesNames
from promstat.errors import PromstatError, UnavailableError
from promstat.loader import CacheConfig
from promstat.planner import Planner, PlannerConfig
from promstat.service import LiveStats
from promstat.testing import lab
from promstat.testing.fake import FakePrometheus, Reply
from promstat.testing.sim import FleetConfig, SimulatedFleet
from promstat.testing.stub import StubAPI
from promstat.wire import VectorSeries

K = "11111111-1111-4111-8111-111111111111"
IDS = [K, "22222222-2222-4222-8222-222222222222"]
ROW = {"kernel_id": K, "container_metric_name": "mem", "stat": "current"}
HEALTHY = Reply.vector([(ROW, 1024)])
FAULTS: dict[str, Reply] = {
    "html_502": Reply.bad_gateway(),
    "starting_503": Reply.prometheus_starting(),
    "unavailable": Reply.api_error("unavailable"),
    "truncated_json": Reply(status=200, body=b'{"status":"success","data":'),
    "wrong_shape": Reply.matrix([({"kernel_id": K}, [(1, 1)])]),
    "dropped": Reply.dropped(),
}


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakePrometheus, str]]:
    """A FakePrometheus listening on a free loopback port, and its URL."""
    server = FakePrometheus()
    url = await server.start()
    try:
        yield server, url
    finally:
        await server.stop()


def stats_for(url: str) -> LiveStats:
    """A LiveStats that caches nothing (every load asks) and retries nothing (fast faults)."""
    return LiveStats(
        url,
        cache=CacheConfig(ttl=0),
        client=ClientConfig(timeout=2.0, retry=RetryPolicy(attempts=1)),
    )


async def assert_heals(stats: LiveStats, fake: FakePrometheus) -> None:
    """Make ``fake`` healthy; the next load must get data from queries sent to it."""
    fake.set_reply("query", HEALTHY)
    before = len(fake.requests)
    first, second = await stats.load_kernels(IDS)
    assert isinstance(first, dict), first
    assert first["mem"]["current"] == "1024"
    assert second is None  # no data for it, and no error either
    assert len(fake.requests) > before  # answered by the server, not from memory


@pytest.mark.parametrize("fault", list(FAULTS), ids=list(FAULTS))
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
async def test_the_load_after_a_fault_gets_data(
    fake: tuple[FakePrometheus, str], fault: str, warm: bool
) -> None:
    """Each fault, then healthy: the next load has data."""
    server, url = fake
    async with stats_for(url) as stats:
        if warm:
            server.set_reply("query", HEALTHY)
            assert isinstance((await stats.load_kernels(IDS))[0], dict)
        server.set_reply("query", FAULTS[fault])
        during = await stats.load_kernels(IDS)
        assert all(isinstance(a, PromstatError) for a in during)
        again = await stats.load_kernels(IDS)  # still failing, within the detection backoff
        assert all(isinstance(a, PromstatError) for a in again)
        await assert_heals(stats, server)


async def test_a_server_that_starts_late_answers_at_once() -> None:
    """Nothing listening (connection refused), then the server starts on that port."""
    port = lab.free_port()
    url = f"http://127.0.0.1:{port}"
    server = FakePrometheus()
    async with stats_for(url) as stats:
        during = await stats.load_kernels(IDS)
        assert all(isinstance(a, PromstatError) for a in during)
        await server.start(port=port)
        try:
            await assert_heals(stats, server)
        finally:
            await server.stop()


async def test_a_restarted_server_answers_at_once(fake: tuple[FakePrometheus, str]) -> None:
    """Healthy, stopped (refused), started again on the same port: the next load has data."""
    server, url = fake
    port = int(url.rsplit(":", 1)[1])
    async with stats_for(url) as stats:
        server.set_reply("query", HEALTHY)
        assert isinstance((await stats.load_kernels(IDS))[0], dict)
        await server.stop()
        during = await stats.load_kernels(IDS)
        assert all(isinstance(a, PromstatError) for a in during)
        await server.start(port=port)
        await assert_heals(stats, server)



async def test_a_restarted_real_prometheus_answers_the_next_load(
    start_prometheus: Callable[..., lab.PrometheusProcess], tmp_path: Path
) -> None:
    """A real Prometheus stopped (connection refused) and started again on its port and data:
    the first load after it is ready has data, though the last detection failed a moment ago
    and detection is backed off for a minute."""
    async with SimulatedFleet(
        FleetConfig(agents=1, kernels_per_agent=2, gpu_agent_ratio=0.0, churn=None)
    ) as fleet:
        prom = await asyncio.to_thread(
            start_prometheus,
            scrape_targets=fleet.targets,
            scrape_interval="1s",
            data_dir=tmp_path / "prometheus",
        )
        ids = fleet.kernel_ids()
        await _wait_for(prom, f'count({SeriesNames().container_metric}{{value_type="current"}})')
        config = PlannerConfig(detect_ttl=0, detect_backoff=60)  # detect at every load
        async with LiveStats(
            prom.url,
            planner=config,
            cache=CacheConfig(ttl=0),
            client=ClientConfig(timeout=2.0, retry=RetryPolicy(attempts=1)),
        ) as stats:
            assert all(isinstance(p, dict) for p in await stats.load_kernels(ids))
            await asyncio.to_thread(prom.stop)
            during = await stats.load_kernels(ids)
            assert all(isinstance(a, PromstatError) for a in during)
            again = await asyncio.to_thread(_restart, prom)
            try:
                before = stats.metrics.snapshot().queries
                after = await stats.load_kernels(ids)
                assert all(isinstance(p, dict) and "mem" in p for p in after), after
                assert stats.metrics.snapshot().queries > before
            finally:
                await asyncio.to_thread(again.stop)


def _restart(old: lab.PrometheusProcess) -> lab.PrometheusProcess:
    """Start ``old``'s command line again: the same port, config and TSDB."""
    proc = lab.PrometheusProcess(
        name=old.name, argv=old.argv, port=old.port, data_dir=old.data_dir, owns_data_dir=True
    )
    proc.wait_ready(lambda: _ready(proc.url), timeout=60.0, what="ready")
    return proc


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2.0) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


async def _wait_for(prom: lab.PrometheusProcess, query: str) -> None:
    """Poll until ``query`` has a non-empty answer (a condition, not a fixed delay)."""
    await poll_until(
        lambda: asyncio.to_thread(prom.query, query), bool, timeout=60, interval=0.2, what=query
    )


class Scripted(StubAPI):
    """Detection answers come from ``detections`` (an exception is raised); data queries
    answer one memory row for kernel ``K``."""

    def __init__(self, *detections: BaseException | list[dict[str, str]]) -> None:
        self.detections = list(detections)
        self.sent: list[str] = []

    async def query_vector(self, query: str, *, labels: type[Any], time: Any = None) -> Any:
        self.sent.append(query)
        if query.startswith("count("):
            answer = self.detections.pop(0) if self.detections else []
            if isinstance(answer, BaseException):
                raise answer
            rows = [VectorSeries(msgspec.convert(r, labels), (0.0, "3")) for r in answer]
            return VectorResult(rows)
        row = msgspec.convert({"kernel_id": K, "container_metric_name": "mem", "stat": "current"},
                              labels)
        return VectorResult([VectorSeries(row, (0.0, "1024"))])


async def test_a_failed_detection_takes_the_last_plan_that_worked() -> None:
    """Warm: a detection found the recorded series, the next one fails: the load takes the
    recorded plan it knew (not the 5-shape raw plan), sends its query and has data."""
    outage = UnavailableError(status=503, error="restarting")
    api = Scripted([{"stat": "current"}], outage)
    planner = Planner(api, PlannerConfig(detect_ttl=0, detect_backoff=60))
    first = await planner.kernels([K])
    assert first.plan == "recorded/filtered"
    sent = len(api.sent)
    second = await planner.kernels([K])
    assert second.plan == "recorded/filtered" and second.queries == 1
    assert len(api.sent) == sent + 2  # the failed detection, then the page's own query
    assert isinstance(second.payloads[K], dict)
    # Answered: the backoff ended, the next load detects again.
    sent = len(api.sent)
    await planner.kernels([K])
    assert api.sent[sent].startswith("count(")
    await planner.aclose()
