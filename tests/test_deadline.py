"""One deadline per load: detection, query slots, retries and splits all count against it.

Against a server that accepts connections and never answers, 20 pages loaded at once used to
take 10-14 s with a 2 s client deadline: a failed detection was repeated by every queued load,
waiting for one of the 8 query slots did not count, and every split got a fresh deadline. Each
test here loads 20 pages concurrently and requires all of them to finish within 1.5x the page
deadline, every key answered with its own timeout error.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from _support.waiting import until

from promstat.client import ClientConfig, PrometheusClient, RetryPolicy
from promstat.errors import (
    ConfigError,
    PageDeadlineError,
    PromstatError,
    QueryTooLargeError,
    RequestTimeoutError,
    UnavailableError,
)
from promstat.planner import Planner, PlannerConfig, default_page_deadline
from promstat.refresh import RefreshConfig
from promstat.service import LiveStats
from promstat.testing.fake import FakePrometheus, Reply
from promstat.testing.stub import StubAPI

# Refresh-ahead is off in these tests: its first jittered refresh can fall inside a test and
# open connections of its own, which the connection counts below must not see.
PAGES = 20
PAGE_IDS = 24  # 6 chunks of 4 ids x 5 raw shapes = 30 queries per page, 600 for all pages


class HungServer:
    """Accepts connections and reads requests, never answers (a wedged Prometheus or proxy)."""

    def __init__(self) -> None:
        self.connections = 0
        self.handling = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        """Listen on a free loopback port; return the base URL."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.handling += 1
        self._writers.append(writer)
        try:
            while await reader.read(65536):
                pass
        except ConnectionError:
            pass
        finally:
            writer.close()
            self.handling -= 1

    async def stop(self) -> None:
        """Close the listener and every connection."""
        if self._server is not None:
            self._server.close()
            for writer in self._writers:
                writer.close()
            await self._server.wait_closed()
            await until(
                lambda: self.handling == 0,
                timeout=10,
                what="every hung connection's handler saw its connection close",
            )


@pytest.fixture
async def hung() -> AsyncIterator[tuple[HungServer, str]]:
    """A hung server and its URL."""
    server = HungServer()
    url = await server.start()
    try:
        yield server, url
    finally:
        await server.stop()


def quiet_stats(url: str, *args: Any, **kwargs: Any) -> LiveStats:
    """A LiveStats without refresh-ahead (its background queries would skew the counts)."""
    return LiveStats(url, *args, refresh=RefreshConfig(enabled=False), **kwargs)


def page_ids(page: int) -> list[str]:
    """Distinct ids per page, so pages do not share fetches through the cache."""
    return [f"{page:04x}{i:04x}-0000-4000-8000-000000000000" for i in range(PAGE_IDS)]


async def load_pages(stats: LiveStats) -> tuple[float, list[list[Any]]]:
    """Load PAGES pages at once through per-request loaders; return (seconds, answers)."""
    loop = asyncio.get_running_loop()

    async def page(number: int) -> list[Any]:
        loader = stats.kernel_loader()
        ids = page_ids(number)
        return list(await asyncio.gather(*(loader.load(k) for k in ids), return_exceptions=True))

    started = loop.time()
    answers = await asyncio.gather(*(page(n) for n in range(PAGES)))
    return loop.time() - started, answers


def flat(answers: list[list[Any]]) -> list[Any]:
    """Every key's answer."""
    return [a for page in answers for a in page]


async def test_hung_detection_is_shared_and_bounded(hung: tuple[HungServer, str]) -> None:
    """A detection that hangs is asked once; pages stop waiting for it at half their deadline,
    send their own queries (the raw plan) and end with a timeout within the bound."""
    server, url = hung
    config = PlannerConfig(max_alternatives=4)
    async with quiet_stats(url, planner=config, client=ClientConfig(timeout=1.0)) as stats:
        deadline = stats.planner.page_deadline
        seconds, answers = await load_pages(stats)
        sent = stats.metrics.snapshot().queries
    assert seconds <= 1.5 * deadline
    errors = flat(answers)
    assert all(isinstance(a, RequestTimeoutError) for a in errors)
    assert len(errors) == PAGES * PAGE_IDS
    late = [a for a in errors if isinstance(a, PageDeadlineError)]
    assert "plan detection" not in {a.stage for a in late}  # no load is answered undetected
    assert "raw/filtered plan" in str(late[0])
    # One detection for all 20 pages, then at most one round of the 8 query slots.
    # One rule layout read and one detection for all 20 pages, then at most one round of
    # the 8 query slots.
    assert 2 < server.connections <= 2 + 8
    assert sent <= 2 + 8


async def test_hung_queries_end_at_the_page_deadline(hung: tuple[HungServer, str]) -> None:
    """600 hung queries behind 8 slots: pages end at the page deadline, not after 75 rounds."""
    server, url = hung
    config = PlannerConfig(use_recorded=False, fleet_fraction=None, max_alternatives=4)
    async with quiet_stats(url, planner=config, client=ClientConfig(timeout=2.0)) as stats:
        deadline = stats.planner.page_deadline
        assert deadline == pytest.approx(2.5)  # the client's 2 s plus the 0.5 s minimum margin
        seconds, answers = await load_pages(stats)
    assert seconds <= 1.5 * deadline
    errors = flat(answers)
    assert len(errors) == PAGES * PAGE_IDS
    assert all(isinstance(a, RequestTimeoutError) for a in errors)
    late = [a for a in errors if isinstance(a, PageDeadlineError)]
    assert late, "no key waited past the page deadline"
    assert {a.stage for a in late} <= {"a query slot", "the query"}
    assert "a query slot" in {a.stage for a in late}
    assert "raw/filtered plan" in str(late[0]) and "page deadline of 2.5s" in str(late[0])
    assert server.connections <= 2 * 8  # at most two rounds of the 8 slots were ever sent


async def test_a_deadline_shorter_than_the_client_timeout_wins(
    hung: tuple[HungServer, str],
) -> None:
    """page_deadline below the client's deadline: every key gets PageDeadlineError."""
    _, url = hung
    config = PlannerConfig(page_deadline=2.0, max_alternatives=4)
    async with quiet_stats(url, planner=config, client=ClientConfig(timeout=30)) as stats:
        seconds, answers = await load_pages(stats)
    assert seconds <= 3.0
    errors = flat(answers)
    assert all(isinstance(a, PageDeadlineError) for a in errors)
    # Detection hung: after half the deadline the pages sent their own queries.
    assert {a.stage for a in errors} <= {"a query slot", "the query"}
    assert "the query" in {a.stage for a in errors}
    assert all(isinstance(a, TimeoutError) for a in errors)


Serve = Callable[[FakePrometheus], Awaitable[str]]


@pytest.fixture
def serve(aiohttp_server: Any) -> Serve:
    """Serve a FakePrometheus and return its base URL."""

    async def _serve(fake: FakePrometheus) -> str:
        server = await aiohttp_server(fake.app)
        return str(server.make_url(""))

    return _serve


async def test_retries_count_against_the_page_deadline(serve: Serve) -> None:
    """A client that would retry a flapping 503 for 30 s is cut at the page deadline."""
    fake = FakePrometheus()
    fake.set_reply("query", Reply.prometheus_starting().with_delay(0.1))
    config = PlannerConfig(use_recorded=False, fleet_fraction=None, page_deadline=2.0)
    retry = RetryPolicy(attempts=1000, base_delay=0.01, max_delay=0.02)
    options = ClientConfig(timeout=30, retry=retry)
    async with quiet_stats(await serve(fake), planner=config, client=options) as stats:
        seconds, answers = await load_pages(stats)
    assert seconds <= 3.0
    errors = flat(answers)
    assert all(isinstance(a, PageDeadlineError) for a in errors)
    assert len(fake.requests) > 8  # the client did retry, inside the deadline


async def test_splits_count_against_the_page_deadline(serve: Serve) -> None:
    """A slow "too large" answer at every size: halving stops at the page deadline."""
    fake = FakePrometheus()
    fake.set_reply("query", Reply.uri_too_long().with_delay(0.15))
    config = PlannerConfig(
        use_recorded=False, fleet_fraction=None, page_deadline=2.0, max_alternatives=64
    )
    async with quiet_stats(
        await serve(fake), planner=config, client=ClientConfig(timeout=30)
    ) as stats:
        seconds, answers = await load_pages(stats)
        splits = stats.metrics.snapshot().chunk_splits
    assert seconds <= 3.0
    errors = flat(answers)
    assert all(isinstance(a, PageDeadlineError | QueryTooLargeError) for a in errors)
    assert any(isinstance(a, PageDeadlineError) for a in errors)
    assert splits > 0


async def test_a_failed_detection_is_shared_but_answers_no_load(serve: Serve) -> None:
    """20 pages waiting on one failing detection: one detection request, and then every page
    sends its own queries; the error of the detection answers no key."""
    fake = FakePrometheus()
    fake.set_reply("query", Reply.bad_gateway().with_delay(0.2))
    retry = RetryPolicy(attempts=1)
    config = PlannerConfig(detect_backoff=60)  # the 20 pages' queries take a few seconds
    async with quiet_stats(
        await serve(fake), planner=config, client=ClientConfig(retry=retry)
    ) as stats:
        _, answers = await load_pages(stats)
        detections = [r for r in fake.requests if "count(count by" in (r.param("query") or "")]
        assert len(detections) == 1
        errors = flat(answers)
        assert all(isinstance(a, UnavailableError) for a in errors)
        # Each error is that of one of the page's own (raw) queries, not the detection's.
        assert len({id(a) for a in errors}) >= PAGES  # one per page at least, not one for all
        assert len(fake.requests) > PAGES
        # Within detect_backoff, a load skips detection but still asks the server.
        before = len(fake.requests)
        again = await stats.load_kernels(page_ids(99))
        assert all(isinstance(a, UnavailableError) for a in again)
        sent = fake.requests[before:]
        assert sent and not any("count(count by" in (r.param("query") or "") for r in sent)


async def test_a_healed_server_answers_the_next_load(serve: Serve) -> None:
    """A failed detection, then a healthy server: the very next load gets data (no backoff
    wait), and the load after it detects the plan again."""
    fake = FakePrometheus()
    fake.enqueue(Reply.bad_gateway())  # the detection fails; everything after succeeds
    row = {"kernel_id": "k", "container_metric_name": "mem"}
    fake.set_reply("query", Reply.vector([(row, 1024)]))
    config = PlannerConfig(detect_backoff=60)
    async with PrometheusClient(await serve(fake), retry=RetryPolicy(attempts=1)) as client:
        planner = Planner(client, config)
        first = await planner.kernels(["k"])
        assert first.plan == "raw/filtered" and first.queries > 0
        payload = first.payloads["k"]
        assert isinstance(payload, dict) and payload["mem"]["current"] == "1024"
        assert planner.fallback("kernel") == (False, 0)
        requests = len(fake.requests)
        second = await planner.kernels(["k"])  # the answered load ended the backoff
        assert any(
            "count(count by" in (r.param("query") or "") for r in fake.requests[requests:]
        )
        await planner.aclose()
    assert isinstance(second.payloads["k"], dict)


def test_default_page_deadline_follows_the_client() -> None:
    """Client deadline + 20%, at least 0.5 s more; 30 s assumed for clients that do not say."""
    assert default_page_deadline(PrometheusClient("http://x", timeout=10)) == 12.0
    assert default_page_deadline(PrometheusClient("http://x", timeout=1)) == 1.5
    assert default_page_deadline(StubAPI()) == 36.0  # PrometheusClient's default 30 s
    with pytest.raises(ConfigError, match="page_deadline"):
        PlannerConfig(page_deadline=0)
    with pytest.raises(ConfigError, match="detect_backoff"):
        PlannerConfig(detect_backoff=-1)


async def test_a_client_without_its_own_deadline_is_cut_too() -> None:
    """A client that never returns (no deadline of its own) cannot hold a load past its deadline."""

    class Forever(StubAPI):
        async def query_vector(self, query: str, **kwargs: Any) -> Any:
            await asyncio.sleep(3600)

    planner = Planner(Forever(), PlannerConfig(page_deadline=1.0))
    loop = asyncio.get_running_loop()
    started = loop.time()
    outs = await asyncio.gather(*(planner.kernels([f"k{i}"]) for i in range(5)))
    assert loop.time() - started <= 1.5
    errors = [o.payloads[f"k{i}"] for i, o in enumerate(outs)]
    assert all(isinstance(e, PageDeadlineError) for e in errors)
    with pytest.raises(PromstatError, match="plan detection"):
        await planner.detect("kernel", refresh=True)
    await planner.aclose()


async def test_no_query_is_sent_in_the_last_moment_before_the_page_deadline() -> None:
    """A slot freed just before the deadline is not used: the query could not finish anyway."""
    sent: list[str] = []

    class HoldsTheSlot(StubAPI):
        async def query_vector(self, query: str, **kwargs: Any) -> Any:
            sent.append(query)
            # behaviour, not synchronisation: frees the only slot 50 ms before the 1 s deadline
            await asyncio.sleep(0.95)
            raise UnavailableError(status=503, error="busy")

    config = PlannerConfig(
        page_deadline=1.0, concurrency=1, use_recorded=True, fleet_fraction=None,
        max_alternatives=1,
    )
    planner = Planner(HoldsTheSlot(), config)
    out = await planner.kernels(["k1", "k2"])  # two chunks, one slot
    assert len(sent) == 1  # the second chunk got the slot with 50 ms left: not sent
    errors = list(out.payloads.values())
    assert isinstance(errors[0], UnavailableError) or isinstance(errors[1], UnavailableError)
    late = [e for e in errors if isinstance(e, PageDeadlineError)]
    assert len(late) == 1 and late[0].stage == "a query slot"
    await planner.aclose()
