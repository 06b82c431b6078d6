"""The query planner: a batch of kernel (or agent) ids -> a few vectorized PromQL queries.

A GraphQL list page asks for the live_stat of hundreds or thousands of kernels. The planner
answers with a *fixed* set of query shapes, independent of the number of ids, each grouped
``by (kernel_id, container_metric_name[, stat])`` so only the labels it needs come back:

* **recorded plan** (the generated recording rules are loaded): one shape per level, a single
  selector on the recorded ``...:live_stat`` family, whose ``stat`` label carries current,
  capacity, max, avg and rate. With ``rates="exporter"`` (rules rendered with ``--rates
  exporter``, which record only the kernel window stats) the kernel shape is still one
  selector, over two families: the exporter's raw series, whose ``value_type`` the planner
  maps to current/capacity/rate, and the recorded ``max``/``avg``;
* **raw plan** (fallback: no rules on this backend): one shape per stat, built by
  :mod:`promstat.expressions` from the raw series (window stats as subqueries).

Each shape's id set matcher is split into chunks under a query-bytes budget (default 16 KiB,
VictoriaMetrics' ``-search.maxQueryLen``) and an alternatives budget (default 256, Prometheus'
postings fast path). Chunks run concurrently under a semaphore, all at one pinned evaluation
time; with one shape (the recorded kernel plan) each chunk's answer is rendered as soon as it
arrives. Optionally (``fleet_fraction``, off by default), a batch covering most of the live
fleet is read with one unfiltered query per shape and the planner picks rows client-side.

A chunk the server rejects as too large (413/414/431, "too long query", an answer over the
client's ``max_response_bytes``) is split and retried; a fleet-wide query that is too large falls
back to the id chunks. A chunk that fails gives its own ids the error; the other ids still get
their values.

Faults and deadlines: every load has one **page deadline** (``PlannerConfig.page_deadline``,
default a little above the client's own deadline) covering plan detection, waiting for one of
the ``concurrency`` query slots, the client's retries and every split; what is not answered by
then gets :class:`~promstat.errors.PageDeadlineError`. Detection is single-flight per level, and a
load waits for it at most half its page deadline. A detection that fails (or takes longer) never
answers a load: the load takes the last plan that worked (the raw plan, which needs no
detection, when none has) and sends its own queries, so the first load after the server heals
gets data. For ``detect_backoff`` seconds after a failed detection, loads skip detection (an
outage costs one detection query, not one per page); nothing that was an error is kept. Each
failed query logs one line (logger ``promstat.planner``, WARNING) naming its plan shape, never
one line per id.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import time as _time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from promstat import renderer as live_stat
from promstat.api import PrometheusAPI
from promstat.errors import (
    APIError,
    ClosedError,
    ConfigError,
    EventLoopMismatchError,
    ExecutionError,
    PageDeadlineError,
    PromstatError,
    QueryTooLargeError,
    check_seconds,
)
from promstat.expressions import RateSource
from promstat.profile import RuleProfile
from promstat.promql import escape_string, quote_meta
from promstat.selfmetrics import PromstatMetrics
from promstat.shapes import ID_PLACEHOLDER, QueryShape, RowAccumulator, chunk_ids

__all__ = [
    "BatchOutcome",
    "Planner",
    "PlannerConfig",
    "background_work",
    "default_page_deadline",
]

log = logging.getLogger(__name__)

#: Set in a task doing background work (refresh-ahead): its chunks use the few
#: ``background_concurrency`` slots. A context variable, so every task the work spawns
#: (``gather``, splits) inherits it and a page's own tasks never do.
_BACKGROUND: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "promstat_background", default=False
)
_NO_LIMIT: contextlib.nullcontext[None] = contextlib.nullcontext()


def background_work() -> None:
    """Mark the current task (and the tasks it starts from now on) as background work.

    Its queries then take one of the planner's ``background_concurrency`` slots before a
    shared one, so pages keep the rest. Call it at the top of a background task's coroutine:
    a task's context is its own, so the mark never leaks into the caller.
    """
    _BACKGROUND.set(True)


#: Share of a load's page deadline it waits for a plan detection: the rest is left for its
#: own queries (a hung detection must not leave a load no time to ask).
_DETECT_SHARE = 0.5

Payload = dict[str, Any]



@dataclass(frozen=True, slots=True)
class PlannerConfig:
    """How the planner cuts and sends queries. Defaults suit Prometheus and VictoriaMetrics.

    How the rules were rendered (names, catalog, interval, windows, rates) is not here: that
    is the :class:`~promstat.profile.RuleProfile` the planner reads with. Every duration is in
    seconds.

    Attributes:
        max_query_bytes: query text budget per request (VictoriaMetrics rejects > 16 KiB).
        max_alternatives: ids per set matcher (Prometheus' postings fast path ends at 256).
        concurrency: chunks in flight at once (Prometheus runs 20 queries concurrently).
        background_concurrency: of those, how many background work may hold (refresh-ahead,
            marked with :func:`background_work`). A page's cold query then does not queue
            behind a refresh's chunks and shares Prometheus' cores with few of them; a
            refresh only has to finish within its interval, not fast.
        fleet_fraction: use the unfiltered fleet-wide plan when the batch has at least this
            share of the live fleet's ids (and needs more than one chunk). ``None`` (the
            default) never does: chunk answers are rendered as they arrive while Prometheus
            computes the others on every core, which beat one fleet-wide answer on every
            batch measured. Opt in (e.g. ``0.5``) where the number of queries is what is
            limited.
        use_recorded: ``True``/``False`` to force a plan, ``None`` to detect recorded series.
        detect_ttl: seconds to trust the last detection of recorded series / fleet size.
        max_split_depth: how many times a too-large chunk may be halved.
        raw_fallback: with detection (``use_recorded=None``), ask the raw expressions for
            ids the recorded series had nothing for (a kernel younger than one rule
            evaluation, rules running on only some shards).
        page_deadline: seconds one load may take in all: detection, waiting for a query slot,
            retries and splits. ``None``: :func:`default_page_deadline` of the client (its own
            deadline plus 20%, at least 0.5 s more).
        detect_backoff: seconds after a failed detection during which loads do not detect
            again: they take the last plan that worked (or the raw plan) and send their own
            queries. The error itself is never kept.

    Raises:
        ConfigError: a field is out of range (the message names it).
    """

    max_query_bytes: int = 16 * 1024
    max_alternatives: int = 256
    concurrency: int = 8
    background_concurrency: int = 2
    fleet_fraction: float | None = None
    use_recorded: bool | None = None
    detect_ttl: float = 300.0
    max_split_depth: int = 6
    raw_fallback: bool = True
    page_deadline: float | None = None
    detect_backoff: float = 2.0

    def __post_init__(self) -> None:
        for name in ("max_query_bytes", "max_alternatives", "concurrency",
                     "background_concurrency"):
            if getattr(self, name) < 1:
                raise ConfigError(f"PlannerConfig.{name} must be >= 1, not {getattr(self, name)}")
        if self.max_split_depth < 0:
            raise ConfigError(
                f"PlannerConfig.max_split_depth must be >= 0, not {self.max_split_depth}"
            )
        if self.fleet_fraction is not None and not 0.0 < self.fleet_fraction <= 1.0:
            raise ConfigError(
                f"PlannerConfig.fleet_fraction must be in (0, 1], not {self.fleet_fraction}"
            )
        check_seconds("PlannerConfig.detect_ttl", self.detect_ttl)
        check_seconds("PlannerConfig.detect_backoff", self.detect_backoff)
        check_seconds(
            "PlannerConfig.page_deadline", self.page_deadline, positive=True, optional=True
        )


@dataclass(slots=True)
class BatchOutcome:
    """What one planner call produced.

    Attributes:
        payloads: one entry per requested id: the live_stat payload, ``None`` (no data) or the
            :class:`PromstatError` that its chunk failed with.
        uncacheable: ids whose data came with warnings (a partial answer): never cache them.
        warnings: the warnings and infos the server returned, de-duplicated.
        queries: HTTP queries sent (after splits).
        answered: of those, how many the server answered with data (no error).
        plan: ``recorded``/``raw`` + ``/filtered``/``/fleet``, ``+raw`` when the raw fallback
            answered ids the recorded series lacked.
        at: the pinned evaluation time (Unix seconds).
    """

    payloads: dict[str, Payload | PromstatError | None]
    uncacheable: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)
    queries: int = 0
    answered: int = 0
    plan: str = ""
    at: float = 0.0


# Pages repeat (polling clients ask for the same ids every interval), so the chunking of the
# last few batches and the query texts of their chunks are kept: cutting and escaping a page's
# ids again is a measurable share of a warm page. Texts are at most the query budget each.
_CHUNKINGS_KEPT = 8
_TEXTS_KEPT = 64

# Rendering runs in slices of about this many ids, yielding to the event loop between slices,
# and also yields once a slice has run this long (the clock is read after every id, a fraction
# of a percent of rendering it): on a busy core a slice takes several times as long.
_RENDER_SLICE = 256
_SLICE_SECONDS = 0.004


def _present(metrics: Mapping[str, Mapping[str, str]]) -> dict[str, Mapping[str, str]]:
    # A metric is shown only while it has a latest `current` sample: window statistics of a
    # series that went stale (terminated kernel) must not resurrect it.
    return {name: stats for name, stats in metrics.items() if "current" in stats}


def default_page_deadline(client: PrometheusAPI) -> float:
    """The page deadline used when ``PlannerConfig.page_deadline`` is ``None``.

    The client's own deadline (``timeout``) plus 20%, at least 0.5 s more: one query that
    uses its whole deadline still reports the client's own
    :class:`~promstat.errors.RequestTimeoutError`, while time spent queueing for a query
    slot, in retries and in splits is cut at the page deadline.

    Raises:
        ConfigError: the client's ``timeout`` is not a positive number of seconds.
    """
    timeout = client.timeout
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ConfigError(f"the client's timeout must be > 0 seconds, not {timeout!r}")
    return float(timeout) + max(0.5, 0.2 * float(timeout))


def _describe(exc: BaseException) -> str:
    """A short account of a failure for a log line.

    The error's type and the server's text, never the query text (it would name ids).
    """
    if isinstance(exc, APIError):
        kind = f", {exc.error_type}" if exc.error_type else ""
        text = f"{type(exc).__name__} (HTTP {exc.status}{kind}): {exc.error}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:300] + "..."


@dataclass(slots=True)
class _Job:
    """One plan run for one load: what all its queries share."""

    level: str
    plan: str
    shapes: tuple[QueryShape, ...]
    chunks: list[tuple[str, ...]] | None  # None: not cut yet (a fleet-wide plan)
    wanted: Mapping[str, object]
    at: float
    deadline: float
    acc: RowAccumulator
    failed: dict[str, PromstatError]
    outcome: BatchOutcome
    late: int = 0  # queries that never got a slot before the deadline
    # Payloads rendered as each answer arrives (see Planner._execute); None: rendered at the end.
    rendered: dict[str, Payload | None] | None = None

    def where(self, shape: QueryShape, chunk: tuple[str, ...] | None) -> str:
        """The plan shape of one query, for errors and log lines."""
        part = "fleet-wide" if chunk is None else f"chunk of {len(chunk)} ids"
        index = self.shapes.index(shape) + 1 if shape in self.shapes else 0
        return f"{self.level} {self.plan} plan, shape {index}/{len(self.shapes)}, {part}"


class Planner:
    """Turns batches of ids into concurrent chunked queries and legacy payloads.

    Args:
        client: the :class:`~promstat.api.PrometheusAPI` to query.
        config: how queries are cut and sent.
        profile: how the rules were rendered (names, catalog, windows, rates); the default
            profile when ``None``. :meth:`use_profile` changes it later.
        metrics: counters to report splits and plan choices to.
        clock: wall clock for the default evaluation time (Unix seconds).

    A planner belongs to the event loop it is first used in (its query slots and shared
    detections live there); using it from another loop raises
    :class:`~promstat.errors.EventLoopMismatchError`. :meth:`aclose` cancels its background
    detections; it never closes the client.
    """

    def __init__(
        self,
        client: PrometheusAPI,
        config: PlannerConfig | None = None,
        *,
        profile: RuleProfile | None = None,
        metrics: PromstatMetrics | None = None,
        clock: Callable[[], float] = _time.time,
    ) -> None:
        self.client = client
        self.config = config or PlannerConfig()
        #: how the rules were rendered, and so how they are read (see :meth:`use_profile`)
        self.profile = profile or RuleProfile()
        self.metrics = metrics or PromstatMetrics()
        self._clock = clock
        self._sem = asyncio.Semaphore(self.config.concurrency)
        self._background_sem = asyncio.Semaphore(
            min(self.config.background_concurrency, self.config.concurrency)
        )
        self._detected: dict[str, tuple[float, bool, int]] = {}
        self._layouts_logged: set[RateSource] = set()  # rule layouts that differ, logged once
        #: log a kernel rule layout that differs from ``profile.rates`` (LiveStats turns this
        #: off once it reads the layout from ``/api/v1/rules`` and reports it itself)
        self.warn_layout = True
        #: the page deadline in seconds (configured, or derived from the client's deadline)
        self.page_deadline = (
            self.config.page_deadline
            if self.config.page_deadline is not None
            else default_page_deadline(client)
        )
        # No query is sent with less than this left of its page deadline (see _run).
        self._send_floor = min(0.25, 0.1 * self.page_deadline)
        # single-flight detection per level, and when it last failed (only the time: an error
        # is never kept, see _detect)
        self._detecting: dict[str, asyncio.Future[tuple[bool, int] | PromstatError]] = {}
        self._detect_failed: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # The chunking of the last few batches and their chunks' query texts (see _CHUNKINGS_KEPT)
        self._chunkings: OrderedDict[tuple[tuple[str, ...], tuple[str, ...]], list[tuple[str, ...]]]
        self._chunkings = OrderedDict()
        self._texts: OrderedDict[tuple[str, str, tuple[str, ...]], str] = OrderedDict()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._build_shapes()

    # -- shapes -----------------------------------------------------------------------------

    def use_profile(self, profile: RuleProfile) -> None:
        """Read with ``profile`` from now on (the rules loaded were learned or changed).

        Rebuilds the query shapes; a detection made under another ``rates`` layout is
        forgotten (it read the kernel counts for that layout).
        """
        if profile == self.profile:
            return
        old, self.profile = self.profile, profile
        self._build_shapes()
        self._chunkings.clear()
        self._texts.clear()
        if old.rates is not profile.rates or old.names != profile.names:
            self._detected.clear()
            self._layouts_logged.clear()

    def detected(self, level: str) -> tuple[bool, int] | None:
        """The last successful detection of ``level`` (``(recorded, live_ids)``), if any.

        Kept past ``detect_ttl`` (it is the fallback plan); ``None`` before the first.
        """
        found = self._detected.get(level)
        return None if found is None else (found[1], found[2])

    def _build_shapes(self) -> None:
        n = self.profile.names
        exprs = self.profile.expressions
        # Detection's count rows: one per stat for kernels; a row without one (agents, the raw
        # count) stands for the stat asked about.
        self._count_row: type[Any] = msgspec.defstruct(
            "CountRow", [("stat", str, "")], rename={"stat": n.stat_label}, frozen=True, gc=False
        )
        kernel_row = msgspec.defstruct(
            "KernelRow",
            [("id", str, ""), ("metric", str, ""), ("stat", str, "")],
            rename={"id": n.kernel_label, "metric": n.container_metric_label, "stat": n.stat_label},
            frozen=True,
            gc=False,
        )
        device_row = msgspec.defstruct(
            "DeviceRow",
            [("id", str, ""), ("device", str, ""), ("metric", str, ""), ("stat", str, "")],
            rename={
                "id": n.agent_label,
                "device": n.device_label,
                "metric": n.device_metric_label,
                "stat": n.stat_label,
            },
            frozen=True,
            gc=False,
        )
        node_row = msgspec.defstruct(
            "NodeRow",
            [("id", str, ""), ("metric", str, ""), ("stat", str, "")],
            rename={"id": n.agent_label, "metric": n.device_metric_label, "stat": n.stat_label},
            frozen=True,
            gc=False,
        )
        k, c, st = n.kernel_label, n.container_metric_label, n.stat_label
        a, d, dm = n.agent_label, n.device_label, n.device_metric_label
        kernel_by, device_by, node_by = (
            f"{k}, {c}, {st}",
            f"{a}, {d}, {dm}, {st}",
            f"{a}, {dm}, {st}",
        )
        self._kernel_recorded = (
            QueryShape(
                f"max by ({kernel_by}) ({n.kernel_live_stat}{{{ID_PLACEHOLDER}}})",
                f"max by ({kernel_by}) ({n.kernel_live_stat})",
                k,
                kernel_row,
                None,
            ),
        )
        if self.profile.rates is RateSource.EXPORTER:
            self._kernel_recorded = (self._exporter_kernel_shape(),)
        self._agent_recorded = (
            QueryShape(
                f"max by ({device_by}) ({n.device_live_stat}{{{ID_PLACEHOLDER}}})",
                f"max by ({device_by}) ({n.device_live_stat})",
                a,
                device_row,
                None,
            ),
            QueryShape(
                f"max by ({node_by}) ({n.agent_live_stat}{{{ID_PLACEHOLDER}}})",
                f"max by ({node_by}) ({n.agent_live_stat})",
                a,
                node_row,
                None,
                True,
            ),
        )
        kernel_raw = []
        for stat in ("current", "capacity", "rate", "max", "avg"):
            expr = exprs.kernel(stat, matchers=ID_PLACEHOLDER)
            if expr is not None:
                fleet = exprs.kernel(stat)
                assert fleet is not None
                kernel_raw.append(QueryShape(expr, fleet, k, kernel_row, stat))
        self._kernel_raw = tuple(kernel_raw)
        agent_raw = []
        for stat in ("current", "capacity", "rate", "max", "avg"):
            dev = exprs.device(stat, matchers=ID_PLACEHOLDER)
            if dev is not None:
                fleet = exprs.device(stat)
                assert fleet is not None
                agent_raw.append(QueryShape(dev, fleet, a, device_row, stat))
            node = exprs.node_raw(stat, matchers=ID_PLACEHOLDER)
            if node is not None:
                fleet = exprs.node_raw(stat)
                assert fleet is not None
                agent_raw.append(QueryShape(node, fleet, a, node_row, stat, True))
        self._agent_raw = tuple(agent_raw)

    def _exporter_kernel_shape(self) -> QueryShape:
        """The kernel page for ``--rates exporter`` rules: one selector over the exporter's
        series and the recorded window stats, grouped by value_type and stat.

        Measured live at 5,000 kernels in one run, those rules cost Prometheus 3.2% of a
        core against 16.4% for ``--rates both``; an uncached 1,000-kernel page took 126 ms
        against 115 ms: the raw series carry more labels, and the counters' cumulative
        ``current`` rows (dropped here) are 20% more bytes. Its values are fresher: nothing
        waits for a rule evaluation.
        """
        n = self.profile.names
        k, c, st, vt = n.kernel_label, n.container_metric_label, n.stat_label, n.value_type_label
        row = msgspec.defstruct(
            "ExporterKernelRow",
            [("id", str, ""), ("metric", str, ""), ("stat", str, ""), ("vt", str, "")],
            rename={"id": k, "metric": c, "stat": st, "vt": vt},
            frozen=True,
            gc=False,
        )
        names = escape_string(
            "|".join(quote_meta(m) for m in (n.container_metric, n.kernel_live_stat))
        )
        # stat!~: rules rendered with --rates both also record current/capacity/rate; those
        # copies are not read twice (raw rows have no stat label, which the matcher passes).
        matchers = f'__name__=~"{names}", {st}!~"current|capacity|rate"'
        by = f"{k}, {c}, {vt}, {st}"
        return QueryShape(
            f"max by ({by}) ({{{matchers}, {ID_PLACEHOLDER}}})",
            f"max by ({by}) ({{{matchers}}})",
            k,
            row,
            None,
            # a handful of (value_type, metric) pairs per catalog: resolved once each
            stat_of=functools.lru_cache(maxsize=1024)(self.profile.expressions.kernel_stat_of),
        )

    def shapes(self, level: str, *, recorded: bool) -> tuple[str, ...]:
        """The query shapes (with an ``__PROMSTAT_IDS__`` placeholder) a plan would send.

        Args:
            level: ``"kernel"`` or ``"agent"``.
            recorded: the recorded-series plan (True) or the raw fallback (False).
        """
        return tuple(s.expr for s in self._select(level, recorded))

    def queries(
        self, level: str, ids: Sequence[str], *, recorded: bool, fleet: bool = False
    ) -> list[str]:
        """The exact PromQL texts a plan sends for ``ids`` (for inspection and cost checks).

        Args:
            level: ``"kernel"`` or ``"agent"``.
            ids: the batch.
            recorded: recorded-series plan or raw fallback.
            fleet: the unfiltered fleet-wide variant instead of id chunks.
        """
        shapes = self._select(level, recorded)
        if fleet:
            return [s.text(None) for s in shapes]
        chunks = self._chunks(shapes, sorted(set(ids)))
        return [s.text(c) for s in shapes for c in chunks]

    def _select(self, level: str, recorded: bool) -> tuple[QueryShape, ...]:
        if level == "kernel":
            return self._kernel_recorded if recorded else self._kernel_raw
        if level == "agent":
            return self._agent_recorded if recorded else self._agent_raw
        raise ConfigError(f"unknown level {level!r}; expected 'kernel' or 'agent'")

    # -- lifecycle --------------------------------------------------------------------------

    def _enter(self) -> asyncio.AbstractEventLoop:
        """The running loop, after checking this planner is open and belongs to it."""
        if self._closed:
            raise ClosedError(what="Planner")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise EventLoopMismatchError(what="Planner")
        return loop

    @property
    def background_tasks(self) -> int:
        """Detections running in the background right now."""
        return len(self._tasks)

    async def aclose(self) -> None:
        """Cancel background detections; later loads raise ClosedError. Idempotent."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for fut in self._detecting.values():
            if not fut.done():
                fut.set_result(ClosedError(what="Planner"))
        self._detecting.clear()

    # -- detection --------------------------------------------------------------------------

    async def detect(
        self, level: str, *, at: float | None = None, refresh: bool = False
    ) -> tuple[bool, int]:
        """Whether recorded series exist for ``level``, and how many ids the live fleet has.

        One cheap ``count(count by (id) (...))`` query (for kernels, counted per ``stat``,
        which also tells the loaded rules' ``--rates`` layout: one that differs from
        ``rates`` is logged once); the answer is cached for ``detect_ttl`` seconds
        (``refresh=True`` asks again). Concurrent callers share one detection. ``at`` is the
        evaluation time (default: now). With a forced plan (``use_recorded`` True/False) and
        no fleet-wide choice (``fleet_fraction=None``) there is nothing to ask. Unlike a load,
        this call asks even within ``detect_backoff`` of a failure, and waits up to the whole
        page deadline.

        Returns:
            ``(recorded_available, live_ids)``; ``live_ids`` counts ids in the series the
            chosen plan reads (0 when unknown).

        Raises:
            PromstatError: the detection failed (or did not finish within the page deadline).
        """
        loop = self._enter()
        found = await self._detect(level, at, refresh, loop.time() + self.page_deadline)
        if isinstance(found, PromstatError):
            raise found
        return found

    async def choose(
        self, level: str, *, at: float | None = None, deadline: float | None = None
    ) -> tuple[bool, int]:
        """The plan a load takes now: ``(recorded, live_ids)``, never an error.

        The cached detection when fresh; else the shared detection, waited for at most half
        the page deadline (or until ``deadline``, a loop time, if sooner). When detection
        fails, takes longer, or failed less than ``detect_backoff`` seconds ago, the load
        gets :meth:`fallback` instead: it still sends its own queries, so a server that
        healed answers it at once.

        Args:
            level: ``"kernel"`` or ``"agent"``.
            at: evaluation time of the detection (default: now).
            deadline: the load's page deadline (``loop.time()`` seconds), if it has one.
        """
        loop = self._enter()
        now = loop.time()
        budget = self.page_deadline if deadline is None else min(self.page_deadline, deadline - now)
        failed_at = self._detect_failed.get(level)
        if failed_at is not None and _time.monotonic() - failed_at < self.config.detect_backoff:
            cached = self._detected.get(level)
            if cached is None or _time.monotonic() - cached[0] >= self.config.detect_ttl:
                return self.fallback(level)  # skip detection: it failed a moment ago
        found = await self._detect(level, at, False, now + budget * _DETECT_SHARE)
        if isinstance(found, PromstatError):
            return self.fallback(level)
        return found

    def fallback(self, level: str) -> tuple[bool, int]:
        """The plan taken without a detection: the last one that worked, else the raw plan.

        A forced plan (``use_recorded``) is kept; the raw plan needs no rules, so its answers
        are right whatever is loaded (slower when the rules are there).
        """
        self._select(level, True)  # an unknown level is the caller's bug: raise ConfigError
        forced = self.config.use_recorded
        last = self._detected.get(level)
        if forced is not None:
            return forced, last[2] if last is not None else 0
        if last is not None:
            return last[1], last[2]
        return False, 0

    async def _detect(
        self, level: str, at: float | None, refresh: bool, until: float
    ) -> tuple[bool, int] | PromstatError:
        """Detection for one caller: the cached answer or the shared detection (waited for
        until the loop time ``until``). A failure is returned, never cached."""
        self._select(level, True)  # an unknown level is the caller's bug: raise ConfigError
        cfg = self.config
        if cfg.use_recorded is not None and cfg.fleet_fraction is None:
            return cfg.use_recorded, 0
        now = _time.monotonic()
        if not refresh:
            cached = self._detected.get(level)
            if cached is not None and now - cached[0] < cfg.detect_ttl:
                return cached[1], cached[2]
        loop = asyncio.get_running_loop()
        fut = self._detecting.get(level)
        if fut is None:
            fut = self._detecting[level] = loop.create_future()
            task = loop.create_task(self._detect_now(level, at, fut))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if not fut.done():
            remaining = until - loop.time()
            if remaining > 0:
                # asyncio.wait leaves the shared detection running when this caller gives up
                await asyncio.wait({fut}, timeout=remaining)
        if not fut.done():
            return PageDeadlineError(
                timeout=self.page_deadline, stage="plan detection", detail=f"{level} plan"
            )
        return fut.result()

    async def _detect_now(
        self,
        level: str,
        at: float | None,
        fut: asyncio.Future[tuple[bool, int] | PromstatError],
    ) -> None:
        """The one detection every waiting load shares; its future only ever gets a result."""
        outcome: tuple[bool, int] | PromstatError
        try:
            async with asyncio.timeout(self.page_deadline):
                outcome = await self._count_live(level, at)
        except PromstatError as exc:
            outcome = exc
        except TimeoutError:  # a client without a deadline of its own hung
            outcome = PageDeadlineError(
                timeout=self.page_deadline, stage="plan detection", detail=f"{level} plan"
            )
        except asyncio.CancelledError:
            if not fut.done():
                fut.set_result(ClosedError(what="Planner"))
            raise
        except Exception as exc:  # a bug: every waiting key still gets a PromstatError
            log.exception("%s plan detection failed unexpectedly", level)
            outcome = PromstatError(f"{level} plan detection failed: {exc!r}")
            outcome.__cause__ = exc
        finally:
            if self._detecting.get(level) is fut:
                del self._detecting[level]
        stamp = _time.monotonic()
        if isinstance(outcome, PromstatError):
            # Only the time: loads skip detection for detect_backoff seconds, and send their
            # own queries meanwhile (see choose); the error answers no one but its waiters.
            self._detect_failed[level] = stamp
            recorded, _ = self.fallback(level)
            log.warning(
                "%s plan detection failed: %s; loads take the %s plan (%s) and detect again "
                "in %gs",
                level,
                _describe(outcome),
                "recorded" if recorded else "raw",
                "the last that worked" if level in self._detected else "it needs no detection",
                self.config.detect_backoff,
            )
        else:
            self._detect_failed.pop(level, None)
            self._detected[level] = (stamp, *outcome)
        if not fut.done():
            fut.set_result(outcome)

    async def _count_live(self, level: str, at: float | None) -> tuple[bool, int]:
        n = self.profile.names
        if level == "kernel":
            # --rates both rules record every kernel's current; --rates exporter rules only its
            # window stats, of which max is what every kernel with a memory series has. One
            # query counts both, per stat, so a layout that differs from the profile's rates
            # is logged without a query of its own.
            want = "current" if self.profile.rates is RateSource.BOTH else "max"
            label, stat = n.kernel_label, n.stat_label
            recorded_query = (
                f"count(count by ({label}, {stat}) "
                f'({n.kernel_live_stat}{{{stat}=~"current|max"}})) by ({stat})'
            )
            raw_sel = f'{n.container_metric}{{{n.value_type_label}="{n.current_value}"}}'
        else:
            want, label = "current", n.agent_label
            recorded_query = (
                f'count(count by ({label}) ({n.agent_live_stat}{{{n.stat_label}="current"}}))'
            )
            raw_sel = f'{n.device_metric}{{{n.value_type_label}="{n.current_value}"}}'
        forced = self.config.use_recorded
        recorded, live = False, 0
        if forced is not False:
            res = await self.client.query_vector(recorded_query, labels=self._count_row, time=at)
            counts = {row.metric.stat or want: int(float(row.value[1])) for row in res.series}
            if want in counts:
                recorded, live = True, counts[want]
            if level == "kernel":
                self._check_layout(set(counts))
        if forced is True:
            recorded = True
        if not recorded:
            res = await self.client.query_vector(
                f"count(count by ({label}) ({raw_sel}))", labels=self._count_row, time=at
            )
            live = int(float(res.series[0].value[1])) if res.series else 0
        return recorded, live

    def _check_layout(self, stats: set[str]) -> None:
        """Log (once per layout seen) when the kernel rules loaded differ from ``rates``.

        A mismatch still answers every page correctly (see README, "How rates are taken"),
        but one of the two sides is not what the operator meant: with ``both`` rules and
        ``rates="exporter"`` the rules still pay for the copies and kernels of plain agents
        get no rates; with ``exporter`` rules and ``rates="both"`` pages read the raw plan.
        """
        if not stats:
            return  # no rules (or none evaluated yet): the raw plan, nothing to compare
        layout = RateSource.BOTH if "current" in stats else RateSource.EXPORTER
        if not self.warn_layout or layout is self.profile.rates or layout in self._layouts_logged:
            return
        self._layouts_logged.add(layout)
        if layout is RateSource.BOTH:
            log.warning(
                "the kernel recording rules loaded are the --rates both layout (they record "
                "current, capacity and rate copies) but the profile's rates is 'exporter': "
                "pages read the exporter's own series, so kernels of agents without "
                'value_type="rate" series show no rates, and the copies cost rule CPU '
                "nobody reads; render the rules with --rates exporter, or set rates='both'"
            )
        else:
            log.warning(
                "the kernel recording rules loaded are the --rates exporter layout (window "
                "stats only) but the profile's rates is 'both': kernel pages fall back to "
                "the raw plan (correct, slower); read with RuleProfile(rates='exporter') "
                "(promstat serve --rates exporter) to read them"
            )

    # -- fetching ---------------------------------------------------------------------------

    async def kernels(
        self, ids: Sequence[str], *, at: float | None = None, deadline: float | None = None
    ) -> BatchOutcome:
        """Live stats of kernels, in the legacy kernel shape, one entry per distinct id.

        Args:
            ids: kernel ids (duplicates are answered once).
            at: evaluation time (Unix seconds; default: the clock's now).
            deadline: the page deadline as a loop time, when the caller started the load
                earlier (default: ``page_deadline`` seconds from now).

        Raises:
            ClosedError: after :meth:`aclose`.
            EventLoopMismatchError: used from another event loop than the first.
        """
        return await self._fetch("kernel", ids, at, deadline)

    async def agents(
        self, ids: Sequence[str], *, at: float | None = None, deadline: float | None = None
    ) -> BatchOutcome:
        """Live stats of agents, in the legacy ``{"node", "devices"}`` shape (see
        :meth:`kernels` for the arguments)."""
        return await self._fetch("agent", ids, at, deadline)

    async def _fetch(
        self, level: str, ids: Sequence[str], at: float | None, deadline: float | None
    ) -> BatchOutcome:
        loop = self._enter()
        wanted = dict.fromkeys(ids)
        at = self._clock() if at is None else float(at)
        outcome = BatchOutcome(payloads={}, at=at)
        if not wanted:
            return outcome
        # One deadline for the whole load: detection, query slots, retries, splits, fallback.
        if deadline is None:
            deadline = loop.time() + self.page_deadline
        # Never an error: a failed detection gives the fallback plan, and this load still
        # sends its queries (a server that just healed answers them).
        recorded, live = await self.choose(level, at=at, deadline=deadline)
        plan, payloads = await self._execute(level, recorded, live, wanted, at, outcome, deadline)
        if level in self._detect_failed and outcome.answered:
            # The server answers again: the next load detects instead of waiting out the
            # backoff on the fallback plan.
            del self._detect_failed[level]
        missing = {i: None for i, p in payloads.items() if p is None}
        fallback_applies = level != "kernel" or self.profile.rates is RateSource.BOTH
        if (
            recorded
            and missing
            and fallback_applies  # the exporter kernel plan already reads the raw series
            and self.config.use_recorded is None
            and self.config.raw_fallback
        ):
            # Recorded series lag the raw ones by up to one evaluation interval (a kernel
            # that just started) and may be missing where rules run on only some shards:
            # ask the raw expressions for exactly the ids that came back empty.
            _, fallback = await self._execute(level, False, 0, missing, at, outcome, deadline)
            if any(v is not None for v in fallback.values()):
                plan += "+raw"
            payloads.update(fallback)
        outcome.plan = plan
        outcome.payloads = payloads
        self.metrics.on_plan(plan)
        return outcome

    async def _execute(
        self,
        level: str,
        recorded: bool,
        live: int,
        wanted: dict[str, None],
        at: float,
        outcome: BatchOutcome,
        deadline: float,
    ) -> tuple[str, dict[str, Payload | PromstatError | None]]:
        shapes = self._select(level, recorded)
        cfg = self.config
        share = (
            cfg.fleet_fraction is not None and live > 0 and len(wanted) >= cfg.fleet_fraction * live
        )
        chunks: list[tuple[str, ...]] | None = None
        if share and len(wanted) > cfg.max_alternatives:
            # More ids than one matcher holds: certainly several chunks, so the fleet-wide
            # plan, which needs the chunks only if its query is too large (see _run). Cutting
            # 5,000 ids into chunks costs ~10 ms the page need not spend.
            fleet = True
        else:
            chunks = self._chunks(shapes, sorted(wanted))
            fleet = share and len(chunks) > 1
        plan = ("recorded" if recorded else "raw") + ("/fleet" if fleet else "/filtered")
        acc = RowAccumulator()
        failed: dict[str, PromstatError] = {}
        job = _Job(level, plan, shapes, chunks, wanted, at, deadline, acc, failed, outcome)
        if len(shapes) == 1:
            # One shape: every id's rows come from exactly one answer (chunks, split halves
            # and the fleet-wide fallback's chunks are disjoint), so each answer is rendered
            # as soon as it arrives, while Prometheus still computes the other chunks.
            job.rendered = {}
        units: list[Awaitable[None]] = []
        for shape in shapes:
            for chunk in (None,) if chunks is None or fleet else chunks:
                units.append(self._run(job, shape, chunk, 0))
        await asyncio.gather(*units)
        if job.late:
            log.warning(
                "%s %s plan: page deadline of %gs passed before %d queries got a query slot",
                level,
                plan,
                self.page_deadline,
                job.late,
            )
        rendered = job.rendered
        if rendered is None:
            await acc.demux()
            rendered = {}
            await self._render_ids(level, acc, wanted, rendered)
        # In the batch's order, an id's error first (as before streaming).
        payloads: dict[str, Payload | PromstatError | None] = {}
        for ident in wanted:
            err = failed.get(ident)
            payloads[ident] = err if err is not None else rendered.get(ident)
        return plan, payloads

    def _chunks(self, shapes: Sequence[QueryShape], ordered: list[str]) -> list[tuple[str, ...]]:
        # One chunking for all shapes of a plan, sized for the shape that repeats the matcher
        # most, so every id sits in the same chunk everywhere and fails or succeeds as one.
        key = (tuple(s.expr for s in shapes), tuple(ordered))
        kept = self._chunkings.get(key)
        if kept is not None:
            self._chunkings.move_to_end(key)
            return kept
        worst = max(shapes, key=lambda s: (s.expr.count(ID_PLACEHOLDER), len(s.expr)))
        chunks = chunk_ids(worst.expr, worst.id_label, ordered, self.config)
        self._chunkings[key] = chunks
        if len(self._chunkings) > _CHUNKINGS_KEPT:
            self._chunkings.popitem(last=False)
        return chunks

    def _text(self, shape: QueryShape, chunk: tuple[str, ...] | None) -> str:
        """``shape.text(chunk)``, kept for the chunks of the last few batches."""
        if chunk is None:
            return shape.fleet
        key = (shape.expr, shape.id_label, chunk)
        text = self._texts.get(key)
        if text is None:
            text = self._texts[key] = shape.text(chunk)
            if len(self._texts) > _TEXTS_KEPT:
                self._texts.popitem(last=False)
        else:
            self._texts.move_to_end(key)
        return text

    async def _run(
        self, job: _Job, shape: QueryShape, chunk: tuple[str, ...] | None, depth: int
    ) -> None:
        expr = self._text(shape, chunk)
        stage = "a query slot"
        try:
            async with asyncio.timeout_at(job.deadline):
                # Background work first takes one of its own few slots, then a shared one.
                background = self._background_sem if _BACKGROUND.get() else _NO_LIMIT
                async with background, self._sem:
                    # A slot freed by another page's expiring queries can reach this one a
                    # moment before its own deadline: a query sent then cannot succeed and only
                    # loads the server (one page's expiry would hand its slots down a chain of
                    # pages started milliseconds apart), so it counts as never having a slot.
                    if job.deadline - asyncio.get_running_loop().time() < self._send_floor:
                        raise TimeoutError
                    stage = "the query"
                    job.outcome.queries += 1
                    res = await self.client.query_vector(expr, labels=shape.labels, time=job.at)
        except (QueryTooLargeError, ExecutionError) as exc:
            too_many_samples = isinstance(exc, ExecutionError) and not isinstance(
                exc, QueryTooLargeError
            )
            if too_many_samples and "too many samples" not in exc.error.lower():
                self._fail(job, shape, chunk, exc)
                return
            if depth >= self.config.max_split_depth or (chunk is not None and len(chunk) < 2):
                self._fail(job, shape, chunk, exc)
                return
            # Too large: halve the chunk, or turn a fleet-wide query into the id chunks.
            self.metrics.on_split()
            log.debug("%s: too large, split (%s)", job.where(shape, chunk), _describe(exc))
            if chunk is None:
                if job.chunks is None:  # the fleet-wide plan did not need them until now
                    job.chunks = self._chunks(job.shapes, sorted(job.wanted))
                parts: list[tuple[str, ...]] = job.chunks
            else:
                half = len(chunk) // 2
                parts = [chunk[:half], chunk[half:]]
            await asyncio.gather(*(self._run(job, shape, part, depth + 1) for part in parts))
            return
        except PromstatError as exc:  # the client's own timeout (RequestTimeoutError) included
            self._fail(job, shape, chunk, exc)
            return
        except TimeoutError:  # the page deadline
            err = PageDeadlineError(
                timeout=self.page_deadline, stage=stage, detail=job.where(shape, chunk)
            )
            self._fail(job, shape, chunk, err, sent=stage == "the query")
            return
        # An id chunk's matcher selected exactly its ids: no per-row membership test.
        rows_of = job.wanted if chunk is None else None
        outcome = job.outcome
        outcome.answered += 1
        notes = (*res.warnings, *res.infos)
        if res.warnings:
            outcome.uncacheable.update(chunk if chunk is not None else job.wanted)
        for note in notes:
            if note not in outcome.warnings:
                outcome.warnings.append(note)
        if job.rendered is None:
            job.acc.add(shape, res.series, rows_of)
            return
        # Streaming: this answer's ids now, in slices; the loop first finishes what it was
        # doing (the decode of this answer ran in the callback that woke this task).
        acc = RowAccumulator()
        acc.add(shape, res.series, rows_of)
        del res  # the answer's parts now hold its rows: demux frees them slice by slice
        await asyncio.sleep(0)
        await acc.demux()
        await asyncio.sleep(0)
        await self._render_ids(job.level, acc, job.wanted if chunk is None else chunk, job.rendered)

    def _fail(
        self,
        job: _Job,
        shape: QueryShape,
        chunk: tuple[str, ...] | None,
        exc: PromstatError,
        *,
        sent: bool = True,
    ) -> None:
        """Give the query's ids its error; one log line per failed query, none per id."""
        for ident in chunk if chunk is not None else job.wanted:
            job.failed.setdefault(ident, exc)
        if sent:
            log.warning("query failed (%s): %s", job.where(shape, chunk), _describe(exc))
        else:
            job.late += 1  # reported once per plan run, in _execute

    # -- rendering --------------------------------------------------------------------------

    async def _render_ids(
        self,
        level: str,
        acc: RowAccumulator,
        ids: Iterable[str],
        into: dict[str, Payload | None],
    ) -> None:
        """Render ``ids`` from demultiplexed rows into ``into`` (read-only payloads, ``None``
        for an id without data), yielding to the loop every ``_RENDER_SLICE`` ids or sooner
        when a slice has run ``_SLICE_SECONDS`` (a slow or busy machine)."""
        rows: dict[str, Any] = acc.kernels if level == "kernel" else acc.agents
        render: Callable[[Any], Payload | None] = (
            self._render_kernel if level == "kernel" else self._render_agent
        )
        clock = _time.perf_counter
        until = clock() + _SLICE_SECONDS
        for n, ident in enumerate(ids, 1):
            # pop: each id's rows are freed inside its slice, not all at once when the
            # accumulator goes (tens of thousands of dicts on a 5,000-kernel page).
            into[ident] = render(rows.pop(ident, None))
            if n % _RENDER_SLICE == 0 or clock() > until:
                await asyncio.sleep(0)
                until = clock() + _SLICE_SECONDS

    def _render_kernel(self, metrics: Mapping[str, Mapping[str, str]] | None) -> Payload | None:
        # render_kernel leaves out metrics without a `current` value and returns None when
        # nothing is left. Frozen here: payload.freeze then costs nothing.
        if not metrics:
            return None
        return live_stat.render_kernel(metrics, catalog=self.profile.catalog, frozen=True)

    def _render_agent(
        self, rows: Mapping[str | None, Mapping[str, Mapping[str, str]]] | None
    ) -> Payload | None:
        if not rows:
            return None
        node = _present(rows.get(None, {}))
        devices: dict[str, dict[str, Mapping[str, str]]] = {}
        for device, metrics in rows.items():
            if device is None:
                continue
            for metric, stats in _present(metrics).items():
                devices.setdefault(metric, {})[device] = stats
        if not node and not devices:
            return None
        return live_stat.render_agent(node, devices, catalog=self.profile.catalog, frozen=True)
