"""Self-observability: what a page of live stats cost.

:class:`PromstatMetrics` counts queries and their latency, response bytes and series, chunk
splits, retries, cache hits and misses, and plan choices. It is plain Python (readable with
:meth:`PromstatMetrics.snapshot`), it is the :class:`~promstat.api.QueryObserver` the client
reports to, and with the optional ``prometheus`` extra it registers in a caller's
``prometheus_client`` registry (:meth:`PromstatMetrics.register`), so an operator can graph
what list pages cost next to everything else the manager exports.

Refresh-ahead (:mod:`promstat.refresh`) adds how old the served values are (``data_age``, a
:class:`Histogram` of now minus the evaluation time of the query that produced each value),
how long background refreshes take (``refresh_seconds``), how many ids are watched and how
many refreshes failed.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AGE_BUCKETS",
    "LATENCY_BUCKETS",
    "Histogram",
    "HistogramSnapshot",
    "MetricsSnapshot",
    "PromstatMetrics",
]

#: Histogram buckets for query latency, in seconds.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    float("inf"),
)

#: Histogram buckets for the age of served values, in seconds (scrape intervals are 1-60 s).
AGE_BUCKETS: tuple[float, ...] = (
    0.5,
    1.0,
    2.0,
    3.0,
    5.0,
    7.5,
    10.0,
    15.0,
    20.0,
    30.0,
    45.0,
    60.0,
    90.0,
    120.0,
    300.0,
    float("inf"),
)


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """A point-in-time copy of a :class:`Histogram`.

    Attributes:
        buckets: ``(upper bound, cumulative count)`` per bucket, the last bound ``inf``.
        sum: sum of all observed values.
        count: number of observations.
    """

    buckets: tuple[tuple[float, int], ...]
    sum: float
    count: int

    def quantile(self, q: float) -> float:
        """Estimate the ``q``-quantile as Prometheus' ``histogram_quantile`` does.

        Linear interpolation inside the bucket that holds the rank; a rank in the ``+Inf``
        bucket answers the largest finite bound. ``nan`` without observations.
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], not {q}")
        if self.count == 0:
            return float("nan")
        rank = q * self.count
        lower, below = 0.0, 0
        for bound, cumulative in self.buckets:
            if cumulative >= rank and cumulative > below:
                if bound == float("inf"):
                    return lower
                return lower + (bound - lower) * (rank - below) / (cumulative - below)
            lower, below = bound, cumulative
        return lower  # pragma: no cover - the +Inf bucket always holds every observation


class Histogram:
    """A thread-safe cumulative histogram with fixed buckets (plain Python, no dependency).

    Args:
        buckets: increasing upper bounds; the last must be ``inf``.
    """

    __slots__ = ("_counts", "_lock", "_sum", "buckets")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        if not buckets or buckets[-1] != float("inf") or list(buckets) != sorted(set(buckets)):
            raise ValueError(f"buckets must increase and end with inf, not {buckets!r}")
        self.buckets = buckets
        self._counts = [0] * len(buckets)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float, count: int = 1) -> None:
        """Record ``count`` observations of ``value`` (one lock, one bisection)."""
        i = bisect_left(self.buckets, value)
        with self._lock:
            self._counts[i] += count
            self._sum += value * count

    def snapshot(self) -> HistogramSnapshot:
        """Return a consistent copy with cumulative bucket counts."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, running = [], 0
        for bound, n in zip(self.buckets, counts, strict=True):
            running += n
            cumulative.append((bound, running))
        return HistogramSnapshot(buckets=tuple(cumulative), sum=total, count=running)


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """A point-in-time copy of the counters (plain numbers, safe to keep)."""

    queries: int
    query_errors: dict[str, int]
    query_seconds_sum: float
    query_seconds_buckets: tuple[tuple[float, int], ...]
    response_bytes: int
    series: int
    retries: int
    chunk_splits: int
    cache_hits: int
    cache_misses: int
    plans: dict[str, int]
    data_age: HistogramSnapshot | None = None
    refresh_seconds: HistogramSnapshot | None = None
    refreshes: dict[str, int] = field(default_factory=dict)
    refresh_failures: dict[str, int] = field(default_factory=dict)
    watched: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class PromstatMetrics:
    """Thread-safe counters for one promstat engine (client, planner, loader)."""

    queries: int = 0
    query_errors: Counter[str] = field(default_factory=Counter)
    query_seconds_sum: float = 0.0
    bucket_counts: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    response_bytes: int = 0
    series: int = 0
    retries: int = 0
    chunk_splits: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    plans: Counter[str] = field(default_factory=Counter)
    #: Age of each value served (now - evaluation time of the query that produced it).
    data_age: Histogram = field(default_factory=lambda: Histogram(AGE_BUCKETS))
    #: Duration of each background refresh (one level's watched ids, all chunks).
    refresh_seconds: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    #: Background refreshes run, per level (``kernel``/``agent``).
    refreshes: Counter[str] = field(default_factory=Counter)
    #: Ids whose background refresh failed (they keep their last good value), per level.
    refresh_failures: Counter[str] = field(default_factory=Counter)
    #: Ids currently watched (refreshed ahead), per level.
    watched: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def on_request(
        self,
        *,
        endpoint: str,
        seconds: float,
        response_bytes: int,
        series: int,
        ok: bool,
        error_type: str | None,
        retries: int,
    ) -> None:
        """Record one logical client call (the client's ``QueryObserver`` hook)."""
        with self._lock:
            self.queries += 1
            self.query_seconds_sum += seconds
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    self.bucket_counts[i] += 1
                    break
            self.response_bytes += response_bytes
            self.series += series
            self.retries += retries
            if not ok:
                self.query_errors[error_type or "unknown"] += 1

    def on_split(self) -> None:
        """Record that a chunk was split because the server found it too large."""
        with self._lock:
            self.chunk_splits += 1

    def on_cache(self, *, hits: int, misses: int) -> None:
        """Record cross-request cache hits and misses."""
        with self._lock:
            self.cache_hits += hits
            self.cache_misses += misses

    def on_plan(self, kind: str) -> None:
        """Record which plan the planner chose (``recorded``/``raw`` x ``filtered``/``fleet``)."""
        with self._lock:
            self.plans[kind] += 1

    def on_refresh(self, level: str, *, seconds: float, failed: int) -> None:
        """Record one background refresh of ``level`` and how many of its ids failed."""
        self.refresh_seconds.observe(seconds)
        with self._lock:
            self.refreshes[level] += 1
            if failed:
                self.refresh_failures[level] += failed

    def set_watched(self, level: str, count: int) -> None:
        """Record how many ids of ``level`` are watched now."""
        with self._lock:
            self.watched[level] = count

    def snapshot(self) -> MetricsSnapshot:
        """Return a consistent copy of all counters."""
        with self._lock:
            cumulative, running = [], 0
            for bound, count in zip(LATENCY_BUCKETS, self.bucket_counts, strict=True):
                running += count
                cumulative.append((bound, running))
            return MetricsSnapshot(
                queries=self.queries,
                query_errors=dict(self.query_errors),
                query_seconds_sum=self.query_seconds_sum,
                query_seconds_buckets=tuple(cumulative),
                response_bytes=self.response_bytes,
                series=self.series,
                retries=self.retries,
                chunk_splits=self.chunk_splits,
                cache_hits=self.cache_hits,
                cache_misses=self.cache_misses,
                plans=dict(self.plans),
                data_age=self.data_age.snapshot(),
                refresh_seconds=self.refresh_seconds.snapshot(),
                refreshes=dict(self.refreshes),
                refresh_failures=dict(self.refresh_failures),
                watched=dict(self.watched),
            )

    def register(self, registry: Any = None, *, prefix: str = "promstat") -> Any:
        """Register these counters in a ``prometheus_client`` registry.

        Args:
            registry: a ``prometheus_client.CollectorRegistry``; the default registry if None.
            prefix: metric name prefix.

        Returns:
            The collector that was registered (pass it to ``registry.unregister`` to undo).

        Raises:
            ConfigError: ``prometheus_client`` is missing (``pip install promstat[prometheus]``).
        """
        from promstat.errors import ConfigError

        try:
            from prometheus_client import REGISTRY
            from prometheus_client.core import (
                CounterMetricFamily,
                HistogramMetricFamily,
            )
            from prometheus_client.registry import Collector
        except ImportError as exc:  # pragma: no cover - exercised only without the extra
            raise ConfigError(
                "PromstatMetrics.register needs prometheus_client: "
                "pip install 'promstat[prometheus]'"
            ) from exc

        metrics = self

        # A subclass, not only a structural match: prometheus_client before 0.22 (Backend.AI
        # 26.9 pins 0.21) types register() with an abstract class, later ones with a Protocol.
        class _Collector(Collector):
            def collect(self) -> Iterator[Any]:
                snap = metrics.snapshot()
                yield CounterMetricFamily(
                    f"{prefix}_queries",
                    "Prometheus HTTP API calls made by promstat",
                    value=snap.queries,
                )
                errors = CounterMetricFamily(
                    f"{prefix}_query_errors", "Failed calls by error type", labels=["error_type"]
                )
                for kind, count in sorted(snap.query_errors.items()):
                    errors.add_metric([kind], count)
                yield errors
                yield HistogramMetricFamily(
                    f"{prefix}_query_duration_seconds",
                    "Latency of Prometheus HTTP API calls",
                    buckets=[
                        ("+Inf" if b == float("inf") else repr(b), c)
                        for b, c in snap.query_seconds_buckets
                    ],
                    sum_value=snap.query_seconds_sum,
                )
                for name, value, help_text in (
                    ("response_bytes", snap.response_bytes, "Response body bytes received"),
                    ("series", snap.series, "Series decoded from responses"),
                    ("retries", snap.retries, "Retried HTTP attempts"),
                    ("chunk_splits", snap.chunk_splits, "Chunks split after a too-large error"),
                    ("cache_hits", snap.cache_hits, "Live-stat keys served from the shared cache"),
                    ("cache_misses", snap.cache_misses, "Live-stat keys that needed a query"),
                ):
                    yield CounterMetricFamily(f"{prefix}_{name}", help_text, value=value)
                plans = CounterMetricFamily(
                    f"{prefix}_plans", "Query plans chosen by the planner", labels=["plan"]
                )
                for kind, count in sorted(snap.plans.items()):
                    plans.add_metric([kind], count)
                yield plans
                yield from _refresh_families(snap, prefix)

        collector = _Collector()
        (registry if registry is not None else REGISTRY).register(collector)
        return collector


def _histogram_family(name: str, help_text: str, snap: HistogramSnapshot) -> Any:
    from prometheus_client.core import HistogramMetricFamily

    return HistogramMetricFamily(
        name,
        help_text,
        buckets=[("+Inf" if b == float("inf") else repr(b), c) for b, c in snap.buckets],
        sum_value=snap.sum,
    )


def _refresh_families(snap: MetricsSnapshot, prefix: str) -> Iterator[Any]:
    """The refresh-ahead families of :meth:`PromstatMetrics.register`."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    if snap.data_age is not None:
        yield _histogram_family(
            f"{prefix}_data_age_seconds",
            "Age of each live-stat value served: now minus its query's evaluation time",
            snap.data_age,
        )
    if snap.refresh_seconds is not None:
        yield _histogram_family(
            f"{prefix}_refresh_duration_seconds",
            "Duration of background refreshes of watched ids",
            snap.refresh_seconds,
        )
    for name, values, help_text, family in (
        ("refreshes", snap.refreshes, "Background refreshes run", CounterMetricFamily),
        (
            "refresh_failures",
            snap.refresh_failures,
            "Watched ids whose background refresh failed",
            CounterMetricFamily,
        ),
        ("watched_ids", snap.watched, "Ids watched by refresh-ahead", GaugeMetricFamily),
    ):
        metric = family(f"{prefix}_{name}", help_text, labels=["level"])
        for level, value in sorted(values.items()):
            metric.add_metric([level], value)
        yield metric
