"""GraphQL integrations: graphene + aiodataloader and strawberry over LiveStats.

Server tests read a real Prometheus holding a backfilled simulated fleet and pin every page to
one evaluation time (the request context's ``at``), so expected values come from the fleet
model. Unit tests cover registries, loader managers and the HTTP app with in-memory sources.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from promstat.apps.registry import AgentRow, FleetRegistry, KernelRow, StaticRegistry, paginate
from promstat.apps.schema import agent_cpu_pct, agent_mem_bytes, json_string
from promstat.apps.serve import EXAMPLE_QUERY, make_app, make_executor
from promstat.client import PrometheusClient
from promstat.integrations import LoaderManager
from promstat.integrations.graphene import make_context as graphene_context
from promstat.integrations.strawberry import make_context as strawberry_context
from promstat.planner import PlannerConfig
from promstat.selfmetrics import PromstatMetrics
from promstat.service import LiveStats
from promstat.testing import lab
from promstat.testing.sim import ChurnConfig, FleetConfig, SimulatedFleet, fleet_openmetrics

STACKS = ("graphene", "strawberry")

#: Evaluation time of the backfilled data (its last sample).
T0 = 1_700_000_000.0
FLEET = FleetConfig(
    agents=3, kernels_per_agent=50, gpu_agent_ratio=0.34, churn=None, epoch=T0 - 3600
)

KERNEL_PAGE = """
query ($limit: Int!, $offset: Int!) {
  compute_container_list(limit: $limit, offset: $offset) {
    total_count
    items { id agent status live_stat last_stat }
  }
}
"""

AGENT_PAGE = """
{ agent_list(limit: 10, offset: 0) {
    total_count
    items { id status live_stat cpu_cur_pct mem_cur_bytes }
} }
"""


Payload = dict[str, Any]


class Spy:
    """A StatsSource that records every batch call before delegating."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.kernel_batches: list[list[str]] = []
        self.agent_batches: list[list[str]] = []
        self.final_batches: list[list[tuple[str, float | None]]] = []

    async def load_kernels(
        self, kernel_ids: Sequence[str], *, at: float | None = None
    ) -> list[Payload | BaseException | None]:
        self.kernel_batches.append(list(kernel_ids))
        result: list[Payload | BaseException | None] = await self.inner.load_kernels(
            kernel_ids, at=at
        )
        return result

    async def load_agents(
        self, agent_ids: Sequence[str], *, at: float | None = None
    ) -> list[Payload | BaseException | None]:
        self.agent_batches.append(list(agent_ids))
        result: list[Payload | BaseException | None] = await self.inner.load_agents(
            agent_ids, at=at
        )
        return result

    async def load_kernel_stats(
        self, pairs: Sequence[tuple[str, float | None]], *, at: float | None = None
    ) -> list[Payload | BaseException | None]:
        self.final_batches.append(list(pairs))
        result: list[Payload | BaseException | None] = await self.inner.load_kernel_stats(
            pairs, at=at
        )
        return result


class MemorySource:
    """An in-memory StatsSource: fixed payloads, optional per-key errors."""

    def __init__(self, errors: Sequence[str] = ()) -> None:
        self.errors = set(errors)
        self.calls = 0

    async def load_kernels(
        self, kernel_ids: Sequence[str], *, at: float | None = None
    ) -> list[Payload | BaseException | None]:
        self.calls += 1
        out: list[Payload | BaseException | None] = []
        for k in kernel_ids:
            if k in self.errors:
                out.append(RuntimeError(f"chunk of {k} failed"))
            elif k.startswith("unknown"):
                out.append(None)
            else:
                out.append(
                    {
                        "mem": {
                            "current": "1024",
                            "capacity": "4096",
                            "pct": "25",
                            "unit_hint": "bytes",
                        }
                    }
                )
        return out

    async def load_agents(
        self, agent_ids: Sequence[str], *, at: float | None = None
    ) -> list[Payload | BaseException | None]:
        self.calls += 1
        return [
            {"node": {"cpu_util": {"pct": "12.5"}, "mem": {"current": "2048"}}, "devices": {}}
            for _ in agent_ids
        ]

    async def load_kernel_stats(
        self, pairs: Sequence[tuple[str, float | None]], *, at: float | None = None
    ) -> list[Payload | BaseException | None]:
        """Final stats name the time they were taken at (``mem.current``)."""
        self.calls += 1
        return [
            {"mem": {"current": str(int(t)), "unit_hint": "bytes"}} if t is not None else None
            for _, t in pairs
        ]


@dataclass
class Backfilled:
    prom: lab.PrometheusProcess
    model: SimulatedFleet
    kernels: list[str]
    agents: list[str]


@pytest.fixture(scope="module")
def backfilled() -> Iterator[Backfilled]:
    """A Prometheus holding 10 minutes of a 3-agent x 50-kernel fleet ending at T0."""
    text = fleet_openmetrics(FLEET, T0 - 600, T0, 15)
    with lab.start_prometheus(openmetrics=text) as prom:
        model = SimulatedFleet(FLEET, clock=lambda: T0)
        yield Backfilled(prom, model, model.kernel_ids(T0), model.agent_ids())


@pytest.fixture
async def live_stats(backfilled: Backfilled) -> AsyncIterator[LiveStats]:
    """A LiveStats over the backfilled Prometheus whose client reports to its metrics."""
    metrics = PromstatMetrics()
    async with PrometheusClient(backfilled.prom.url, observer=metrics) as client:
        yield LiveStats(client, planner=PlannerConfig(), metrics=metrics)


def _rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = data["compute_container_list"]["items"]
    return items


# -- real Prometheus (backfilled, pinned time) --------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("stack", STACKS)
async def test_live_stat_is_a_json_string_or_null(
    stack: str, backfilled: Backfilled, live_stats: LiveStats
) -> None:
    """live_stat and last_stat are the same JSON string per kernel, and null for an unknown id."""
    registry = StaticRegistry([*(KernelRow(k) for k in backfilled.kernels[:20]), "no-such-kernel"])
    executor = make_executor(live_stats, registry, stack=stack)
    result = await executor.execute(KERNEL_PAGE, {"limit": 50, "offset": 0}, at=T0)
    assert "errors" not in result
    rows = _rows(result["data"])
    assert len(rows) == 21
    for row in rows[:20]:
        assert isinstance(row["live_stat"], str)
        assert row["last_stat"] == row["live_stat"]
        stat = json.loads(row["live_stat"])
        assert {"cpu_util", "cpu_used", "mem", "io_read", "net_rx"} <= stat.keys()
        current, capacity = backfilled.model.sample(row["id"], "mem", T0)
        assert int(stat["mem"]["current"]) == int(current)
        assert capacity is not None and int(stat["mem"]["capacity"]) == int(capacity)
    assert rows[20]["id"] == "no-such-kernel"
    assert rows[20]["live_stat"] is None and rows[20]["last_stat"] is None


@pytest.mark.slow
@pytest.mark.parametrize("stack", STACKS)
async def test_one_batch_per_128_kernels_and_bounded_queries(
    stack: str, backfilled: Backfilled, live_stats: LiveStats
) -> None:
    """A 150-kernel page is two batches (128 + 22) and a query count set by the plan, not N."""
    spy = Spy(live_stats)
    executor = make_executor(spy, StaticRegistry(backfilled.kernels), stack=stack)
    await live_stats.learn_profile()  # the rules read, once at startup: not the page's cost
    before = live_stats.metrics.snapshot().queries
    result = await executor.execute(KERNEL_PAGE, {"limit": 1000, "offset": 0}, at=T0)
    queries = live_stats.metrics.snapshot().queries - before
    assert "errors" not in result
    assert result["data"]["compute_container_list"]["total_count"] == 150
    assert sorted(len(b) for b in spy.kernel_batches) == [22, 128]
    assert all(r["live_stat"] is not None for r in _rows(result["data"]))
    # Per batch: the raw plan's queries for its ids (each shape's chunks); plus the detection.
    planned = sum(
        len(live_stats.planner.queries("kernel", batch, recorded=False))
        for batch in spy.kernel_batches
    )
    assert planned < 150
    assert queries <= planned + 2


@pytest.mark.slow
@pytest.mark.parametrize("stack", STACKS)
async def test_agent_fields_share_one_loader(
    stack: str, backfilled: Backfilled, live_stats: LiveStats
) -> None:
    """live_stat, cpu_cur_pct and mem_cur_bytes of a page of agents cost one batch."""
    spy = Spy(live_stats)
    registry = StaticRegistry(agents=backfilled.agents)
    executor = make_executor(spy, registry, stack=stack)
    result = await executor.execute(AGENT_PAGE, at=T0)
    assert "errors" not in result
    assert spy.agent_batches == [backfilled.agents]
    items = result["data"]["agent_list"]["items"]
    assert len(items) == 3
    for item in items:
        stat = json.loads(item["live_stat"])
        assert item["cpu_cur_pct"] == float(stat["node"]["cpu_util"]["pct"])
        assert item["mem_cur_bytes"] == float(stat["node"]["mem"]["current"])
        assert item["mem_cur_bytes"] > 0
        assert len(stat["devices"]["cpu_util"]) == backfilled.model.agent(item["id"]).cores


@pytest.mark.slow
async def test_both_stacks_return_identical_pages(
    backfilled: Backfilled, live_stats: LiveStats
) -> None:
    """graphene and strawberry serialise the same page byte for byte."""
    registry = StaticRegistry(backfilled.kernels[:30])
    pages = [
        await make_executor(live_stats, registry, stack=stack).execute(
            KERNEL_PAGE, {"limit": 30, "offset": 0}, at=T0
        )
        for stack in STACKS
    ]
    assert json.dumps(pages[0], sort_keys=True) == json.dumps(pages[1], sort_keys=True)


@pytest.mark.slow
@pytest.mark.parametrize("stack", STACKS)
async def test_terminated_kernels_show_their_final_stats_from_history(
    stack: str, backfilled: Backfilled, live_stats: LiveStats
) -> None:
    """A terminated row's live_stat and last_stat are its stats an instant before
    terminated_at (long after its series ended), last_stat with legacy's "version": 2; a day
    later live_stat is null (legacy's Valkey TTL) and last_stat remains."""
    ended = {k: T0 - 100.0 - 7 * i for i, k in enumerate(backfilled.kernels[:12])}
    rows = [KernelRow(k, None, "TERMINATED", t) for k, t in ended.items()]
    spy = Spy(live_stats)
    executor = make_executor(spy, StaticRegistry([*rows, backfilled.kernels[20]]), stack=stack)
    query = (
        "{ compute_container_list(limit: 50, offset: 0) "
        "{ items { id status terminated_at live_stat last_stat } } }"
    )
    result = await executor.execute(query, at=T0 + 3600)  # past the data: live series gone
    assert "errors" not in result
    items = _rows(result["data"])
    assert len(spy.final_batches) == 1 and len(spy.final_batches[0]) == 12
    for item in items[:12]:
        end = ended[item["id"]]
        (expected,) = await live_stats.load_kernels([item["id"]], at=end - 0.001)
        assert expected is not None
        assert json.loads(item["live_stat"]) == expected
        assert json.loads(item["last_stat"]) == {**expected, "version": 2}
        assert item["terminated_at"].startswith("2023-11-14T")
    assert items[12]["live_stat"] is None  # a live row at T0 + 3600: no data any more
    later = await executor.execute(query, at=T0 + 86400 + 3600)
    late = _rows(later["data"])
    assert all(i["live_stat"] is None for i in late[:12])
    assert [json.loads(i["last_stat"]) for i in late[:12]] == [
        json.loads(i["last_stat"]) for i in items[:12]
    ]


# -- in-memory sources ---------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
async def test_terminated_rows_share_one_final_batch(stack: str) -> None:
    """Terminated rows go through one load_kernel_stats batch keyed by (id, terminated_at);
    live_stat and last_stat share it; live rows keep the kernel loader."""
    source = Spy(MemorySource())
    registry = StaticRegistry(
        [
            KernelRow("k1", "a1"),
            KernelRow("k2", "a1", "TERMINATED", 1000.0),
            KernelRow("k3", "a2", "TERMINATED", 2000.0),
        ]
    )
    executor = make_executor(source, registry, stack=stack)
    result = await executor.execute(KERNEL_PAGE, {"limit": 10, "offset": 0}, at=5000.0)
    assert "errors" not in result
    items = _rows(result["data"])
    assert source.final_batches == [[("k2", 1000.0), ("k3", 2000.0)]]
    assert source.kernel_batches == [["k1"]]
    assert json.loads(items[1]["live_stat"])["mem"]["current"] == "1000"
    assert json.loads(items[2]["last_stat"]) == {
        "mem": {"current": "2000", "unit_hint": "bytes"},
        "version": 2,
    }
    assert items[0]["last_stat"] == items[0]["live_stat"]


async def test_fleet_registry_lists_kernels_it_saw_end_as_terminated() -> None:
    """Kernels live at one snapshot and gone at a later one are TERMINATED rows with the
    fleet's end time, newest first, after the live rows; only the newest are kept."""
    now = [T0]
    churn = ChurnConfig(mean_lifetime=60.0, min_lifetime=10.0, max_gap=0.0)
    fleet = SimulatedFleet(
        FleetConfig(agents=2, kernels_per_agent=5, churn=churn, epoch=T0), clock=lambda: now[0]
    )
    registry = FleetRegistry(fleet, ttl=0, keep_terminated=3)
    first = await registry.list_kernels(limit=100, offset=0)
    assert first.total_count == 10 and {r.status for r in first.items} == {"RUNNING"}
    ending = sorted((fleet.kernel(r.id).end or 0.0, r.id) for r in first.items)
    now[0] = ending[3][0] + 0.5  # the first four have ended
    page = await registry.list_kernels(limit=100, offset=0)
    ended = [r for r in page.items if r.status == "TERMINATED"]
    assert [(r.terminated_at, r.id) for r in ended] == ending[3:0:-1]  # newest 3, newest first
    assert (
        page.items[: page.total_count - 3]
        == (await registry.list_kernels(limit=100, offset=0, status="RUNNING")).items
    )
    assert len((await registry.list_kernels(limit=10, offset=0, status="terminated")).items) == 3


@pytest.mark.parametrize("stack", STACKS)
async def test_loaders_are_per_request(stack: str) -> None:
    """Each request gets fresh loaders: two requests make two batch calls."""
    source = MemorySource()
    executor = make_executor(source, StaticRegistry(["a", "b"]), stack=stack)
    for _ in range(2):
        result = await executor.execute(KERNEL_PAGE, {"limit": 10, "offset": 0})
        assert "errors" not in result
    assert source.calls == 2


@pytest.mark.parametrize("stack", STACKS)
async def test_a_failed_key_is_a_field_error_not_a_failed_page(stack: str) -> None:
    """An exception for one id nulls that field with a GraphQL error; other rows keep data."""
    source = MemorySource(errors=["bad"])
    executor = make_executor(source, StaticRegistry(["ok", "bad", "unknown-1"]), stack=stack)
    result = await executor.execute(
        "{ compute_container_list(limit: 10, offset: 0) { items { id live_stat } } }"
    )
    rows = _rows(result["data"])
    assert json.loads(rows[0]["live_stat"])["mem"]["current"] == "1024"
    assert rows[1]["live_stat"] is None
    assert rows[2]["live_stat"] is None
    assert [e["path"] for e in result["errors"]] == [
        ["compute_container_list", "items", 1, "live_stat"]
    ]
    assert "chunk of bad failed" in result["errors"][0]["message"]


@pytest.mark.parametrize("stack", STACKS)
async def test_status_filter_and_pagination(stack: str) -> None:
    """status filters rows (case-insensitively) and total_count counts the filtered list."""
    registry = StaticRegistry(
        [KernelRow("k1", "a1"), KernelRow("k2", "a1", "TERMINATED"), KernelRow("k3", "a2")]
    )
    executor = make_executor(MemorySource(), registry, stack=stack)
    result = await executor.execute(
        '{ compute_container_list(limit: 1, offset: 1, status: "running") '
        "{ total_count items { id agent status } } }"
    )
    page = result["data"]["compute_container_list"]
    assert page == {"total_count": 2, "items": [{"id": "k3", "agent": "a2", "status": "RUNNING"}]}


@pytest.mark.parametrize("stack", STACKS)
async def test_negative_offset_is_a_graphql_error(stack: str) -> None:
    """An invalid page request surfaces as a GraphQL error, not a crash."""
    executor = make_executor(MemorySource(), StaticRegistry(["k"]), stack=stack)
    result = await executor.execute(
        "{ compute_container_list(limit: 1, offset: -1) { total_count } }"
    )
    assert "offset must be >= 0" in result["errors"][0]["message"]


@pytest.mark.parametrize("factory", [graphene_context, strawberry_context])
def test_context_built_outside_a_loop_works_in_a_new_loop(factory: Any) -> None:
    """Loaders are created lazily in the running loop, so a context made outside one is safe."""
    source = MemorySource()
    ctx = factory(source)

    async def use() -> Any:
        return await ctx.kernel_loader().load("k")

    assert asyncio.run(use())["mem"]["capacity"] == "4096"
    assert len(ctx.loaders) == 1


def test_loader_manager_keys_by_function_and_kwargs() -> None:
    """One loader per (function, kwargs), as Backend.AI's DataLoaderManager."""
    source = MemorySource()
    built: list[Any] = []

    def factory(fn: Any) -> object:
        built.append(fn)
        return object()

    manager: LoaderManager[object] = LoaderManager(factory)
    a = manager.get_loader_by_func(source.load_kernels)
    assert manager.get_loader_by_func(source.load_kernels) is a
    assert manager.get_loader_by_func(source.load_kernels, at=1.0) is not a
    assert manager.get_loader_by_func(source.load_agents) is not a
    assert len(manager) == len(built) == 3


def test_helpers() -> None:
    """json_string is Graphene's json.dumps form; agent scalars default to 0 without data."""
    assert json_string(None) is None
    assert json_string({"mem": {"current": "1"}}) == '{"mem": {"current": "1"}}'
    assert agent_cpu_pct(None) == 0.0 and agent_mem_bytes({"node": {}}) == 0.0
    assert agent_cpu_pct({"node": {"cpu_util": {"pct": "3.5"}}}) == 3.5
    page = paginate(["a", "b", "c"], limit=2, offset=1)
    assert page.items == ("b", "c") and page.total_count == 3
    with pytest.raises(ValueError, match="limit"):
        paginate([], limit=-1, offset=0)
    registry = StaticRegistry([KernelRow("k1", "a2"), KernelRow("k2", "a1"), KernelRow("k3", "a2")])
    assert registry.agents == [AgentRow("a2"), AgentRow("a1")]


# -- the HTTP app ----------------------------------------------------------------------------------


@pytest.fixture
async def app_client(aiohttp_client: Any) -> TestClient[Any, Any]:
    """The GraphQL app over an in-memory source, behind aiohttp's test client."""
    client: TestClient[Any, Any] = await aiohttp_client(
        make_app(MemorySource(), StaticRegistry(["k1", "k2"]), metrics=PromstatMetrics())
    )
    return client


async def test_http_post_get_and_index(app_client: TestClient[Any, Any]) -> None:
    """POST and GET /graphql answer the GraphQL response; GET / shows the example query."""
    body = {"query": EXAMPLE_QUERY, "variables": {"limit": 5, "offset": 0}}
    resp = await app_client.post("/graphql", json=body)
    assert resp.status == 200
    data = await resp.json()
    items = data["data"]["compute_container_list"]["items"]
    assert [i["id"] for i in items] == ["k1", "k2"]
    assert isinstance(items[0]["live_stat"], str)
    resp = await app_client.get(
        "/graphql",
        params={"query": EXAMPLE_QUERY, "variables": json.dumps({"limit": 1, "offset": 1})},
    )
    assert (await resp.json())["data"]["compute_container_list"]["items"][0]["id"] == "k2"
    index = await (await app_client.get("/")).text()
    assert "compute_container_list" in index and "curl" in index


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"not json", "must be JSON"),
        (b"[1]", "JSON object"),
        (b"{}", "missing 'query'"),
        (b'{"query": "{x}", "variables": [1]}', "'variables'"),
    ],
)
async def test_http_bad_requests(
    app_client: TestClient[Any, Any], payload: bytes, message: str
) -> None:
    """Malformed bodies get 400 with a GraphQL-shaped error."""
    resp = await app_client.post(
        "/graphql", data=payload, headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400
    assert message in (await resp.json())["errors"][0]["message"]


async def test_http_metrics(app_client: TestClient[Any, Any]) -> None:
    """GET /metrics exposes promstat's counters in the Prometheus text format."""
    resp = await app_client.get("/metrics")
    assert resp.status == 200
    text = await resp.text()
    assert "promstat_queries_total" in text and "promstat_cache_hits_total" in text


def test_unknown_stack_is_a_config_error() -> None:
    """make_executor names the stacks it knows."""
    from promstat.errors import ConfigError

    with pytest.raises(ConfigError, match="graphene, strawberry"):
        make_executor(MemorySource(), StaticRegistry(), stack="ariadne")
