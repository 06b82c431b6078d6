"""The real Backend.AI 26.9 kernel live_stat path, as the benchmark's ``upstream`` contender.

Not a port: the installed ``backend.ai-manager`` (pinned in ``requirements/backendai-26.9.txt``)
does the work, with its own aiohttp client pool::

    ClientPool(tcp_client_session_factory)
      -> PrometheusClient(endpoint, pool, ContainerLiveStatQueryBuilder(timewindow), ...)
      -> fetch_container_live_stats(kernel_ids)       six sequential instant queries
      -> LegacyLiveStatConverter.convert(ids, result) {metric: MetricValue} per kernel

per DataLoader batch of 128 ids (``_batch_load_kernel_live_stat``), the batches of one page
dispatched together as aiodataloader does. The only thing added is at the HTTP edge: the
benchmark's fleet is historical data, so each POST's form gets the pinned evaluation
``time`` (26.9 evaluates at "now"); the queries, their order, parsing, pydantic validation
and conversion are 26.9's own.

``ai.backend`` is imported when a contender is built, so the rest of the harness runs without
it; a missing install fails with how to install it.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

import aiohttp

__all__ = ["UPSTREAM_BATCH", "Upstream", "require_backendai"]

#: ``_batch_load_kernel_live_stat``'s DataLoader ``max_batch_size``.
UPSTREAM_BATCH = 128

_INSTALL = (
    "the real Backend.AI 26.9 manager is not installed in this interpreter ({error}); "
    "`./dev setup` installs it into the 3.13 test venv (requirements/backendai-26.9.txt), or by "
    "hand: pip install -r requirements/backendai-26.9.txt"
)


def require_backendai() -> Any:
    """Import the 26.9 manager pieces the contender runs, or fail saying how to install them.

    Returns:
        A namespace with ``ClientPool``, ``tcp_client_session_factory``, ``PrometheusClient``,
        ``ContainerLiveStatQueryBuilder``, ``ContainerMetricQueryBuilder`` and
        ``LegacyLiveStatConverter``.

    Raises:
        RuntimeError: ``ai.backend`` (manager 26.9) cannot be imported.
    """
    try:
        from ai.backend.common.clients.http_client import (
            ClientPool,
            tcp_client_session_factory,
        )
        from ai.backend.manager.api.gql_legacy.stat_converter import LegacyLiveStatConverter
        from ai.backend.manager.clients.prometheus.client import PrometheusClient
        from ai.backend.manager.clients.prometheus.fixed_query_builder import (
            ContainerLiveStatQueryBuilder,
            ContainerMetricQueryBuilder,
        )
    except ImportError as exc:
        raise RuntimeError(_INSTALL.format(error=exc)) from exc

    class _Namespace:
        pass

    ns = _Namespace()
    for name, value in {
        "ClientPool": ClientPool,
        "tcp_client_session_factory": tcp_client_session_factory,
        "PrometheusClient": PrometheusClient,
        "ContainerLiveStatQueryBuilder": ContainerLiveStatQueryBuilder,
        "ContainerMetricQueryBuilder": ContainerMetricQueryBuilder,
        "LegacyLiveStatConverter": LegacyLiveStatConverter,
    }.items():
        setattr(ns, name, value)
    return ns


class _PinnedSession:
    """The pool's session, with the pinned ``time`` added to every POSTed form.

    A wrapper, not a ``ClientSession`` subclass (aiohttp discourages those); 26.9's client
    only calls ``get``, ``post`` and ``close`` on it. It also counts requests and body bytes,
    which the benchmark reports for every contender.
    """

    def __init__(self, session: aiohttp.ClientSession, contender: Upstream) -> None:
        self._session = session
        self._contender = contender

    def post(self, url: str, *, data: Any = None, **kwargs: Any) -> Any:
        if isinstance(data, aiohttp.FormData) and self._contender.at is not None:
            data.add_field("time", repr(self._contender.at))
        return self._session.post(url, data=data, trace_request_ctx=self._contender, **kwargs)

    def get(self, url: str, **kwargs: Any) -> Any:
        return self._session.get(url, trace_request_ctx=self._contender, **kwargs)

    async def close(self) -> None:
        await self._session.close()

    @property
    def closed(self) -> bool:
        return self._session.closed


async def _on_chunk(
    session: aiohttp.ClientSession, ctx: Any, params: aiohttp.TraceResponseChunkReceivedParams
) -> None:
    contender = ctx.trace_request_ctx
    if isinstance(contender, Upstream):
        contender.response_bytes += len(params.chunk)


async def _on_end(
    session: aiohttp.ClientSession, ctx: Any, params: aiohttp.TraceRequestEndParams
) -> None:
    contender = ctx.trace_request_ctx
    if isinstance(contender, Upstream):
        contender.queries += 1


class Upstream:
    """Backend.AI 26.9.6's ``fetch_container_live_stats`` + ``LegacyLiveStatConverter``.

    Args:
        prom_url: Prometheus base URL (26.9 appends ``/api/v1/``).
        at: pinned evaluation time, or ``None`` for "now" (live data, as 26.9 queries).
        batch_size: the DataLoader batch size (128).
        window: ``metric.timewindow`` (26.9's default ``5m``).
    """

    name = "upstream"

    def __init__(
        self,
        prom_url: str,
        at: float | None,
        *,
        batch_size: int = UPSTREAM_BATCH,
        window: str = "5m",
    ) -> None:
        self.bai = require_backendai()
        self.endpoint = f"{prom_url.rstrip('/')}/api/v1/"
        self.at = at
        self.batch_size = batch_size
        self.window = window
        self.queries = 0
        self.response_bytes = 0
        self._pool: Any = None
        self._client: Any = None

    def _session_factory(self, key: Any, /) -> Any:
        trace = aiohttp.TraceConfig()
        trace.on_response_chunk_received.append(_on_chunk)
        trace.on_request_end.append(_on_end)
        # 26.9's default factory (TCPConnector limit 100, base_url from the key), traced.
        session = self.bai.tcp_client_session_factory(key, trace_configs=[trace])
        return _PinnedSession(session, self)

    async def start(self) -> None:
        """Build 26.9's client pool and Prometheus client (one pool per process, as the
        manager's ``PrometheusClientDependency`` does) and open a connection."""
        bai = self.bai
        self._pool = bai.ClientPool(self._session_factory)
        self._client = bai.PrometheusClient(
            endpoint=self.endpoint,
            client_pool=self._pool,
            container_metric_query_builder=bai.ContainerMetricQueryBuilder(self.window),
            container_live_stat_query_builder=bai.ContainerLiveStatQueryBuilder(self.window),
        )
        await self._client.fetch_container_live_stats([uuid.uuid4()])

    async def prepare(self, ids: Sequence[str]) -> None:
        """Nothing to prepare: 26.9 has no cross-request cache."""

    async def batch_load(self, ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """One DataLoader batch: ``_batch_load_kernel_live_stat``'s work for ``ids``."""
        kernel_ids = [uuid.UUID(k) for k in ids]
        raw = await self._client.fetch_container_live_stats(kernel_ids)
        converted = self.bai.LegacyLiveStatConverter.convert(kernel_ids, raw)
        # graphene's JSONString serialises the dict: part of what a page costs the manager.
        out: list[dict[str, Any] | None] = []
        for kid in kernel_ids:
            value = converted.get(kid)
            if value is not None:
                json.dumps(value)
            out.append(value)
        return out

    async def load_payloads(self, ids: Sequence[str]) -> list[object]:
        """The page's payloads (or the batch's exception per id), batches dispatched together."""
        unique = list(dict.fromkeys(ids))
        batches = await asyncio.gather(
            *(
                self.batch_load(unique[i : i + self.batch_size])
                for i in range(0, len(unique), self.batch_size)
            ),
            return_exceptions=True,
        )
        results: list[object] = []
        for i, batch in enumerate(batches):
            n = len(unique[i * self.batch_size : (i + 1) * self.batch_size])
            results.extend([batch] * n if isinstance(batch, BaseException) else batch)
        return results

    async def load(self, ids: Sequence[str]) -> Any:
        """Load one page and report its cost (:class:`benchmarks.contenders.PageResult`)."""
        from .contenders import PageResult, _count

        q0, b0 = self.queries, self.response_bytes
        t0 = time.perf_counter()
        results = await self.load_payloads(ids)
        seconds = time.perf_counter() - t0
        found, errors = _count(results)
        unique = len(dict.fromkeys(ids))
        return PageResult(
            seconds, self.queries - q0, self.response_bytes - b0, found, errors, unique
        )

    async def close(self) -> None:
        """Close 26.9's client pool (its sessions and cleanup task)."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
