"""What the Backend.AI 26.9 manager needs from promstat, at the seams it already has.

Everything here imports ``ai.backend`` lazily (it is not a dependency of promstat): the types
below are Protocols of the few members used, and the manager's own classes are looked up on
first use.

==================================== =============================================================
manager seam (26.9.6)                what replaces it
==================================== =============================================================
kernel ``live_stat`` (legacy         :class:`PromstatPrometheusClient`: the manager's
GraphQL): processor ->               ``PrometheusClient`` with ``fetch_container_live_stats``
``MetricRepository.query_container_  answered by promstat; every other method forwarded. It sits
live_stats`` -> ``PrometheusClient.  *below* the processor, so the permission check, the audit and
fetch_container_live_stats`` ->      ``FieldNotFoundError`` stay the processor's, and it answers
``LegacyLiveStatConverter``          exactly the ids the repository passes (the shared cache is
                                     keyed per id: nothing reaches a caller the check did not pass).
                                     Its result converts, through the real converter, to
                                     promstat's numbers (the converter's shape);
                                     :func:`convert_live_stats` gives the agent's Valkey shape
                                     instead (the converter drops ``io_*`` ``stats.rate``).
agent live_stat, idle checker,       :meth:`BackendAI.stat_client`: the
autoscaling, usage statistics        :class:`~promstat.stat_client.PromstatStatClient` wrapping the
(``ValkeyStatClient``)               manager's ``ValkeyStatClient``.
new idle checker's                   :func:`chunk_session_utilization`: the same preset queries,
``MetricRepository.query_session_    with the session ids split into matchers that fit the query
utilization_metrics``                budget (26.9 sends them in one regex: VictoriaMetrics rejects
                                     it beyond ~440 sessions).
one ``LiveStats`` per process        :class:`BackendAI`: created, shared and closed with the
                                     manager's lifecycle (``async with``).
==================================== =============================================================

``contrib/backendai-26.9.6.patch`` wires these into an installed 26.9.6 manager in four files
(24 changed lines): :func:`manager_promstat` around ``PrometheusClientDependency``'s ``yield``
(one :class:`BackendAI` per process, started and closed with the manager, the wrapped client
handed on), :func:`convert_live_stats` in place of the converter in
``_batch_load_kernel_live_stat``, :class:`ManagerStatClient` around the ``ValkeyStatClient``
that ``ValkeyDependency`` builds (before promstat starts, so it finds the process'
:class:`BackendAI` when called), and :func:`chunked_session_utilization` at the one call of the
per-preset utilization query.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self

from promstat.errors import ConfigError
from promstat.promql import chunk_values
from promstat.service import LiveStats
from promstat.stat_client import PromstatStatClient
from promstat.stat_delegate import ValkeyStatFallback

__all__ = [
    "RATE_METRICS",
    "BackendAI",
    "ManagerStatClient",
    "PromstatPrometheusClient",
    "UpstreamPrometheusClient",
    "chunk_session_utilization",
    "chunked_session_utilization",
    "convert_live_stats",
    "current",
    "live_stat_values",
    "manager_promstat",
]

log = logging.getLogger(__name__)

Payload = Mapping[str, Mapping[str, Any]]

#: Counters whose ``current`` the converter takes from its ``rate_*`` queries (26.9's
#: ``_LIVE_STAT_RATE_METRIC_REGEX``): it copies their current to ``stats.rate`` (``net_*``) or
#: ``stats.diff`` (``cpu_util``).
RATE_METRICS = frozenset({"cpu_util", "net_rx", "net_tx"})
#: The budget of one session-utilization query: VictoriaMetrics' default
#: ``-search.maxQueryLen`` is 16 KiB; the template and the other matchers need the rest.
DEFAULT_SESSION_QUERY_BYTES = 12 * 1024
#: The session-id label of 26.9's utilization presets (``SESSION_ID_LABEL``).
SESSION_ID_LABEL = "session_id"
#: Where a preset template puts its label matchers (26.9's ``${{labels}}``).
_LABELS_PLACEHOLDER = re.compile(r"\$\{\{\s*labels\s*\}\}")


def _module(name: str) -> Any:
    """Import a Backend.AI module on first use, with a message saying what is missing."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:  # pragma: no cover - exercised only without Backend.AI
        raise ImportError(
            f"promstat.integrations.backendai needs the Backend.AI manager ({name}): "
            "install backend.ai-manager 26.9 into the manager's environment"
        ) from exc


class UpstreamPrometheusClient(Protocol):
    """The methods of the manager's ``PrometheusClient`` the wrapper forwards."""

    async def fetch_available_container_metric_names(self) -> list[str]: ...
    async def fetch_container_metric(
        self, metric_name: str, label: Any, time_range: Any
    ) -> list[Any]: ...
    async def execute_preset(
        self, preset: Any, *, time_range: Any, time: str | None = None
    ) -> Any: ...
    async def preview_query_template(self, *args: Any, **kwargs: Any) -> Any: ...


def live_stat_values(payload: Payload) -> Any:
    """One kernel's promstat payload as 26.9's ``KernelLiveStatValues``.

    Partitioned the way the 26.9 queries partition samples, so ``LegacyLiveStatConverter``
    rebuilds promstat's numbers: rate counters' current/max/avg go to ``rate_*`` (the
    converter prefers them), every other metric's to the plain parts, capacities to
    ``instant_capacity``.
    """
    types = _module("ai.backend.manager.clients.prometheus.metric_types")
    values = types.KernelLiveStatValues()
    for metric, fields in payload.items():
        rate = metric in RATE_METRICS
        for name, rated, plain in (
            ("current", values.rate_current, values.instant_current),
            ("stats.max", values.rate_max, values.max),
            ("stats.avg", values.rate_avg, values.avg),
        ):
            value = fields.get(name)
            if value is not None:
                (rated if rate else plain)[metric] = str(value)
        if fields.get("capacity") is not None:
            values.instant_capacity[metric] = str(fields["capacity"])
    return values


@functools.cache
def _result_class() -> Any:
    """26.9's ``KernelLiveStatBatchResult`` carrying promstat's payloads beside its values.

    A subclass, so everything between the client and the resolver (repository, service,
    action result) passes it on unchanged, and the real converter still reads it.
    """
    base: Any = _module(
        "ai.backend.manager.clients.prometheus.metric_types"
    ).KernelLiveStatBatchResult

    @dataclass(frozen=True)
    class PromstatLiveStatBatchResult(base):  # type: ignore[misc]  # an ai.backend class
        payloads: Mapping[Any, Payload | None] = field(default_factory=dict, compare=False)

    return PromstatLiveStatBatchResult


def convert_live_stats(kernel_ids: Sequence[Any], raw: Any) -> dict[Any, Any]:
    """``LegacyLiveStatConverter.convert`` that keeps the agent's Valkey shape for promstat.

    For a result :class:`PromstatPrometheusClient` produced it returns promstat's payloads
    (every field the agent writes, ``io_*`` ``stats.rate`` included); for any other result it
    is the real converter.
    """
    if isinstance(raw, _result_class()):
        return {kid: _thaw(raw.payloads.get(kid)) for kid in kernel_ids}
    converter = _module("ai.backend.manager.api.gql_legacy.stat_converter")
    out: dict[Any, Any] = converter.LegacyLiveStatConverter.convert(kernel_ids, raw)
    return out


def _thaw(payload: Payload | None) -> dict[str, dict[str, Any]] | None:
    # GraphQL serializes plain dicts; promstat's cached payloads are read-only mappings.
    return None if payload is None else {m: dict(f) for m, f in payload.items()}


class PromstatPrometheusClient:
    """The manager's ``PrometheusClient`` with kernel live stats answered by promstat.

    Args:
        stats: the process-wide ``LiveStats`` (shared cache, refresh-ahead, single-flight).
        upstream: the manager's ``PrometheusClient``; every other method is forwarded to it
            (metric metadata, container metric ranges, presets).
    """

    def __init__(self, stats: LiveStats, upstream: UpstreamPrometheusClient) -> None:
        self.stats = stats
        self.upstream = upstream

    async def fetch_container_live_stats(self, kernel_ids: Sequence[Any]) -> Any:
        """26.9's ``KernelLiveStatBatchResult`` for exactly ``kernel_ids``.

        A kernel promstat has no data for, or whose query failed, gets empty values (the
        converter's ``None``); the repository's "errors -> empty -> null" is kept, per id.
        """
        types = _module("ai.backend.manager.clients.prometheus.metric_types")
        loaded = await self.stats.load_kernels([str(k) for k in kernel_ids])
        payloads: dict[Any, Payload | None] = {}
        by_kernel: dict[Any, Any] = {}
        for kid, value in zip(kernel_ids, loaded, strict=True):
            if isinstance(value, BaseException):
                log.warning("promstat: live stats of kernel %s failed: %r", kid, value)
                value = None
            payloads[kid] = value
            by_kernel[kid] = (
                types.KernelLiveStatValues() if value is None else live_stat_values(value)
            )
        return _result_class()(by_kernel=by_kernel, payloads=payloads)

    async def fetch_available_container_metric_names(self) -> list[str]:
        """Forwarded to the manager's client."""
        return await self.upstream.fetch_available_container_metric_names()

    async def fetch_container_metric(
        self, metric_name: str, label: Any, time_range: Any
    ) -> list[Any]:
        """Forwarded to the manager's client."""
        return await self.upstream.fetch_container_metric(metric_name, label, time_range)

    async def execute_preset(self, preset: Any, *, time_range: Any, time: str | None = None) -> Any:
        """Forwarded to the manager's client."""
        return await self.upstream.execute_preset(preset, time_range=time_range, time=time)

    async def preview_query_template(self, *args: Any, **kwargs: Any) -> Any:
        """Forwarded to the manager's client."""
        return await self.upstream.preview_query_template(*args, **kwargs)


PresetQuery = Callable[[Any, Any, Sequence[Any], Any], Awaitable[Mapping[Any, Any]]]


async def chunked_session_utilization(
    original: PresetQuery,
    preset: Any,
    query: Any,
    session_ids: Sequence[Any],
    evaluation_time: Any,
    *,
    max_query_bytes: int = DEFAULT_SESSION_QUERY_BYTES,
    max_alternatives: int = 256,
    concurrency: int = 4,
) -> Mapping[Any, Any]:
    """One preset's session-utilization query, sent once per chunk of ids that fits.

    26.9 renders every session id of a batch into one ``session_id=~"a|b|..."`` matcher; past
    ~440 sessions the query exceeds VictoriaMetrics' 16 KiB limit and the whole idle check gets
    nothing. Presets are arbitrary PromQL written by administrators, so the faithful fix is
    not another query but the same one per chunk of ids (promstat's chunker, as
    :mod:`promstat.utilization` uses), run concurrently and merged as 26.9 merges several
    series of one session (the maximum). Presets that do not group by ``session_id`` send one
    query, as before.

    Args:
        original: 26.9's ``MetricRepository._query_session_utilization_metrics_for_preset``.
        preset, query, session_ids, evaluation_time: its arguments.
        max_query_bytes: budget of the template plus the id matcher.
        max_alternatives: most ids per matcher.
        concurrency: chunks in flight at once.

    Returns:
        ``{session_id: value}`` over every chunk.
    """
    scoped = SESSION_ID_LABEL in query.group_labels and SESSION_ID_LABEL not in dict(
        query.filter_labels
    )
    ids = [str(s) for s in dict.fromkeys(session_ids)]
    fixed = len(preset.query_template.encode()) + 256  # the other matchers, the window
    chunks = (
        chunk_values(
            ids,
            fixed_bytes=fixed,
            max_bytes=max_query_bytes,
            max_alternatives=max_alternatives,
            repeats=max(1, len(_LABELS_PLACEHOLDER.findall(preset.query_template))),
            label=SESSION_ID_LABEL,
        )
        if scoped and ids
        else [tuple(ids)]
    )
    if len(chunks) == 1:
        return await original(preset, query, session_ids, evaluation_time)
    by_str = {str(s): s for s in session_ids}
    sem = asyncio.Semaphore(concurrency)

    async def one(chunk: tuple[str, ...]) -> Mapping[Any, Any]:
        async with sem:
            return await original(preset, query, [by_str[i] for i in chunk], evaluation_time)

    merged: dict[Any, Any] = {}
    for part in await asyncio.gather(*(one(c) for c in chunks)):
        for session_id, value in part.items():
            merged[session_id] = (
                value if session_id not in merged else max(merged[session_id], value)
            )
    return merged


def chunk_session_utilization(
    repository: Any,
    *,
    max_query_bytes: int = DEFAULT_SESSION_QUERY_BYTES,
    max_alternatives: int = 256,
    concurrency: int = 4,
) -> None:
    """Make a ``MetricRepository`` send its session-utilization queries in chunks of ids.

    The in-place form of :func:`chunked_session_utilization`, for a manager wired by hand
    instead of by the patch.
    """
    original: PresetQuery = repository._query_session_utilization_metrics_for_preset

    async def chunked(
        preset: Any, query: Any, session_ids: Sequence[Any], evaluation_time: Any
    ) -> Mapping[Any, Any]:
        return await chunked_session_utilization(
            original, preset, query, session_ids, evaluation_time,
            max_query_bytes=max_query_bytes, max_alternatives=max_alternatives,
            concurrency=concurrency,
        )  # fmt: skip

    repository._query_session_utilization_metrics_for_preset = chunked


class BackendAI:
    """promstat in one 26.9 manager process: one ``LiveStats``, the replacements built on it.

    Use it with the manager's lifecycle::

        async with BackendAI.from_url("http://prometheus:9090") as promstat:
            valkey_clients.stat = promstat.stat_client(valkey_clients.stat)
            metric_repository._prometheus_client = promstat.prometheus_client(prometheus_client)
            chunk_session_utilization(metric_repository)
            ...  # the manager runs

    Args:
        stats: the ``LiveStats`` to share; closed by :meth:`aclose` when ``owns_stats``.
        owns_stats: close ``stats`` with this object (default: yes).
    """

    def __init__(self, stats: LiveStats, *, owns_stats: bool = True) -> None:
        self.stats = stats
        self.owns_stats = owns_stats

    @classmethod
    def from_url(cls, url: str, **live_stats_options: Any) -> BackendAI:
        """A ``LiveStats`` on ``url`` (``live_stats_options`` go to its constructor), owned."""
        return cls(LiveStats(url, **live_stats_options))

    def stat_client(self, valkey_stat: ValkeyStatFallback, **options: Any) -> PromstatStatClient:
        """The drop-in for the manager's ``ValkeyStatClient`` (``options``: its keywords)."""
        return PromstatStatClient(self.stats, valkey_stat, **options)

    def prometheus_client(self, upstream: UpstreamPrometheusClient) -> PromstatPrometheusClient:
        """The manager's ``PrometheusClient`` with kernel live stats from promstat."""
        return PromstatPrometheusClient(self.stats, upstream)

    async def __aenter__(self) -> Self:
        await self.stats.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the shared ``LiveStats`` (when owned): its background refresh stops."""
        if self.owns_stats:
            await self.stats.aclose()


_current: BackendAI | None = None


def current() -> BackendAI | None:
    """The manager process' started :class:`BackendAI` (:func:`manager_promstat`), or None."""
    return _current


def _prometheus_url(client: Any, config: Any) -> str:
    override = os.environ.get("PROMSTAT_URL")
    if override:
        return override
    endpoint = getattr(getattr(client, "_client_key", None), "endpoint", None)
    if isinstance(endpoint, str):
        # 26.9 keeps ".../api/v1/" in its endpoint; promstat takes the server's base URL.
        return endpoint.rstrip("/").removesuffix("/api/v1")
    address = getattr(getattr(config, "metric", None), "address", None)
    if address is not None:
        return f"http://{address.to_legacy()}"
    raise ConfigError("cannot tell the Prometheus URL: set PROMSTAT_URL")


@contextlib.asynccontextmanager
async def manager_promstat(
    prometheus_client: Any, config: Any = None, *, live_stats: LiveStats | None = None
) -> AsyncIterator[PromstatPrometheusClient]:
    """Start the process' promstat with the manager, and close it with the manager.

    Used by the patch in 26.9's ``PrometheusClientDependency.provide`` around its ``yield``:
    promstat reads the same Prometheus as the manager's client (``$PROMSTAT_URL`` overrides
    it) and learns the rule layout from it.

    Args:
        prometheus_client: the ``PrometheusClient`` 26.9 built.
        config: the manager's unified config (its ``metric.address`` when the client has no
            endpoint).
        live_stats: a ``LiveStats`` to use instead of building one (tests, embedding); it is
            not closed here.

    Yields:
        The wrapped client, handed on in place of 26.9's.

    Raises:
        ConfigError: a promstat is already started in this process.
    """
    global _current
    if _current is not None:
        raise ConfigError("promstat is already started in this manager process")
    if live_stats is None:
        started = BackendAI(LiveStats(_prometheus_url(prometheus_client, config)))
    else:
        started = BackendAI(live_stats, owns_stats=False)
    _current = started
    try:
        yield started.prometheus_client(prometheus_client)
    finally:
        _current = None
        await started.aclose()


class ManagerStatClient:
    """The manager's ``ValkeyStatClient``, its live-statistics reads promstat's once started.

    The patch builds it where 26.9 builds the stat client (``ValkeyDependency``), before
    promstat starts, so it looks the process' :class:`BackendAI` up on each call: before
    start-up and after shut-down every call is Valkey's, as it was; in between it is the
    :class:`~promstat.stat_client.PromstatStatClient` wrapping the same Valkey client.
    """

    def __init__(self, valkey_stat: Any) -> None:
        self._valkey = valkey_stat
        self._wrapped: tuple[BackendAI, PromstatStatClient] | None = None

    @property
    def valkey(self) -> Any:
        """The wrapped ``ValkeyStatClient``."""
        return self._valkey

    def _target(self) -> Any:
        started = _current
        if started is None:
            return self._valkey
        if self._wrapped is None or self._wrapped[0] is not started:
            self._wrapped = (started, started.stat_client(self._valkey))
        return self._wrapped[1]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target(), name)
