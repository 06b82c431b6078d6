"""Tests for promstat.planner on real Prometheus and VictoriaMetrics with deterministic data."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from _support.planner_data import (
    AT,
    EXPECTED_AGENTS,
    EXPECTED_KERNELS,
    K1,
    T0,
    scenario_openmetrics,
)

from promstat.client import PrometheusClient
from promstat.errors import BadDataError, QueryTooLargeError, ResponseTooLargeError
from promstat.planner import Planner, PlannerConfig
from promstat.profile import RuleProfile
from promstat.selfmetrics import PromstatMetrics
from promstat.service import LiveStats
from promstat.testing import lab
from promstat.testing.fake import openmetrics_text
from promstat.testing.stub import StubAPI

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scenario_prometheus() -> Iterator[lab.PrometheusProcess]:
    """A real Prometheus holding the backfilled planner scenario."""
    with lab.start_prometheus(openmetrics=scenario_openmetrics()) as proc:
        yield proc


@pytest.fixture
async def client(scenario_prometheus: lab.PrometheusProcess) -> AsyncIterator[PrometheusClient]:
    """A client on the scenario Prometheus that counts its queries."""
    async with PrometheusClient(scenario_prometheus.url, observer=PromstatMetrics()) as c:
        yield c


def raw_config(**kwargs: Any) -> PlannerConfig:
    """Planner settings for the raw (no recording rules) plan."""
    return PlannerConfig(use_recorded=False, **kwargs)


async def test_kernel_payloads_match_the_legacy_shape_exactly(client: PrometheusClient) -> None:
    """Every scenario kernel renders exactly the expected legacy payload (or None)."""
    planner = Planner(client, raw_config())
    out = await planner.kernels(list(EXPECTED_KERNELS), at=AT)
    assert out.plan == "raw/filtered"
    for kernel_id, expected in EXPECTED_KERNELS.items():
        assert out.payloads[kernel_id] == expected, kernel_id


async def test_agent_payloads_match_the_legacy_shape_exactly(client: PrometheusClient) -> None:
    """Agents with several devices rebuild node and device payloads from device series."""
    planner = Planner(client, raw_config())
    out = await planner.agents(list(EXPECTED_AGENTS), at=AT)
    for agent_id, expected in EXPECTED_AGENTS.items():
        assert out.payloads[agent_id] == expected, agent_id


async def test_integral_fields_parse_with_int(client: PrometheusClient) -> None:
    """Fields consumers int() (bytes current/capacity/stats.max, io current) are integer strings."""
    planner = Planner(client, raw_config())
    payload = (await planner.kernels([K1], at=AT)).payloads[K1]
    assert isinstance(payload, dict)
    for metric in ("mem", "io_read", "io_write", "io_scratch_size", "npu_mem"):
        for key in ("current", "capacity", "stats.max"):
            if key in payload[metric]:
                int(payload[metric][key])


async def test_tiny_chunks_give_the_same_answer(client: PrometheusClient) -> None:
    """Splitting the batch into one id per chunk changes the query count, not the payloads."""
    planner = Planner(client, raw_config(max_alternatives=1, concurrency=3, fleet_fraction=None))
    out = await planner.kernels(list(EXPECTED_KERNELS), at=AT)
    assert out.queries == len(planner.shapes("kernel", recorded=False)) * len(EXPECTED_KERNELS)
    assert out.payloads == EXPECTED_KERNELS


async def test_fleet_wide_plan_gives_the_same_answer(client: PrometheusClient) -> None:
    """When a batch covers the whole fleet the unfiltered plan is used, with identical payloads."""
    planner = Planner(client, raw_config(max_alternatives=2, fleet_fraction=0.5))
    out = await planner.kernels(list(EXPECTED_KERNELS), at=AT)
    assert out.plan == "raw/fleet"
    assert out.queries == len(planner.shapes("kernel", recorded=False))
    assert out.payloads == EXPECTED_KERNELS


async def test_final_stats_at_termination_time(client: PrometheusClient) -> None:
    """final_stats evaluates each kernel at its own time (here: before K4 went silent)."""
    stats = LiveStats(client, planner=raw_config())
    out = await stats.final_stats({"44444444-4444-4444-8444-444444444444": T0 + 200, K1: AT})
    assert out[K1] == EXPECTED_KERNELS[K1]
    k4 = out["44444444-4444-4444-8444-444444444444"]
    assert isinstance(k4, dict) and k4["mem"]["current"] == "1073741824"


async def test_history_returns_aligned_rate_series(client: PrometheusClient) -> None:
    """Range queries for several kernels return per-second rates on step-aligned timestamps."""
    stats = LiveStats(client, planner=raw_config())
    res = await stats.kernel_history(
        [K1, "missing"], ["cpu_util", "mem"], start=T0 + 301, end=T0 + 607, step=60
    )
    assert (res.start, res.end) == (T0 + 300, T0 + 600)
    cpu = res.series[K1]["cpu_util"]
    assert [ts for ts, _ in cpu] == [T0 + 300 + 60 * i for i in range(6)]
    assert all(v == 1000.0 for _, v in cpu)
    assert "missing" not in res.series and not res.errors


async def test_a_failing_chunk_fails_only_its_own_ids(
    scenario_prometheus: lab.PrometheusProcess,
) -> None:
    """A chunk whose query errors gives its ids that error; other chunks still answer."""

    class Flaky(StubAPI):
        """A client wrapper that fails queries mentioning one id."""

        def __init__(self, inner: PrometheusClient) -> None:
            self.inner = inner

        async def query_vector(self, query: str, **kwargs: Any) -> Any:
            if "3333" in query:
                raise BadDataError(status=400, error_type="bad_data", error="injected")
            return await self.inner.query_vector(query, **kwargs)

    async with PrometheusClient(scenario_prometheus.url) as inner:
        planner = Planner(Flaky(inner), raw_config(max_alternatives=1, fleet_fraction=None))
        ids = [K1, "33333333-3333-4333-8333-333333333333"]
        out = await planner.kernels(ids, at=AT)
    assert out.payloads[K1] == EXPECTED_KERNELS[K1]
    assert isinstance(out.payloads[ids[1]], BadDataError)


async def test_too_large_chunks_are_split_and_retried(
    scenario_prometheus: lab.PrometheusProcess,
) -> None:
    """A 'too long query' answer halves the chunk until it fits, counting the splits."""

    class Picky(StubAPI):
        """A client wrapper that rejects queries naming more than two ids."""

        def __init__(self, inner: PrometheusClient) -> None:
            self.inner = inner

        async def query_vector(self, query: str, **kwargs: Any) -> Any:
            if sum(k in query for k in uuids) > 2:
                raise QueryTooLargeError(status=422, error_type="422", error="too long query")
            return await self.inner.query_vector(query, **kwargs)

    metrics = PromstatMetrics()
    uuids = [k for k in EXPECTED_KERNELS if "-4" in k]
    async with PrometheusClient(scenario_prometheus.url) as inner:
        planner = Planner(Picky(inner), raw_config(fleet_fraction=None), metrics=metrics)
        out = await planner.kernels(uuids, at=AT)
    assert {k: out.payloads[k] for k in uuids} == {k: EXPECTED_KERNELS[k] for k in uuids}
    assert metrics.snapshot().chunk_splits > 0


class Capped(StubAPI):
    """A client wrapper whose answers are over a size cap when they cover too many kernels.

    It raises what ``PrometheusClient(max_response_bytes=...)`` raises: a fleet-wide query
    (naming no id) or one naming more than ``most`` of ``ids`` is "too large".
    """

    def __init__(self, inner: PrometheusClient, ids: list[str], most: int) -> None:
        self.inner, self.ids, self.most = inner, ids, most
        self.oversized = 0

    async def query_vector(self, query: str, **kwargs: Any) -> Any:
        named = sum(k in query for k in self.ids)
        if not query.startswith("count(") and not 0 < named <= self.most:
            self.oversized += 1
            raise ResponseTooLargeError(limit=4096, url="capped", query=query)
        return await self.inner.query_vector(query, **kwargs)


async def test_oversized_answers_are_split_like_too_large_queries(
    scenario_prometheus: lab.PrometheusProcess,
) -> None:
    """Over the response cap: a chunk is halved, a fleet-wide query falls back to the chunks."""
    uuids = [k for k in EXPECTED_KERNELS if "-4" in k]
    expected = {k: EXPECTED_KERNELS[k] for k in uuids}
    async with PrometheusClient(scenario_prometheus.url) as inner:
        metrics = PromstatMetrics()
        halving = Capped(inner, uuids, most=1)
        planner = Planner(halving, raw_config(fleet_fraction=None), metrics=metrics)
        out = await planner.kernels(uuids, at=AT)
        assert {k: out.payloads[k] for k in uuids} == expected
        assert halving.oversized > 0 and metrics.snapshot().chunk_splits > 0
        fleet = Capped(inner, uuids, most=2)
        planner = Planner(fleet, raw_config(max_alternatives=2, fleet_fraction=0.5))
        out = await planner.kernels(uuids, at=AT)
    assert out.plan == "raw/fleet"
    assert {k: out.payloads[k] for k in uuids} == expected
    # every fleet-wide shape was refused once, and nothing else was
    assert fleet.oversized == len(planner.shapes("kernel", recorded=False))


def _recorded_fleet(n: int) -> str:
    """Recorded-series samples for ``n`` kernels (as the rules would have written them)."""
    rows = []
    for i in range(n):
        kid = str(uuid.UUID(int=i + 1, version=4))
        base = {"kernel_id": kid, "container_metric_name": "cpu_util"}
        for stat, value in (
            ("current", 500.0),
            ("capacity", 1000.0),
            ("max", 600.0),
            ("avg", 450.0),
        ):
            rows.append(
                (
                    "kernel_metric:backendai_container_utilization:live_stat",
                    {**base, "stat": stat},
                    T0 + 600,
                    value,
                )
            )
    return openmetrics_text(rows)


async def test_a_1000_kernel_page_costs_at_most_four_queries(
    start_prometheus: Callable[..., lab.PrometheusProcess],
) -> None:
    """With recorded series a 1,000-kernel batch is answered with <= 4 queries (+1 detection)."""
    prom = start_prometheus(openmetrics=_recorded_fleet(2500))
    metrics = PromstatMetrics()
    async with PrometheusClient(prom.url, observer=metrics) as client:
        planner = Planner(client, PlannerConfig(), metrics=metrics)
        ids = [str(uuid.UUID(int=i + 1, version=4)) for i in range(1000)]
        out = await planner.kernels(ids, at=T0 + 607)
        assert out.plan == "recorded/filtered"
        assert out.queries <= 4
        assert metrics.snapshot().queries == out.queries + 1  # + one cached detection query
        first = out.payloads[ids[0]]
        assert first == {
            "cpu_util": {
                "current": "500",
                "capacity": "1000",
                "pct": "50",
                "unit_hint": "millicores",
                "stats.max": "600",
                "stats.avg": "450",
            }
        }
        assert all(isinstance(out.payloads[i], dict) for i in ids)
        again = await planner.kernels(ids[:10], at=T0 + 607)
        assert again.queries == 1 and metrics.snapshot().queries == out.queries + 2


async def test_victoria_metrics_16k_limit_with_2000_kernels(
    start_victoria_metrics: Callable[..., lab.VictoriaMetricsProcess],
) -> None:
    """On VictoriaMetrics (16 KiB query limit) a 2,000-kernel raw batch is chunked and complete."""
    rows = []
    ids = [str(uuid.UUID(int=(i + 1) * 7919, version=4)) for i in range(2000)]
    for i, kid in enumerate(ids):
        labels = {
            "container_metric_name": "mem",
            "agent_id": "a",
            "kernel_id": kid,
            "session_id": "s",
            "user_id": "u",
            "project_id": "p",
        }
        for step in range(3):
            t = T0 + 480 + 60 * step
            rows.append(
                (
                    "backendai_container_utilization",
                    {**labels, "value_type": "current"},
                    t,
                    float(i),
                )
            )
            rows.append(
                ("backendai_container_utilization", {**labels, "value_type": "capacity"}, t, 4000.0)
            )
    vm = start_victoria_metrics(openmetrics=openmetrics_text(rows))
    metrics = PromstatMetrics()
    async with PrometheusClient(vm.url, observer=metrics) as client:
        # the fleet-wide plan is off: this test is about chunking under the 16 KiB limit
        planner = Planner(client, raw_config(fleet_fraction=None), metrics=metrics)
        out = await planner.kernels(ids, at=T0 + 607)
    snap = metrics.snapshot()
    assert snap.query_errors == {} and snap.chunk_splits == 0
    assert out.queries > len(planner.shapes("kernel", recorded=False))  # it had to chunk
    for i, kid in enumerate(ids):
        payload = out.payloads[kid]
        assert isinstance(payload, dict), kid
        assert payload["mem"]["current"] == str(i)
        assert payload["mem"]["capacity"] == "4000"
    assert RuleProfile().window == 300.0


async def test_ids_missing_from_recorded_series_fall_back_to_raw(
    start_prometheus: Callable[..., lab.PrometheusProcess],
) -> None:
    """A kernel with raw data but no recorded series yet is answered by the raw expressions."""
    text = _recorded_fleet(3).replace("# EOF\n", "") + openmetrics_text(
        [
            (
                "backendai_container_utilization",
                {
                    "container_metric_name": "mem",
                    "kernel_id": "fresh",
                    "agent_id": "a",
                    "session_id": "s",
                    "user_id": "u",
                    "project_id": "p",
                    "value_type": vt,
                },
                T0 + 600,
                value,
            )
            for vt, value in (("current", 512.0), ("capacity", 1024.0))
        ]
    )
    prom = start_prometheus(openmetrics=text)
    ids = [str(uuid.UUID(int=1, version=4)), "fresh", "unknown"]
    async with PrometheusClient(prom.url) as client:
        out = await Planner(client, PlannerConfig()).kernels(ids, at=T0 + 607)
        forced = await Planner(client, PlannerConfig(use_recorded=True)).kernels(ids, at=T0 + 607)
    assert out.plan == "recorded/filtered+raw"
    assert isinstance(out.payloads[ids[0]], dict)
    fresh = out.payloads["fresh"]
    assert isinstance(fresh, dict) and fresh["mem"]["pct"] == "50"
    assert out.payloads["unknown"] is None
    assert forced.payloads["fresh"] is None  # a forced recorded plan never falls back
