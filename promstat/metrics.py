"""Self-observability: what a page of live stats cost.

:class:`PromstatMetrics` counts queries and their latency, response bytes and series, chunk
splits, retries, cache hits and misses, and plan choices. It is plain Python (readable with
:meth:`PromstatMetrics.snapshot`), it is the :class:`~promstat.client.QueryObserver` the client
reports to, and with the optional ``prometheus`` extra it registers in a caller's
``prometheus_client`` registry (:meth:`PromstatMetrics.register`), so an operator can graph
what list pages cost next to everything else the manager exports.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LATENCY_BUCKETS", "MetricsSnapshot", "PromstatMetrics"]

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
        from .errors import ConfigError

        try:
            from prometheus_client import REGISTRY
            from prometheus_client.core import (
                CounterMetricFamily,
                HistogramMetricFamily,
            )
        except ImportError as exc:  # pragma: no cover - exercised only without the extra
            raise ConfigError(
                "PromstatMetrics.register needs prometheus_client: "
                "pip install 'promstat[prometheus]'"
            ) from exc

        metrics = self

        class _Collector:
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

        collector = _Collector()
        (registry if registry is not None else REGISTRY).register(collector)
        return collector
