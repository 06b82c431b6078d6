"""The benchmark's upstream contender as the installed Backend.AI 26.9 code, not a port.

``upstream_real`` loads a page the way the 26.9 manager's legacy kernel ``live_stat`` does
below its processor: per 128-id DataLoader batch (batches dispatched together, as
aiodataloader does) one ``PrometheusClient.fetch_container_live_stats`` call (six sequential
instant queries) with its own ``ClientPool``/aiohttp session, then
``LegacyLiveStatConverter.convert``. Nothing of it is re-implemented here; the one change is
the evaluation time: the real client evaluates "now" and the fleet is historical, so its
``_query_instant`` gets the fleet's time as ``time=`` (its own parameter).

It needs ``backend.ai-manager`` 26.9 (Python 3.13), imported on first use, so the harness
runs without it when this contender is not selected. Requests and response bytes are counted
with an aiohttp trace on the pool's session.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import time
import uuid
import warnings
from collections.abc import Sequence
from typing import Any

import aiohttp

from .contenders import PageResult

__all__ = ["RealUpstream"]


def _module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ImportError(
            f"the upstream_real contender runs the installed Backend.AI manager ({name}): "
            "install backend.ai-manager 26.9 (Python 3.13) next to promstat"
        ) from exc


class RealUpstream:
    """The installed 26.9 ``fetch_container_live_stats`` + ``LegacyLiveStatConverter``.

    Args:
        prom_url: Prometheus base URL.
        at: pinned evaluation time.
        batch_size: the DataLoader's ``max_batch_size`` (128 in the manager).
        window: ``metric.timewindow`` (the manager's default ``5m``).
    """

    name = "upstream_real"

    def __init__(
        self, prom_url: str, at: float, *, batch_size: int = 128, window: str = "5m"
    ) -> None:
        self.prom_url = prom_url
        self.at = at
        self.batch_size = batch_size
        self.window = window
        self._pool: Any = None
        self._client: Any = None
        self._queries = 0
        self._bytes = 0

    def _factory(self, key: Any) -> aiohttp.ClientSession:
        http = _module("ai.backend.common.clients.http_client")
        trace = aiohttp.TraceConfig()

        async def on_end(session: Any, ctx: Any, params: Any) -> None:
            self._queries += 1

        async def on_chunk(session: Any, ctx: Any, params: Any) -> None:
            self._bytes += len(params.chunk)

        trace.on_request_end.append(on_end)
        trace.on_response_chunk_received.append(on_chunk)
        session: aiohttp.ClientSession = http.tcp_client_session_factory(key, trace_configs=[trace])
        return session

    async def start(self) -> None:
        """Build the manager's client exactly as its dependency provider does."""
        http = _module("ai.backend.common.clients.http_client")
        prom = _module("ai.backend.manager.clients.prometheus.client")
        builders = _module("ai.backend.manager.clients.prometheus.fixed_query_builder")
        with warnings.catch_warnings():
            # ClientPool() walks inspect.stack(), touching glide's deprecated module aliases.
            warnings.simplefilter("ignore", DeprecationWarning)
            self._pool = http.ClientPool(self._factory)
        client = prom.PrometheusClient(
            endpoint=f"{self.prom_url}/api/v1/",
            client_pool=self._pool,
            container_metric_query_builder=builders.ContainerMetricQueryBuilder(self.window),
            container_live_stat_query_builder=builders.ContainerLiveStatQueryBuilder(self.window),
        )
        client._query_instant = functools.partial(
            prom.PrometheusClient._query_instant, client, time=repr(self.at)
        )
        self._client = client

    async def prepare(self, ids: Sequence[str]) -> None:
        """Nothing to prepare."""

    async def _batch(self, ids: Sequence[str]) -> list[dict[str, Any] | None]:
        converter = _module("ai.backend.manager.api.gql_legacy.stat_converter")
        kernel_ids = [uuid.UUID(k) for k in ids]
        raw = await self._client.fetch_container_live_stats(kernel_ids)
        out = converter.LegacyLiveStatConverter.convert(kernel_ids, raw)
        return [out.get(k) for k in kernel_ids]

    async def payloads(self, ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """The converted payloads of ``ids``, in order (batches concurrently)."""
        unique = list(dict.fromkeys(ids))
        batches = await asyncio.gather(
            *(
                self._batch(unique[i : i + self.batch_size])
                for i in range(0, len(unique), self.batch_size)
            )
        )
        by_id = dict(zip(unique, (p for b in batches for p in b), strict=True))
        return [by_id[k] for k in ids]

    async def load(self, ids: Sequence[str]) -> PageResult:
        """All batches concurrently, six sequential queries each, through the real code."""
        unique = list(dict.fromkeys(ids))
        q0, b0 = self._queries, self._bytes
        t0 = time.perf_counter()
        try:
            payloads: list[object] = list(await self.payloads(unique))
        except Exception as exc:  # the whole page failed, as one DataLoader error would
            payloads = [exc] * len(unique)
        seconds = time.perf_counter() - t0
        found = sum(1 for p in payloads if isinstance(p, dict))
        errors = sum(1 for p in payloads if isinstance(p, BaseException))
        return PageResult(seconds, self._queries - q0, self._bytes - b0, found, errors, len(unique))

    async def close(self) -> None:
        """Close the client pool (its sessions)."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
