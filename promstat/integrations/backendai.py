"""promstat behind Backend.AI 26.9's own seams (the manager's processors, repositories, clients).

What a 26.9 manager calls, and what promstat puts there (``contrib/backendai-26.9.patch``
applies it; ``docs/manager-integration.md`` shows the diff):

* **Kernel live_stat** — the legacy resolvers' ``_batch_load_kernel_live_stat`` runs the
  permission-checked, audited processor ``batch_get_kernel_live_stats``, whose service calls
  ``MetricRepository.query_container_live_stats(kernel_ids)`` on the ``PrometheusClient`` the
  manager built. :func:`manager_promstat` wraps that client: its
  ``fetch_container_live_stats`` answers from one process-wide
  :class:`~promstat.service.LiveStats` (few vectorized queries, shared cache, refresh-ahead),
  for exactly the ids the processor passed — the cache below the permission check never
  answers an id the check did not pass, because nothing asks it for one. The processor, its
  owner lookup and ``FieldNotFoundError`` are 26.9's, unchanged. The result is a real
  ``KernelLiveStatBatchResult`` (so 26.9's ``LegacyLiveStatConverter`` still works, with
  promstat's numbers) carrying the legacy payloads too; :func:`convert_live_stats`, swapped
  in for the converter, returns those: the exact Valkey shape the agent writes.
* **Everything that still reads Valkey** (agent live_stat, the legacy idle checker,
  autoscaling, usage statistics) — :class:`ManagerStatClient` wraps the manager's
  ``ValkeyStatClient``: once promstat is started its live-statistics reads are promstat's
  (:class:`~promstat.stat_client.PromstatStatClient`), every other call is Valkey's.
* **The new idle checker** — ``MetricRepository.query_session_utilization_metrics`` sends every
  session id of a preset in one ``session_id=~`` regex; :func:`chunked_session_utilization`
  runs 26.9's own per-preset query once per chunk of ids that fits the backend's query-size
  limit (VictoriaMetrics: 16 KiB, about 440 ids) and merges the answers.
* **Lifecycle** — one :class:`ManagerPromstat` per manager process, started and closed with
  the manager's ``PrometheusClientDependency`` (:func:`manager_promstat`).

``ai.backend`` is imported only when these are used, so promstat installs without it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from promstat.errors import ConfigError
from promstat.service import LiveStats
from promstat.stat_client import PromstatStatClient

__all__ = [
    "ManagerPromstat",
    "ManagerStatClient",
    "PromstatPrometheusClient",
    "chunked_session_utilization",
    "convert_live_stats",
    "current",
    "manager_promstat",
    "to_live_stat_values",
]

K = TypeVar("K")
V = TypeVar("V")

#: Query bytes a chunk of session ids may take (VictoriaMetrics' -search.maxQueryLen is 16 KiB;
#: the preset's own text shares it).
DEFAULT_MAX_QUERY_BYTES = 16 * 1024

_current: ManagerPromstat | None = None


def current() -> ManagerPromstat | None:
    """The manager process' started :class:`ManagerPromstat`, or ``None`` before start-up."""
    return _current


@dataclass(eq=False)
class ManagerPromstat:
    """The one :class:`~promstat.service.LiveStats` of a manager process and its seams.

    Attributes:
        live_stats: shared by the kernel live_stat source and the stat client (one cache).
    """

    live_stats: LiveStats
    _stat_clients: dict[int, PromstatStatClient] = field(default_factory=dict, repr=False)

    def stat_client(self, fallback: Any) -> PromstatStatClient:
        """The drop-in reader over ``live_stats``, delegating the rest to ``fallback``."""
        key = id(fallback)
        client = self._stat_clients.get(key)
        if client is None:
            client = _make_stat_client(self.live_stats, fallback)
            self._stat_clients[key] = client
        return client

    async def query_container_live_stats(self, kernel_ids: Sequence[Any]) -> Any:
        """Live stats of exactly ``kernel_ids`` as a 26.9 ``KernelLiveStatBatchResult``.

        Errors become missing values (26.9's repository answers an empty result on a failed
        query, and a page shows ``null``); nothing that failed is cached below.
        """
        ids = [str(k) for k in kernel_ids]
        loaded = await self.live_stats.load_kernels(ids) if ids else []
        payloads: dict[Any, Any] = {}
        for kid, value in zip(kernel_ids, loaded, strict=True):
            payloads[kid] = value if isinstance(value, dict) else None
        return _result_type()(
            by_kernel={kid: to_live_stat_values(p) for kid, p in payloads.items()},
            payloads=payloads,
        )


def _make_stat_client(live_stats: LiveStats, fallback: Any) -> PromstatStatClient:
    try:
        return PromstatStatClient(live_stats, fallback=fallback)  # type: ignore[call-arg]
    except TypeError:  # a reader without delegation: the wrapper below delegates instead
        return PromstatStatClient(live_stats)


_RESULT_TYPE: type[Any] | None = None


def _result_type() -> type[Any]:
    """26.9's ``KernelLiveStatBatchResult`` with the legacy payloads alongside (built once)."""
    global _RESULT_TYPE
    if _RESULT_TYPE is None:
        from dataclasses import dataclass as _dataclass
        from dataclasses import field as _field

        from ai.backend.manager.clients.prometheus.metric_types import KernelLiveStatBatchResult

        @_dataclass(frozen=True)
        class PromstatLiveStatBatchResult(KernelLiveStatBatchResult):  # type: ignore[misc]
            """A ``KernelLiveStatBatchResult`` from promstat, with the agent-shaped payloads."""

            payloads: dict[Any, Any] = _field(default_factory=dict)

        _RESULT_TYPE = PromstatLiveStatBatchResult
    return _RESULT_TYPE


def to_live_stat_values(payload: Mapping[str, Any] | None) -> Any:
    """A legacy payload as 26.9's ``KernelLiveStatValues`` (the converter's input).

    ``current`` -> ``instant_current``, ``capacity`` -> ``instant_capacity``, ``stats.max``
    and ``stats.avg`` -> ``max`` and ``avg``: ``LegacyLiveStatConverter`` then builds its
    superset shape from promstat's values. Rates are already rates, so ``rate_*`` stay empty.
    """
    from ai.backend.manager.clients.prometheus.metric_types import KernelLiveStatValues

    values = KernelLiveStatValues()
    for name, metric in (payload or {}).items():
        if not isinstance(metric, Mapping):
            continue
        for key, target in (
            ("current", values.instant_current),
            ("capacity", values.instant_capacity),
            ("stats.max", values.max),
            ("stats.avg", values.avg),
        ):
            value = metric.get(key)
            if isinstance(value, str):
                target[name] = value
    return values


def convert_live_stats(kernel_ids: Sequence[Any], result: Any) -> dict[Any, Any]:
    """``LegacyLiveStatConverter.convert``, but the agent's Valkey shape for promstat's results.

    A result that promstat produced carries the payloads the agent would have written; any
    other result (promstat not started, or a test's) goes through 26.9's converter as before.
    """
    payloads = getattr(result, "payloads", None)
    if isinstance(payloads, dict):
        return {kid: payloads.get(kid) for kid in kernel_ids}
    from ai.backend.manager.api.gql_legacy.stat_converter import LegacyLiveStatConverter

    converted: dict[Any, Any] = LegacyLiveStatConverter.convert(kernel_ids, result)
    return converted


class PromstatPrometheusClient:
    """26.9's ``PrometheusClient`` with ``fetch_container_live_stats`` answered by promstat.

    Every other method (range queries, presets, metadata) is the wrapped client's.
    """

    def __init__(self, client: Any, promstat: ManagerPromstat) -> None:
        self._client = client
        self.promstat = promstat

    async def fetch_container_live_stats(self, kernel_ids: Sequence[Any]) -> Any:
        """The live stats of ``kernel_ids`` from promstat (see the module docstring)."""
        return await self.promstat.query_container_live_stats(kernel_ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class ManagerStatClient:
    """The manager's ``ValkeyStatClient``, whose live-statistics reads go to promstat once started.

    Built where 26.9 builds the stat client (``ValkeyDependency``), before promstat starts, so
    it looks the process' :class:`ManagerPromstat` up on each call: before start-up and after
    shut-down everything is Valkey's, as it was.
    """

    def __init__(self, valkey_stat: Any) -> None:
        self._valkey = valkey_stat

    @property
    def valkey(self) -> Any:
        """The wrapped ``ValkeyStatClient``."""
        return self._valkey

    def _target(self) -> Any:
        started = _current
        if started is None:
            return self._valkey
        return started.stat_client(self._valkey)

    def __getattr__(self, name: str) -> Any:
        target = self._target()
        if hasattr(target, name):
            return getattr(target, name)
        return getattr(self._valkey, name)


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

    Used in 26.9's ``PrometheusClientDependency.provide`` around its ``yield``: promstat reads
    the same Prometheus as the manager's client (``PROMSTAT_URL`` overrides it) and learns the
    rule layout from it.

    Args:
        prometheus_client: the ``PrometheusClient`` 26.9 built.
        config: the manager's unified config (for ``metric.address`` when needed).
        live_stats: a ``LiveStats`` to use instead of building one (tests, embedding); it is
            not closed here.

    Yields:
        The wrapped client, to hand on in place of 26.9's.

    Raises:
        ConfigError: a promstat is already started in this process.
    """
    global _current
    if _current is not None:
        raise ConfigError("promstat is already started in this manager process")
    owned = live_stats is None
    stats = live_stats or LiveStats(_prometheus_url(prometheus_client, config))
    started = ManagerPromstat(stats)
    _current = started
    try:
        yield PromstatPrometheusClient(prometheus_client, started)
    finally:
        _current = None
        if owned:
            await stats.aclose()


def _session_chunks(ids: Sequence[K], *, budget: int, per_id: int) -> list[list[K]]:
    size = max(1, budget // per_id)
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]


async def chunked_session_utilization(
    query_one: Callable[[Any, Any, Sequence[K], Any], Awaitable[Mapping[K, V]]],
    preset: Any,
    query: Any,
    session_ids: Sequence[K],
    evaluation_time: Any,
    *,
    max_query_bytes: int = DEFAULT_MAX_QUERY_BYTES,
) -> dict[K, V]:
    """26.9's per-preset utilization query, once per chunk of session ids that fits.

    Args:
        query_one: ``MetricRepository._query_session_utilization_metrics_for_preset``.
        preset, query, evaluation_time: passed through.
        session_ids: every session of the preset (26.9 puts them all in one regex).
        max_query_bytes: the backend's query-size limit; the preset template's own length is
            taken off it, the rest holds ids (a UUID and its ``|``: 37 bytes).

    Returns:
        The merged ``{session_id: value}`` of every chunk.
    """
    unique = list(dict.fromkeys(session_ids))
    template = getattr(preset, "query_template", "") or ""
    labels = "".join(f"{k}{v}" for k, v in getattr(query, "filter_labels", ()) or ())
    # Room for the ids once the template, the other labels and some syntax are counted.
    budget = max(37, max_query_bytes - len(template) - len(labels) - 256)
    per_id = max((len(str(s)) for s in unique), default=36) + 1
    out: dict[K, V] = {}
    for chunk in _session_chunks(unique, budget=budget, per_id=per_id):
        out.update(await query_one(preset, query, chunk, evaluation_time))
    return out
