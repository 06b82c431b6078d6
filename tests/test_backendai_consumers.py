"""The real 26.9.6 manager consumers on promstat's answers and on the agent's Valkey data.

One dual-publishing fleet (``tests/_support/dual_fleet.py``): redis holds the payloads as the agent
writes them (promstat's publisher writes the same bytes), Prometheus holds the same
measurements. Each consumer is the installed manager's own code, constructed without a
database (stubs only at the database edge), and is run twice: over the real
``ValkeyStatClient`` on that redis, and over :class:`PromstatStatClient` on that Prometheus
(wrapping the same ``ValkeyStatClient`` for what is not live statistics). The results must be
equal wherever the consumer reads a value both sources mean the same way; where they cannot be
(documented value differences: the capacity of unbounded counters, lifetime vs window stats,
the node ``cpu_util`` interval) the test says which fields and checks the rest.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from _support.bai_consumers import kernel_row, monthly_stats, project_stats, usage_groups
from _support.bai_manager import real_valkey_stat, require
from _support.dual_fleet import DualFleet, dual_fleet, fleet_config

from promstat import RefreshConfig
from promstat.service import LiveStats
from promstat.stat_client import PromstatStatClient

#: Every request the tests count comes from their own loads.
NO_REFRESH = RefreshConfig(enabled=False)

pytestmark = [pytest.mark.slow, pytest.mark.backendai]

MISSING = "00000000-0000-0000-0000-00000000dead"
#: Kernel metrics whose legacy capacity is the first value seen (no ceiling): promstat sends
#: the capacity sentinel instead, so their ``capacity``/``pct`` differ by design.
UNBOUNDED = frozenset({"cpu_used", "io_read", "io_write", "net_rx", "net_tx"})
#: Legacy ``cpu_util`` window fields are the agent's lifetime stats of the *cumulative* counter
#: (msec); promstat's are window stats of the rate. Different numbers by design.
LIFETIME_OF_COUNTER = frozenset({("cpu_util", "stats.max"), ("cpu_util", "stats.avg")})


@pytest.fixture(scope="module")
def fleet() -> Iterator[DualFleet]:
    with dual_fleet(fleet_config(4, 3, gpu_agent_ratio=0.5)) as running:
        yield running


@dataclass
class Clients:
    """The same fleet through both stat clients."""

    valkey: Any
    promstat: PromstatStatClient
    fleet: DualFleet


@asynccontextmanager
async def both(fleet: DualFleet) -> AsyncIterator[Clients]:
    async with (
        real_valkey_stat(fleet.redis.url) as valkey,
        LiveStats(
            fleet.prometheus.url, clock=lambda: fleet.at, refresh=NO_REFRESH
        ) as stats,
    ):
        yield Clients(valkey, PromstatStatClient(stats, valkey), fleet)


@pytest.fixture
async def clients(fleet: DualFleet) -> AsyncIterator[Clients]:
    async with both(fleet) as c:
        yield c


def kernel_agreement(
    old: Sequence[Mapping[str, Any] | None], new: Sequence[Mapping[str, Any] | None]
) -> tuple[int, list[tuple[str, str, Any, Any]]]:
    """(agreeing fields, differing fields not explained by a documented difference)."""
    same, unexplained = 0, []
    for o, n in zip(old, new, strict=True):
        assert (o is None) == (n is None)
        if o is None or n is None:
            continue
        assert set(o) == set(n)
        for metric, fields in o.items():
            assert set(fields) == set(n[metric])
            for name, value in fields.items():
                if n[metric][name] == value:
                    same += 1
                elif not (
                    (metric in UNBOUNDED and name in ("capacity", "pct"))
                    or (metric, name) in LIFETIME_OF_COUNTER
                ):
                    unexplained.append((metric, name, value, n[metric][name]))
    return same, unexplained


# -- idle checker ---------------------------------------------------------------------------


def utilization_checker(stat_client: Any) -> Any:
    idle = require("ai.backend.manager.idle")
    # No event producer or live redis: get_current_utilization reads only the stat client.
    args = idle.IdleCheckerArgs(
        event_producer=None, redis_live=None, valkey_stat_client=stat_client
    )
    return idle.UtilizationIdleChecker(args)


async def test_idle_checker_utilization_is_the_same(clients: Clients) -> None:
    fleet = clients.fleet
    checkers = []
    for stat_client in (clients.valkey, clients.promstat):
        checker = utilization_checker(stat_client)
        # The default thresholds: cpu_util, mem, cuda_util, cuda_mem are checked.
        await checker.populate_config({"time-window": "10m", "initial-grace-period": "5m"})
        checkers.append(checker)
    assert checkers[0].resource_names_to_check == {"cpu_util", "mem", "cuda_util", "cuda_mem"}
    ids = fleet.fleet.kernel_ids(fleet.at)
    first_agent = fleet.fleet.kernel_ids(fleet.at, agent_id=fleet.fleet.agent_ids()[0])
    groups = [[k] for k in ids] + [first_agent, [*first_agent, MISSING], [MISSING]]
    compared = 0
    for group in groups:
        slots = {"mem": sum(fleet.fleet.kernel(k).mem_limit for k in group if k != MISSING)}
        results = [await c.get_current_utilization(group, slots) for c in checkers]
        assert results[0] == results[1], group
        compared += results[0] is not None
    assert compared == len(groups) - 1  # only the all-missing group answers None


# -- legacy agent loaders -------------------------------------------------------------------


async def test_agent_loaders_agree(clients: Clients) -> None:
    agent_mod = require("ai.backend.manager.api.gql_legacy.agent")
    Agent, AgentNode = agent_mod.Agent, agent_mod.AgentNode
    agent_ids = [*clients.fleet.fleet.agent_ids(), "i-nowhere"]
    # The GraphQL context: the loaders only read ctx.valkey_stat.
    old_ctx = SimpleNamespace(valkey_stat=clients.valkey)
    new_ctx = SimpleNamespace(valkey_stat=clients.promstat)

    mem = [await Agent.batch_load_mem_cur_bytes(c, agent_ids) for c in (old_ctx, new_ctx)]
    assert mem[0] == mem[1] and mem[0][-1] == 0
    counts = [await Agent.batch_load_container_count(c, agent_ids) for c in (old_ctx, new_ctx)]
    assert counts[0] == counts[1]  # delegated to the same Valkey

    # Node cpu_util: the agent's diff over its collection interval; promstat's is the rate
    # times the interval its capacity reports (interval + up to 19 ms of jitter here), so the
    # pct agrees to that jitter, not to the digit.
    pct = [await Agent.batch_load_cpu_cur_pct(c, agent_ids) for c in (old_ctx, new_ctx)]
    assert pct[0][-1] == pct[1][-1] == 0.0
    for old, new in zip(pct[0][:-1], pct[1][:-1], strict=True):
        assert abs(new - old) <= old * 20 / 15_000 + 0.01

    for loader in (Agent.batch_load_live_stat, AgentNode.batch_load_live_stat):
        old, new = [await loader(c, agent_ids) for c in (old_ctx, new_ctx)]
        assert old[-1] is new[-1] is None
        for o, n in zip(old[:-1], new[:-1], strict=True):
            assert set(o) == set(n) == {"node", "devices"}
            for metric, fields in o["node"].items():
                differs = {k for k, v in fields.items() if n["node"][metric][k] != v}
                assert differs <= ({"current", "pct"} if metric == "cpu_util" else set()), metric
            for metric, devices in o["devices"].items():
                assert set(devices) == set(n["devices"][metric])
                for device, fields in devices.items():
                    differs = {k for k, v in fields.items() if n["devices"][metric][device][k] != v}
                    assert differs <= ({"current", "pct"} if metric == "cpu_util" else set())


# -- autoscaling ----------------------------------------------------------------------------


async def test_autoscaling_kernel_source_agrees(clients: Clients) -> None:
    statistics = require("ai.backend.manager.clients.valkey_client.statistics")
    ids = [*clients.fleet.fleet.kernel_ids(clients.fleet.at), MISSING]
    old, new = [
        await statistics.KernelStatistics.batch_load_by_kernel_impl(c, ids)
        for c in (clients.valkey, clients.promstat)
    ]
    assert old[-1] is new[-1] is None
    same, unexplained = kernel_agreement(old, new)
    assert not unexplained and same > 0
    # The deployment repository's KERNEL source averages `pct` of the rule's metric: the
    # same for every metric with a ceiling.
    for o, n in zip(old[:-1], new[:-1], strict=True):
        for metric in set(o) - UNBOUNDED:
            assert Decimal(str(o[metric].get("pct", 0))) == Decimal(str(n[metric].get("pct", 0)))


# -- usage statistics -----------------------------------------------------------------------


def _nonzero_bins(series: list[dict[str, Any]]) -> int:
    return sum(1 for b in series if b["io_read_bytes"]["value"] or b["io_write_bytes"]["value"])


async def test_usage_statistics_agree(clients: Clients) -> None:
    fleet = clients.fleet
    ids = fleet.fleet.kernel_ids(fleet.at)
    rows = [kernel_row(fleet.fleet, k, ended=fleet.at) for k in ids]
    old, new = [await usage_groups(c, rows) for c in (clients.valkey, clients.promstat)]
    assert old == new
    assert all(u.mem_used > 0 and u.io_read > 0 and u.cpu_used > 0 for _, u in old)

    old_p, new_p = [await project_stats(c, rows) for c in (clients.valkey, clients.promstat)]
    assert old_p == new_p
    assert {c["id"] for g in old_p for c in g["c_infos"]} == set(ids)

    old_m, new_m = [await monthly_stats(c, ids) for c in (clients.valkey, clients.promstat)]
    # Equal bins (the bins' dates come from the wall clock, read twice: compare the values).
    assert [{k: v for k, v in b.items() if k != "date"} for b in old_m] == [
        {k: v for k, v in b.items() if k != "date"} for b in new_m
    ]
    assert _nonzero_bins(old_m) > 0
