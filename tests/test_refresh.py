"""Tests for promstat.refresh: refresh-ahead of watched kernels and agents.

Semantics, failures and timing run against a fake planner call and a fake clock whose
``sleep`` wakes only when the test advances time, so every schedule is exact. That it works
end to end — the background refresh of a real Prometheus through :class:`LiveStats`, rule
phases read from ``/api/v1/rules``, the planner's normal chunks — runs on a real Prometheus
scraping a simulated fleet with the generated rules loaded.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import math
import random
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from _support.waiting import loop_turns, poll_until

from promstat.client import PrometheusClient
from promstat.conventions import SeriesNames
from promstat.errors import ConfigError, ExecutionError, PromstatError, TransportError
from promstat.generate.rules import write_rules
from promstat.loader import CacheConfig
from promstat.payload import FrozenDict
from promstat.planner import _BACKGROUND, BatchOutcome, PlannerConfig
from promstat.profile import RuleProfile
from promstat.refresh import RefreshConfig, Refresher, WatchedLevel, parse_rfc3339
from promstat.selfmetrics import PromstatMetrics
from promstat.service import LiveStats
from promstat.testing import lab
from promstat.testing.sim import FleetConfig, SimulatedFleet
from promstat.testing.stub import StubAPI
from promstat.wire import Rule, RuleGroup

INTERVAL = 10.0
T0 = 1_700_000_000.0


class FakeClock:
    """Wall clock plus a ``sleep`` that returns only when :meth:`advance` passes its end."""

    def __init__(self, now: float = T0) -> None:
        self.now = now
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        self._sleepers.append((self.now + seconds, self._seq, fut))
        await fut

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking each sleeper at its own instant, in order."""
        target = self.now + seconds
        await _settle()
        while True:
            due = sorted(s for s in self._sleepers if s[0] <= target and not s[2].done())
            if not due:
                break
            wake, seq, fut = due[0]
            self._sleepers.remove((wake, seq, fut))
            self.now = max(self.now, wake)
            fut.set_result(None)
            await _settle()
        self.now = target
        await _settle()


async def _settle() -> None:
    # Fake sources never do I/O: a few loop turns run every ready callback to completion.
    await loop_turns(20)


class FakeSource:
    """A planner stand-in: answers ids at the clock's time; failures and warnings on demand."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls: list[tuple[float, list[str]]] = []
        self.version = 0
        self.fail_ids: set[str] = set()
        self.raise_error: PromstatError | None = None
        self.warn_ids: set[str] = set()
        self.none_ids: set[str] = set()
        self.block: asyncio.Event | None = None

    def payload(self, ident: str) -> dict[str, Any]:
        return {"cpu_util": {"current": f"{ident}-{self.version}"}}

    async def __call__(self, ids: list[str]) -> BatchOutcome:
        self.calls.append((self.clock(), list(ids)))
        at = self.clock()
        if self.block is not None:
            await self.block.wait()
        if self.raise_error is not None:
            raise self.raise_error
        payloads: dict[str, Any] = {}
        for ident in ids:
            if ident in self.fail_ids:
                payloads[ident] = ExecutionError(status=422, error_type="execution", error="boom")
            elif ident in self.none_ids:
                payloads[ident] = None
            else:
                payloads[ident] = self.payload(ident)
        return BatchOutcome(payloads=payloads, uncacheable=set(self.warn_ids) & set(ids), at=at)


class Rig:
    """One watched level on a fake clock, with a direct cold path that counts its calls."""

    def __init__(
        self,
        *,
        enabled: bool = True,
        seed: int = 0,
        rules_client: object = None,
        clock: FakeClock | None = None,
        **config: Any,
    ) -> None:
        self.clock = clock or FakeClock()
        self.source = FakeSource(self.clock)
        self.metrics = PromstatMetrics()
        self.refresher = Refresher(
            RefreshConfig(interval=INTERVAL, **config),
            enabled=enabled,
            metrics=self.metrics,
            clock=self.clock,
            sleep=self.clock.sleep,
            rng=random.Random(seed),
            rules_client=rules_client,
        )
        self.level: WatchedLevel = self.refresher.watch(
            "kernel", self.source, families=("kernel_metric:x:live_stat",)
        )
        self.cold_calls: list[list[str]] = []

    async def cold(self, keys: Sequence[str]) -> list[Any]:
        self.cold_calls.append(list(keys))
        res = await self.level.fetch(list(keys))
        return [res.values[k] for k in keys]

    async def load(self, *keys: str) -> list[Any]:
        return await self.level.batch_load(list(keys), self.cold)

    def refresh_calls(self) -> list[tuple[float, list[str]]]:
        """Source calls that did not come from the cold path."""
        cold = [tuple(c) for c in self.cold_calls]
        out, remaining = [], list(cold)
        for at, ids in self.source.calls:
            if tuple(ids) in remaining:
                remaining.remove(tuple(ids))
            else:
                out.append((at, ids))
        return out


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    """A default rig (jitter 0.5, seed 0); closed after the test."""
    r = Rig()
    yield r
    await r.refresher.aclose()


async def test_a_watched_id_is_served_from_memory_while_younger_than_max_staleness(
    rig: Rig,
) -> None:
    """After the first (cold) load, loads cost no query and see the refreshed value."""
    assert await rig.load("a") == [{"cpu_util": {"current": "a-0"}}]
    assert len(rig.cold_calls) == 1
    rig.source.version = 1
    for _ in range(6):
        await rig.clock.advance(INTERVAL / 2)
        value = (await rig.load("a"))[0]
        assert value["cpu_util"]["current"] in {"a-0", "a-1"}
    assert len(rig.cold_calls) == 1  # never waited on the source again
    assert (await rig.load("a"))[0] == {"cpu_util": {"current": "a-1"}}
    assert rig.metrics.snapshot().cache_hits == 7


async def test_refreshes_run_once_per_interval_with_every_watched_id_in_one_batch(
    rig: Rig,
) -> None:
    """Each interval sends one planner call holding all watched ids, one interval apart."""
    await rig.load("a", "b")
    await rig.load("c")
    for _ in range(8):
        await rig.clock.advance(INTERVAL / 2)
        await rig.load("a", "b", "c")
    calls = rig.refresh_calls()
    assert len(calls) in (3, 4)  # 4 intervals elapsed; the first slot lies within the first
    assert all(sorted(ids) == ["a", "b", "c"] for _, ids in calls)
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(calls)]
    assert gaps and all(math.isclose(g, INTERVAL) for g in gaps)
    snap = rig.metrics.snapshot()
    assert snap.refreshes == {"kernel": len(calls)}
    assert snap.watched == {"kernel": 3}
    assert snap.refresh_seconds is not None and snap.refresh_seconds.count == len(calls)


async def test_ids_not_requested_for_watch_intervals_stop_being_refreshed(rig: Rig) -> None:
    """An id drops out of the refresh batch once it was not requested for K intervals."""
    await rig.load("a", "b")
    for _ in range(6):  # keep only "a" requested for 6 intervals (K = 4)
        await rig.clock.advance(INTERVAL)
        await rig.load("a")
    last = rig.refresh_calls()[-1][1]
    assert last == ["a"]
    assert rig.level.watched() == ["a"]
    assert rig.metrics.snapshot().watched == {"kernel": 1}


async def test_the_watched_set_is_bounded_least_recently_requested_first() -> None:
    """With max_watched=3 the least recently requested id is the one dropped."""
    r = Rig(max_watched=3)
    try:
        await r.load("a")
        await r.load("b")
        await r.load("c")
        await r.load("a")  # a is now the most recent
        await r.load("d")
        assert r.level.watched() == ["c", "a", "d"]
        await r.clock.advance(INTERVAL)
        assert sorted(r.refresh_calls()[-1][1]) == ["a", "c", "d"]
    finally:
        await r.refresher.aclose()


async def test_a_failed_refresh_keeps_the_last_good_value_until_max_staleness(
    rig: Rig,
) -> None:
    """Refreshes that fail keep the old value served until 2 intervals, then the error."""
    good = (await rig.load("a"))[0]
    rig.source.fail_ids = {"a"}
    await rig.clock.advance(1.9 * INTERVAL)
    assert (await rig.load("a"))[0] == good
    assert len(rig.cold_calls) == 1
    assert rig.metrics.snapshot().refresh_failures.get("kernel", 0) >= 1
    await rig.clock.advance(0.2 * INTERVAL)  # the value is now 2.1 intervals old
    answer = (await rig.load("a"))[0]
    assert isinstance(answer, ExecutionError)  # exactly what the cold path answers
    assert len(rig.cold_calls) == 2


async def test_a_whole_refresh_that_raises_keeps_values_and_counts_every_id(rig: Rig) -> None:
    """A refresh that raises (server down) fails all its ids; values stay until stale."""
    await rig.load("a", "b")
    rig.source.raise_error = TransportError("connection refused", url="http://x")
    await rig.clock.advance(1.5 * INTERVAL)
    assert await rig.load("a", "b") == [
        {"cpu_util": {"current": "a-0"}},
        {"cpu_util": {"current": "b-0"}},
    ]
    assert rig.metrics.snapshot().refresh_failures["kernel"] >= 2


async def test_a_kernel_without_data_is_answered_none_from_memory(rig: Rig) -> None:
    """``None`` (no data) is a value like any other: kept and served without a query."""
    rig.source.none_ids = {"gone"}
    assert await rig.load("gone") == [None]
    await rig.clock.advance(INTERVAL / 4)
    assert await rig.load("gone") == [None]
    assert len(rig.cold_calls) == 1


async def test_answers_with_warnings_are_never_kept(rig: Rig) -> None:
    """Partial answers are returned but every load of such an id goes to the cold path."""
    rig.source.warn_ids = {"a"}
    await rig.load("a")
    await rig.load("a")
    assert len(rig.cold_calls) == 2
    # A good value is not replaced by a later partial one.
    rig.source.warn_ids = set()
    await rig.load("a")
    rig.source.version, rig.source.warn_ids = 1, {"a"}
    await rig.clock.advance(1.5 * INTERVAL)  # at least one refresh with warnings
    assert rig.refresh_calls()
    assert (await rig.load("a"))[0] == {"cpu_util": {"current": "a-0"}}


async def test_data_age_is_now_minus_the_evaluation_time_of_each_served_value(
    rig: Rig,
) -> None:
    """The histogram sees one observation per served value, of its exact age."""
    await rig.load("a", "b")  # age 0, twice
    await rig.clock.advance(0.25)
    await rig.load("a")  # age 0.25 (the first refresh comes later than that here)
    snap = rig.metrics.snapshot().data_age
    assert snap is not None and snap.count == 3
    assert math.isclose(snap.sum, 0.25)


async def test_the_off_switch_starts_no_task_and_sends_every_load_cold() -> None:
    """enabled=False: no background task, nothing kept, every load is a cold load."""
    r = Rig(enabled=False)
    before = asyncio.all_tasks()
    await r.load("a")
    await r.load("a")
    await r.clock.advance(3 * INTERVAL)
    assert len(r.cold_calls) == 2 and len(r.source.calls) == 2
    assert asyncio.all_tasks() == before
    assert len(r.level) == 0


async def test_livestats_refresh_ahead_false_or_cache_ttl_zero_switch_it_off() -> None:
    """LiveStats' off switches reach the refresher (a cache TTL of 0 caches nothing at all),
    and its interval follows the profile unless RefreshConfig gives one."""
    assert not LiveStats(StubAPI(), refresh=RefreshConfig(enabled=False)).refresher.enabled
    assert not LiveStats(StubAPI(), cache=CacheConfig(ttl=0)).refresher.enabled
    assert LiveStats(StubAPI()).refresher.enabled
    assert LiveStats(StubAPI(), profile=RuleProfile(interval=30.0)).refresher.config.interval == 30
    given = LiveStats(StubAPI(), refresh=RefreshConfig(interval=5.0, max_staleness=7.0))
    assert given.refresher.config.interval == 5.0 and given.refresher.config.staleness == 7.0
    with pytest.raises(ConfigError, match="max_staleness"):
        RefreshConfig(max_staleness=0)
    with pytest.raises(ConfigError, match="watch_intervals"):
        RefreshConfig(watch_intervals=0)
    with pytest.raises(ConfigError, match="seconds"):
        RefreshConfig(interval="15s")  # type: ignore[arg-type]


async def test_aclose_stops_the_task_mid_refresh_and_leaves_nothing_behind() -> None:
    """aclose during an in-flight refresh: no task left, no loop exception report."""
    loop = asyncio.get_running_loop()
    reports: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reports.append(context))
    try:
        before = asyncio.all_tasks()
        r = Rig()
        await r.load("a")
        assert len(asyncio.all_tasks() - before) == 1  # the lazily started refresh task
        r.source.block = asyncio.Event()  # the next refresh hangs in "Prometheus"
        await r.clock.advance(INTERVAL)
        assert len(r.refresh_calls()) == 1
        await r.refresher.aclose()
        assert asyncio.all_tasks() == before
        # Closed: loads take the cold path and start nothing.
        r.source.block = None
        await r.load("a")
        assert asyncio.all_tasks() == before
        await r.refresher.aclose()  # idempotent
        del r
        gc.collect()
        await _settle()
    finally:
        loop.set_exception_handler(previous)
    assert reports == []


async def test_livestats_aclose_stops_both_levels() -> None:
    """LiveStats.aclose stops the refresh tasks of kernels and agents."""

    before = asyncio.all_tasks()
    stats = LiveStats(StubAPI(), planner=PlannerConfig(use_recorded=True))
    assert await stats.load_kernels(["k"]) == [None]
    assert await stats.load_agents(["a"]) == [None]
    assert len(asyncio.all_tasks() - before) == 2
    await stats.aclose()
    assert asyncio.all_tasks() == before


class _EmptyResult:
    series: tuple[()] = ()
    warnings: tuple[()] = ()
    infos: tuple[()] = ()


async def test_jitter_spreads_the_refreshes_of_several_processes() -> None:
    """Twenty refreshers (processes) with their own offsets refresh at twenty instants."""
    clock = FakeClock(now=T0 - T0 % INTERVAL)  # start on an interval boundary
    rigs = [Rig(seed=i, clock=clock) for i in range(20)]
    try:
        for r in rigs:
            await r.load("a")
        await clock.advance(INTERVAL)
        starts = [r.refresh_calls()[0][0] % INTERVAL for r in rigs]
        assert all(0 <= s < 0.5 * INTERVAL for s in starts)  # within the jitter window
        assert len(set(starts)) == 20
        assert max(starts) - min(starts) > 0.25 * INTERVAL
        assert starts == pytest.approx([r.level.offset for r in rigs], abs=1e-6)
    finally:
        for r in rigs:
            await r.refresher.aclose()
    # Without jitter every process would hit the same instant.
    same = [Rig(seed=i, jitter=0.0) for i in range(3)]
    assert {r.level.offset for r in same} == {0.0}


async def test_refreshes_follow_the_rule_groups_evaluation_phase() -> None:
    """With a rule group recording the series, refreshes start just after it finishes."""
    clock = FakeClock(now=T0 - T0 % INTERVAL)
    last_eval = clock.now - 7.0  # evaluations at ...3.0 s into each interval

    class RulesClient:
        calls = 0

        async def rules(self, type: str | None = None) -> list[RuleGroup]:
            RulesClient.calls += 1
            assert type == "record"
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(last_eval)) + ".000Z"
            rule = Rule(name="kernel_metric:x:live_stat", query="x", type="recording")
            other = Rule(name="unrelated", query="y", type="recording")
            return [
                RuleGroup(name="other", rules=[other], last_evaluation="2020-01-01T00:00:00Z"),
                RuleGroup(
                    name="kernels",
                    rules=[rule],
                    interval=INTERVAL,
                    evaluation_time=0.5,
                    last_evaluation=stamp,
                ),
            ]

    r = Rig(jitter=0.0, rules_client=RulesClient(), clock=clock)
    try:
        await r.load("a")
        for _ in range(4):
            await clock.advance(INTERVAL)
            await r.load("a")
        assert r.level.phase_source == "rules" and RulesClient.calls == 1
        phases = [at % INTERVAL for at, _ in r.refresh_calls()]
        # first refresh interval-aligned (phase 0), then 3.0 + 0.5 evaluation + 0.5 margin
        assert phases[0] == 0.0
        assert all(math.isclose(p, 4.0) for p in phases[1:]) and len(phases) >= 3
    finally:
        await r.refresher.aclose()


async def test_a_failing_rules_endpoint_falls_back_to_interval_alignment() -> None:
    """A rules call that errors (VictoriaMetrics without vmalert) keeps interval alignment."""

    class BrokenRules:
        async def rules(self, type: str | None = None) -> list[RuleGroup]:
            raise TransportError("connection refused", url="http://x")

    r = Rig(jitter=0.0, rules_client=BrokenRules())
    try:
        await r.level.learn_phase()
        assert r.level.phase_source == "interval"
        assert r.level.next_delay(T0 - T0 % INTERVAL + 1.0, None) == INTERVAL - 1.0
    finally:
        await r.refresher.aclose()


def test_next_delay_never_schedules_two_refreshes_within_half_an_interval() -> None:
    """A slot closer than half an interval to the last refresh is skipped."""
    r = Rig(jitter=0.0)
    now = T0 - T0 % INTERVAL + 1.0
    assert r.level.next_delay(now, last_start=now - 2.0) == INTERVAL - 1.0
    assert r.level.next_delay(now + 8.0, last_start=now + 7.0) == 2 * INTERVAL - 9.0


def test_parse_rfc3339_reads_prometheus_timestamps() -> None:
    """Nanosecond fractions and offsets parse; Go's zero time and junk are None."""
    assert parse_rfc3339("2023-11-14T22:13:20.123456789Z") == pytest.approx(1700000000.123456)
    assert parse_rfc3339("2023-11-15T07:13:20+09:00") == 1700000000.0
    assert parse_rfc3339("0001-01-01T00:00:00Z") is None
    assert parse_rfc3339("") is None


def test_refresh_config_rejects_bad_values_with_their_names() -> None:
    """Every bad knob is a ConfigError naming it."""
    for kwargs, name in (
        ({"interval": 0.0}, "interval"),
        ({"interval": 1.0, "max_watched": 0}, "max_watched"),
        ({"interval": 1.0, "jitter": 1.5}, "jitter"),
        ({"interval": 1.0, "relearn_intervals": 0}, "relearn_intervals"),
    ):
        with pytest.raises(ConfigError, match=name):
            RefreshConfig(**kwargs)
    assert RefreshConfig(interval=15.0).staleness == 30.0


# -- end to end on a real Prometheus ------------------------------------------------------------


@pytest.fixture
async def scraped(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[lab.PrometheusProcess, list[str]]]:
    """A real Prometheus scraping a 3-kernel simulated fleet every 1 s, rules loaded."""
    rule_dir = tmp_path_factory.mktemp("refresh-rules")
    written = write_rules(rule_dir, RuleProfile.parse(interval="1s", window="60s", lookback="60s"))
    rule_files = [p for p in written if p.parent == rule_dir and p.name.endswith(".rules.yml")]
    async with SimulatedFleet(
        FleetConfig(agents=1, kernels_per_agent=3, gpu_agent_ratio=0.0, churn=None)
    ) as fleet:
        prom = await asyncio.to_thread(
            lab.start_prometheus,
            scrape_targets=fleet.targets,
            scrape_interval="1s",
            rule_files=rule_files,
        )
        try:
            ids = fleet.kernel_ids()
            query = f'count({SeriesNames().kernel_live_stat}{{stat="rate"}})'
            await poll_until(
                lambda: asyncio.to_thread(prom.query, query),
                lambda rows: bool(rows) and float(rows[0]["value"][1]) >= len(ids),
                timeout=60,
                interval=0.5,
                what="a recorded rate for every kernel",
            )
            yield prom, ids
        finally:
            await asyncio.to_thread(prom.stop)


@pytest.mark.slow
async def test_livestats_refreshes_a_real_prometheus_in_the_background(
    scraped: tuple[lab.PrometheusProcess, list[str]],
) -> None:
    """Pages after the first read memory; the refresher keeps it fresh in planner chunks."""
    prom, ids = scraped
    metrics = PromstatMetrics()
    profile = RuleProfile(interval=1.0, window=60.0, lookback=60.0)
    config = PlannerConfig(
        use_recorded=True,
        fleet_fraction=None,
        max_alternatives=2,  # 3 kernels -> 2 chunks per refresh, as a big page would be
    )
    async with PrometheusClient(prom.url, observer=metrics) as client:
        # A generous staleness bound: a busy CI machine may delay a refresh by seconds.
        stats = LiveStats(
            client,
            profile=profile,
            planner=config,
            refresh=RefreshConfig(max_staleness=30.0),
            metrics=metrics,
        )
        before = asyncio.all_tasks()
        try:
            first = await stats.load_kernels(ids)
            assert all(isinstance(p, FrozenDict) and "cpu_util" in p for p in first)
            cold_misses = metrics.snapshot().cache_misses
            queries = metrics.snapshot().queries
            deadline = time.monotonic() + 4.5
            while time.monotonic() < deadline:
                page = await stats.load_kernels(ids)
                assert all(isinstance(p, FrozenDict) for p in page)
                await asyncio.sleep(0.1)
            await stats.aclose()  # nothing in flight while counting
            snap = metrics.snapshot()
            refreshes = snap.refreshes.get("kernel", 0)
            assert 2 <= refreshes <= 6  # ~one per second over 4.5 s
            assert snap.cache_misses == cold_misses  # no page went to Prometheus
            assert snap.refresh_failures == {}
            # Each refresh is the planner's 2 chunks, plus the rules call after the first;
            # aclose may have cut one more refresh short after its first chunk.
            sent = snap.queries - queries
            assert 2 * refreshes <= sent <= 2 * refreshes + 2
            assert stats.refresher.levels["kernel"].phase_source == "rules"
            age = snap.data_age
            assert age is not None and age.count >= 30
            # Refreshed every second: half the values served were at most ~1 s old (the
            # first page's values alone would have reached 4.5 s, a median of ~2.3 s).
            assert age.quantile(0.5) <= 2.0
        finally:
            await stats.aclose()
        assert asyncio.all_tasks() == before


async def test_refreshes_run_as_background_work_and_cold_loads_do_not(rig: Rig) -> None:
    """The refresh task is marked as background work (few query slots, see
    test_background_slots); a page's cold load, in the page's own task, is not."""
    marks: list[tuple[str, bool]] = []
    source = rig.source

    async def marked(ids: list[str]) -> BatchOutcome:
        marks.append(("refresh" if len(source.calls) else "cold", _BACKGROUND.get()))
        return await FakeSource.__call__(source, ids)

    rig.level._source = marked
    await rig.load("a")
    for _ in range(3):
        await rig.clock.advance(INTERVAL)
    assert marks[0] == ("cold", False)
    assert len(marks) >= 3 and all(m == ("refresh", True) for m in marks[1:])
    assert _BACKGROUND.get() is False
