"""Trends: batched range queries for many kernels and metrics at once.

Legacy Valkey kept no history at all; with Prometheus as the single source, a list page can show
a sparkline per kernel for the cost of a few range queries. Kernel ids are chunked exactly like
the live-stat planner does, the metric names go into one set matcher, and ``start``/``end`` are
aligned down to a multiple of ``step`` so repeated requests hit the same samples (and the
step-aligned results caches of Thanos and Mimir frontends).

Values are the live_stat ``current`` meaning: per-second rates for rate counters, latest value
for gauges and accumulating counters. The recorded series are used when they exist.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from promstat.api import PrometheusAPI
from promstat.errors import ConfigError, PromstatError
from promstat.planner import PlannerConfig
from promstat.profile import RuleProfile
from promstat.promql import escape_string, set_matcher
from promstat.selfmetrics import PromstatMetrics
from promstat.shapes import ID_PLACEHOLDER, chunk_ids
from promstat.wire import parse_value

__all__ = ["MAX_POINTS", "History", "HistoryResult", "align_range"]

#: Prometheus refuses range queries of more than 11,000 points per series.
MAX_POINTS = 11_000

_IDS = ID_PLACEHOLDER


def align_range(start: float, end: float, step: float) -> tuple[float, float]:
    """Align ``start`` and ``end`` down to multiples of ``step``.

    Raises:
        ConfigError: ``step`` is not positive, ``end`` is before ``start``, or the range has
            more than :data:`MAX_POINTS` points.
    """
    if not step > 0 or not math.isfinite(step):
        raise ConfigError(f"step must be a positive number of seconds, not {step!r}")
    if end < start:
        raise ConfigError(f"end ({end}) is before start ({start})")
    a, b = math.floor(start / step) * step, math.floor(end / step) * step
    points = round((b - a) / step) + 1
    if points > MAX_POINTS:
        raise ConfigError(
            f"{points} points per series exceeds Prometheus' limit of {MAX_POINTS}; "
            "use a larger step or a shorter range"
        )
    return a, b


@dataclass(slots=True)
class HistoryResult:
    """Trend series: kernel id -> metric -> ``[(timestamp, value), ...]``.

    Attributes:
        series: the points; kernels without data are absent.
        errors: kernel id -> error of its chunk (the other kernels still have their points).
        start, end, step: the aligned range actually queried.
        warnings: warnings and infos from the server.
    """

    series: dict[str, dict[str, list[tuple[float, float]]]]
    errors: dict[str, PromstatError] = field(default_factory=dict)
    start: float = 0.0
    end: float = 0.0
    step: float = 0.0
    warnings: list[str] = field(default_factory=list)


class History:
    """Batched range queries over the live-stat ``current`` values.

    Args:
        client: the :class:`~promstat.api.PrometheusAPI` to query.
        config: the planner settings (budgets, concurrency, plan choice).
        profile: how the rules were rendered (names, windows, rates); the default when
            ``None``. Assign :attr:`profile` to change it (the names must stay the same).
        metrics: counters.
    """

    def __init__(
        self,
        client: PrometheusAPI,
        config: PlannerConfig,
        *,
        profile: RuleProfile | None = None,
        metrics: PromstatMetrics | None = None,
    ) -> None:
        self.client = client
        self.config = config
        self.profile = profile or RuleProfile()
        self.metrics = metrics or PromstatMetrics()
        n = self.profile.names
        self._row: type[Any] = msgspec.defstruct(
            "HistoryRow",
            [("id", str, ""), ("metric", str, "")],
            rename={"id": n.kernel_label, "metric": n.container_metric_label},
            frozen=True,
            gc=False,
        )
        self._recorded: bool | None = None

    async def _use_recorded(self) -> bool:
        if not self.profile.expressions.records_kernel_values:
            return False  # rates=exporter: the exporter's series, as cheap as recorded ones
        if self.config.use_recorded is not None:
            return self.config.use_recorded
        if self._recorded is None:
            n = self.profile.names
            res = await self.client.query_vector(
                f'count({n.kernel_live_stat}{{{n.stat_label}="current"}})', labels=self._row
            )
            self._recorded = bool(res.series)
        return self._recorded

    def _expr(self, recorded: bool, metrics: Sequence[str]) -> str:
        n = self.profile.names
        metric_matcher = set_matcher(n.container_metric_label, metrics)
        if recorded:
            return (
                f"max by ({n.kernel_label}, {n.container_metric_label}) ("
                f'{n.kernel_live_stat}{{{n.stat_label}="{escape_string("current")}", '
                f"{metric_matcher}, {_IDS}}})"
            )
        expr = self.profile.expressions.kernel("current", matchers=f"{metric_matcher}, {_IDS}")
        assert expr is not None  # every catalog has a current expression
        return expr

    async def kernels(
        self,
        kernel_ids: Sequence[str],
        metrics: Sequence[str],
        *,
        start: float,
        end: float,
        step: float,
    ) -> HistoryResult:
        """Range series of ``metrics`` for ``kernel_ids`` between ``start`` and ``end``.

        Raises:
            ConfigError: bad range or no metrics.
            PromstatError: only when detecting recorded series fails; chunk failures are
                reported per kernel in :attr:`HistoryResult.errors`.
        """
        if not metrics:
            raise ConfigError("give at least one metric name for history")
        a, b = align_range(start, end, step)
        result = HistoryResult(series={}, start=a, end=b, step=step)
        ids = sorted(set(kernel_ids))
        if not ids:
            return result
        expr = self._expr(await self._use_recorded(), metrics)
        chunks = chunk_ids(expr, self.profile.names.kernel_label, ids, self.config)
        sem = asyncio.Semaphore(self.config.concurrency)
        wanted = set(ids)

        async def run(chunk: tuple[str, ...]) -> None:
            query = expr.replace(_IDS, set_matcher(self.profile.names.kernel_label, chunk))
            try:
                async with sem:
                    res = await self.client.query_range(
                        query, start=a, end=b, step=step, labels=self._row
                    )
            except PromstatError as exc:
                for kernel_id in chunk:
                    result.errors[kernel_id] = exc
                return
            for s in res.series:
                if s.metric.id not in wanted:
                    continue
                points = [(ts, parse_value(v)) for ts, v in s.values]
                result.series.setdefault(s.metric.id, {})[s.metric.metric] = points
            for note in (*res.warnings, *res.infos):
                if note not in result.warnings:
                    result.warnings.append(note)

        await asyncio.gather(*(run(c) for c in chunks))
        return result
