"""A drop-in for Backend.AI's ``ValkeyStatClient``: live stats from Prometheus, the rest delegated.

Every consumer of the Valkey statistics database reads live stats through four methods of
``ValkeyStatClient`` (``common/clients/valkey_client/valkey_stat/client.py``, reference
section 1.10). :class:`PromstatStatClient` has the same methods, names, arguments, return types
and ``None`` conventions, backed by one :class:`~promstat.service.LiveStats`, so concurrent
callers share its batches (single-flight) and its cache. The manager holds *one* stat client
for much more than live stats (GPU allocation maps, container counts, keypair counters,
inference-app statistics, resource-preset caches, ``ping``/``close``), so the drop-in wraps the
existing one and forwards everything else to it (:mod:`promstat.stat_delegate`). A maintainer
swaps one object::

    # before (dependencies/infrastructure/redis.py builds ValkeyClients.stat)
    stat = await ValkeyStatClient.create(...)
    # after: the same object, wrapped
    stat = PromstatStatClient(live_stats, fallback=await ValkeyStatClient.create(...))

=========================================== ==========================================
``ValkeyStatClient``                         here
=========================================== ==========================================
``get_kernel_statistics(kernel_id)``         one id through the shared batch; dict or None
``get_session_statistics_batch(ids)``        list of dict-or-None, one per id, in order
``get_user_kernel_statistics_batch(ids)``    list of msgpack bytes-or-None (MGET's raw values)
``get_agent_statistics_batch(agent_ids)``    list of ``{"node", "devices"}``-or-None
every other method                           forwarded to ``fallback`` unchanged
=========================================== ==========================================

Terminated kernels: the agent's Valkey key outlived a kernel by 24 h, and the monthly usage
statistics rely on that (26.9 persists no ``kernels.last_stat``). The kernel reads therefore
answer an id the live path has nothing for with its last values within ``terminated_window``
(:mod:`promstat.recent`: one last-seen query per chunk of such ids, then the final stats at
that time, cached for good); ``terminated_window=None`` answers ``None`` instead.

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
from collections.abc import Callable, Sequence
from typing import Any, Literal

from promstat.errors import ConfigError, PromstatError
from promstat.loader import DataLoader
from promstat.recent import DEFAULT_WINDOW, RecentlyTerminated
from promstat.renderer import to_msgpack
from promstat.service import LiveStats
from promstat.stat_delegate import ValkeyStatDelegate, ValkeyStatFallback

Payload = dict[str, Any]

__all__ = ["PromstatStatClient"]


class PromstatStatClient(ValkeyStatDelegate):
    """``ValkeyStatClient`` with its live-statistics reads served by :class:`LiveStats`.

    Args:
        stats: the process-wide ``LiveStats`` (share it with the GraphQL loaders: one cache).
            Not closed by :meth:`close`: its owner (the manager's lifecycle) closes it.
        fallback: the manager's existing ``ValkeyStatClient``; every method that is not live
            statistics is forwarded to it (:mod:`promstat.stat_delegate`). Without it those
            methods raise :class:`~promstat.errors.ConfigError`.
        errors: ``"raise"`` (default) raises the error of a failed batch; ``"none"`` answers
            ``None`` for the ids it failed for.
        terminated_window: seconds a kernel without live series is still answered with its
            last values (default 24 h, the Valkey key's TTL); ``None`` answers ``None``.
        terminated_detention: the agents' detention, so those values are the ones at the
            termination rather than the frozen ones (see :mod:`promstat.recent`).
        clock: wall clock for the terminated-kernel lookups; default the ``LiveStats``' own.
    """

    def __init__(
        self,
        stats: LiveStats,
        fallback: ValkeyStatFallback | None = None,
        *,
        errors: Literal["raise", "none"] = "raise",
        terminated_window: float | None = DEFAULT_WINDOW,
        terminated_detention: float = 0.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if errors not in ("raise", "none"):
            raise ConfigError(f"errors must be 'raise' or 'none', not {errors!r}")
        super().__init__(fallback)
        self.stats = stats
        self.errors = errors
        self.terminated = (
            None
            if terminated_window is None
            else RecentlyTerminated(
                stats.final,
                window=terminated_window,
                detention=terminated_detention,
                clock=clock,
            )
        )
        self._singles: tuple[asyncio.AbstractEventLoop, DataLoader[str, Any]] | None = None

    async def _load_kernels(
        self, kernel_ids: Sequence[str]
    ) -> list[Payload | BaseException | None]:
        # The live path first (shared cache); only the ids it has nothing for are looked up
        # among the recently terminated, as the Valkey key still answered them.
        values = list(await self.stats.load_kernels(kernel_ids))  # ours to fill in
        missing = [i for i, v in enumerate(values) if v is None]
        if missing and self.terminated is not None:
            found = await self.terminated.load([kernel_ids[i] for i in missing])
            for i, value in zip(missing, found, strict=True):
                values[i] = value
        return values

    def _single_loader(self) -> DataLoader[str, Any]:
        # Singles issued in one event-loop tick (the idle checker's GET per kernel, from many
        # sessions' tasks) become one batch; no memo here, the shared cache below decides.
        loop = asyncio.get_running_loop()
        if self._singles is None or self._singles[0] is not loop:
            self._singles = (loop, DataLoader(self._load_kernels, cache=False))
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
        return self._settle(await self._load_kernels([str(k) for k in session_ids]))

    async def get_user_kernel_statistics_batch(self, kernel_ids: list[str]) -> list[bytes | None]:
        """Live stats of many kernels as the raw msgpack values ``MGET`` returned."""
        payloads = await self.get_session_statistics_batch(kernel_ids)
        return [None if p is None else to_msgpack(p) for p in payloads]

    async def get_agent_statistics_batch(self, agent_ids: list[str]) -> list[dict[str, Any] | None]:
        """Live stats of many agents (``{"node", "devices"}``); ``None`` without data."""
        if not agent_ids:
            return []
        return self._settle(await self.stats.load_agents([str(a) for a in agent_ids]))
