"""Background work (refresh-ahead) holds at most ``background_concurrency`` query slots.

A page's cold query must not queue behind a refresh's chunks: the refresher marks its task
with :func:`promstat.planner.background_work`, and the planner gives such work a few slots of
its own before a shared one. These tests hold every query open and count what is in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from _support.waiting import loop_turns

from promstat import planner as planner_module
from promstat.errors import ConfigError
from promstat.planner import Planner, PlannerConfig, background_work
from promstat.testing.stub import StubAPI


class _Held(StubAPI):
    """A query executor that holds every query until ``release`` is set, counting the
    queries in flight per kind (background or not) and the most seen at once."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.changed = asyncio.Condition()
        self.in_flight = {True: 0, False: 0}
        self.most = {True: 0, False: 0}

    async def query_vector(
        self, query: str, *, labels: type[Any], time: float | None = None
    ) -> Any:
        kind = planner_module._BACKGROUND.get()
        self.in_flight[kind] += 1
        self.most[kind] = max(self.most[kind], self.in_flight[kind])
        async with self.changed:
            self.changed.notify_all()
        try:
            await self.release.wait()
        finally:
            self.in_flight[kind] -= 1
        return SimpleNamespace(series=[], warnings=(), infos=())


async def _until(held: _Held, check: Callable[[], bool]) -> None:
    async with asyncio.timeout(10), held.changed:
        await held.changed.wait_for(check)


def _ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(n)]


async def test_a_page_is_sent_at_once_while_a_refresh_waits_for_its_own_slots() -> None:
    """A 5-chunk refresh keeps one query in flight; a page's two chunks go out beside it."""
    held = _Held()
    config = PlannerConfig(
        use_recorded=True, concurrency=4, background_concurrency=1, max_alternatives=2
    )
    planner = Planner(held, config)

    async def refresh() -> Any:
        background_work()
        return await planner.kernels(_ids("bg", 10), at=1.0)

    bg = asyncio.create_task(refresh())
    await _until(held, lambda: held.in_flight[True] == 1)
    await loop_turns(20)  # the other four chunks wait for the background slot
    assert held.in_flight[True] == 1
    page = asyncio.create_task(planner.kernels(_ids("fg", 4), at=1.0))
    await _until(held, lambda: held.in_flight[False] == 2)  # not queued behind the refresh
    held.release.set()
    refreshed, served = await bg, await page
    assert refreshed.queries == 5 and served.queries == 2
    assert held.most == {True: 1, False: 2}
    assert planner_module._BACKGROUND.get() is False  # the mark stayed in the refresh task
    await planner.aclose()


async def test_without_background_work_every_slot_is_used() -> None:
    """Pages themselves are not limited by background_concurrency."""
    held = _Held()
    config = PlannerConfig(
        use_recorded=True, concurrency=4, background_concurrency=1, max_alternatives=2
    )
    planner = Planner(held, config)
    page = asyncio.create_task(planner.kernels(_ids("fg", 10), at=1.0))
    await _until(held, lambda: held.in_flight[False] == 4)
    held.release.set()
    assert (await page).queries == 5
    assert held.most == {True: 0, False: 4}
    await planner.aclose()


def test_background_concurrency_must_be_positive() -> None:
    """Zero slots would stop every refresh: a ConfigError that names the setting."""
    with pytest.raises(ConfigError, match="background_concurrency"):
        PlannerConfig(background_concurrency=0)
