"""LiveStats lifecycle: async with, aclose, owned or borrowed client, closed and wrong-loop use."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from _support.waiting import loop_turns, until

from promstat.client import ClientConfig, PrometheusClient
from promstat.errors import ClosedError, ConfigError, EventLoopMismatchError
from promstat.final import FinalConfig
from promstat.loader import CacheConfig
from promstat.planner import Planner, PlannerConfig
from promstat.refresh import RefreshConfig
from promstat.service import LiveStats
from promstat.testing.fake import FakePrometheus, Reply
from promstat.testing.stub import StubAPI

Serve = Callable[[FakePrometheus], Awaitable[str]]
K = "11111111-1111-4111-8111-111111111111"
ROW = {"kernel_id": K, "container_metric_name": "mem", "stat": "current"}


@pytest.fixture
def serve(aiohttp_server: Any) -> Serve:
    """Serve a FakePrometheus and return its base URL."""

    async def _serve(fake: FakePrometheus) -> str:
        server = await aiohttp_server(fake.app)
        return str(server.make_url(""))

    return _serve


class Idle(StubAPI):
    """A client that answers every query with an empty vector after ``delay`` seconds."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls = 0
        self.closed = 0

    async def query_vector(self, query: str, **kwargs: Any) -> Any:
        self.calls += 1
        await asyncio.sleep(self.delay)  # behaviour, not synchronisation: a slow server
        return _Empty()

    async def aclose(self) -> None:
        self.closed += 1


class _Empty:
    series: list[Any] = []  # noqa: RUF012 - read-only stand-in for a VectorResult
    warnings: tuple[str, ...] = ()
    infos: tuple[str, ...] = ()


FORCED = PlannerConfig(use_recorded=True, fleet_fraction=None)


async def test_async_with_closes_an_owned_client(serve: Serve) -> None:
    """LiveStats built from a URL owns its client and closes its session on exit."""
    fake = FakePrometheus()
    fake.set_reply("query", Reply.vector([(ROW, 1024)]))
    async with LiveStats(
        await serve(fake), planner=FORCED, client=ClientConfig(timeout=5)
    ) as stats:
        client = stats.client
        assert isinstance(client, PrometheusClient)
        (payload,) = await stats.load_kernels([K])
        assert isinstance(payload, dict) and payload["mem"]["current"] == "1024"
        session = client._session
        assert session is not None and not session.closed
    assert stats.closed and session.closed


async def test_a_borrowed_client_stays_open(serve: Serve) -> None:
    """A client passed in is borrowed: LiveStats never closes it (as httpx and aiohttp)."""
    fake = FakePrometheus()
    async with PrometheusClient(await serve(fake)) as client:
        async with LiveStats(client, planner=FORCED) as stats:
            await stats.load_kernels([K])
        await client.query("up")  # still usable
        assert [r.endpoint for r in fake.requests] == ["rules", "query", "query"]
    idle = Idle()
    async with LiveStats(idle, planner=FORCED):
        pass
    assert idle.closed == 0


async def test_a_closed_live_stats_raises_closed_error() -> None:
    """Every entry point of a closed LiveStats raises ClosedError naming it; aclose repeats."""
    stats = LiveStats(Idle(), planner=FORCED)
    await stats.aclose()
    await stats.aclose()  # idempotent
    for call in (
        lambda: stats.load_kernels([K]),
        lambda: stats.load_agents(["a"]),
        lambda: stats.final_stats({K: 1.0}),
        lambda: stats.kernel_history([K], ["mem"], start=0, end=60, step=60),
    ):
        with pytest.raises(ClosedError, match="LiveStats is closed"):
            await call()
    with pytest.raises(ClosedError):
        stats.kernel_loader()
    with pytest.raises(ClosedError):
        await stats.planner.kernels([K])
    with pytest.raises(ClosedError):
        async with stats:
            pass
    assert isinstance(ClosedError(what="x"), RuntimeError)


async def test_aclose_answers_waiting_loads_and_leaves_no_task() -> None:
    """Loads in flight at aclose() get ClosedError per key; no task outlives aclose()."""
    reports: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, ctx: reports.append(ctx))
    before = asyncio.all_tasks()
    stats = LiveStats(Idle(delay=30), planner=PlannerConfig(max_alternatives=2))
    loader = stats.kernel_loader()
    waiting = asyncio.gather(*(loader.load(f"k{i}") for i in range(5)), return_exceptions=True)
    other = asyncio.ensure_future(stats.load_agents(["a1", "a2"]))
    await until(
        lambda: stats.planner.background_tasks == 2,
        timeout=10,
        what="the kernel and agent detections in flight",
    )
    await loop_turns(3)
    assert stats.planner.background_tasks == 2  # the kernel and agent detections, no more
    await stats.aclose()
    answers = await waiting
    assert all(isinstance(a, ClosedError) for a in answers)
    assert all(isinstance(a, ClosedError) for a in await other)
    await loop_turns(1)
    assert asyncio.all_tasks() - before == set()
    assert stats.planner.background_tasks == 0
    del waiting, other, answers
    gc.collect()
    assert reports == []


async def test_closers_run_last_registered_first_and_survive_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A background component joins with one append; a failing closer is logged, not fatal."""
    order: list[str] = []
    idle = Idle()
    stats = LiveStats(idle, planner=FORCED)

    async def refresher_aclose() -> None:
        order.append("refresher")
        assert not stats._kernels.closed  # still open: the refresher may flush through it

    async def broken() -> None:
        order.append("broken")
        raise RuntimeError("closer bug")

    stats._closers.append(broken)
    stats._closers.append(refresher_aclose)  # how refresh-ahead registers itself
    with caplog.at_level(logging.ERROR, logger="promstat.service"):
        await stats.aclose()
    assert order == ["refresher", "broken"]
    assert idle.closed == 0 and stats._kernels.closed  # borrowed: not closed
    assert "closer bug" in caplog.text


def test_a_second_event_loop_fails_fast() -> None:
    """Using one LiveStats (or Planner) from two event loops raises a clear error at once."""
    stats = LiveStats(Idle(), planner=FORCED)
    planner = Planner(Idle(), FORCED)
    asyncio.run(stats.load_kernels([K]))
    asyncio.run(planner.kernels([K]))
    with pytest.raises(EventLoopMismatchError, match="LiveStats is bound to the event loop"):
        asyncio.run(stats.load_kernels([K]))
    with pytest.raises(EventLoopMismatchError, match="one LiveStats per event loop"):
        asyncio.run(_make_loader(stats))
    with pytest.raises(EventLoopMismatchError, match="Planner"):
        asyncio.run(planner.kernels([K]))


async def _make_loader(stats: LiveStats) -> None:
    stats.kernel_loader()


def test_built_outside_a_loop_binds_on_first_use() -> None:
    """Construction needs no running loop (module-level setup); the first use binds it."""
    stats = LiveStats(Idle(), planner=FORCED)

    async def use() -> list[Any]:
        async with stats:
            return await stats.load_kernels([K])

    assert asyncio.run(use()) == [None]


def test_a_client_config_needs_a_url() -> None:
    """client= (a ClientConfig) with a client object is a ConfigError naming it; config
    fields are checked where they are built, naming the bad field."""
    with pytest.raises(ConfigError, match=r"client= .*only when LiveStats is given a URL"):
        LiveStats(Idle(), client=ClientConfig(timeout=1))
    with pytest.raises(ConfigError, match=r"ClientConfig.timeout"):
        ClientConfig(timeout=0)
    with pytest.raises(ConfigError, match=r"ClientConfig.timeout must be > 0 seconds.*number"):
        ClientConfig(timeout="30s")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"ClientConfig: pass either auth or bearer_token"):
        ClientConfig(auth=("u", "p"), bearer_token="t")
    with pytest.raises(ConfigError, match=r"CacheConfig.kernel_entries"):
        CacheConfig(kernel_entries=0)
    with pytest.raises(ConfigError, match=r"PlannerConfig.page_deadline.*seconds"):
        PlannerConfig(page_deadline="30s")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"RefreshConfig.interval"):
        RefreshConfig(interval=0)
    with pytest.raises(ConfigError, match=r"FinalConfig.settle"):
        FinalConfig(settle=-1)
    with pytest.raises(ConfigError, match=r"CacheConfig.agent_entries"):
        LiveStats(Idle(), cache=CacheConfig(agent_entries=0))


async def test_a_client_config_reaches_the_client_it_builds() -> None:
    """Every ClientConfig field is the PrometheusClient argument of its name; the page
    deadline follows the built client's timeout; headers cannot change behind its back."""
    headers = {"X-Scope-OrgID": "team-a"}
    config = ClientConfig(timeout=3.0, bearer_token="secret", headers=headers, compress=True)
    headers["X-Scope-OrgID"] = "changed"
    async with LiveStats("http://prom.test", client=config) as stats:
        client = stats.client
        assert isinstance(client, PrometheusClient)
        assert client.timeout == 3.0 and stats.planner.page_deadline == pytest.approx(3.6)
        assert client._headers["X-Scope-OrgID"] == "team-a"
        assert client._headers["Authorization"] == "Bearer secret"
        assert client._headers["Accept-Encoding"] == "gzip"
    assert "secret" not in repr(config)
