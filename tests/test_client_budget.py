"""The client's body budget (``max_buffered_bytes``): a bound across concurrent responses.

The per-response cap (``max_response_bytes``, 64 MiB) did not stop eight concurrent 50 MB
answers from raising peak RSS by 533 MiB. Here a real HTTP server (the fault proxy's 50 MB
garbage body) answers eight concurrent calls of a client running in a subprocess, which reports
its peak RSS growth (``VmHWM``), bounded by the budget plus one response. The unit tests pin
the budget's rules: reads past it wait and are woken, the first reader never waits (no
deadlock), a wait ends at the call's deadline.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import textwrap
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import pytest
from _support.waiting import loop_turns

from promstat.budget import DEFAULT_MAX_BUFFERED_BYTES, BodyBudget
from promstat.client import DEFAULT_MAX_RESPONSE_BYTES, PrometheusClient, RetryPolicy
from promstat.errors import ConfigError, RequestTimeoutError, ResponseDecodeError
from promstat.testing.fake import FakePrometheus, Reply
from promstat.testing.proxy import GARBAGE_BODY_BYTES, Fault, FaultProxy

MiB = 1024 * 1024

_CLIENT = textwrap.dedent(
    """
    import asyncio, json, sys
    from promstat.client import PrometheusClient, RetryPolicy

    def hwm():
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        raise SystemExit("no VmHWM")

    async def main():
        url, bound = sys.argv[1], sys.argv[2]
        budget = None if bound == "none" else int(bound)
        async with PrometheusClient(url, timeout=120, retry=RetryPolicy(attempts=1),
                                    max_buffered_bytes=budget) as prom:
            base = hwm()
            results = await asyncio.gather(
                *(prom.query_vector("up") for _ in range(8)), return_exceptions=True)
            peak = hwm()
            b = prom._budget
            print(json.dumps({
                "growth": peak - base,
                "results": [type(r).__name__ for r in results],
                "budget_peak": b.peak_bytes if b else None,
                "waits": b.waits if b else None,
            }))

    asyncio.run(main())
    """
)


async def _measure(url: str, bound: int | None) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CLIENT, url, "none" if bound is None else str(bound),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=300)
    assert proc.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out)
    return result


@pytest.fixture
async def huge() -> AsyncIterator[FaultProxy]:
    """A server answering every request with 50 MB of garbage (no upstream is ever asked)."""
    async with FaultProxy("http://127.0.0.1:9") as proxy:
        await proxy.switch(Fault.HUGE_GARBAGE)
        yield proxy


@pytest.mark.slow
async def test_eight_concurrent_50mb_bodies_stay_within_the_documented_bound(
    huge: FaultProxy,
) -> None:
    """Default budget: peak RSS growth under budget + one response (+ 64 MiB of slack for the
    decoder's copy of a failing body and allocator noise); every call gets its typed error.

    Measured on the 2-core machine: 212 MiB (budget peak 158 MiB, 27 waits). Without the
    budget the same eight calls grew RSS by 412-432 MiB (all bodies read at once); before
    errors stopped pinning their bodies through traceback frames, by 430 MiB even with it.
    """
    assert GARBAGE_BODY_BYTES < DEFAULT_MAX_RESPONSE_BYTES  # each body alone is allowed
    bounded = await _measure(huge.url, DEFAULT_MAX_BUFFERED_BYTES)
    print(f"\nRSS growth, 8 x 50 MB: {bounded['growth'] / MiB:.0f} MiB "
          f"(budget peak {bounded['budget_peak'] / MiB:.0f} MiB, {bounded['waits']} waits)")
    assert bounded["results"] == [ResponseDecodeError.__name__] * 8, bounded
    documented = DEFAULT_MAX_BUFFERED_BYTES + DEFAULT_MAX_RESPONSE_BYTES
    assert bounded["budget_peak"] <= documented
    assert bounded["waits"] > 0  # the budget did hold reads back
    assert bounded["growth"] < documented + 64 * MiB, bounded


async def test_a_read_past_the_budget_waits_until_bytes_are_given_back() -> None:
    """The first holder may pass the budget; a later one waits and is woken by give_back."""
    budget = BodyBudget(100)
    first, second = object(), object()
    await budget.take(first, 80)
    await budget.take(first, 80)  # the first holder never waits: no deadlock possible
    assert budget.used_bytes == 160
    waiting = asyncio.ensure_future(budget.take(second, 10))
    await loop_turns(1)
    assert not waiting.done() and budget.waits == 1
    budget.give_back(first)
    await asyncio.wait_for(waiting, timeout=5)
    assert budget.used_bytes == 10 and budget.peak_bytes == 160
    budget.give_back(second)
    budget.give_back(second)  # idempotent
    assert budget.used_bytes == 0


async def test_a_wait_for_the_budget_ends_at_the_call_deadline(aiohttp_server: Any) -> None:
    """A call whose body cannot get bytes before its deadline fails with the client's timeout,
    and gives nothing it never took back; a later call is served normally."""
    fake = FakePrometheus()
    fake.set_reply("query", Reply.vector([({"kernel_id": "k"}, 1.0)]))
    server = await aiohttp_server(fake.app)
    budget = BodyBudget(1)
    hog = object()
    await budget.take(hog, 1)  # another body holds the whole budget
    async with PrometheusClient(str(server.make_url("")), timeout=0.3, max_buffered_bytes=budget,
                                retry=RetryPolicy(attempts=1)) as prom:  # fmt: skip
        with pytest.raises(RequestTimeoutError):
            await prom.query_vector("up")
        assert budget.used_bytes == 1
        budget.give_back(hog)
        result = await prom.query_vector("up")
    assert len(result.series) == 1
    assert budget.used_bytes == 0 and budget.peak_bytes > 1


async def test_two_clients_can_share_one_budget(aiohttp_server: Any) -> None:
    """A budget passed to several clients bounds them together; each call gives back."""
    fake = FakePrometheus()
    fake.set_reply("query", Reply.vector([({"kernel_id": str(i)}, 1.0) for i in range(50)]))
    url = str((await aiohttp_server(fake.app)).make_url(""))
    budget = BodyBudget(4096)
    async with (
        PrometheusClient(url, max_buffered_bytes=budget) as a,
        PrometheusClient(url, max_buffered_bytes=budget) as b,
    ):
        results = await asyncio.gather(*(c.query_vector("up") for c in (a, b) for _ in range(4)))
    assert all(len(r.series) == 50 for r in results)
    assert budget.used_bytes == 0 and budget.peak_bytes > 0


def test_the_budget_is_validated() -> None:
    """A budget below one byte is a configuration error; ``None`` disables it."""
    with pytest.raises(ConfigError, match="max_buffered_bytes"):
        PrometheusClient("http://127.0.0.1:9090", max_buffered_bytes=0)
    assert PrometheusClient("http://127.0.0.1:9090", max_buffered_bytes=None)._budget is None
    assert DEFAULT_MAX_BUFFERED_BYTES >= 2 * DEFAULT_MAX_RESPONSE_BYTES


async def test_an_error_does_not_keep_its_body_alive(aiohttp_server: Any) -> None:
    """A failed 10 MB answer leaves a small error: its body is not pinned by traceback frames
    (a page keeps one error per id, so eight such errors held 400 MB)."""
    fake = FakePrometheus()
    fake.set_reply("query", Reply.not_json(200, b"\x00garbage" * (10 * MiB // 8)))
    server = await aiohttp_server(fake.app)
    async with PrometheusClient(str(server.make_url("")), retry=RetryPolicy(attempts=1)) as prom:
        tracemalloc.start()
        try:
            with pytest.raises(ResponseDecodeError) as caught:
                await prom.query_vector("up")
            gc.collect()
            held, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert caught.value.__traceback__ is not None  # the error itself is intact
    assert "[10485760 bytes]" in str(caught.value)
    assert held < 2 * MiB, held
