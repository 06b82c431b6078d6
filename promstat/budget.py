"""BodyBudget: one bound on the response bytes a process holds across concurrent calls."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

from promstat.errors import ConfigError

__all__ = ["DEFAULT_MAX_BUFFERED_BYTES", "BodyBudget"]

#: Default bound of the response bytes one client holds at once, over all its concurrent
#: calls: 128 MiB.
#:
#: Per response, :data:`~promstat.client.DEFAULT_MAX_RESPONSE_BYTES` stops a runaway answer;
#: it does not stop several concurrent large answers, each under that cap, from adding up. What
#: promstat asks for is far below this bound (a page's chunk answers, a fleet-wide page); the
#: measured sizes and peaks are in ``benchmarks/README.md`` ("Memory bounds").
DEFAULT_MAX_BUFFERED_BYTES: Final = 128 * 1024 * 1024


class BodyBudget:
    """A byte budget that response bodies take from while they are read, and give back.

    Bodies are read chunk by chunk; each chunk is taken from the budget before it is kept and
    the whole body is given back once it is decoded (or failed). A read that would pass the
    budget waits until other bodies give bytes back, inside its call's deadline (a wait that
    outlives it ends in the call's usual :class:`~promstat.errors.RequestTimeoutError`).
    While it waits it reads nothing, so the server is held back by TCP flow control rather
    than buffered by this process.

    Waiting, not failing, keeps pages correct: an answer that is legal on its own is only
    delayed by the others, never turned into an error (or into splits that add queries).
    So that waiting readers cannot deadlock each other, the body that started first among
    those holding bytes never waits: at most ``max_bytes`` plus one response
    (``max_response_bytes``) are held at any moment.

    One budget belongs to one event loop. :class:`PrometheusClient` makes its own unless it is
    given one; pass the same budget to several clients of one process to bound them together.

    Args:
        max_bytes: the budget (>= 1).

    Attributes:
        max_bytes: the budget.
        peak_bytes: the most bytes held at once so far.
        waits: how many times a read waited for bytes to be given back.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ConfigError(f"max_buffered_bytes must be >= 1 or None, got {max_bytes}")
        self.max_bytes = max_bytes
        self.peak_bytes = 0
        self.waits = 0
        self._used = 0
        self._holders: dict[object, int] = {}  # insertion order: the first is never held back
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def used_bytes(self) -> int:
        """Bytes held right now."""
        return self._used

    async def take(self, holder: object, n: int) -> None:
        """Take ``n`` bytes for ``holder``, waiting while the budget is spent by others."""
        while True:
            first = next(iter(self._holders), holder)
            if self._used + n <= self.max_bytes or first is holder:
                break
            self.waits += 1
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
        self._holders[holder] = self._holders.get(holder, 0) + n
        self._used += n
        self.peak_bytes = max(self.peak_bytes, self._used)

    def give_back(self, holder: object) -> None:
        """Return everything ``holder`` took and wake the waiting reads; idempotent."""
        n = self._holders.pop(holder, 0)
        if not n:
            return
        self._used -= n
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
