"""End to end: a live simulated fleet, a real Prometheus scraping it with the generated
recording rules, and real GraphQL HTTP requests to the promstat service (both stacks).

The fleet runs on its own event loop in a background thread (module-scoped, like the
Prometheus that scrapes it); each test builds its own client, LiveStats and HTTP server.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from promstat.apps.registry import FleetRegistry, PrometheusRegistry, StaticRegistry
from promstat.apps.serve import EXAMPLE_QUERY, load_serve_options, make_app, serve
from promstat.client import PrometheusClient
from promstat.errors import ConfigError
from promstat.generate.rules import write_rules
from promstat.profile import RuleProfile
from promstat.refresh import RefreshConfig
from promstat.selfmetrics import PromstatMetrics
from promstat.service import LiveStats
from promstat.testing import lab
from promstat.testing.sim import ChurnConfig, FleetConfig, SimulatedFleet

STACKS = ("graphene", "strawberry")
INTERVAL, WINDOW, LOOKBACK = "1s", "4s", "4s"
AGENTS, PER_AGENT, PAGE = 4, 60, 200


@dataclass
class LiveLab:
    fleet: SimulatedFleet
    prom: lab.PrometheusProcess


class _FleetThread:
    """Runs a SimulatedFleet's exporter servers on an event loop in a daemon thread."""

    def __init__(self, fleet: SimulatedFleet) -> None:
        self.fleet = fleet
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> SimulatedFleet:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.fleet.start(), self.loop).result()
        return self.fleet

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.fleet.stop(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


KERNEL_RECORDED = "kernel_metric:backendai_container_utilization:live_stat"
AGENT_RECORDED = "agent_metric:backendai_device_utilization:live_stat"


def _count(prom: lab.PrometheusProcess, selector: str) -> int:
    result = prom.query(f"count({selector})")
    return int(float(result[0]["value"][1])) if result else 0


def _wait_until(check: Any, what: str, prom: lab.PrometheusProcess) -> None:
    """Poll ``check`` until true; fail with the server log if the process dies first."""
    prom.wait_ready(check, timeout=120.0, what=what)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveLab]:
    """A 4x60 fleet scraped every second by Prometheus with the recording rules loaded."""
    rule_dir = tmp_path_factory.mktemp("rules")
    written = write_rules(
        rule_dir, RuleProfile.parse(interval=INTERVAL, window=WINDOW, lookback=LOOKBACK)
    )
    rule_files = [p for p in written if p.parent == rule_dir]
    fleet = SimulatedFleet(FleetConfig(agents=AGENTS, kernels_per_agent=PER_AGENT, churn=None))
    with (
        _FleetThread(fleet),
        lab.start_prometheus(
            scrape_targets=fleet.targets,
            scrape_interval=INTERVAL,
            evaluation_interval=INTERVAL,
            rule_files=rule_files,
        ) as prom,
    ):
        # Rates need two scrapes inside the rules' window: wait until every kernel and agent
        # has a non-zero recorded CPU rate and window statistics.
        def ready() -> bool:
            return (
                _count(
                    prom,
                    f'{KERNEL_RECORDED}{{stat="current",container_metric_name="cpu_util"}} > 0',
                )
                == AGENTS * PER_AGENT
                and _count(prom, f'{KERNEL_RECORDED}{{stat="max",container_metric_name="mem"}}')
                == AGENTS * PER_AGENT
                and _count(
                    prom, f'{AGENT_RECORDED}{{stat="current",device_metric_name="cpu_util"}} > 0'
                )
                == AGENTS
            )

        _wait_until(ready, "recording rules producing data", prom)
        yield LiveLab(fleet, prom)


@pytest.fixture
async def stats(live: LiveLab) -> AsyncIterator[LiveStats]:
    """LiveStats over the live Prometheus with the rules' durations; client -> its metrics.

    Refresh-ahead is off: these tests count the queries one page sends, and a background
    refresh (once per 1 s interval here) would land in that count at a random moment.
    Refresh-ahead against a real Prometheus is tested in ``test_refresh``.
    """
    metrics = PromstatMetrics()
    profile = RuleProfile.parse(interval=INTERVAL, window=WINDOW, lookback=LOOKBACK)
    async with (
        PrometheusClient(live.prom.url, observer=metrics) as client,
        LiveStats(
            client, profile=profile, metrics=metrics, refresh=RefreshConfig(enabled=False)
        ) as stats,
    ):
        yield stats


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}/graphql"


async def _page(session: aiohttp.ClientSession, url: str, limit: int, offset: int = 0) -> Any:
    body = {"query": EXAMPLE_QUERY, "variables": {"limit": limit, "offset": offset}}
    async with session.post(url, json=body) as resp:
        assert resp.status == 200
        return await resp.json()


def _check_payload(stat: dict[str, Any]) -> None:
    """Legacy shape: every value a numeric string (capacity may be null); bytes are integers."""
    assert {"cpu_util", "cpu_used", "mem", "io_read", "io_write", "net_rx", "net_tx"} <= stat.keys()
    for metric, value in stat.items():
        assert isinstance(value["unit_hint"], str), metric
        for key, text in value.items():
            if key == "unit_hint" or (key == "capacity" and text is None):
                continue
            assert isinstance(text, str), (metric, key)
            assert math.isfinite(float(text)), (metric, key, text)
    assert int(stat["mem"]["current"]) >= 0
    assert int(stat["mem"]["capacity"]) > 0
    assert int(stat["io_read"]["current"]) >= 0


@pytest.mark.slow
@pytest.mark.parametrize("stack", STACKS)
async def test_kernel_page_over_http(stack: str, live: LiveLab, stats: LiveStats) -> None:
    """A 200-kernel page returns 200 live_stat JSON strings with real numbers, in few queries."""
    runner, url = await _serve(make_app(stats, FleetRegistry(live.fleet), stack=stack))
    try:
        async with aiohttp.ClientSession() as session:
            await _page(session, url, 1)  # plan detection + warm-up
            before = stats.metrics.snapshot()
            stats.invalidate()
            result = await _page(session, url, PAGE)
            after = stats.metrics.snapshot()
    finally:
        await runner.cleanup()
    assert "errors" not in result
    page = result["data"]["compute_container_list"]
    assert page["total_count"] == AGENTS * PER_AGENT
    assert len(page["items"]) == PAGE
    missing = [(i, item["id"]) for i, item in enumerate(page["items"]) if item["live_stat"] is None]
    assert not missing, (missing[:5], len(missing))
    stats_ = [json.loads(item["live_stat"]) for item in page["items"]]
    for stat in stats_:
        _check_payload(stat)
    assert any(float(s["cpu_util"]["pct"]) > 0 for s in stats_)
    assert any(float(s["net_rx"]["current"]) > 0 for s in stats_)
    used = [p for p, n in after.plans.items() if n > before.plans.get(p, 0)]
    assert used and all(p.startswith("recorded/") for p in used)
    # Bound from the planner config, not the page size: one shape per plan, each id batch
    # (<=128 ids) fits one chunk (<= max_alternatives ids), plus one plan detection and one
    # read of the rule layout.
    cfg = stats.planner_config
    batches = math.ceil(PAGE / 128)
    chunks = math.ceil(128 / cfg.max_alternatives)
    shapes = len(stats.planner.shapes("kernel", recorded=True))
    queries = after.queries - before.queries
    assert 1 <= queries <= batches * shapes * chunks + 2


@pytest.mark.slow
async def test_agent_page_over_http(live: LiveLab, stats: LiveStats) -> None:
    """Agent live_stat, cpu_cur_pct and mem_cur_bytes come from one recorded batch."""
    query = (
        "{ agent_list(limit: 10, offset: 0) "
        "{ total_count items { id live_stat cpu_cur_pct mem_cur_bytes } } }"
    )
    runner, url = await _serve(make_app(stats, FleetRegistry(live.fleet), stack="strawberry"))
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, json={"query": query}) as resp,
        ):
            result = await resp.json()
    finally:
        await runner.cleanup()
    assert "errors" not in result
    items = result["data"]["agent_list"]["items"]
    assert [i["id"] for i in items] == live.fleet.agent_ids()
    for item in items:
        stat = json.loads(item["live_stat"])
        assert item["cpu_cur_pct"] == float(stat["node"]["cpu_util"]["pct"])
        assert item["mem_cur_bytes"] == float(stat["node"]["mem"]["current"]) > 0
        assert len(stat["devices"]["cpu_util"]) == live.fleet.agent(item["id"]).cores
        assert int(stat["node"]["mem"]["capacity"]) == live.fleet.agent(item["id"]).mem_total


@pytest.mark.slow
async def test_prometheus_registry_lists_the_live_fleet(live: LiveLab, stats: LiveStats) -> None:
    """In serve mode the rows come from the live series: every fleet kernel, paged stably."""
    client: Any = stats.planner.client
    registry = PrometheusRegistry(client, ttl=60.0)
    first = await registry.list_kernels(limit=100, offset=0)
    rest = await registry.list_kernels(limit=1000, offset=100)
    assert first.total_count == AGENTS * PER_AGENT
    ids = [r.id for r in (*first.items, *rest.items)]
    assert sorted(ids) == sorted(live.fleet.kernel_ids())
    assert {r.agent for r in first.items} <= set(live.fleet.agent_ids())
    agents = await registry.list_agents(limit=10, offset=0)
    assert [a.id for a in agents.items] == live.fleet.agent_ids()


@pytest.mark.slow
@pytest.mark.parametrize("stack", STACKS)
async def test_serve_against_prometheus(stack: str, live: LiveLab, tmp_path: Path) -> None:
    """`promstat serve` settings (YAML config + flags) serve a page read from Prometheus."""
    config = tmp_path / "serve.yml"
    config.write_text(
        f"url: {live.prom.url}\ninterval: {INTERVAL}\nheaders:\n  X-Test: yes\n", encoding="utf-8"
    )
    port = lab.free_port()
    options = load_serve_options(config, {"port": port, "stack": stack, "tenant": "team-a"})
    stop = asyncio.Event()
    task = asyncio.create_task(serve(options, stop=stop))
    url = f"http://127.0.0.1:{port}/graphql"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):  # the server binds a moment after the task starts
                try:
                    result = await _page(session, url, 50)
                    break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            else:
                pytest.fail("serve did not start")
    finally:
        stop.set()
        await task
    page = result["data"]["compute_container_list"]
    assert page["total_count"] == AGENTS * PER_AGENT
    assert all(isinstance(i["live_stat"], str) for i in page["items"])
    _check_payload(json.loads(page["items"][0]["live_stat"]))


@pytest.mark.slow
async def test_stacks_agree_at_a_pinned_time(live: LiveLab, stats: LiveStats) -> None:
    """graphene and strawberry return the same page for the same evaluation time."""
    from promstat.apps.serve import make_executor

    registry = StaticRegistry(live.fleet.kernel_ids()[:50])
    at = float(int(live.fleet.clock()) - 2)
    pages = [
        await make_executor(stats, registry, stack=s).execute(
            EXAMPLE_QUERY, {"limit": 50, "offset": 0}, at=at
        )
        for s in STACKS
    ]
    assert "errors" not in pages[0]
    assert pages[0] == pages[1]


def test_serve_options_merge_config_and_flags(tmp_path: Path) -> None:
    """Flags override the YAML; headers merge; tenant becomes X-Scope-OrgID; auth parses."""
    config = tmp_path / "c.yml"
    config.write_text(
        "url: http://prom:9090\npath-prefix: /select/0/prometheus\nport: 9000\n"
        "headers: {X-A: '1'}\nbasic_auth: 'user:p:w'\nrates: exporter\n",
        encoding="utf-8",
    )
    options = load_serve_options(config, {"port": 9100, "headers": ["X-B: 2"], "tenant": "t1"})
    assert options.base_url == "http://prom:9090/select/0/prometheus"
    assert options.port == 9100
    assert options.rates == "exporter"
    kwargs = options.client_kwargs()
    assert kwargs["headers"] == {"X-A": "1", "X-B": "2", "X-Scope-OrgID": "t1"}
    assert kwargs["auth"] == ("user", "p:w")  # the client builds the Basic header


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("url: http://p\nbogus: 1\n", {}, "unknown key 'bogus'"),
        ("port: 1\n", {}, "Prometheus URL is required"),
        ("url: http://p\n", {"stack": "ariadne"}, "stack must be one of"),
        ("url: http://p\n", {"headers": ["no-colon"]}, "NAME:VALUE"),
        ("- a list\n", {}, "must be a mapping"),
        ("url: http://p\n", {"rates": "fast"}, "rates must be one of 'both', 'exporter'"),
    ],
)
def test_serve_options_errors(
    tmp_path: Path, text: str, overrides: dict[str, Any], message: str
) -> None:
    """Bad serve settings are ConfigErrors naming the problem."""
    config = tmp_path / "c.yml"
    config.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_serve_options(config, overrides)


def test_serve_options_reject_two_auth_kinds() -> None:
    """basic_auth and bearer_token together are refused."""
    options = load_serve_options(
        None, {"url": "http://p", "basic_auth": "a:b", "bearer_token": "t"}
    )
    with pytest.raises(ConfigError, match="not both"):
        options.client_kwargs()


# -- terminated kernels: final stats from history ---------------------------------------------

DETENTION = 3.0  # the exporter keeps a terminated kernel's frozen series this long
#: The churning agents measure every 2 s on their own timer (twice the scrape interval, as
#: Backend.AI's 30 s vs 15-20 s): a kernel of a few seconds still gets several measurements.
MEASURE = 2.0
COLLECT = "2s"


class _OnFleetLoop:
    """A Registry running another registry on the fleet's loop: the fleet's lazily generated
    schedule is then only ever touched from one thread."""

    def __init__(self, inner: FleetRegistry, loop: asyncio.AbstractEventLoop) -> None:
        self.inner, self.loop = inner, loop

    async def list_kernels(self, *, limit: int, offset: int, status: str | None = None) -> Any:
        coro = self.inner.list_kernels(limit=limit, offset=offset, status=status)
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    async def list_agents(self, *, limit: int, offset: int, status: str | None = None) -> Any:
        coro = self.inner.list_agents(limit=limit, offset=offset, status=status)
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))


@dataclass
class ChurnLab:
    fleet: SimulatedFleet
    prom: lab.PrometheusProcess
    registry: _OnFleetLoop
    started: float = 0.0


@pytest.fixture(scope="module")
def churning(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChurnLab]:
    """A small fleet whose kernels live ~12 s, measured every 2 s and scraped every second with
    the rules loaded."""
    rule_dir = tmp_path_factory.mktemp("churn-rules")
    written = write_rules(
        rule_dir,
        RuleProfile.parse(
            interval=INTERVAL, window=WINDOW, lookback=LOOKBACK, collect_interval=COLLECT
        ),
    )
    churn = ChurnConfig(mean_lifetime=12.0, min_lifetime=6.0, max_gap=0.0)
    fleet = SimulatedFleet(
        FleetConfig(
            agents=2,
            kernels_per_agent=6,
            churn=churn,
            detention=DETENTION,
            seed=5,
            measure_interval=MEASURE,
        )
    )
    thread = _FleetThread(fleet)
    with (
        thread as running,
        lab.start_prometheus(
            scrape_targets=running.targets,
            scrape_interval=INTERVAL,
            evaluation_interval=INTERVAL,
            rule_files=[p for p in written if p.parent == rule_dir],
        ) as prom,
    ):
        # Prometheus applies new targets on its own schedule: count from the first scrapes.
        _wait_until(lambda: _count(prom, "up == 1") == len(running.targets), "scrapes", prom)
        yield ChurnLab(fleet, prom, _OnFleetLoop(FleetRegistry(fleet), thread.loop), time.time())


TERMINATED_PAGE = """{
  compute_container_list(limit: 100, offset: 0, status: "TERMINATED") {
    total_count
    items { id agent status terminated_at live_stat last_stat }
  }
}"""


@pytest.mark.slow
@pytest.mark.parametrize("stack", STACKS)
async def test_terminated_kernels_answered_from_history_over_http(
    stack: str, churning: ChurnLab
) -> None:
    """Kernels that ended longer ago than the detention plus the lookback have no live data
    any more, yet their live_stat and last_stat are their recorded stats an instant before the
    termination: real rates (the agent's, between its last two measurements), equal to the
    live planner then."""
    gone_after = DETENTION + 4.0 + 2.0  # detention + lookback + a scrape of slack
    metrics = PromstatMetrics()
    profile = RuleProfile.parse(
        interval=INTERVAL, window=WINDOW, lookback=LOOKBACK, collect_interval=COLLECT
    )
    async with PrometheusClient(churning.prom.url, observer=metrics) as client:
        stats = LiveStats(client, profile=profile, metrics=metrics)

        async def old_enough() -> list[Any]:
            page = await churning.registry.list_kernels(limit=100, offset=0, status="TERMINATED")
            now = churning.fleet.clock()
            # measured twice (a rate), scraped and recorded before they ended (as live pages
            # showed them), and ended long enough ago for their live data to be gone
            return [
                r
                for r in page.items
                if max(churning.started, churning.fleet.kernel(r.id).start) + MEASURE + 4.0
                < r.terminated_at
                < now - gone_after
            ]

        rows: list[Any] = []
        for _ in range(240):  # polls the registry, which notes terminations as they happen
            rows = await old_enough()
            if len(rows) >= 3:
                break
            await asyncio.sleep(0.5)
        assert len(rows) >= 3, "the fleet did not terminate kernels"
        runner, url = await _serve(make_app(stats, churning.registry, stack=stack))
        try:
            async with aiohttp.ClientSession() as session:
                before = metrics.snapshot()
                async with session.post(url, json={"query": TERMINATED_PAGE}) as resp:
                    result = await resp.json()
                after = metrics.snapshot()
        finally:
            await runner.cleanup()
        assert "errors" not in result
        items = {i["id"]: i for i in result["data"]["compute_container_list"]["items"]}
        used = [p for p, n in after.plans.items() if n > before.plans.get(p, 0)]
        assert any(p.startswith("final/recorded") for p in used), used
        for row in rows:
            item = items[row.id]
            assert item["status"] == "TERMINATED" and item["terminated_at"]
            assert (await stats.load_kernels([row.id])) == [None]  # the live path: gone
            final = json.loads(item["live_stat"])
            assert json.loads(item["last_stat"]) == {**final, "version": 2}
            _check_payload(final)
            (then,) = await stats.load_kernels([row.id], at=row.terminated_at - 0.001)
            assert final == then
            rate = churning.fleet.expected_rate(row.id, "cpu_util")
            assert float(final["cpu_util"]["current"]) == pytest.approx(rate, rel=0.25)
