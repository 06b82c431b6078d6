"""One PromQL definition of every live-stat quantity, shared by the rules and the raw fallback.

The recording rules (:mod:`promstat.generate.rules`) and the planner's no-rules path both take their
expressions from :class:`LiveStatExpressions`, so a recorded ``stat="max"`` and a raw
``max_over_time`` subquery mean the same thing. Semantics (``contracts.md``, "Recorded series"):

* ``current`` — gauges and accumulating counters: the latest value, ``max by`` over duplicate
  series (a stale series from an old ``instance`` must never add up, as it did with upstream's
  ``sum by``). Rate counters (``cpu_util``, ``net_*``): the per-second rate, taken

  1. from the agent's own ``value_type="rate"`` series when it exports one (promstat's
     exporter does: the rate between its last two measurements, ``0`` at a counter reset and
     on the first measurement — legacy's ``stats.rate`` exactly, whatever the scrape timing);
  2. otherwise (a plain upstream agent: raw counters only) ``rate()`` over
     :attr:`LiveStatExpressions.rate_window` = ``4 x max(collect_interval, interval) +
     interval``, so the range always spans about four measurements: a counter that Prometheus
     stores two or three times per measurement never reads as 0 or as a multiple of its rate
     (``irate`` over the last two scrapes would). Where the last two samples show a counter
     reset the rate is ``0`` (legacy's ``diff`` is 0 when the counter goes down), not
     ``last / dt``; afterwards ``rate()``'s reset correction counts the post-reset value as
     increase (legacy counted the reset interval as 0), so the rate is within
     ``post-reset value / window`` of legacy's until the reset leaves the window.

  Either way the rate is kept only where a latest sample still exists (``and on``: after a
  staleness marker the range vector still holds samples, the instant selector does not), and
  is ``0`` for a series without a rate yet (``or latest * 0``: never the raw counter).
* ``capacity`` — the latest capacity series, ``max by`` over duplicates.
* ``rate`` — the same construction for accumulating counters whose catalog entry publishes
  ``stats.rate`` (``io_read``, ``io_write``).
* ``max`` / ``avg`` — ``max_over_time`` / ``avg_over_time`` over ``window`` of the ``current``
  values, for metrics whose catalog entry publishes that key. Raw path: a subquery
  ``[window:interval]``; rules: the recorded ``current`` series.
* device level: the same with device labels; a rate counter with
  ``node_current=interval_diff`` (device ``cpu_util``) is ``rate * capacity / 1000`` (usage
  during one collection interval), or the plain rate when it has no capacity series.
* node level: devices combined per agent by the catalog's ``node_aggregate`` (``sum`` for usage
  and counters, ``max`` for temperature-like gauges); capacity summed, or ``max`` for
  ``node_capacity="max"``; ``max``/``avg`` over the window of the node ``current``.

Every expression groups by exactly the level's labels (``kernel_id, container_metric_name``;
``agent_id, device_id, device_metric_name``; ``agent_id, device_metric_name``), so only the
labels a live_stat page needs cross the wire. Metric names are matched with regexes built from
the catalog: exact names (``quote_meta``-escaped) and the catalog's own patterns.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from promstat.catalog import DEFAULT_CATALOG, Catalog, Kind, MetricSpec, NodeCurrent
from promstat.conventions import SeriesNames
from promstat.errors import ConfigError, QueryBuildError
from promstat.promql import (
    duration,
    eq,
    escape_string,
    not_set_matcher,
    parse_duration,
    quote_meta,
    selector,
    set_matcher,
)

__all__ = [
    "KERNEL_STATS",
    "WINDOW_STATS",
    "LiveStatExpressions",
    "RateSource",
]

#: ``stat`` values every level can have.
KERNEL_STATS: tuple[str, ...] = ("current", "capacity", "rate", "max", "avg")
#: ``stat`` values computed over the window.
WINDOW_STATS: tuple[str, ...] = ("max", "avg")
_WINDOW_FUNCS = {"max": "max_over_time", "avg": "avg_over_time"}


class RateSource(enum.StrEnum):
    """Where the per-second rates of counters (``cpu_util``, ``net_*``, ``io_*``) come from.

    ``BOTH`` (the default) reads the agent's ``value_type="rate"`` series where it exists and
    falls back to ``rate()`` of the raw counter elsewhere, so a fleet mixing promstat's exporter
    with plain upstream agents shows every rate. PromQL has no short-circuit ``or``: the
    fallback's ``rate()``, reset check and staleness guard are evaluated for every counter
    series even when every agent exports its rate, and that fallback is a large share of the
    kernel rule group's evaluation time and of the rules' CPU (``benchmarks/README.md``,
    "Rule cost").

    ``EXPORTER`` reads the agent's rate series only: right for a fleet whose agents all run
    promstat's exporter (dual publishing to Valkey requires it anyway). A kernel whose agent
    exports raw counters only then has no ``cpu_util``/``net_*`` value, and its ``io_*``
    ``stats.rate`` reads ``"0"`` (as for any kernel without a rate); the
    ``PromstatRateSeriesMissing`` alert names such agents. No staleness guard is needed:
    the exporter writes a counter's rate and current series together, so they go stale
    together, and its first measurement already has a rate (0).

    With ``EXPORTER`` a kernel's ``current``, ``capacity`` and ``rate`` are each one of the
    exporter's own series, so recording them would only copy them: the kernel rules record
    the window stats (``max``/``avg``) alone, over the raw series, and readers (pages,
    history, utilization, alerts, dashboards) read the other stats from the raw series
    (:attr:`LiveStatExpressions.records_kernel_values`). Recording the copies cost most of the
    rules' CPU; most of it is writing their samples at every evaluation and keeping those
    series, not evaluating them (recording them less often saved almost nothing;
    ``benchmarks/README.md``, "Rule cost").
    """

    BOTH = "both"
    EXPORTER = "exporter"

    @classmethod
    def parse(cls, value: RateSource | str) -> RateSource:
        """``value`` as a :class:`RateSource`.

        Raises:
            ConfigError: ``value`` is not one of the choices (the message lists them).
        """
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(repr(r.value) for r in cls)
            raise ConfigError(f"rates must be one of {choices}, got {value!r}") from None


@dataclass(frozen=True, slots=True)
class _NameSet:
    """A set of metric names as a positive regex (exact names + patterns) and exclusions."""

    exact: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.exact and not self.patterns

    def matchers(self, label: str) -> list[str]:
        """Matchers selecting exactly this set on ``label`` (no matcher when it is "all")."""
        out: list[str] = []
        if self.patterns:
            alternatives = [quote_meta(n) for n in sorted(set(self.exact))]
            # A pattern holding its own alternation must not leak into its neighbours.
            alternatives += [f"(?:{p})" if "|" in p else p for p in self.patterns]
            out.append(f'{label}=~"{escape_string("|".join(alternatives))}"')
        elif self.exact:
            out.append(set_matcher(label, self.exact))
        if self.exclude:
            out.append(not_set_matcher(label, self.exclude))
        return out


def _join_or(parts: Sequence[str]) -> str:
    return " or ".join(parts)


@dataclass(frozen=True, slots=True)
class _Level:
    """One level of raw series: its metric, grouping labels and metric-name label."""

    metric: str
    by: tuple[str, ...]
    name_label: str

    @property
    def group(self) -> str:
        return ", ".join(self.by)


@dataclass(frozen=True, slots=True)
class LiveStatExpressions:
    """Builds the PromQL of every live-stat quantity from the catalog and the series names.

    Attributes:
        names: metric and label names (configurable because operators relabel).
        catalog: the metric catalog (kinds, stats keys, node overrides).
        lookback: the instant-query lookback (5m); validated, kept for the rules' command line.
        window: ``max``/``avg`` window (at least 4 x ``interval``).
        interval: rule group interval == scrape interval; the raw path's subquery step.
        collect_interval: how often agents measure (Backend.AI's
            ``[agent.utilization-metric]`` interval, 30 s since 26.4.4); sizes the
            :attr:`rate_window` used for agents that export raw counters only.
        rates: where counter rates come from (:class:`RateSource`; ``"both"`` by default).

    Raises:
        ConfigError: a duration is invalid or not positive, ``window < 4 x interval`` or
            ``lookback < 2 x interval``.
    """

    names: SeriesNames = field(default_factory=SeriesNames)
    catalog: Catalog = DEFAULT_CATALOG
    lookback: str = "5m"
    window: str = "5m"
    interval: str = "15s"
    collect_interval: str = "30s"
    rates: RateSource = RateSource.BOTH

    def __post_init__(self) -> None:
        # A plain string ("exporter", from a command line or a config file) is accepted too.
        object.__setattr__(self, "rates", RateSource.parse(self.rates))
        interval = parse_duration(self.interval)
        window = parse_duration(self.window)
        lookback = parse_duration(self.lookback)
        if interval <= 0:
            raise ConfigError(f"interval must be positive, got {self.interval!r}")
        if parse_duration(self.collect_interval) <= 0:
            raise ConfigError(f"collect_interval must be positive, got {self.collect_interval!r}")
        if window < 4 * interval:
            raise ConfigError(
                f"window {self.window!r} is shorter than 4 x interval {self.interval!r}: "
                "max/avg over fewer than 4 evaluations are noise; use a longer window"
            )
        if lookback < 2 * interval:
            raise ConfigError(
                f"lookback {self.lookback!r} is shorter than 2 x interval {self.interval!r}: "
                "a rate needs two samples in its range"
            )

    @property
    def rate_window(self) -> str:
        """Range of ``rate()`` for raw counters: ``4 x max(collect_interval, interval) +
        interval``.

        It always spans about four measurements and five scrapes, so a counter stored several
        times per measurement (scrapes faster than measurements) cannot alias to 0 or to a
        multiple of its rate. For a steady load the error is below ``C / (W - S)``, at most 25%
        (11% at C=30 s, S=15 s; 14% at C=30 s, S=20 s); a change of load shows fully after
        about ``W + C``.
        """
        collect = parse_duration(self.collect_interval)
        scrape = parse_duration(self.interval)
        return duration(4 * max(collect, scrape) + scrape)

    @property
    def records_kernel_values(self) -> bool:
        """Whether the kernel rules record ``current``/``capacity``/``rate`` (``rates=both``).

        With :attr:`RateSource.EXPORTER` they record only the window stats: the other stats
        are the exporter's own series, read with :meth:`kernel` (a selector and a ``max by``
        each, no ``rate()``).
        """
        return self.rates is RateSource.BOTH

    # -- levels -------------------------------------------------------------------------------

    @property
    def _kernel(self) -> _Level:
        n = self.names
        return _Level(
            n.container_metric, (n.kernel_label, n.container_metric_label), n.container_metric_label
        )

    @property
    def _device(self) -> _Level:
        n = self.names
        return _Level(
            n.device_metric,
            (n.agent_label, n.device_label, n.device_metric_label),
            n.device_metric_label,
        )

    @property
    def _node_by(self) -> str:
        return f"{self.names.agent_label}, {self.names.device_metric_label}"

    # -- catalog partitions -------------------------------------------------------------------

    def _rate_counters(self, *, node_current: NodeCurrent | None = None) -> tuple[str, ...]:
        names = self.catalog.names_of_kind(Kind.RATE_COUNTER)
        if node_current is None:
            return names
        return tuple(n for n in names if self.catalog.exact[n].node_current is node_current)

    def _has(self, spec: MetricSpec, stat: str, *, node: bool) -> bool:
        return stat in (spec.stats_node if node else spec.stats)

    def _publishing(
        self, stat: str, *, node: bool, kinds: Iterable[Kind] | None = None
    ) -> _NameSet:
        """Names of ``kinds`` whose spec publishes ``stat``: exact names and patterns, minus
        exact names that a pattern matches but whose own spec does not qualify."""
        allowed = set(kinds) if kinds is not None else set(Kind)

        def accept(spec: MetricSpec) -> bool:
            return spec.kind in allowed and self._has(spec, stat, node=node)

        exact = tuple(sorted(n for n, s in self.catalog.exact.items() if accept(s)))
        patterns: tuple[str, ...] = ()
        if Kind.GAUGE in allowed:  # patterns are always gauges (the catalog enforces it)
            patterns = tuple(p for p, s in self.catalog.patterns if accept(s))
            if accept(self.catalog.default):
                patterns = (".+",)
        exclude = self._shadowed(patterns, lambda s: not accept(s))
        return _NameSet(exact, patterns, exclude)

    def _shadowed(
        self, patterns: Sequence[str], reject: Callable[[MetricSpec], bool]
    ) -> tuple[str, ...]:
        """Exact names matched by one of ``patterns`` whose own spec is rejected."""
        compiled = [re.compile(p) for p in patterns]
        return tuple(
            sorted(
                n
                for n, s in self.catalog.exact.items()
                if reject(s) and any(rx.fullmatch(n) for rx in compiled)
            )
        )

    # -- building blocks ----------------------------------------------------------------------

    def _sel(self, level: _Level, value_type: str, names: _NameSet | None, matchers: str) -> str:
        ms: list[str] = [matchers] if matchers else []
        ms.append(eq(self.names.value_type_label, value_type))
        if names is not None:
            ms.extend(names.matchers(level.name_label))
        return selector(level.metric, *ms)

    def _latest(self, level: _Level, names: _NameSet | None, matchers: str) -> str:
        cur = self._sel(level, self.names.current_value, names, matchers)
        return f"max by ({level.group}) ({cur})"

    def _rate_of(self, level: _Level, names: _NameSet, matchers: str) -> str:
        """Per-second rate: the agent's rate series, else ``rate()`` over the rate window
        (nothing where the last two samples went down, a counter reset, so the caller's
        ``or ... * 0`` gives legacy's 0 there)."""
        g = level.group
        agent = self._sel(level, self.names.rate_value, names, matchers)
        if self.rates is RateSource.EXPORTER:
            return f"max by ({g}) ({agent})"
        cur = self._sel(level, self.names.current_value, names, matchers)
        w = self.rate_window
        return (
            f"(max by ({g}) ({agent}) or "
            f"max by ({g}) (rate({cur}[{w}]) unless idelta({cur}[{w}]) < 0))"
        )

    def _counter_rate(
        self, level: _Level, value_rate: Sequence[str], interval_diff: Sequence[str], matchers: str
    ) -> str:
        """Rates of counters, kept where a latest sample exists, ``0`` without a rate."""
        terms: list[str] = []
        if interval_diff:
            ids = _NameSet(exact=tuple(interval_diff))
            rate = self._rate_of(level, ids, matchers)
            cap = self._sel(level, self.names.capacity_value, ids, matchers)
            terms.append(
                f"{rate} * on ({level.group}) max by ({level.group}) ({cap}) / 1000 or {rate}"
            )
        if value_rate:
            terms.append(self._rate_of(level, _NameSet(exact=tuple(value_rate)), matchers))
        values = _join_or(terms)
        if self.rates is RateSource.EXPORTER:
            # The exporter's rate series goes stale with its current series and starts at 0:
            # neither the staleness guard nor the `* 0` default has anything to add.
            return values
        if len(terms) > 1 or interval_diff:
            values = f"({values})"  # `and` binds tighter than `or`
        everything = _NameSet(exact=(*interval_diff, *value_rate))
        latest = self._latest(level, everything, matchers)
        return f"({values} and on ({level.group}) {latest}) or {latest} * 0"

    def _current(self, level: _Level, *, node: bool, only: str | None, matchers: str) -> str | None:
        """``current`` of every metric, or only of those publishing ``only`` (max/avg)."""
        rate_counters = self._rate_counters()
        parts: list[str] = []
        if only is None:
            gauges = _NameSet(exclude=rate_counters)
            counters = rate_counters
        else:
            pub = self._publishing(only, node=node, kinds=(Kind.GAUGE, Kind.ACCUMULATING_COUNTER))
            gauges = pub
            counters = tuple(
                n for n in rate_counters if self._has(self.catalog.exact[n], only, node=node)
            )
        if only is None or not gauges.empty:
            parts.append(self._latest(level, gauges, matchers))
        if counters:
            if node:
                diff = [
                    n
                    for n in counters
                    if self.catalog.exact[n].node_current is NodeCurrent.INTERVAL_DIFF
                ]
                plain = [n for n in counters if n not in diff]
            else:
                diff, plain = [], list(counters)
            parts.append(self._counter_rate(level, plain, diff, matchers))
        return _join_or(parts) if parts else None

    def _rate(self, level: _Level, *, node: bool, matchers: str) -> str | None:
        names = [
            n
            for n in self.catalog.names_of_kind(Kind.ACCUMULATING_COUNTER)
            if self._has(self.catalog.exact[n], "rate", node=node)
        ]
        if not names:
            return None
        return self._counter_rate(level, names, (), matchers)

    def _raw(self, level: _Level, stat: str, *, node: bool, matchers: str) -> str | None:
        if stat == "current":
            return self._current(level, node=node, only=None, matchers=matchers)
        if stat == "capacity":
            cap = self._sel(level, self.names.capacity_value, None, matchers)
            return f"max by ({level.group}) ({cap})"
        if stat == "rate":
            return self._rate(level, node=node, matchers=matchers)
        if stat in WINDOW_STATS:
            inner = self._current(level, node=node, only=stat, matchers=matchers)
            if inner is None:
                return None
            return f"{_WINDOW_FUNCS[stat]}(({inner})[{self.window}:{self.interval}])"
        raise QueryBuildError(f"unknown stat {stat!r}; choose from {list(KERNEL_STATS)}")

    def _recorded_window(
        self, record: str, by: str, name_label: str, stat: str, *, node: bool, matchers: str = ""
    ) -> str:
        if stat not in WINDOW_STATS:
            raise QueryBuildError(f"{stat!r} is not a window stat; choose from {WINDOW_STATS}")
        pub = self._publishing(stat, node=node)
        if pub.empty:
            raise QueryBuildError(f"no metric in the catalog publishes stats.{stat}")
        extra = [matchers] if matchers else []
        sel = selector(
            record, eq(self.names.stat_label, "current"), *pub.matchers(name_label), *extra
        )
        # The outer max by is a no-op per group; it drops stat="current" so the result has
        # exactly the level's labels (the rule then sets stat=max/avg).
        return f"max by ({by}) ({_WINDOW_FUNCS[stat]}({sel}[{self.window}]))"

    # -- public API ---------------------------------------------------------------------------

    def kernel(self, stat: str, *, matchers: str = "") -> str | None:
        """Per-kernel ``stat`` from the raw container series.

        Args:
            stat: one of ``current``, ``capacity``, ``rate``, ``max``, ``avg``.
            matchers: extra matcher text (e.g. ``kernel_id=~"a|b"``) put into every selector.

        Returns:
            PromQL whose result labels are exactly ``(kernel_id, container_metric_name)``, or
            ``None`` when no catalog metric has that stat.

        Raises:
            QueryBuildError: unknown ``stat``.
        """
        return self._raw(self._kernel, stat, node=False, matchers=matchers)

    def kernel_recorded_window(self, stat: str, *, matchers: str = "") -> str:
        """``max``/``avg`` over the window of the recorded kernel ``current`` series (rules).

        Args:
            stat: ``max`` or ``avg``.
            matchers: extra matcher text (a rule shard's ``kernel_id`` matcher).

        Raises:
            QueryBuildError: ``stat`` is not a window stat, or no metric publishes it.
        """
        n = self.names
        return self._recorded_window(
            n.kernel_live_stat,
            self._kernel.group,
            n.container_metric_label,
            stat,
            node=False,
            matchers=matchers,
        )

    def kernel_exporter_window(self, stat: str, *, matchers: str = "") -> str:
        """``max``/``avg`` over the window of the raw kernel series, for
        :attr:`RateSource.EXPORTER` rules (which record no kernel ``current``).

        The same samples as :meth:`kernel_recorded_window` reads (the recorded ``current`` is a
        copy of the gauge's series, or of a counter's rate series, evaluated at the scrape
        interval), read without the copy: ``max by`` of ``max_over_time`` of each selector.

        Args:
            stat: ``max`` or ``avg``.
            matchers: extra matcher text (a rule shard's ``kernel_id`` matcher).

        Raises:
            QueryBuildError: ``stat`` is not a window stat, or no metric publishes it, or the
                expressions are not for :attr:`RateSource.EXPORTER`.
        """
        if self.rates is not RateSource.EXPORTER:
            raise QueryBuildError("kernel_exporter_window needs rates='exporter'")
        if stat not in WINDOW_STATS:
            raise QueryBuildError(f"{stat!r} is not a window stat; choose from {WINDOW_STATS}")
        level, func = self._kernel, _WINDOW_FUNCS[stat]
        gauges = self._publishing(stat, node=False, kinds=(Kind.GAUGE, Kind.ACCUMULATING_COUNTER))
        counters = tuple(
            n for n in self._rate_counters() if self._has(self.catalog.exact[n], stat, node=False)
        )
        parts: list[str] = []
        if not gauges.empty:
            sel = self._sel(level, self.names.current_value, gauges, matchers)
            parts.append(f"max by ({level.group}) ({func}({sel}[{self.window}]))")
        if counters:
            sel = self._sel(level, self.names.rate_value, _NameSet(exact=counters), matchers)
            parts.append(f"max by ({level.group}) ({func}({sel}[{self.window}]))")
        if not parts:
            raise QueryBuildError(f"no metric in the catalog publishes stats.{stat}")
        return _join_or(parts)

    def kernel_rules(self, *, matchers: str = "") -> tuple[tuple[str, str], ...]:
        """The kernel rule group as ``(stat, expr)`` pairs, in evaluation order.

        The values are exactly those of :meth:`kernel` (``current``/``capacity``/``rate``)
        and :meth:`kernel_recorded_window` (``max``/``avg``), or with
        :attr:`RateSource.EXPORTER` of :meth:`kernel_exporter_window`; the expressions are
        shaped for a rule group, whose cost is Prometheus selecting and decoding every raw
        series once per selector, every interval:

        * no ``or`` chains across disjoint metric sets: a stat whose metrics fall into kinds
          with different constructions (gauges, rate counters) is one rule per kind, each
          writing the same record and ``stat`` for its own series (the sets are disjoint
          by metric name, so no series is written twice);
        * the counters' rates aggregate once instead of three times: ``max by``
          over the per-series rates and a ``0`` for every live series without one is the
          largest rate, or ``0`` (rates are never negative), exactly as ``max by`` of the
          rates ``or`` ``0``; the staleness guard matches the raw series ``on`` the level's
          labels without aggregating them first;
        * the accumulating counters' ``rate`` likewise (it reads raw series only: taking its
          guard from the ``current`` just recorded would rely on the rule's staleness
          markers, which backfilled rules and a remote-writing vmalert do not give at the
          same timestamp);
        * the window stats read the recorded ``current`` with no outer ``max by``: the rule's
          ``stat`` label replaces ``stat="current"``, so the result has the level's labels.

        Rules that read recorded series come after the rules that record them.

        Args:
            matchers: extra matcher text (a rule shard's ``kernel_id`` matcher).
        """
        if self.rates is RateSource.EXPORTER:
            return self._kernel_exporter_rules(matchers)
        level, n = self._kernel, self.names
        g = level.group
        rate_counters = self._rate_counters()
        out: list[tuple[str, str]] = [
            ("current", self._latest(level, _NameSet(exclude=rate_counters), matchers)),
            ("capacity", f"max by ({g}) ({self._sel(level, n.capacity_value, None, matchers)})"),
        ]
        if rate_counters:
            out.append(("current", self._rule_counter_current(rate_counters, matchers)))
        rated = [
            m
            for m in self.catalog.names_of_kind(Kind.ACCUMULATING_COUNTER)
            if self._has(self.catalog.exact[m], "rate", node=False)
        ]
        if rated:
            out.append(("rate", self._rule_counter_current(rated, matchers)))
        for stat in WINDOW_STATS:
            pub = self._publishing(stat, node=False)
            if pub.empty:
                continue
            extra = [matchers] if matchers else []
            sel = selector(
                n.kernel_live_stat,
                eq(n.stat_label, "current"),
                *pub.matchers(level.name_label),
                *extra,
            )
            out.append((stat, f"{_WINDOW_FUNCS[stat]}({sel}[{self.window}])"))
        return tuple(out)

    def _rule_counter_current(self, counters: Sequence[str], matchers: str) -> str:
        """Counters' rate for a rule (rate counters' ``current``, accumulating counters'
        ``rate``): :meth:`_counter_rate`'s value, aggregated once.

        ``(max by (R) or max by (F or C * 0)) and on C``: the agent's rate series where it
        has one, else the largest fallback rate of the group's series, else ``0`` for a live
        series without a rate; kept where a latest sample exists.
        """
        level, names = self._kernel, _NameSet(exact=tuple(counters))
        g = level.group
        agent = self._sel(level, self.names.rate_value, names, matchers)
        cur = self._sel(level, self.names.current_value, names, matchers)
        w = self.rate_window
        fallback = f"(rate({cur}[{w}]) unless idelta({cur}[{w}]) < 0) or {cur} * 0"
        return f"(max by ({g}) ({agent}) or max by ({g}) ({fallback})) and on ({g}) {cur}"

    def _kernel_exporter_rules(self, matchers: str) -> tuple[tuple[str, str], ...]:
        """:meth:`kernel_exporter_window`'s parts, one rule each (disjoint metric names)."""
        level = self._kernel
        out: list[tuple[str, str]] = []
        for stat in WINDOW_STATS:
            func = _WINDOW_FUNCS[stat]
            gauges = self._publishing(
                stat, node=False, kinds=(Kind.GAUGE, Kind.ACCUMULATING_COUNTER)
            )
            counters = tuple(
                m
                for m in self._rate_counters()
                if self._has(self.catalog.exact[m], stat, node=False)
            )
            if not gauges.empty:
                sel = self._sel(level, self.names.current_value, gauges, matchers)
                out.append((stat, f"max by ({level.group}) ({func}({sel}[{self.window}]))"))
            if counters:
                sel = self._sel(level, self.names.rate_value, _NameSet(exact=counters), matchers)
                out.append((stat, f"max by ({level.group}) ({func}({sel}[{self.window}]))"))
        return tuple(out)

    def kernel_stat_of(self, value_type: str, metric: str) -> str:
        """The stat a raw kernel series stands for under :attr:`RateSource.EXPORTER`: the
        stat whose :meth:`kernel` expression selects it, ``""`` when none does.

        A rate counter's ``rate`` series is its ``current`` (its own ``current`` is the
        cumulative counter, shown nowhere); an accumulating counter's ``rate`` series is its
        ``stats.rate``; every ``capacity`` series is the capacity.
        """
        n = self.names
        rated = metric in self._rate_counters()
        if value_type == n.capacity_value:
            return "capacity"
        if value_type == n.current_value:
            return "" if rated else "current"
        if value_type == n.rate_value:
            if rated:
                return "current"
            spec = self.catalog.lookup(metric)
            shown = spec.kind is Kind.ACCUMULATING_COUNTER and self._has(spec, "rate", node=False)
            return "rate" if shown else ""
        return ""

    def kernel_source(self, stat: str, *, matchers: str = "") -> str:
        """Where a reader finds per-kernel ``current``/``capacity``/``rate``: the recorded
        family (``rates=both``), or the exporter's own series (``rates=exporter``, whose
        rules record no copy). Labelled ``(kernel_id, container_metric_name)`` plus ``stat``
        for the recorded family; use it under ``max by``.

        Args:
            stat: ``current``, ``capacity`` or ``rate``.
            matchers: extra matcher text put into every selector.

        Raises:
            QueryBuildError: ``stat`` is a window stat or unknown, or no metric has it.
        """
        if stat not in ("current", "capacity", "rate"):
            raise QueryBuildError(f"kernel_source takes current, capacity or rate, not {stat!r}")
        if self.records_kernel_values:
            n = self.names
            return selector(n.kernel_live_stat, eq(n.stat_label, stat), *filter(None, [matchers]))
        expr = self.kernel(stat, matchers=matchers)
        if expr is None:
            raise QueryBuildError(f"no metric in the catalog has a kernel {stat!r}")
        return expr

    def device(self, stat: str, *, matchers: str = "") -> str | None:
        """Per-device ``stat`` from the raw device series (stats per ``spec.stats_node``).

        Returns:
            PromQL labelled exactly ``(agent_id, device_id, device_metric_name)``, or ``None``.

        Raises:
            QueryBuildError: unknown ``stat``.
        """
        return self._raw(self._device, stat, node=True, matchers=matchers)

    def device_recorded_window(self, stat: str) -> str:
        """``max``/``avg`` over the window of the recorded device ``current`` series (rules).

        Raises:
            QueryBuildError: ``stat`` is not a window stat, or no metric publishes it.
        """
        n = self.names
        return self._recorded_window(
            n.device_live_stat, self._device.group, n.device_metric_label, stat, node=True
        )

    def _node_sets(self, maxed_if: Callable[[MetricSpec], bool]) -> tuple[_NameSet, _NameSet]:
        """(summed, maxed) metric-name sets for a node aggregation (``maxed_if`` picks max)."""
        maxed_exact = tuple(sorted(n for n, s in self.catalog.exact.items() if maxed_if(s)))
        maxed_patterns = tuple(p for p, s in self.catalog.patterns if maxed_if(s))
        shadowed = self._shadowed(maxed_patterns, lambda s: not maxed_if(s))
        maxed = _NameSet(maxed_exact, maxed_patterns, shadowed)
        if maxed.empty:
            return _NameSet(), maxed
        # Summed = everything else; names shadowed out of a max pattern are summed explicitly.
        summed = _NameSet(exclude=(*maxed_exact,)) if not maxed_patterns else _NameSet()
        return summed, maxed

    def _node_capacity_sets(self) -> tuple[_NameSet, _NameSet]:
        """(summed, maxed) metric-name sets for node capacity."""
        return self._node_sets(lambda s: s.node_capacity == "max")

    def _node_maxed(self, also: Callable[[MetricSpec], bool] = lambda s: True) -> _NameSet:
        """Metrics whose node value is the max over devices (``node_aggregate="max"``)."""
        return self._node_sets(lambda s: s.node_aggregate == "max" and also(s))[1]

    def _node_value(
        self, summed: str, maxed: Callable[[_NameSet], str], *, names: _NameSet | None = None
    ) -> str:
        """``sum by`` node of ``summed``, with the ``node_aggregate="max"`` metrics maxed.

        ``maxed(names)`` selects those metrics' device values; the ``or`` keeps the max for
        them (left side wins per ``(agent, metric)``) and the sum for every other metric.
        """
        by = self._node_by
        if names is None:
            names = self._node_maxed()
        total = f"sum by ({by}) ({summed})"
        if names.empty:
            return total
        return f"max by ({by}) ({maxed(names)}) or {total}"

    def _node_capacity(self, source: str, *, recorded: bool, matchers: str) -> str:
        summed, maxed = self._node_capacity_sets()
        by = self._node_by
        label = self.names.device_metric_label

        def sel(ns: _NameSet) -> str:
            if recorded:
                return selector(source, eq(self.names.stat_label, "capacity"), *ns.matchers(label))
            inner = self._sel(self._device, self.names.capacity_value, ns, matchers)
            return f"max by ({self._device.group}) ({inner})"

        if maxed.empty:
            return f"sum by ({by}) ({sel(summed)})"
        if maxed.patterns:
            # Patterns cannot be negated exactly in one matcher: take max where it applies,
            # and sum for the rest through `or` (left side wins for the maxed names).
            return f"max by ({by}) ({sel(maxed)}) or sum by ({by}) ({sel(_NameSet())})"
        return f"sum by ({by}) ({sel(summed)}) or max by ({by}) ({sel(maxed)})"

    def node(self, stat: str) -> str | None:
        """Per-agent (node) ``stat`` from the recorded device series (rules).

        ``current``/``rate``: devices summed, or their ``max`` for ``node_aggregate="max"``
        (temperatures); ``capacity``: summed, or ``max`` for ``node_capacity="max"``;
        ``max``/``avg``: over the window of the recorded *node* ``current`` (the max of a sum
        is not the sum of maxima), so the node rules for them must come after the node
        ``current`` rule.

        Returns:
            PromQL labelled exactly ``(agent_id, device_metric_name)``, or ``None`` when no
            metric has that stat.

        Raises:
            QueryBuildError: unknown ``stat``.
        """
        n = self.names
        by = self._node_by
        if stat in ("current", "rate"):
            if stat == "rate" and self.device("rate") is None:
                return None
            label = n.device_metric_label
            return self._node_value(
                selector(n.device_live_stat, eq(n.stat_label, stat)),
                lambda ns: selector(
                    n.device_live_stat, eq(n.stat_label, stat), *ns.matchers(label)
                ),
            )
        if stat == "capacity":
            return self._node_capacity(n.device_live_stat, recorded=True, matchers="")
        if stat in WINDOW_STATS:
            if self._publishing(stat, node=True).empty:
                return None
            return self._recorded_window(
                n.agent_live_stat, by, n.device_metric_label, stat, node=True
            )
        raise QueryBuildError(f"unknown stat {stat!r}; choose from {list(KERNEL_STATS)}")

    def node_raw(self, stat: str, *, matchers: str = "") -> str | None:
        """Per-agent (node) ``stat`` from the raw device series (the planner's fallback).

        Same meaning as :meth:`node`; ``max``/``avg`` are subqueries over the node ``current``.

        Raises:
            QueryBuildError: unknown ``stat``.
        """
        by = self._node_by
        dev = self._device
        if stat == "current":
            cur = self._current(dev, node=True, only=None, matchers=matchers)
            assert cur is not None  # every metric has a current
            return self._node_value(cur, lambda ns: self._latest(dev, ns, matchers))
        if stat == "rate":
            rate = self._rate(dev, node=True, matchers=matchers)
            return None if rate is None else f"sum by ({by}) ({rate})"
        if stat == "capacity":
            return self._node_capacity("", recorded=False, matchers=matchers)
        if stat in WINDOW_STATS:
            inner = self._current(dev, node=True, only=stat, matchers=matchers)
            if inner is None:
                return None
            func = _WINDOW_FUNCS[stat]
            # Only the maxed metrics that publish this stat (the others are not in `inner`).
            names = self._node_maxed(lambda s: self._has(s, stat, node=True))
            node_cur = self._node_value(
                inner, lambda ns: self._latest(dev, ns, matchers), names=names
            )
            return f"{func}(({node_cur})[{self.window}:{self.interval}])"
        raise QueryBuildError(f"unknown stat {stat!r}; choose from {list(KERNEL_STATS)}")
