"""Waiting for events instead of time.

Tests wait for the thing they need (a rule evaluation, a bound port, a batch in flight), never
for a fixed number of seconds: a sleep is either too short on a busy machine or too long on an
idle one. :func:`poll_until` asks a question until its answer satisfies a predicate (real
servers: "has the rule produced a sample yet?"), :func:`loop_turns` lets the event loop run a
few times (to show that something does *not* happen), and the timeout is a safety net that
fails with what was last seen, not a speed requirement.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from promstat.client import PrometheusClient

T = TypeVar("T")

__all__ = ["WaitTimeout", "loop_turns", "poll_until", "rules_evaluated", "until", "wait_until"]


class WaitTimeout(AssertionError):
    """The awaited condition did not hold within the timeout (a test failure)."""


async def poll_until(
    query: Callable[[], Awaitable[T]],
    predicate: Callable[[T], bool],
    *,
    timeout: float,  # noqa: ASYNC109 - the failure message shows the last answer
    interval: float = 0.05,
    what: str = "the condition",
) -> T:
    """Await ``query()`` until ``predicate`` holds for its answer, and return that answer.

    Args:
        query: asks the system under test (e.g. a PromQL query against a real Prometheus).
        predicate: whether the answer is the awaited one.
        timeout: seconds before giving up (generous: machines are shared).
        interval: seconds between questions.
        what: named in the failure message.

    Raises:
        WaitTimeout: the predicate did not hold within ``timeout``; the message shows the
            last answer.
    """
    deadline = time.monotonic() + timeout
    while True:
        answer = await query()
        if predicate(answer):
            return answer
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"{what} did not hold within {timeout:g} s; last: {answer!r:.500}")
        await asyncio.sleep(interval)


def wait_until(
    query: Callable[[], T],
    predicate: Callable[[T], bool],
    *,
    timeout: float,
    interval: float = 0.05,
    what: str = "the condition",
) -> T:
    """The synchronous :func:`poll_until`, for tests outside an event loop."""
    deadline = time.monotonic() + timeout
    while True:
        answer = query()
        if predicate(answer):
            return answer
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"{what} did not hold within {timeout:g} s; last: {answer!r:.500}")
        time.sleep(interval)


async def until(
    predicate: Callable[[], bool],
    *,
    timeout: float,  # noqa: ASYNC109 - the failure message names what did not happen
    interval: float = 0.01,
    what: str = "the condition",
) -> None:
    """Await until ``predicate()`` holds: a counter or flag of in-process state (a fake's
    requests in flight, a task's end) that the event loop moves on while this waits.

    Raises:
        WaitTimeout: ``predicate()`` was still false after ``timeout`` seconds.
    """

    async def ask() -> bool:
        return predicate()

    await poll_until(ask, bool, timeout=timeout, interval=interval, what=what)


async def loop_turns(n: int) -> None:
    """Let the event loop run ``n`` times: what "nothing more happens" is waited for with."""
    for _ in range(n):
        await asyncio.sleep(0)


async def rules_evaluated(
    client: PrometheusClient,
    *,
    after: float,
    timeout: float,  # noqa: ASYNC109 - the failure message shows the groups' last evaluations
) -> None:
    """Await until every rule group of a real Prometheus has started an evaluation after
    ``after`` (Unix seconds): its recorded series then see every sample scraped before it.

    Raises:
        WaitTimeout: some group had not evaluated after ``after`` within ``timeout`` seconds
            (or no group is loaded).
    """
    from promstat.refresh import parse_rfc3339  # the tests' import, not the helpers'

    async def last_evaluations() -> dict[str, float]:
        return {g.name: parse_rfc3339(g.last_evaluation) or 0.0 for g in await client.rules()}

    await poll_until(
        last_evaluations,
        lambda last: bool(last) and min(last.values()) > after,
        timeout=timeout,
        interval=0.1,
        what=f"every rule group evaluated after {after:.3f}",
    )
