"""A drop-in for the read side of Backend.AI's ``ValkeyStatClient``, served from Prometheus.

Every consumer of the Valkey statistics database reads live stats through four methods of
``ValkeyStatClient`` (``common/clients/valkey_client/valkey_stat/client.py``, reference
section 1.10). :class:`PromstatStatClient` has the same methods, names, arguments, return types
and ``None`` conventions, backed by one :class:`~promstat.service.LiveStats`, so concurrent
callers share its batches (single-flight) and its cache. A maintainer swaps one object::

    # before
    stats = await valkey_stat.get_session_statistics_batch([str(k) for k in kernel_ids])
    # after: the same call on the drop-in
    valkey_stat = PromstatStatClient(live_stats)
    stats = await valkey_stat.get_session_statistics_batch([str(k) for k in kernel_ids])

=========================================== ==========================================
``ValkeyStatClient``                         here
=========================================== ==========================================
``get_kernel_statistics(kernel_id)``         one id through the shared batch; dict or None
``get_session_statistics_batch(ids)``        list of dict-or-None, one per id, in order
``get_user_kernel_statistics_batch(ids)``    list of msgpack bytes-or-None (MGET's raw values)
``get_agent_statistics_batch(agent_ids)``    list of ``{"node", "devices"}``-or-None
=========================================== ==========================================

Values are shaped as the Valkey values decode: ``{metric: {"current", "capacity", "pct",
"unit_hint", "stats.*"}}`` of strings (agent node/device ``capacity`` may be ``None``); the
bytes are ``msgpack.packb(payload, use_bin_type=True)`` (:func:`~promstat.renderer.to_msgpack`),
which Backend.AI's ``msgpack.unpackb`` reads back to the same dict. Known value differences from
what the legacy agent wrote (window statistics instead of lifetime ones, the capacity
sentinel) are in ``docs/numbers.md`` and measured by ``promstat compare``.

Errors: ``ValkeyStatClient`` raises when Valkey cannot be read. Here a batch whose query
failed raises that :class:`~promstat.errors.PromstatError` (``errors="raise"``, default), so a
Prometheus outage is not mistaken for "no data"; ``errors="none"`` returns ``None`` for the
failed ids instead, which is what the legacy client did for values it could not decode.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Literal

from promstat.errors import ConfigError, PromstatError
from promstat.loader import DataLoader
from promstat.renderer import to_msgpack
from promstat.service import LiveStats

__all__ = ["PromstatStatClient"]


class PromstatStatClient:
    """The read methods of ``ValkeyStatClient`` over :class:`~promstat.service.LiveStats`.

    Args:
        stats: the process-wide ``LiveStats`` (share it with the GraphQL loaders: one cache).
        errors: ``"raise"`` (default) raises the error of a failed batch; ``"none"`` answers
            ``None`` for the ids it failed for.
    """

    def __init__(self, stats: LiveStats, *, errors: Literal["raise", "none"] = "raise") -> None:
        if errors not in ("raise", "none"):
            raise ConfigError(f"errors must be 'raise' or 'none', not {errors!r}")
        self.stats = stats
        self.errors = errors
        self._singles: tuple[asyncio.AbstractEventLoop, DataLoader[str, Any]] | None = None

    def _single_loader(self) -> DataLoader[str, Any]:
        # Singles issued in one event-loop tick (the idle checker's GET per kernel, from many
        # sessions' tasks) become one batch; no memo here, the shared cache below decides.
        loop = asyncio.get_running_loop()
        if self._singles is None or self._singles[0] is not loop:
            self._singles = (loop, DataLoader(self.stats.load_kernels, cache=False))
        return self._singles[1]

    def _settle(self, values: Sequence[Any]) -> list[dict[str, Any] | None]:
        out: list[dict[str, Any] | None] = []
        for value in values:
            if isinstance(value, BaseException):
                if self.errors == "raise":
                    raise value
                out.append(None)
            else:
                out.append(value)
        return out

    async def get_kernel_statistics(self, kernel_id: str) -> dict[str, Any] | None:
        """Live stats of one kernel (``GET`` + unpack), or ``None`` without data.

        Concurrent calls in one event-loop tick share one batch.
        """
        try:
            value: dict[str, Any] | None = await self._single_loader().load(str(kernel_id))
        except PromstatError:
            if self.errors == "raise":
                raise
            return None
        return value

    async def get_session_statistics_batch(
        self, session_ids: list[str]
    ) -> list[dict[str, Any] | None]:
        """Live stats of many kernels (``MGET`` + unpack); ``None`` where there is no data.

        Despite the name (kept from Valkey), the ids are kernel ids, as every caller passes.
        """
        if not session_ids:
            return []
        return self._settle(await self.stats.load_kernels([str(k) for k in session_ids]))

    async def get_user_kernel_statistics_batch(self, kernel_ids: list[str]) -> list[bytes | None]:
        """Live stats of many kernels as the raw msgpack values ``MGET`` returned."""
        payloads = await self.get_session_statistics_batch(kernel_ids)
        return [None if p is None else to_msgpack(p) for p in payloads]

    async def get_agent_statistics_batch(self, agent_ids: list[str]) -> list[dict[str, Any] | None]:
        """Live stats of many agents (``{"node", "devices"}``); ``None`` without data."""
        if not agent_ids:
            return []
        return self._settle(await self.stats.load_agents([str(a) for a in agent_ids]))
