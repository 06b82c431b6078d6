"""Quiet under failure: every fault kind, through LiveStats, leaves nothing for asyncio to report.

A failed key used to leave its exception in a future nobody read (the shield wrappers of
``SharedLoader.batch_load``), so asyncio logged "Future exception was never retrieved" with a
traceback per failed key per load. Each test here installs a loop exception handler that records
every report, drives pages (some of them abandoned mid-flight, as a GraphQL timeout does) through
one fault, collects garbage, and requires zero reports; and it counts the ``promstat`` log lines:
at most one per failed query, naming the plan shape, never one per key.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from _support.waiting import loop_turns, until
from aioresponses import aioresponses

from promstat.client import ClientConfig, RetryPolicy
from promstat.errors import PromstatError, ResponseTooLargeError
from promstat.planner import PlannerConfig
from promstat.service import LiveStats
from promstat.testing import lab
from promstat.testing.fake import FakePrometheus, Reply
from promstat.testing.stub import StubAPI

Serve = Callable[[FakePrometheus], Awaitable[str]]
FAST_RETRY = RetryPolicy(attempts=2, base_delay=0.001, max_delay=0.002)
IDS = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(12)]
# Small chunks: each page is several chunks of every raw shape, so failures are per chunk.
CHUNKED = PlannerConfig(use_recorded=False, fleet_fraction=None, max_alternatives=4)
DETECTING = PlannerConfig(max_alternatives=4)
TOO_MANY_SAMPLES = "query processing would load too many samples into memory in query execution"

FAULTS: dict[str, Reply] = {
    **{
        f"api_{kind}": Reply.api_error(kind)
        for kind in (
            "bad_data",
            "execution",
            "timeout",
            "canceled",
            "internal",
            "not_found",
            "not_acceptable",
            "unavailable",
        )
    },
    "too_many_samples": Reply.api_error("execution", TOO_MANY_SAMPLES),
    "starting_503": Reply.prometheus_starting(),
    "stopping_503": Reply.prometheus_stopping(),
    "html_502": Reply.bad_gateway(),
    "html_504": Reply.gateway_timeout(),
    "uri_414": Reply.uri_too_long(),
    "headers_431": Reply.header_fields_too_large(),
    "vm_too_long_422": Reply.vm_too_long_query(),
    "html_200": Reply.not_json(200),
    "text_404": Reply.plain_text(404, "404 page not found\n"),
    "html_500": Reply.not_json(500, b"<html>oops</html>"),
    "truncated_json": Reply(status=200, body=b'{"status":"success","data":'),
    "wrong_shape": Reply.matrix([({"kernel_id": IDS[0]}, [(1, 1)])]),
    "missing_label": Reply.vector([({"x": "y"}, 1)]),
    "bad_gzip": Reply(status=200, body=b"this is not gzip", headers={"Content-Encoding": "gzip"}),
    "dropped": Reply.dropped(),
    "slow": Reply.vector([]).with_delay(2.0),
    "partial": Reply.vector([], warnings=["partial response: store down"]),
}


class Reports:
    """The loop exception handler's reports and the promstat log records of one test."""

    def __init__(self, records: list[logging.LogRecord]) -> None:
        self.loop_reports: list[dict[str, Any]] = []
        self.records = records

    def handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Record one report instead of logging it."""
        self.loop_reports.append(context)

    def messages(self) -> list[str]:
        """Every loop report's message (for a readable assertion)."""
        return [str(r.get("message")) for r in self.loop_reports]


class _ListHandler(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.DEBUG)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
async def reports() -> AsyncIterator[Reports]:
    """Record loop exception reports and promstat log lines (WARNING and up) for one test."""
    records: list[logging.LogRecord] = []
    handler = _ListHandler(records)
    handler.setLevel(logging.WARNING)
    logger = logging.getLogger("promstat")
    logger.addHandler(handler)
    loop = asyncio.get_running_loop()
    rep = Reports(records)
    previous = loop.get_exception_handler()
    loop.set_exception_handler(rep.handler)
    try:
        yield rep
    finally:
        loop.set_exception_handler(previous)
        logger.removeHandler(handler)


@pytest.fixture
def serve(aiohttp_server: Any) -> Serve:
    """Serve a FakePrometheus and return its base URL."""

    async def _serve(fake: FakePrometheus) -> str:
        server = await aiohttp_server(fake.app)
        return str(server.make_url(""))

    return _serve


async def drive_pages(stats: LiveStats, *, pages: int = 6, give_up: float = 0.02) -> list[Any]:
    """Load ``IDS`` in several overlapping pages; every second page gives up after ``give_up``.

    Returns the answers of the pages that waited (one list per page).
    """

    async def page(number: int) -> list[Any] | None:
        loader = stats.kernel_loader()
        ids = IDS[number % 3 :] if number % 2 == 0 else IDS
        waiting = asyncio.gather(*(loader.load(k) for k in ids), return_exceptions=True)
        if number % 2 == 1:
            try:
                await asyncio.wait_for(waiting, give_up)
            except TimeoutError:
                return None  # the request was abandoned, as a resolver timeout does
        return list(await waiting)

    done = await asyncio.gather(*(page(n) for n in range(pages)))
    # Let abandoned fetches finish in the background, then look for unreported leftovers.
    await until(
        lambda: stats._kernels.inflight == 0 and stats.planner.background_tasks == 0,
        timeout=30,
        what="the abandoned fetches and detections finished",
    )
    await loop_turns(3)
    return [d for d in done if d is not None]


def assert_quiet(rep: Reports, answered: list[Any], queries: int) -> None:
    """Zero loop reports, the per-key contract kept, at most one log line per failed query."""
    gc.collect()
    assert rep.messages() == []
    for page in answered:
        assert all(a is None or isinstance(a, dict | PromstatError) for a in page)
    promstat_lines = [r for r in rep.records if r.name.startswith("promstat")]
    # Queries that never got a query slot before the page deadline failed too, unsent: a
    # plan run reports them in one line ("... before N queries got a query slot").
    unsent = sum(
        int(r.args[-1])  # type: ignore[index]
        for r in promstat_lines
        if "got a query slot" in r.getMessage()
    )
    assert len(promstat_lines) <= queries + unsent
    for record in promstat_lines:
        assert "plan" in record.getMessage(), record.getMessage()


@pytest.mark.parametrize("config", [CHUNKED, DETECTING], ids=["chunks", "detection"])
@pytest.mark.parametrize("fault", list(FAULTS), ids=list(FAULTS))
async def test_every_http_fault_is_quiet(
    serve: Serve, reports: Reports, fault: str, config: PlannerConfig
) -> None:
    """Each fault FakePrometheus can produce, slowed a little so pages give up mid-flight."""
    fake = FakePrometheus()
    reply = FAULTS[fault]
    fake.set_reply("query", reply if reply.delay else reply.with_delay(0.05))
    options = ClientConfig(timeout=0.5, retry=FAST_RETRY)
    async with LiveStats(await serve(fake), planner=config, client=options) as stats:
        answered = await drive_pages(stats)
    assert fake.requests, "the fault was never reached"
    assert_quiet(reports, answered, len(fake.requests))


@pytest.mark.parametrize(
    "exc",
    [
        aiohttp.ClientOSError(errno.ECONNRESET, "Connection reset by peer"),
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientPayloadError("Response payload is not completed"),
        aiohttp.ClientOSError(errno.EHOSTUNREACH, "No route to host"),
    ],
    ids=["reset", "disconnect", "payload", "unreachable"],
)
async def test_transport_faults_are_quiet(reports: Reports, exc: Exception) -> None:
    """Resets, disconnects and cut bodies raised inside aiohttp."""
    with aioresponses() as mocked:
        mocked.post("http://prom.test/api/v1/query", exception=exc, repeat=True)
        options = ClientConfig(retry=FAST_RETRY)
        async with LiveStats("http://prom.test", planner=CHUNKED, client=options) as stats:
            answered = await drive_pages(stats, give_up=0.0)
        sent = sum(len(calls) for calls in mocked.requests.values())
    assert answered and all(isinstance(a, PromstatError) for page in answered for a in page)
    assert_quiet(reports, answered, sent)


async def test_connection_refused_is_quiet(reports: Reports) -> None:
    """Nothing listening at all."""
    url = f"http://127.0.0.1:{lab.free_port()}"
    async with LiveStats(url, planner=DETECTING, client=ClientConfig(retry=FAST_RETRY)) as stats:
        answered = await drive_pages(stats)
    assert answered and all(isinstance(a, PromstatError) for page in answered for a in page)
    # One detection, shared by every page; then each page's own queries (refused as well).
    assert_quiet(reports, answered, queries=stats.metrics.snapshot().queries)


class OversizedClient(StubAPI):
    """A client whose every answer is over its size cap (as with ``max_response_bytes``)."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    async def query_vector(self, query: str, **kwargs: Any) -> Any:
        self.queries.append(query)
        await asyncio.sleep(0.01)  # behaviour, not synchronisation: outlives give_up
        raise ResponseTooLargeError(limit=1024, url="http://prom.test/api/v1/query", query=query)


async def test_oversized_answers_are_quiet(reports: Reports) -> None:
    """Bodies over the client's cap: split down to single ids, then each id gets the error."""
    client = OversizedClient()
    async with LiveStats(client, planner=CHUNKED) as stats:
        answered = await drive_pages(stats)
    assert answered and all(isinstance(a, ResponseTooLargeError) for page in answered for a in page)
    assert_quiet(reports, answered, len(client.queries))
