"""Final stats of terminated kernels, answered from Prometheus history and cached for good.

Legacy kept a kernel's last ``live_stat`` in Valkey for 24 h after its last write and copied
it into ``kernels.last_stat`` at termination. Prometheus holds the same numbers for as long as
it retains data, so a terminated kernel is answered with its live_stat *at its termination
time* instead — for any age the TSDB still covers, and forever once cached.

What "final" means. The agent's exporter keeps a terminated kernel's series for a detention
(600 s upstream) with their values frozen, and the recording rules keep evaluating them, so
anything evaluated *after* the termination sees repeated counters: where the agent publishes
its own ``value_type="rate"`` series (promstat's exporter) the rate stays at its last value,
but a plain exporter's raw counters give ``rate()`` a window that fills with frozen samples
(the rate dilutes, then reads 0), and window statistics drift toward the frozen values either
way. The final stats are therefore the answer the live path would have given an instant before
the termination: every kernel is evaluated at ``terminated_at - offset`` (default 1 ms,
Prometheus' timestamp resolution), so nothing stamped at or after the termination enters,
while the kernel's last live sample — at most one scrape interval older — is well inside the
lookback. A kernel that had stopped reporting for longer than the lookback before its recorded
termination (its agent died first) gets, on the recorded plan, its last recorded stats within
``silent_window`` (24 h, as long as legacy's Valkey kept a kernel's last stats), in a second
query for just those kernels; on the raw plan it has none (``None``).

How it is grouped. Each kernel needs its own evaluation time, which an instant query's single
``time`` cannot give. The ``@`` modifier can: one HTTP query carries many terms joined with
``or``, each term evaluated at its own time, for every kernel that terminated then::

    max by (kernel_id, container_metric_name, stat)
        (last_over_time(kernel_metric:...:live_stat{kernel_id=~"a|b"}[5m] @ 1700000123.456))
    or max by (...) (last_over_time(kernel_metric:...:live_stat{kernel_id="c"}[5m] @ ...))
    or ...

On the recorded plan each term takes the last recorded value within the lookback before its
time: for detained series that is what an instant query returns, and it also survives the
staleness markers Prometheus writes when an exporter drops a kernel's series at once (no
detention) and the manager records the termination a scrape later. The raw plan evaluates its
expressions exactly at the time, so there such a kernel has no final stats.

Terms are packed greedily, in time order, under the planner's query-bytes budget (16 KiB), so
a thousand kernels with a thousand different termination times cost about ten queries on the
recorded plan, not a thousand; kernels that share a time (a session's kernels) share a set
matcher. Because each kernel id appears in exactly one term of a query, ``or`` never drops a
row. The raw plan (no recording rules) wraps each raw expression in a one-step subquery pinned
with ``@`` (``last_over_time((expr)[1ms:1ms] @ t)``: the expression evaluated exactly at
``t``) and sends one set of packed queries per stat, as the live raw plan does. With plan
detection, kernels the recorded series have nothing for (terminated before the rules were
loaded, or younger than one rule evaluation) are asked again on the raw plan.

Caching. Answers never change, so they are kept without expiry in a bounded LRU
(:class:`~promstat.loader.SharedLoader` with an infinite TTL: single-flight included), keyed by
``(kernel_id, terminated_at)``. Errors are never cached, nor answers that came with warnings
(partial answers), nor answers for termination times within ``settle`` seconds of now (the last
scrapes and rule evaluations, or VictoriaMetrics' latency offset, may still be landing).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from promstat import renderer as live_stat
from promstat.api import PrometheusAPI
from promstat.errors import ConfigError, PromstatError, check_seconds
from promstat.loader import FetchResult, SharedLoader
from promstat.planner import Planner
from promstat.profile import RuleProfile
from promstat.promql import duration, set_matcher
from promstat.selfmetrics import PromstatMetrics
from promstat.shapes import ID_PLACEHOLDER, chunk_ids

__all__ = [
    "DEFAULT_OFFSET",
    "DEFAULT_SETTLE",
    "DEFAULT_SILENT_WINDOW",
    "FinalConfig",
    "FinalKey",
    "FinalStats",
    "load_kernel_stats",
]

Payload = dict[str, Any]
#: ``(kernel_id, terminated_at)`` in Unix seconds.
FinalKey = tuple[str, float]
#: Evaluate this many seconds before the termination (Prometheus' resolution: 1 ms).
DEFAULT_OFFSET = 0.001
#: Answers for terminations more recent than this many seconds are not cached.
DEFAULT_SETTLE = 60.0
#: How far back a kernel silent at its termination is looked up (legacy's Valkey TTL).
DEFAULT_SILENT_WINDOW = 86400.0

_STATS = ("current", "capacity", "rate", "max", "avg")
_OR = " or "


@dataclass(frozen=True, slots=True)
class FinalConfig:
    """Settings of the terminated-kernel answers (:class:`FinalStats`), all in seconds.

    Attributes:
        offset: seconds before ``terminated_at`` the stats are evaluated at (see the module
            docstring): Prometheus' resolution, 1 ms.
        settle: answers for terminations newer than this many seconds are not cached.
        silent_window: on the recorded plan, how far before ``terminated_at`` to look for the
            last stats of a kernel that had none within the lookback (its agent stopped
            reporting before the termination was recorded): legacy's Valkey kept the last
            stats 24 h. Asked only for such kernels; ``None`` disables it.
        max_entries: bound of the answer cache (LRU); ``None``: the kernel cache's bound.

    Raises:
        ConfigError: a field is out of range (the message names it).
    """

    offset: float = DEFAULT_OFFSET
    settle: float = DEFAULT_SETTLE
    silent_window: float | None = DEFAULT_SILENT_WINDOW
    max_entries: int | None = None

    def __post_init__(self) -> None:
        check_seconds("FinalConfig.offset", self.offset)
        check_seconds("FinalConfig.settle", self.settle)
        check_seconds(
            "FinalConfig.silent_window", self.silent_window, positive=True, optional=True
        )
        if self.max_entries is not None and self.max_entries < 1:
            raise ConfigError(
                f"FinalConfig.max_entries must be >= 1 or None, not {self.max_entries}"
            )


@dataclass(frozen=True, slots=True)
class _Shape:
    """A term template: ``__PROMSTAT_IDS__`` for the id matcher, ``{at}`` for the time."""

    template: str
    stat: str | None  # fixed stat (raw shapes); None when rows carry a `stat` label


@dataclass(frozen=True, slots=True)
class _Query:
    """One HTTP query: terms joined with ``or``, and the ids it answers."""

    text: str
    ids: tuple[str, ...]
    time: float
    stat: str | None


def _at(t: float) -> str:
    return f"{t:.3f}"


def _rounds(keys: Sequence[FinalKey]) -> list[list[FinalKey]]:
    """Split keys so no kernel id appears twice in a round (``or`` would drop its rows)."""
    rounds: list[list[FinalKey]] = []
    seen: dict[str, int] = {}
    for key in keys:
        n = seen.get(key[0], 0)
        seen[key[0]] = n + 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append(key)
    return rounds


class FinalStats:
    """Batched, cached live_stat of terminated kernels at their termination times.

    Args:
        client: the :class:`~promstat.api.PrometheusAPI` to query.
        planner: the live planner: its config (budgets, plan choice), its profile (names,
            catalog, lookback; followed when it changes) and its cached detection of recorded
            series are reused.
        config: offset, settle, silent window and cache bound (:class:`FinalConfig`).
        metrics: counters for cache hits/misses and plan choices (``final/recorded``, ...).
        clock: wall clock (Unix seconds) for ``settle``.
    """

    def __init__(
        self,
        client: PrometheusAPI,
        planner: Planner,
        *,
        config: FinalConfig | None = None,
        metrics: PromstatMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        settings = config or FinalConfig()
        self.client = client
        self.planner = planner
        self.config = planner.config
        self.settings = settings
        self.metrics = metrics or PromstatMetrics()
        self.offset = settings.offset
        self.settle = settings.settle
        self._silent_window = settings.silent_window
        self._clock = clock
        self._sem = asyncio.Semaphore(self.config.concurrency)
        self._cache: SharedLoader[FinalKey, Payload] = SharedLoader(
            self._fetch,
            ttl=math.inf,
            max_entries=settings.max_entries or 100_000,
            metrics=self.metrics,
        )
        self._built_for: RuleProfile | None = None
        self._shapes: dict[str, tuple[_Shape, ...]] = {}
        self._build_shapes()

    @property
    def profile(self) -> RuleProfile:
        """The profile the planner reads with (the shapes follow it)."""
        return self.planner.profile

    def _build_shapes(self) -> None:
        """(Re)build the term templates when the planner's profile changed."""
        profile = self.planner.profile
        if profile is self._built_for:
            return
        n = profile.names
        self._row: type[Any] = msgspec.defstruct(
            "FinalKernelRow",
            [("id", str, ""), ("metric", str, ""), ("stat", str, "")],
            rename={"id": n.kernel_label, "metric": n.container_metric_label, "stat": n.stat_label},
            frozen=True,
            gc=False,
        )
        by = f"{n.kernel_label}, {n.container_metric_label}, {n.stat_label}"

        # last_over_time over the lookback rather than an instant selector: the same value
        # for detained series, but it also sees through the staleness markers Prometheus
        # writes when an exporter drops a kernel's series (and the rules' outputs follow)
        # before the manager records the termination.
        def recorded(window: str) -> tuple[_Shape, ...]:
            sel = f"{n.kernel_live_stat}{{{ID_PLACEHOLDER}}}[{window}] @ {{at}}"
            return (_Shape(f"max by ({by}) (last_over_time({sel}))", None),)

        shapes: dict[str, tuple[_Shape, ...]] = {"recorded": recorded(duration(profile.lookback))}
        if self._silent_window is not None:
            shapes["silent"] = recorded(duration(self._silent_window))
        raw: list[_Shape] = []
        for stat in _STATS:
            expr = profile.expressions.kernel(stat, matchers=ID_PLACEHOLDER)
            if expr is not None:
                # A one-step subquery pinned with @: the raw expression evaluated exactly at t.
                raw.append(_Shape(f"last_over_time(({expr})[1ms:1ms] @ {{at}})", stat))
        shapes["raw"] = tuple(raw)
        self._shapes = shapes
        self._built_for = profile

    def __len__(self) -> int:
        return len(self._cache)

    @property
    def clock(self) -> Callable[[], float]:
        """The wall clock (Unix seconds) of ``settle``: the ``LiveStats``' clock."""
        return self._clock

    def invalidate(self) -> None:
        """Forget every cached answer."""
        self._cache.invalidate()

    async def aclose(self) -> None:
        """Cancel in-flight lookups (their waiters get ClosedError) and drop the cache."""
        await self._cache.aclose()

    async def load(self, keys: Sequence[FinalKey]) -> list[Payload | BaseException | None]:
        """Final stats per ``(kernel_id, terminated_at)``, in order: payload, ``None`` or error.

        The batch-function contract, so a DataLoader can sit on top of it.
        """
        return await self._cache.batch_load([(k, float(t)) for k, t in keys])

    def queries(self, keys: Iterable[FinalKey], *, recorded: bool) -> list[str]:
        """The PromQL texts a plan sends for ``keys`` (for inspection and cost checks)."""
        self._build_shapes()
        return [q.text for q in self._plan(list(keys), "recorded" if recorded else "raw")]

    # -- fetching ---------------------------------------------------------------------------

    async def _fetch(self, keys: list[FinalKey]) -> FetchResult[FinalKey, Payload]:
        horizon = self._clock() - self.settle
        out: FetchResult[FinalKey, Payload] = FetchResult({}, {k for k in keys if k[1] > horizon})
        for key in [k for k in keys if not math.isfinite(k[1])]:
            out.values[key] = ConfigError(
                f"terminated_at of kernel {key[0]!r} must be a finite Unix time, not {key[1]!r}"
            )
        keys = [k for k in keys if k not in out.values]
        if not keys:
            return out
        # Detected at *now* (cached for detect_ttl, shared with live pages), never at a
        # historical time that would then be cached for the live path. A failed detection
        # gives the fallback plan: these kernels' queries are still sent.
        recorded, _ = await self.planner.choose("kernel", at=self._clock())
        self._build_shapes()
        # rates=exporter rules record only the window stats: the raw plan (the exporter's
        # series; windows as subqueries, a cost paid once per termination) has the rest.
        recorded = recorded and self.profile.expressions.records_kernel_values
        fallback = recorded and self.config.use_recorded is None and self.config.raw_fallback
        base = "recorded" if recorded else "raw"
        plan = "final/" + base
        for batch in _rounds(keys):
            values = await self._execute(batch, base, out.uncacheable)
            for extra, wanted in (("raw", fallback), ("silent", recorded)):
                missing = [k for k in batch if values[k] is None]
                if wanted and missing and extra in self._shapes:
                    more = await self._execute(missing, extra, out.uncacheable)
                    if any(v is not None for v in more.values()) and f"+{extra}" not in plan:
                        plan += f"+{extra}"
                    values.update(more)
            out.values.update(values)
        self.metrics.on_plan(plan)
        return out

    def _plan(self, keys: list[FinalKey], plan: str) -> list[_Query]:
        times: dict[float, list[str]] = {}
        for kernel_id, terminated_at in keys:
            times.setdefault(round(terminated_at - self.offset, 3), []).append(kernel_id)
        label = self.profile.names.kernel_label
        out: list[_Query] = []
        for shape in self._shapes[plan]:
            terms: list[tuple[str, tuple[str, ...], float]] = []
            for at in sorted(times):
                template = shape.template.replace("{at}", _at(at))
                for chunk in chunk_ids(template, label, times[at], self.config):
                    terms.append(
                        (template.replace(ID_PLACEHOLDER, set_matcher(label, chunk)), chunk, at)
                    )
            out.extend(_pack(terms, self.config.max_query_bytes, shape.stat))
        return out

    async def _execute(
        self, keys: list[FinalKey], plan: str, uncacheable: set[FinalKey]
    ) -> dict[FinalKey, Payload | PromstatError | None]:
        by_id = {k[0]: k for k in keys}
        rows: dict[str, dict[str, dict[str, str]]] = {}
        failed: dict[str, PromstatError] = {}

        async def run(query: _Query) -> None:
            try:
                async with self._sem:
                    res = await self.client.query_vector(
                        query.text, labels=self._row, time=query.time
                    )
            except PromstatError as exc:
                for ident in query.ids:
                    failed.setdefault(ident, exc)
                return
            if res.warnings:
                uncacheable.update(by_id[i] for i in query.ids)
            for s in res.series:
                lab = s.metric
                if lab.id in by_id:
                    stats = rows.setdefault(lab.id, {}).setdefault(lab.metric, {})
                    stats[query.stat or lab.stat] = s.value[1]

        jobs: list[Awaitable[None]] = [run(q) for q in self._plan(keys, plan)]
        await asyncio.gather(*jobs)
        catalog = self.profile.catalog
        out: dict[FinalKey, Payload | PromstatError | None] = {}
        for ident, key in by_id.items():
            err = failed.get(ident)
            metrics = rows.get(ident)
            out[key] = (
                err
                if err is not None
                else (live_stat.render_kernel(metrics, catalog=catalog) if metrics else None)
            )
        return out


def _pack(
    terms: Sequence[tuple[str, tuple[str, ...], float]], budget: int, stat: str | None
) -> list[_Query]:
    """Join consecutive terms with ``or`` into queries of at most ``budget`` bytes."""
    out: list[_Query] = []
    texts: list[str] = []
    ids: list[str] = []
    size, latest = 0, 0.0
    for text, chunk, at in terms:
        extra = len(text.encode()) + (len(_OR) if texts else 0)
        if texts and size + extra > budget:
            out.append(_Query(_OR.join(texts), tuple(ids), latest, stat))
            texts, ids, size = [], [], 0
            extra = len(text.encode())
        texts.append(text)
        ids.extend(chunk)
        size += extra
        latest = at
    if texts:
        out.append(_Query(_OR.join(texts), tuple(ids), latest, stat))
    return out


LiveLoad = Callable[..., Awaitable[list[Payload | BaseException | None]]]


async def load_kernel_stats(
    final: FinalStats,
    live: LiveLoad,
    pairs: Sequence[tuple[str, float | None]],
    *,
    at: float | None = None,
) -> list[Payload | BaseException | None]:
    """Live kernels through ``live``, terminated ones through ``final``, in ``pairs`` order.

    Args:
        final: the terminated-kernel answers.
        live: the live batch function (``LiveStats.load_kernels``: shared cache, ``at``).
        pairs: ``(kernel_id, terminated_at or None)``.
        at: a pinned evaluation time: kernels terminated after it were live then and are
            evaluated at ``at``; without it live kernels are answered as now.
    """
    live_ids: list[str] = []
    ended: list[FinalKey] = []
    for kernel_id, terminated_at in pairs:
        if terminated_at is None or (at is not None and terminated_at > at):
            live_ids.append(kernel_id)
        else:
            ended.append((kernel_id, terminated_at))
    live_values, final_values = await asyncio.gather(
        live(live_ids, at=at) if live_ids else _nothing(),
        final.load(ended) if ended else _nothing(),
    )
    answers = iter(live_values)
    finals = iter(final_values)
    return [
        next(answers)
        if terminated_at is None or (at is not None and terminated_at > at)
        else next(finals)
        for _, terminated_at in pairs
    ]


async def _nothing() -> list[Payload | BaseException | None]:
    return []
