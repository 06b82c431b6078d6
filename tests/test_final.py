"""Final stats of terminated kernels (promstat.final) on a real Prometheus with history.

The data: a churning simulated fleet backfilled every 15 s for an hour (raw series: kernels
start, terminate at integer times off the scrape grid, stay frozen for the detention, vanish),
plus a hand-written recorded ``live_stat`` family for kernels ``rec-NNN`` whose ``cpu_util``
rate drops to 0 and whose ``mem`` freezes after their termination, as the rules record over a
plain exporter's detained series (raw counters only). The reference for "final" is the live
planner evaluated an instant before the termination. The fleet publishes the agent-computed
``value_type="rate"`` series (stair-step counters: agents measure every 30 s, on their own
timer); a second, smaller history from a plain exporter (raw counters only) checks the
``rate()`` fallback, where evaluating after the termination would read diluted rates.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _support.waiting import poll_until

from promstat.agent.exporter import ExporterServer, UtilizationExporter
from promstat.client import PrometheusClient
from promstat.errors import ConfigError, TransportError
from promstat.final import DEFAULT_OFFSET, FinalConfig, FinalStats
from promstat.generate.rules import write_rules
from promstat.planner import PlannerConfig
from promstat.profile import RuleProfile
from promstat.promql import parse_duration
from promstat.selfmetrics import PromstatMetrics
from promstat.service import LiveStats
from promstat.testing import lab
from promstat.testing.fake import openmetrics_text
from promstat.testing.sim import ChurnConfig, FleetConfig, SimulatedFleet, fleet_openmetrics
from promstat.testing.stub import StubAPI

pytestmark = pytest.mark.slow

T0 = 1_700_000_040  # a multiple of 60: samples on the 15 s grid
STEP = 15
T_END = T0 + 3600
DETENTION = 600.0
LOOKBACK = 300.0
CONFIG = FleetConfig(
    agents=2,
    kernels_per_agent=12,
    gpu_agent_ratio=0.5,
    seed=11,
    churn=ChurnConfig(mean_lifetime=900.0, min_lifetime=120.0, max_gap=10.0),
    epoch=T0,
    detention=DETENTION,
)
REC = "kernel_metric:backendai_container_utilization:live_stat"
N_REC = 60
GiB = 1 << 30


def _rec_end(i: int) -> float:
    return T0 + 400 + 37 * i + 0.25  # distinct times, never on the sample grid


def _recorded_samples() -> Iterator[tuple[str, dict[str, str], float, float]]:
    for i in range(N_REC):
        kernel, end = f"rec-{i:03d}", _rec_end(i)
        for t in range(T0, T_END + 1, STEP):
            if t >= end + DETENTION:
                break
            live = t < end
            step = (t if live else math.floor((end - T0) / STEP) * STEP + T0) - T0
            labels = {"kernel_id": kernel, "container_metric_name": "", "stat": ""}
            rows = (
                ("cpu_util", "current", 10.0 * (i + 1) if live else 0.0),
                ("cpu_util", "capacity", 1000.0),
                ("mem", "current", float(GiB + 1000 * i + step)),
                ("mem", "capacity", float(8 * GiB)),
            )
            for metric, stat, value in rows:
                yield REC, {**labels, "container_metric_name": metric, "stat": stat}, t, value


#: A kernel whose agent stopped reporting at T0 + 600; the manager recorded its termination
#: half an hour later.
SILENT, SILENT_END = "rec-silent", T0 + 600 + 1800.0


def _silent_samples() -> Iterator[tuple[str, dict[str, str], float, float]]:
    labels = {"kernel_id": SILENT, "container_metric_name": "", "stat": ""}
    for t in range(T0, T0 + 601, STEP):
        for metric, stat, value in (("cpu_util", "current", 777.0), ("mem", "current", 5.0)):
            yield REC, {**labels, "container_metric_name": metric, "stat": stat}, t, value


def _text() -> str:
    raw = fleet_openmetrics(CONFIG, T0, T_END, STEP)
    assert raw.endswith("# EOF\n")
    recorded = openmetrics_text([*_recorded_samples(), *_silent_samples()])
    return raw[: -len("# EOF\n")] + recorded


@pytest.fixture(scope="module")
def model() -> SimulatedFleet:
    """The fleet's model (no servers): ids, termination times, exact values."""
    return SimulatedFleet(CONFIG, clock=lambda: float(T_END))


@pytest.fixture(scope="module")
def terminated(model: SimulatedFleet) -> dict[str, float]:
    """Kernels that terminated inside the data with at least two live samples, -> end."""
    out: dict[str, float] = {}
    for t in range(T0, T_END, STEP):
        for k in model.kernel_ids(t):
            end = model.kernel(k).end
            if (
                end is not None
                and end <= T_END - STEP
                and end - max(T0, model.kernel(k).start) > 60
            ):
                out[k] = float(end)
    return out


@pytest.fixture(scope="module")
def prom() -> Iterator[lab.PrometheusProcess]:
    """A real Prometheus holding the hour of history."""
    with lab.start_prometheus(openmetrics=_text()) as proc:
        yield proc


class Flaky(StubAPI):
    """A client wrapper that fails the next ``fail`` calls, or adds a warning to answers."""

    def __init__(self, client: PrometheusClient) -> None:
        self.client = client
        self.fail = 0
        self.warn = False
        self.calls = 0

    async def query_vector(self, query: str, **kwargs: Any) -> Any:
        self.calls += 1
        if self.fail:
            self.fail -= 1
            raise TransportError("injected failure")
        res = await self.client.query_vector(query, **kwargs)
        return dataclasses.replace(res, warnings=("partial answer",)) if self.warn else res


@pytest.fixture
async def client(
    prom: lab.PrometheusProcess,
) -> AsyncIterator[tuple[PrometheusClient, PromstatMetrics]]:
    metrics = PromstatMetrics()
    async with PrometheusClient(prom.url, observer=metrics) as c:
        yield c, metrics


def _stats(
    c: Any, metrics: PromstatMetrics, *, recorded: bool, now: float = T_END + 86400.0
) -> LiveStats:
    config = PlannerConfig(use_recorded=recorded, fleet_fraction=None)
    return LiveStats(c, planner=config, metrics=metrics, clock=lambda: now)


async def test_raw_final_stats_equal_the_live_stats_just_before_termination(
    client: tuple[PrometheusClient, PromstatMetrics],
    model: SimulatedFleet,
    terminated: dict[str, float],
) -> None:
    """Every terminated kernel's final stats are what the live path answered an instant
    before its end: exact counter rates (the agent's, between its last two measurements) and
    the last gauges."""
    c, metrics = client
    stats = _stats(c, metrics, recorded=False)
    assert len(terminated) >= 10
    final = await stats.final_stats(terminated)
    for kernel_id, end in terminated.items():
        live = await stats.load_kernels([kernel_id], at=end - DEFAULT_OFFSET)
        assert final[kernel_id] == live[0] is not None, kernel_id
        payload = final[kernel_id]
        assert isinstance(payload, dict)
        rate = model.expected_rate(kernel_id, "cpu_util")
        assert float(payload["cpu_util"]["current"]) == pytest.approx(rate, rel=1e-6)
        last = math.floor((end - T0) / STEP) * STEP + T0
        last = last - STEP if last == end else last
        assert float(payload["mem"]["current"]) == model.sample(kernel_id, "mem", last)[0]
        # During the detention the exporter serves the kernel's series frozen, its
        # agent-computed rate series included: later evaluations keep the last measured rate
        # (as legacy's Valkey key kept the last live_stat), never 0 nor a re-computed one.
        after = await stats.load_kernels([kernel_id], at=end + 2 * STEP)
        assert after[0] is not None
        assert after[0]["cpu_util"]["current"] == payload["cpu_util"]["current"]


#: The same churn from a plain exporter: raw counters only, no agent-computed rate series.
PLAIN = dataclasses.replace(CONFIG, agents=1, kernels_per_agent=8, seed=12, publish_rates=False)
PLAIN_END = T0 + 1800


@pytest.fixture(scope="module")
def plain_prom() -> Iterator[lab.PrometheusProcess]:
    """A real Prometheus holding half an hour of the plain exporter's history."""
    with lab.start_prometheus(openmetrics=fleet_openmetrics(PLAIN, T0, PLAIN_END, STEP)) as proc:
        yield proc


async def test_plain_exporter_final_stats_are_the_rates_before_the_termination(
    plain_prom: lab.PrometheusProcess,
) -> None:
    """Raw counters only (the ``rate()`` fallback over stair steps): the final stats equal the
    live path an instant before the end, within the documented rate bound of the true rate;
    evaluated later, the frozen counters would read 0 — "final" is not "later"."""
    model = SimulatedFleet(PLAIN, clock=lambda: float(PLAIN_END))
    window = parse_duration(RuleProfile().expressions.rate_window)
    ends: dict[str, float] = {}
    for t in range(T0, PLAIN_END, STEP):
        for k in model.kernel_ids(t):
            kernel = model.kernel(k)
            if (
                kernel.end is not None
                and kernel.end - max(T0, kernel.start) > window + STEP
                and kernel.end + window + 2 * STEP <= PLAIN_END
            ):
                ends[k] = float(kernel.end)
    assert len(ends) >= 3
    metrics = PromstatMetrics()
    async with PrometheusClient(plain_prom.url, observer=metrics) as c:
        stats = _stats(c, metrics, recorded=False)
        final = await stats.final_stats(ends)
        for kernel_id, end in ends.items():
            live = await stats.load_kernels([kernel_id], at=end - DEFAULT_OFFSET)
            payload = final[kernel_id]
            assert payload == live[0] is not None, kernel_id
            assert isinstance(payload, dict)
            rate = model.expected_rate(kernel_id, "cpu_util")
            # rate() spans about four measurements: within 25% (rate_window's documented bound)
            assert float(payload["cpu_util"]["current"]) == pytest.approx(rate, rel=0.25)
            later = await stats.load_kernels([kernel_id], at=end + window + STEP)
            assert later[0] is not None and later[0]["cpu_util"]["current"] == "0"


async def test_still_answered_long_after_detention_and_lookback(
    client: tuple[PrometheusClient, PromstatMetrics], terminated: dict[str, float]
) -> None:
    """Long after the series vanished, the live path answers None and final stats remain."""
    c, metrics = client
    stats = _stats(c, metrics, recorded=False)
    kernel_id, end = min(terminated.items(), key=lambda kv: kv[1])
    gone = end + DETENTION + LOOKBACK + 2 * STEP
    assert gone < T_END
    assert (await stats.load_kernels([kernel_id], at=gone)) == [None]
    assert (await stats.final_stats({kernel_id: end}))[kernel_id] is not None
    # a day later, through the mixed batch call
    (payload,) = await stats.load_kernel_stats([(kernel_id, end)], at=end + 86400)
    assert isinstance(payload, dict) and "cpu_util" in payload


async def test_many_termination_times_cost_few_queries_and_a_second_call_none(
    client: tuple[PrometheusClient, PromstatMetrics], terminated: dict[str, float]
) -> None:
    """Raw plan: kernels with all-different termination times share packed @-queries; the
    second call is answered from the cache with 0 queries."""
    c, metrics = client
    stats = _stats(c, metrics, recorded=False)
    await stats.planner.detect("kernel", at=T_END + 86400.0)
    assert len(set(terminated.values())) > 0.9 * len(terminated)  # nearly all different
    before = metrics.snapshot().queries
    first = await stats.load_kernel_stats(list(terminated.items()))
    cost = metrics.snapshot().queries - before
    shapes = len(stats.planner.shapes("kernel", recorded=False))
    # one query per kernel and stat would be shapes * n; packed it is a few per shape
    assert cost <= shapes * math.ceil(len(terminated) / 10), cost
    assert cost < len(terminated)
    assert all(isinstance(v, dict) for v in first)
    before = metrics.snapshot().queries
    assert await stats.load_kernel_stats(list(terminated.items())) == first
    assert metrics.snapshot().queries == before
    assert len(stats.final) == len(terminated)


async def test_recorded_plan_is_one_query_for_sixty_termination_times(
    client: tuple[PrometheusClient, PromstatMetrics],
) -> None:
    """Recorded plan: 60 kernels, 60 times, one query; values are the last live recorded ones
    (the rate before it dropped to 0), equal to the live planner an instant before the end."""
    c, metrics = client
    stats = _stats(c, metrics, recorded=True)
    ends = {f"rec-{i:03d}": _rec_end(i) for i in range(N_REC)}
    await stats.planner.detect("kernel")
    await stats.learn_profile()  # the rules read, once: not in the counts below
    before = metrics.snapshot().queries
    final = await stats.final_stats(ends)
    assert metrics.snapshot().queries - before == 1
    for i, (kernel_id, end) in enumerate(ends.items()):
        payload = final[kernel_id]
        assert isinstance(payload, dict), kernel_id
        assert payload["cpu_util"]["current"] == str(10 * (i + 1))
        last = math.floor((end - T0) / STEP) * STEP
        assert payload["mem"]["current"] == str(GiB + 1000 * i + last)
        live = await stats.load_kernels([kernel_id], at=end - DEFAULT_OFFSET)
        assert live[0] == payload


async def test_errors_and_partial_answers_are_not_cached(
    client: tuple[PrometheusClient, PromstatMetrics], terminated: dict[str, float]
) -> None:
    """A failed query gives its kernels the error and caches nothing; an answer with warnings
    is returned but asked again next time; a healthy answer is then cached."""
    c, metrics = client
    flaky = Flaky(c)
    stats = _stats(flaky, metrics, recorded=True)
    keys = [(f"rec-{i:03d}", _rec_end(i)) for i in range(3)]
    await stats.planner.detect("kernel")
    await stats.learn_profile()  # the rules read, once: not in the counts below
    flaky.fail = 1
    failed = await stats.load_kernel_stats(keys)
    assert all(isinstance(v, TransportError) for v in failed)
    flaky.warn = True
    partial = await stats.load_kernel_stats(keys)
    assert all(isinstance(v, dict) for v in partial)
    flaky.warn = False
    calls = flaky.calls
    healthy = await stats.load_kernel_stats(keys)
    assert healthy == partial and flaky.calls == calls + 1
    assert await stats.load_kernel_stats(keys) == healthy
    assert flaky.calls == calls + 1


async def test_recent_terminations_are_not_cached(
    client: tuple[PrometheusClient, PromstatMetrics],
) -> None:
    """Within ``settle`` of now late samples may still land: such answers are re-asked."""
    c, metrics = client
    end = _rec_end(0)
    stats = _stats(c, metrics, recorded=True, now=end + 5)
    await stats.planner.detect("kernel")
    await stats.learn_profile()  # the rules read, once: not in the counts below
    before = metrics.snapshot().queries
    await stats.final_stats({"rec-000": end})
    await stats.final_stats({"rec-000": end})
    assert metrics.snapshot().queries - before == 2
    assert len(stats.final) == 0


async def test_mixed_batch_keeps_order_and_live_kernels_use_the_live_path(
    client: tuple[PrometheusClient, PromstatMetrics],
    model: SimulatedFleet,
    terminated: dict[str, float],
) -> None:
    """Live kernels are answered as load_kernels at the pinned time; terminated ones with
    their final stats; one kernel asked at two termination times gets two answers."""
    c, metrics = client
    stats = _stats(c, metrics, recorded=False)
    ordered = sorted(terminated.items(), key=lambda kv: kv[1])
    k1, e1 = ordered[0]
    at = e1 + 30  # k1 has ended, k2 (ending later) was still live then
    k2, e2 = next(kv for kv in ordered if kv[1] > at)
    live = model.kernel_ids(at)[0]
    got = await stats.load_kernel_stats([(k1, e1), (live, None), (k2, e2), (k1, e1 - 60)], at=at)
    assert got[0] == (await stats.final_stats({k1: e1}))[k1]
    assert got[1] == (await stats.load_kernels([live], at=at))[0] is not None
    assert got[2] == (await stats.load_kernels([k2], at=at))[0] is not None
    assert got[3] == (await stats.load_kernels([k1], at=e1 - 60 - DEFAULT_OFFSET))[0]
    assert got[3] != got[0]


async def test_a_non_finite_time_is_an_error_of_its_key_only(
    client: tuple[PrometheusClient, PromstatMetrics],
) -> None:
    """A NaN termination time gives that key a ConfigError naming it; the others answer."""
    c, metrics = client
    stats = _stats(c, metrics, recorded=True)
    bad, good = await stats.load_kernel_stats([("rec-001", math.nan), ("rec-002", _rec_end(2))])
    assert isinstance(bad, ConfigError) and "rec-001" in str(bad)
    assert isinstance(good, dict)


async def test_victoria_metrics_answers_the_same_final_stats(
    start_victoria_metrics: Callable[..., lab.VictoriaMetricsProcess],
) -> None:
    """The @-pinned terms work on VictoriaMetrics too (MetricsQL, 16 KiB query limit)."""
    vm = start_victoria_metrics()
    vm.import_openmetrics(openmetrics_text(_recorded_samples()))
    metrics = PromstatMetrics()
    async with PrometheusClient(vm.url, observer=metrics) as c:
        stats = _stats(c, metrics, recorded=True)
        ends = {f"rec-{i:03d}": _rec_end(i) for i in range(N_REC)}
        final = await stats.final_stats(ends)
    for i, kernel_id in enumerate(ends):
        payload = final[kernel_id]
        assert isinstance(payload, dict), (kernel_id, payload)
        assert payload["cpu_util"]["current"] == str(10 * (i + 1))
        last = math.floor((ends[kernel_id] - T0) / STEP) * STEP
        assert payload["mem"]["current"] == str(GiB + 1000 * i + last)


async def test_final_stats_survive_staleness_markers(
    start_prometheus: Callable[..., lab.PrometheusProcess], tmp_path: Path
) -> None:
    """An exporter without detention drops a kernel's series at once; Prometheus marks them
    (and the rules' outputs) stale at the next scrape. A termination the manager records a few
    seconds later still has final stats on the recorded plan — the last recorded values
    within the lookback — while the live path answers None there."""
    gone, alive = "stale-0000", "alive-0000"
    exporter = UtilizationExporter("agent-stale", detention=0)
    t0 = time.time()
    running = {gone, alive}
    for kernel_id in running:
        exporter.add_kernel(kernel_id)

    def measure() -> None:  # on every scrape: 500 msec/s of CPU, 1 GiB of memory
        now = time.time()
        for kernel_id in running:
            exporter.observe_container(kernel_id, "cpu_util", 500.0 * (now - t0), 1000.0)
            exporter.observe_container(kernel_id, "mem", float(GiB), float(4 * GiB))

    exporter.add_collect_hook(measure)
    written = write_rules(tmp_path, RuleProfile.parse(interval="1s", window="10s", lookback="10s"))
    server = ExporterServer(exporter)
    await server.start()
    try:
        prom = await asyncio.to_thread(
            start_prometheus,
            scrape_targets=[server.target],
            scrape_interval="1s",
            evaluation_interval="1s",
            rule_files=[p for p in written if p.parent == tmp_path],
        )
        metrics = PromstatMetrics()
        profile = RuleProfile(interval=1.0, window=10.0, lookback=10.0)
        async with PrometheusClient(prom.url, observer=metrics) as c:
            ready = (
                f'{REC}{{kernel_id="{gone}",container_metric_name="cpu_util",stat="current"}} > 0'
            )
            for _ in range(600):  # a safety net, not a speed requirement
                if (await c.query_vector(ready)).series:
                    break
                await asyncio.sleep(0.2)
            else:
                pytest.fail("the recording rules produced no rate")
            # a few more evaluations of the rate before the kernel goes
            await poll_until(
                lambda: c.query_vector(f"count_over_time(({ready})[10s:1s])"),
                lambda v: bool(v.series) and float(v.series[0].value[1]) >= 3,
                timeout=60,
                interval=0.2,
                what="three evaluations of the recorded rate",
            )
            running.discard(gone)
            exporter.remove_kernel(gone)
            ended = time.time()
            terminated_at = ended + 5.0  # recorded by the manager after the staleness
            # behaviour, not synchronisation: the manager reads after the termination time
            await asyncio.sleep(terminated_at + 1.0 - time.time())
            stats = LiveStats(c, profile=profile, metrics=metrics)
            assert await stats.load_kernels([gone], at=terminated_at) == [None]
            final = (await stats.final_stats({gone: terminated_at}))[gone]
            assert isinstance(final, dict), final
            assert float(final["cpu_util"]["current"]) == pytest.approx(500.0, rel=0.25)
            assert final["mem"]["current"] == str(GiB)
            assert "final/recorded" in metrics.snapshot().plans
    finally:
        await server.stop()


async def test_a_kernel_silent_at_its_termination_gets_its_last_stats_within_a_day(
    client: tuple[PrometheusClient, PromstatMetrics],
) -> None:
    """Its agent stopped reporting 30 min before the recorded termination: nothing within the
    lookback, so one more query looks back 24 h (legacy's Valkey TTL) for just that kernel."""
    c, metrics = client
    stats = _stats(c, metrics, recorded=True)
    await stats.planner.detect("kernel")
    await stats.learn_profile()  # the rules read, once: not in the counts below
    assert await stats.load_kernels([SILENT], at=SILENT_END) == [None]
    before = metrics.snapshot().queries
    final = await stats.final_stats({SILENT: SILENT_END, "rec-000": _rec_end(0), "nobody": T_END})
    assert metrics.snapshot().queries - before == 2
    silent = final[SILENT]
    assert isinstance(silent, dict)
    assert silent["cpu_util"]["current"] == "777" and silent["mem"]["current"] == "5"
    assert isinstance(final["rec-000"], dict) and final["nobody"] is None
    assert "final/recorded+silent" in metrics.snapshot().plans
    # disabled: the kernel has no final stats
    strict = _stats(c, metrics, recorded=True)
    strict.final = FinalStats(c, strict.planner, config=FinalConfig(silent_window=None))
    assert (await strict.final_stats({SILENT: SILENT_END}))[SILENT] is None
