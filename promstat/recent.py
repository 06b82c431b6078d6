"""Kernels terminated within the last 24 hours, answered with their last values by id alone.

Backend.AI's agent writes a kernel's live_stat to Valkey with no expiry of its own, so the
client's default 24 h TTL applies: the key outlives the kernel by a day. 26.9 persists no
``kernels.last_stat``, so the manager's monthly usage statistics (``repositories/user``,
``repositories/project``, ``models/resource_usage.py``) read *terminated* kernels through
``get_user_kernel_statistics_batch(kernel_ids)`` and find their last values there. Those
callers pass ids only, no termination times, and Prometheus has no "kernel terminated" series:
the agent keeps a terminated kernel's series exported, frozen at their last values, for its
detention (600 s) and then drops them.

So a kernel the live path has no answer for is looked up in two steps:

1. **When was it last seen?** One query per chunk of ids, at *now*::

       max by (kernel_id) (max_over_time(
           timestamp(backendai_container_utilization{kernel_id=~"a|b", value_type="current"})
           [24h:15s]))

   ``timestamp()`` inside a subquery stepping at the scrape interval yields the time of each
   kernel's last raw sample within the window (a kernel gone for longer has none: ``None``, as
   its Valkey key has expired by then).
2. **Its values then**: :class:`~promstat.final.FinalStats` (the live planner's plan,
   ``@``-pinned, packed into few queries, cached for good) at ``last_seen - detention``.

What "last values" means. The frozen series hold the agent's last measurement, so at
``last_seen`` every ``current`` and capacity is what the Valkey key held, and so are the rates
where the agent exports its own ``value_type="rate"`` series (promstat's exporter). The usage
statistics read only those (``cpu_used.current``, ``mem.capacity``, ``io_read.current``,
``io_write.current``, ``io_scratch_size`` ``stats.max``). A plain 26.9 exporter's counters give
``rate()`` a window of frozen samples by then (0); set ``detention`` to the agents' detention
to evaluate at the termination instead (the values an instant before the series froze).

Caching: a last-seen time older than the lookback plus a minute no longer changes (the series
are gone), so it is kept (bounded LRU) and the payload is FinalStats' final cache; kernels not
seen are asked again next time (they may simply not have started yet).
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from promstat.errors import ConfigError, PromstatError
from promstat.final import FinalStats
from promstat.promql import duration, set_matcher
from promstat.shapes import ID_PLACEHOLDER, chunk_ids

__all__ = ["DEFAULT_WINDOW", "RecentlyTerminated"]

Payload = dict[str, Any]
#: How long a terminated kernel is answered: the Valkey key's default TTL.
DEFAULT_WINDOW = 86400.0
#: A last-seen time this much older than the lookback is final (its series went stale).
_SETTLED = 60.0


class RecentlyTerminated:
    """Last values of kernels whose series ended within ``window`` seconds, by id.

    Args:
        final: the ``LiveStats``' :class:`~promstat.final.FinalStats`: its client, planner
            config (names, scrape interval, lookback, query budgets) and cache are shared.
        window: how far back a kernel is looked for (default 24 h, the Valkey TTL).
        detention: seconds between a kernel's termination and its series' last sample (the
            agents' detention); 0 (default) answers the frozen values of the last sample.
        step: subquery step in seconds; default the scrape interval (the profile's),
            so the step after the last sample falls before its staleness marker. Names, the
            scrape interval and the lookback are the planner's
            :class:`~promstat.profile.RuleProfile`'s.
        max_entries: bound of the last-seen cache.
        clock: wall clock (Unix seconds); default the final stats' (the ``LiveStats``' clock).
    """

    def __init__(
        self,
        final: FinalStats,
        *,
        window: float = DEFAULT_WINDOW,
        detention: float = 0.0,
        step: float | None = None,
        max_entries: int = 100_000,
        clock: Callable[[], float] | None = None,
    ) -> None:
        client, config = final.client, final.config
        profile = final.planner.profile
        step = profile.interval if step is None else step
        if not (window > 0 and step > 0 and detention >= 0 and max_entries >= 1):
            raise ConfigError(
                f"window and step must be > 0, detention >= 0, max_entries >= 1; not "
                f"{window!r}, {step!r}, {detention!r}, {max_entries!r}"
            )
        self.client = client
        self.config = config
        self.final = final
        self.window = window
        self.detention = detention
        self.max_entries = max_entries
        self._clock = final.clock if clock is None else clock
        self._settled_age = profile.lookback + _SETTLED
        self._seen: OrderedDict[str, float] = OrderedDict()
        n = self.names = profile.names
        self._row: Any = msgspec.defstruct(
            "LastSeenRow", [("id", str, "")], rename={"id": n.kernel_label}, frozen=True, gc=False
        )
        selector = (
            f'{n.container_metric}{{{ID_PLACEHOLDER},{n.value_type_label}="{n.current_value}"}}'
        )
        self._template = (
            f"max by ({n.kernel_label}) (max_over_time(timestamp({selector})"
            f"[{duration(window)}:{duration(step)}]))"
        )
        self._sem = asyncio.Semaphore(config.concurrency)

    def queries(self, kernel_ids: Sequence[str]) -> list[str]:
        """The last-seen queries for ``kernel_ids`` (for inspection and cost checks)."""
        label = self.names.kernel_label
        return [
            self._template.replace(ID_PLACEHOLDER, set_matcher(label, chunk))
            for chunk in chunk_ids(self._template, label, sorted(set(kernel_ids)), self.config)
        ]

    async def last_seen(self, kernel_ids: Sequence[str]) -> dict[str, float | PromstatError]:
        """Time of each kernel's last raw sample within the window; absent if none.

        Raises nothing: a failed chunk answers its ids with the error.
        """
        now = self._clock()
        out: dict[str, float | PromstatError] = {}
        wanted: list[str] = []
        for kernel_id in dict.fromkeys(kernel_ids):
            seen = self._seen.get(kernel_id)
            if seen is not None and seen >= now - self.window:
                self._seen.move_to_end(kernel_id)
                out[kernel_id] = seen
            else:
                wanted.append(kernel_id)
        if not wanted:
            return out
        label = self.names.kernel_label

        async def run(chunk: tuple[str, ...]) -> None:
            query = self._template.replace(ID_PLACEHOLDER, set_matcher(label, chunk))
            try:
                async with self._sem:
                    res = await self.client.query_vector(query, labels=self._row, time=now)
            except PromstatError as exc:
                out.update(dict.fromkeys(chunk, exc))
                return
            for s in res.series:
                seen = float(s.value[1])
                if s.metric.id in chunk and math.isfinite(seen):
                    out[s.metric.id] = seen
                    if seen < now - self._settled_age and not res.warnings:
                        self._remember(s.metric.id, seen)

        chunks = chunk_ids(self._template, label, sorted(wanted), self.config)
        await asyncio.gather(*(run(chunk) for chunk in chunks))
        return out

    def _remember(self, kernel_id: str, seen: float) -> None:
        self._seen[kernel_id] = seen
        self._seen.move_to_end(kernel_id)
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)

    async def load(self, kernel_ids: Sequence[str]) -> list[Payload | BaseException | None]:
        """Last values per id, in order: payload, ``None`` (not seen in the window) or error."""
        seen = await self.last_seen(kernel_ids)
        # FinalStats evaluates `offset` before the time it is given: give it the last sample's
        # time plus that offset, so the last sample itself is inside the evaluation.
        keys = {
            k: (k, t - self.detention + self.final.offset)
            for k, t in seen.items()
            if not isinstance(t, PromstatError)
        }
        values = await self.final.load(list(keys.values())) if keys else []
        finals = dict(zip(keys, values, strict=True))
        out: list[Payload | BaseException | None] = []
        for kernel_id in kernel_ids:
            answer = seen.get(kernel_id)
            out.append(answer if isinstance(answer, PromstatError) else finals.get(kernel_id))
        return out
