"""Refresh-ahead (stale-while-revalidate): list pages read memory, not Prometheus.

A list page is fast only while its values sit in memory; every cache expiry (one scrape
interval) would make the next page wait for Prometheus. So the ids that pages keep asking for
are *watched* and refreshed in the background, once per interval, in the planner's normal
batches, and a request for a watched id is answered from memory at once:

* **watched**: an id requested within the last ``watch_intervals`` intervals (default 4). The
  set is bounded (``max_watched``); the least recently requested id is dropped first.
* **served from memory** while the value is younger than ``max_staleness`` (default two
  intervals). Age is ``now - at``, where ``at`` is the evaluation time of the query that
  produced the value. Ids never seen, or whose value is older than that, take the cold path
  (the shared single-flight loader) exactly as without refresh-ahead.
* **failures**: a refresh that fails for an id keeps its last good value until
  ``max_staleness``; after that the id takes the cold path and answers what it answers today
  (its own error, or ``None``). Errors and partial answers (results with warnings) are never
  stored.
* **when**: after Prometheus has new data. The phase is read cheaply from the rule group that
  records the level's series (``lastEvaluation + evaluationTime`` of ``/api/v1/rules``,
  re-read every ``relearn_intervals`` intervals); without rules (raw plan, VictoriaMetrics
  without vmalert, a failing rules endpoint) the refreshes align to multiples of the interval.
* **jitter**: each process picks a random offset in ``[0, jitter x interval)`` once, so the
  several worker processes of one manager, each with its own :class:`Refresher`, spread their
  refreshes over half an interval instead of hitting Prometheus at one instant.

Cost for Prometheus: per interval and process, one refresh per level of all watched ids of
that level: ``ceil(watched / 256)`` chunk queries per shape (one shape per level on the
recorded plan, or one unfiltered query per shape when the watched ids cover most of the
fleet), plus one ``/api/v1/rules`` call per level every ``relearn_intervals`` intervals.

The background task starts on the first load inside the running event loop, never in
``__init__``; :meth:`Refresher.aclose` cancels it and waits for it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from promstat.api import PrometheusAPI
from promstat.errors import ConfigError, PromstatError, check_seconds
from promstat.loader import FetchResult
from promstat.planner import BatchOutcome, background_work
from promstat.selfmetrics import PromstatMetrics

__all__ = ["RefreshConfig", "Refresher", "WatchedLevel", "parse_rfc3339"]

Payload = dict[str, Any]
#: A level's planner call: ids -> :class:`~promstat.planner.BatchOutcome` (payloads + ``at``).
SourceFn = Callable[[list[str]], Awaitable[BatchOutcome]]
#: The cold path: the batch-function contract of :class:`~promstat.loader.SharedLoader`.
ColdFn = Callable[[Sequence[str]], Awaitable[list[Payload | BaseException | None]]]
SleepFn = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RefreshConfig:
    """Settings of refresh-ahead (every duration in seconds).

    Attributes:
        enabled: the off switch (``False``: every load takes the cold path, no task starts).
        interval: seconds between refreshes; ``None`` (the default): the rule profile's
            evaluation interval, as :class:`~promstat.service.LiveStats` learns it. A
            :class:`Refresher` itself needs a number.
        watch_intervals: an id stays watched this many intervals after its last request.
        max_staleness: serve a value from memory while it is younger than this (seconds);
            ``None`` = two intervals.
        max_watched: bound of the watched set per level (least recently requested dropped).
        jitter: fraction of the interval over which processes spread their refreshes.
        relearn_intervals: re-read the rule evaluation phase every this many intervals.

    Raises:
        ConfigError: a field is out of range (the message names it).
    """

    enabled: bool = True
    interval: float | None = None
    watch_intervals: int = 4
    max_staleness: float | None = None
    max_watched: int = 100_000
    jitter: float = 0.5
    relearn_intervals: int = 20

    def __post_init__(self) -> None:
        check_seconds("RefreshConfig.interval", self.interval, positive=True, optional=True)
        if self.watch_intervals < 1:
            raise ConfigError(
                f"RefreshConfig.watch_intervals must be >= 1, not {self.watch_intervals}"
            )
        check_seconds(
            "RefreshConfig.max_staleness", self.max_staleness, positive=True, optional=True
        )
        if self.max_watched < 1:
            raise ConfigError(f"RefreshConfig.max_watched must be >= 1, not {self.max_watched}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ConfigError(f"RefreshConfig.jitter must be in [0, 1], not {self.jitter}")
        if self.relearn_intervals < 1:
            raise ConfigError(
                f"RefreshConfig.relearn_intervals must be >= 1, not {self.relearn_intervals}"
            )

    @property
    def seconds(self) -> float:
        """``interval`` as a number.

        Raises:
            ConfigError: ``interval`` is ``None`` (nothing filled it in from a profile).
        """
        if self.interval is None:
            raise ConfigError(
                "RefreshConfig.interval is None: give it in seconds, or let LiveStats take "
                "the rule profile's interval"
            )
        return self.interval

    @property
    def staleness(self) -> float:
        """``max_staleness`` in seconds, with its default (two intervals) applied."""
        return 2 * self.seconds if self.max_staleness is None else self.max_staleness


class _Entry:
    """One watched id: when it was last requested, its last good value and that value's time."""

    __slots__ = ("at", "requested", "value")

    def __init__(self, requested: float) -> None:
        self.requested = requested
        self.value: Payload | None = None
        self.at: float | None = None  # evaluation time of `value`; None: no good value yet


def parse_rfc3339(text: str) -> float | None:
    """Unix seconds of a Prometheus timestamp (``lastEvaluation``); ``None`` if unset or bad.

    Go's zero time (``0001-01-01T00:00:00Z``, a group never evaluated) counts as unset.
    """
    try:
        value = datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None
    return value if value > 0 else None


class WatchedLevel:
    """The watched ids of one level (kernels or agents), their values and their refresh task.

    Made by :meth:`Refresher.watch`; see the module docstring for the semantics.

    Attributes:
        level: ``"kernel"`` or ``"agent"`` (the label of its metrics).
        phase_source: ``"rules"`` when refreshes follow the recording rules' evaluations,
            ``"interval"`` when they align to multiples of the interval.
    """

    def __init__(
        self,
        level: str,
        source: SourceFn,
        config: RefreshConfig,
        *,
        families: Sequence[str],
        enabled: bool,
        metrics: PromstatMetrics,
        clock: Callable[[], float],
        sleep: SleepFn,
        rng: random.Random,
        rules_client: PrometheusAPI | None,
    ) -> None:
        self.level = level
        self.config = config
        self.enabled = enabled
        self.metrics = metrics
        self.phase_source = "interval"
        self._source = source
        self._families = frozenset(families)
        self._clock = clock
        self._sleep = sleep
        self._rules_client = rules_client
        self._staleness = config.staleness
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._phase = 0.0
        # Fixed per process: every refresh of this process sits at the same point of the
        # interval (a steady data age), and processes differ from each other.
        self.offset = rng.uniform(0.0, config.jitter * config.seconds)

    def __len__(self) -> int:
        return len(self._entries)

    def retime(self, interval: float) -> None:
        """Refresh every ``interval`` seconds from now on (the rule profile changed).

        The jitter offset keeps its place within the interval.
        """
        old = self.config.seconds
        self.config = replace(self.config, interval=interval)
        self._staleness = self.config.staleness
        self.offset *= interval / old

    @property
    def active(self) -> bool:
        """Whether refresh-ahead serves and refreshes (enabled and not closed)."""
        return self.enabled and not self._closed

    def watched(self) -> list[str]:
        """The watched ids, least recently requested first."""
        return list(self._entries)

    # -- the request path -------------------------------------------------------------------

    async def batch_load(
        self, keys: Sequence[str], cold: ColdFn
    ) -> list[Payload | BaseException | None]:
        """Answer ``keys``: fresh watched values from memory, the rest through ``cold``.

        Every key becomes (or stays) watched. Returns one value, ``None`` or exception per
        key, in key order (the batch-function contract).
        """
        if not self.active:
            return await cold(keys)
        self._ensure_task()
        now = self._clock()
        fresh_after = now - self._staleness
        entries = self._entries
        answers: dict[str, Payload | BaseException | None] = {}
        ages: dict[float, int] = {}  # evaluation time -> values served from it
        missing: list[str] = []
        added = False
        for key in keys:
            entry = entries.get(key)
            if entry is None:
                entries[key] = _Entry(now)
                added = True
                missing.append(key)
                continue
            entries.move_to_end(key)
            entry.requested = now
            at = entry.at
            if at is not None and at > fresh_after:
                answers[key] = entry.value
                ages[at] = ages.get(at, 0) + 1
            else:
                missing.append(key)
        if added:
            while len(entries) > self.config.max_watched:
                entries.popitem(last=False)
            self.metrics.set_watched(self.level, len(entries))
        if answers:
            self.metrics.on_cache(hits=len(answers), misses=0)
        if missing:
            results = await cold(missing)
            for key, value in zip(missing, results, strict=True):
                answers[key] = value
                entry = entries.get(key)
                # Age is known for values the fetch kept (not for errors or partial answers).
                if entry is not None and entry.at is not None and entry.value is value:
                    ages[entry.at] = ages.get(entry.at, 0) + 1
            now = self._clock()
        for at, count in ages.items():
            self.metrics.data_age.observe(now - at, count)
        return [answers[key] for key in keys]

    async def fetch(self, ids: list[str]) -> FetchResult[str, Payload]:
        """The cold path's fetch function: ask the planner and keep what is cacheable."""
        out = await self._source(ids)
        self._record(out)
        return FetchResult(out.payloads, out.uncacheable)

    def _record(self, out: BatchOutcome) -> None:
        if not self.active:
            return
        entries = self._entries
        uncacheable = out.uncacheable
        for key, value in out.payloads.items():
            if isinstance(value, BaseException) or key in uncacheable:
                continue  # errors and partial answers are never kept
            entry = entries.get(key)
            # Not watched (dropped meanwhile): nothing to keep. An older answer that arrives
            # after a newer one must not replace it.
            if entry is not None and (entry.at is None or out.at >= entry.at):
                entry.value = value
                entry.at = out.at

    def invalidate(self) -> None:
        """Forget every stored value (ids stay watched and are refreshed as usual)."""
        for entry in self._entries.values():
            entry.value = None
            entry.at = None

    # -- the background refresh -------------------------------------------------------------

    async def refresh_once(self) -> int:
        """Drop ids not requested for ``watch_intervals`` intervals, then refresh the rest.

        One planner call for all watched ids of this level (the planner chunks it). Ids the
        refresh fails for keep their last good value.

        Returns:
            The number of ids refreshed (0: nothing was watched, no query was sent).
        """
        self._expire(self._clock())
        ids = list(self._entries)
        self.metrics.set_watched(self.level, len(ids))
        if not ids:
            return 0
        started = time.perf_counter()
        try:
            out = await self._source(ids)
        except PromstatError:
            failed = len(ids)
        except Exception as exc:  # a bug must not end the refreshes: report it, go on
            failed = len(ids)
            asyncio.get_running_loop().call_exception_handler(
                {"message": f"promstat refresh-ahead of {self.level}s failed", "exception": exc}
            )
        else:
            self._record(out)
            failed = sum(isinstance(v, BaseException) for v in out.payloads.values())
        self.metrics.on_refresh(self.level, seconds=time.perf_counter() - started, failed=failed)
        return len(ids)

    def _expire(self, now: float) -> None:
        horizon = now - self.config.watch_intervals * self.config.seconds
        entries = self._entries
        while entries:
            key = next(iter(entries))
            if entries[key].requested >= horizon:
                break
            del entries[key]

    def _ensure_task(self) -> None:
        loop = asyncio.get_running_loop()
        task = self._task
        # A task of another (finished) event loop can never run again: start a new one.
        if task is None or task.done() or task.get_loop() is not loop:
            self._task = loop.create_task(self._run(), name=f"promstat-refresh-{self.level}")

    async def _run(self) -> None:
        background_work()  # this task's chunks leave most query slots to pages
        last_start: float | None = None
        ticks = 0
        while True:
            await self._sleep(self.next_delay(self._clock(), last_start))
            last_start = self._clock()
            await self.refresh_once()
            # After the refresh, not before: the page that started this task must not share
            # Prometheus with a rules call. The first refresh is interval-aligned.
            if ticks % self.config.relearn_intervals == 0:
                await self.learn_phase()
            ticks += 1

    def next_delay(self, now: float, last_start: float | None) -> float:
        """Seconds from ``now`` to the next refresh slot (``phase + offset`` mod interval).

        A slot less than half an interval after the previous refresh is skipped, so a phase
        that moved (re-learned rules, a clock step) never causes two refreshes in a row.
        """
        interval = self.config.seconds
        delay = (self._phase + self.offset - now) % interval
        if last_start is not None and now + delay - last_start < interval / 2:
            delay += interval
        return delay

    async def learn_phase(self) -> None:
        """Read when the rule group recording this level's series last finished.

        Sets the refresh phase to the end of that evaluation (``lastEvaluation +
        evaluationTime``) plus a small margin; falls back to interval alignment without a
        rules client, when the call fails, or when no group records these series.
        """
        end: float | None = None
        if self._rules_client is not None:
            try:
                groups = await self._rules_client.rules(type="record")
            except PromstatError:
                groups = []
            for group in groups:
                if not any(rule.name in self._families for rule in group.rules):
                    continue
                start = parse_rfc3339(group.last_evaluation)
                if start is not None:
                    finished = start + group.evaluation_time
                    end = finished if end is None else max(end, finished)
        if end is None:
            self._phase, self.phase_source = 0.0, "interval"
        else:
            # Samples of a rule are committed when it finishes; leave a little slack.
            self._phase = end + min(1.0, 0.05 * self.config.seconds)
            self.phase_source = "rules"

    async def aclose(self) -> None:
        """Stop the background refresh and wait for it; later loads take the cold path."""
        self._closed = True
        task, self._task = self._task, None
        if task is None:
            return
        if task.get_loop() is not asyncio.get_running_loop():
            # A task of another event loop cannot be awaited from here; a closed loop's task
            # can no longer run at all (and cancel() would need that loop).
            if not task.get_loop().is_closed():
                task.cancel()
            return
        task.cancel()
        # wait() rather than `await task`: aclose's own cancellation must still propagate.
        await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # retrieved: never reported as "exception was never retrieved"


class Refresher:
    """Refresh-ahead for the levels of one :class:`~promstat.service.LiveStats`.

    Args:
        config: intervals, staleness, bounds, jitter.
        enabled: the off switch (``False``: every load takes the cold path, no task starts).
        metrics: where data age, refresh durations, failures and watched counts go.
        clock: wall clock (Unix seconds), the same one the planner pins evaluation times with.
        sleep: how to wait (injectable so tests drive time).
        rng: randomness of the jitter offset (seed it for reproducible schedules).
        rules_client: the client whose ``rules()`` (``/api/v1/rules``) tells when rule groups
            evaluate; ``None`` means interval alignment.

    Raises:
        ConfigError: ``config.interval`` is ``None``.
    """

    def __init__(
        self,
        config: RefreshConfig,
        *,
        enabled: bool = True,
        metrics: PromstatMetrics | None = None,
        clock: Callable[[], float] = time.time,
        sleep: SleepFn = asyncio.sleep,
        rng: random.Random | None = None,
        rules_client: PrometheusAPI | None = None,
    ) -> None:
        config.seconds  # noqa: B018 - raises ConfigError without an interval
        self.config = config
        self.enabled = enabled and config.enabled
        self.metrics = metrics or PromstatMetrics()
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._rules_client = rules_client
        self.levels: dict[str, WatchedLevel] = {}

    def watch(self, level: str, source: SourceFn, *, families: Sequence[str]) -> WatchedLevel:
        """Create the watched set of ``level``.

        Args:
            level: ``"kernel"`` or ``"agent"``.
            source: the planner call for a list of ids.
            families: recorded series this level reads (to find its rule group).
        """
        watched = WatchedLevel(
            level,
            source,
            self.config,
            families=families,
            enabled=self.enabled,
            metrics=self.metrics,
            clock=self._clock,
            sleep=self._sleep,
            rng=self._rng,
            rules_client=self._rules_client,
        )
        self.levels[level] = watched
        return watched

    def retime(self, interval: float) -> None:
        """Refresh every level every ``interval`` seconds from now on.

        Raises:
            ConfigError: ``interval`` is not positive.
        """
        self.config = replace(self.config, interval=interval)  # validates
        for watched in self.levels.values():
            watched.retime(interval)

    def invalidate(self) -> None:
        """Forget every stored value of every level."""
        for watched in self.levels.values():
            watched.invalidate()

    async def aclose(self) -> None:
        """Stop every level's background refresh (idempotent)."""
        for watched in self.levels.values():
            await watched.aclose()
