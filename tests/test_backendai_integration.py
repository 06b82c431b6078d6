"""promstat.integrations.backendai with the real 26.9.6 manager classes (no database).

* kernel live_stat: the real ``MetricService`` -> ``MetricRepository`` with
  :class:`PromstatPrometheusClient` as its client, then the real ``LegacyLiveStatConverter``
  (the resolvers' last step), on a dual-publishing fleet;
* the new idle checker's ``MetricRepository.query_session_utilization_metrics`` against
  VictoriaMetrics with more sessions than one query can carry, 26.9 as shipped and chunked;
* the lifecycle: one ``LiveStats`` per process, closed with it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from _support.bai_manager import require, upstream_deprecations
from _support.dual_fleet import DualFleet, dual_fleet, fleet_config

from promstat import RefreshConfig
from promstat.integrations.backendai import (
    BackendAI,
    PromstatPrometheusClient,
    chunk_session_utilization,
    convert_live_stats,
)
from promstat.service import LiveStats
from promstat.stat_client import PromstatStatClient
from promstat.testing import lab

#: Every request the tests count comes from their own loads.
NO_REFRESH = RefreshConfig(enabled=False)

pytestmark = [pytest.mark.slow, pytest.mark.backendai]


@pytest.fixture(scope="module")
def fleet() -> Iterator[DualFleet]:
    with dual_fleet(fleet_config(2, 3, gpu_agent_ratio=0.5)) as running:
        yield running


class Recorder:
    """Stands in for the manager's PrometheusClient: records forwarded calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        async def method(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            return name

        return method


def metric_chain(client: Any) -> tuple[Any, Any]:
    """The real repository (database-less) and service over ``client``."""
    repository_mod = require("ai.backend.manager.repositories.metric.repository")
    service_mod = require("ai.backend.manager.services.metric.service")
    repository = repository_mod.MetricRepository.__new__(repository_mod.MetricRepository)
    repository._prometheus_client = client
    repository._default_timewindow = "5m"
    return repository, service_mod.MetricService(metric_repository=repository)


@pytest.fixture
async def stats(fleet: DualFleet) -> AsyncIterator[LiveStats]:
    async with LiveStats(
        fleet.prometheus.url, clock=lambda: fleet.at, refresh=NO_REFRESH
    ) as s:
        yield s


async def test_kernel_live_stat_through_the_real_service_and_converter(
    fleet: DualFleet, stats: LiveStats
) -> None:
    actions = require("ai.backend.manager.services.metric.actions.batch_get_kernel_live_stats")
    converter = require("ai.backend.manager.api.gql_legacy.stat_converter")
    ids = fleet.fleet.kernel_ids(fleet.at)
    expected = dict(zip(ids, await stats.load_kernels(ids), strict=True))
    _, service = metric_chain(PromstatPrometheusClient(stats, Recorder()))
    asked = [uuid.UUID(k) for k in ids[:4]] + [uuid.UUID(int=1)]
    result = await service.batch_get_kernel_live_stats(
        actions.BatchGetKernelLiveStatsAction(kernel_ids=asked)
    )
    # Exactly the ids the processor passed, though the shared cache holds more.
    assert set(result.stats.by_kernel) == set(asked)
    converted = converter.LegacyLiveStatConverter.convert(asked, result.stats)
    assert converted[asked[-1]] is None  # no data -> null, as 26.9
    for kid in asked[:-1]:
        mine, theirs = expected[str(kid)], converted[kid]
        assert isinstance(mine, dict) and theirs is not None
        assert set(theirs) == set(mine)
        for metric, fields in mine.items():
            # The converter's superset shape carries promstat's numbers.
            assert theirs[metric]["current"] == fields["current"]
            for stat in ("stats.max", "stats.avg"):
                if stat in fields:
                    assert theirs[metric][stat] == fields[stat]
            if metric in ("net_rx", "net_tx"):
                assert theirs[metric]["stats.rate"] == fields["current"]
            if metric.startswith("io_") and "stats.rate" in fields:
                # ... except what the converter drops: it never fills io_* stats.rate.
                assert theirs[metric]["stats.rate"] == "0" != fields["stats.rate"]
    # The Valkey shape, io_* stats.rate included: convert_live_stats on promstat's result.
    shaped = convert_live_stats(asked, result.stats)
    assert shaped == {kid: expected.get(str(kid)) for kid in asked}
    # Any other result goes to the real converter.
    metric_types = require("ai.backend.manager.clients.prometheus.metric_types")
    empty = metric_types.KernelLiveStatBatchResult.empty(asked)
    assert convert_live_stats(asked, empty) == {kid: None for kid in asked}


async def test_errors_become_nulls_and_other_methods_are_forwarded() -> None:
    recorder = Recorder()
    async with LiveStats("http://127.0.0.1:9", refresh=NO_REFRESH) as unreachable:
        client = PromstatPrometheusClient(unreachable, recorder)
        repository, _ = metric_chain(client)
        kid = uuid.UUID(int=2)
        result = await repository.query_container_live_stats([kid])
        assert convert_live_stats([kid], result) == {kid: None}
        assert await client.execute_preset("p", time_range=None, time="1") == "execute_preset"
        assert await client.fetch_container_metric("m", "l", "r") == "fetch_container_metric"
        assert await client.fetch_available_container_metric_names() == (
            "fetch_available_container_metric_names"
        )
    assert [c[0] for c in recorder.calls] == [
        "execute_preset",
        "fetch_container_metric",
        "fetch_available_container_metric_names",
    ]


async def test_one_live_stats_per_process_closed_with_it(fleet: DualFleet) -> None:
    async with BackendAI.from_url(
        fleet.prometheus.url, refresh=NO_REFRESH
    ) as promstat:
        assert isinstance(promstat.stat_client(Recorder()), PromstatStatClient)  # type: ignore[arg-type]
        assert promstat.prometheus_client(Recorder()).stats is promstat.stats  # type: ignore[arg-type]
    assert promstat.stats.closed


# -- the new idle checker's session utilization ---------------------------------------------

SESSIONS = 600  # past ~440 one regex of UUIDs exceeds VictoriaMetrics' 16 KiB query limit
METRIC = "promstat_bai_session_util"
T = 1_700_100_000
TEMPLATE = (
    f"max by (${{{{group_by}}}}) (last_over_time({METRIC}{{${{{{labels}}}}}}[${{{{window}}}}]))"
)


@pytest.fixture(scope="module")
def sessions() -> Iterator[tuple[lab.VictoriaMetricsProcess, list[uuid.UUID]]]:
    ids = [uuid.UUID(int=0xABC0000 + i) for i in range(SESSIONS)]
    lines = [f"# TYPE {METRIC} gauge"]
    for i, sid in enumerate(ids):
        for t in (T - 60, T - 30):
            lines.append(f'{METRIC}{{session_id="{sid}",kernel_id="k{i}"}} {i % 100} {t}')
    with lab.start_victoria_metrics() as vm:
        vm.import_openmetrics("\n".join([*lines, "# EOF"]) + "\n")
        yield vm, ids


def utilization_repository(url: str) -> tuple[Any, Any, Any]:
    """The real MetricRepository with its real client; the preset table stubbed."""
    repository_mod = require("ai.backend.manager.repositories.metric.repository")
    prom = require("ai.backend.manager.clients.prometheus.client")
    builders = require("ai.backend.manager.clients.prometheus.fixed_query_builder")
    http = require("ai.backend.common.clients.http_client")
    idle_types = require("ai.backend.manager.data.idle_checker.types")
    with upstream_deprecations():
        pool = http.ClientPool(http.tcp_client_session_factory)
    client = prom.PrometheusClient(
        endpoint=f"{url}/api/v1/",
        client_pool=pool,
        container_metric_query_builder=builders.ContainerMetricQueryBuilder("5m"),
        container_live_stat_query_builder=builders.ContainerLiveStatQueryBuilder("5m"),
    )
    preset_id = uuid.UUID(int=42)
    preset = SimpleNamespace(
        id=preset_id, query_template=TEMPLATE, time_window="5m", filter_labels=[], group_labels=[]
    )

    async def search(searcher: Any) -> Any:
        return SimpleNamespace(items=[preset])

    repository = repository_mod.MetricRepository.__new__(repository_mod.MetricRepository)
    repository._prometheus_client = client
    repository._default_timewindow = "5m"
    repository._prometheus_query_preset_db_source = SimpleNamespace(search=search)
    query = idle_types.SessionUtilizationQuery(
        preset_id=preset_id, filter_labels=(), group_labels=("session_id",)
    )
    return repository, pool, query


async def test_session_utilization_in_chunks_answers_every_session(
    sessions: tuple[lab.VictoriaMetricsProcess, list[uuid.UUID]],
) -> None:
    vm, ids = sessions
    at = dt.datetime.fromtimestamp(T, dt.UTC)
    repository, pool, query = utilization_repository(vm.url)
    try:
        # 26.9 as shipped: one regex of 600 ids, rejected; the idle check gets nothing.
        shipped = await repository.query_session_utilization_metrics({query: ids}, at)
        assert shipped == {query: {}}
        # Its answers for small batches are the oracle.
        expected: dict[Any, Decimal] = {}
        for i in range(0, SESSIONS, 100):
            part = await repository.query_session_utilization_metrics({query: ids[i : i + 100]}, at)
            expected.update(part[query])
        assert len(expected) == SESSIONS
        chunk_session_utilization(repository)
        chunked = await repository.query_session_utilization_metrics({query: ids}, at)
        assert chunked == {query: expected}
        assert expected[ids[7]] == Decimal(7)
    finally:
        await pool.close()


# -- behind the processor's permission check ------------------------------------------------


class AskedClient(PromstatPrometheusClient):
    """Records the ids each live-stat call was asked for."""

    def __init__(self, stats: LiveStats) -> None:
        super().__init__(stats, Recorder())  # type: ignore[arg-type]
        self.asked: list[list[Any]] = []

    async def fetch_container_live_stats(self, kernel_ids: Any) -> Any:
        self.asked.append(list(kernel_ids))
        return await super().fetch_container_live_stats(kernel_ids)


class Denied(Exception):
    pass


def processor(service: Any, owners: dict[Any, Any], *, deny: bool) -> Any:
    """26.9's ``atomic_bulk_field`` processor for the action: owner lookup, then validators.

    The owner lookup (a database read of each kernel's session) and the permission
    validator are the stubs; the processor itself is the real ``BulkFieldActionProcessor``.
    """
    bulk = require("ai.backend.manager.actions.v2.field.bulk_processor")
    validator = require("ai.backend.manager.actions.v2.bulk.validator.base")

    class Lookup:
        async def run(self, action: Any) -> Any:
            wanted = set(action.kernel_ids)
            return SimpleNamespace(owners={k: v for k, v in owners.items() if k in wanted})

    class Permission(validator.AtomicBulkActionValidator):  # type: ignore[misc]
        async def validate(self, meta: Any) -> None:
            if deny:
                raise Denied(f"not allowed to read {meta.entity_ids}")

    return bulk.BulkFieldActionProcessor(
        service.batch_get_kernel_live_stats,
        Lookup(),
        bulk.AtomicFieldResultJudge(),
        validators=[Permission()],
    )


async def test_promstat_answers_only_what_the_processor_let_through(
    fleet: DualFleet, stats: LiveStats
) -> None:
    actions = require("ai.backend.manager.services.metric.actions.batch_get_kernel_live_stats")
    field_errors = require("ai.backend.manager.errors.base.field")
    kernel_entity = require("ai.backend.common.data.entity.kernel")
    # as the resolver builds them: KernelID (a UUID subclass naming a field row)
    ids = [kernel_entity.KernelID(uuid.UUID(k)) for k in fleet.fleet.kernel_ids(fleet.at)]
    await stats.load_kernels([str(k) for k in ids])  # another caller warmed the shared cache
    client = AskedClient(stats)
    _, service = metric_chain(client)
    session = uuid.UUID(int=99)
    action = actions.BatchGetKernelLiveStatsAction(kernel_ids=ids[:2])

    # No kernel row: FieldNotFoundError from the processor, promstat never asked.
    with pytest.raises(field_errors.FieldNotFoundError):
        await processor(service, {}, deny=False).run(action)
    # Denied: the validator's error, promstat never asked, though its cache holds the answer.
    with pytest.raises(Denied):
        await processor(service, {k: session for k in ids}, deny=True).run(action)
    assert client.asked == []
    # Allowed: asked for exactly the action's ids, answered for exactly those.
    result = await processor(service, {k: session for k in ids}, deny=False).run(action)
    assert client.asked == [ids[:2]]
    assert set(result.stats.by_kernel) == set(ids[:2])
    assert set(convert_live_stats(ids[:2], result.stats)) == set(ids[:2])
