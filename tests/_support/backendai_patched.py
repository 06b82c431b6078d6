"""Run in a child interpreter whose ``ai.backend.manager`` is the patched 26.9.6 copy.

``python -m _support.backendai_patched PROM_URL VM_URL AT OUT`` drives the patched manager's
own code (resolver, service, repository, dependency provider) over real servers and writes
what it saw as JSON to ``OUT``; ``tests/test_backendai_integration.py`` asserts on it. A child
because the parent interpreter already imported the unpatched manager.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

SESSIONS = 1000  # > ~440: one regex of them all exceeds VictoriaMetrics' 16 KiB query limit


def session_ids() -> list[str]:
    """The sessions the utilization scenario holds (stable, so parent and child agree)."""
    base = 0x5E55_0000_0000_4000_8000_0000_0000_0000
    return [str(uuid.UUID(int=base + i)) for i in range(SESSIONS)]


def session_openmetrics(at: float) -> str:
    """OpenMetrics of one cpu_util gauge per session, a sample every 15 s up to ``at``."""
    lines = ["# TYPE backendai_container_utilization gauge"]
    for i, sid in enumerate(session_ids()):
        labels = (
            f'container_metric_name="cpu_util",kernel_id="{sid}",session_id="{sid}",'
            f'value_type="current"'
        )
        for step in range(5):
            stamp = at - 60 + step * 15
            lines.append(f"backendai_container_utilization{{{labels}}} {i % 7} {stamp}")
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


async def kernel_live_stat(prom_url: str, at: float, allowed: list[str], asked: list[str]) -> Any:
    """The patched legacy resolver over 26.9's service and repository, promstat below them."""
    from ai.backend.common.clients.http_client import ClientPool, tcp_client_session_factory
    from ai.backend.manager.api.gql_legacy import kernel as gql_kernel
    from ai.backend.manager.api.gql_legacy.stat_converter import LegacyLiveStatConverter
    from ai.backend.manager.clients.prometheus.client import PrometheusClient
    from ai.backend.manager.clients.prometheus.fixed_query_builder import (
        ContainerLiveStatQueryBuilder,
        ContainerMetricQueryBuilder,
    )
    from ai.backend.manager.repositories.metric.repository import MetricRepository
    from ai.backend.manager.services.metric.actions.batch_get_kernel_live_stats import (
        BatchGetKernelLiveStatsAction,
    )
    from ai.backend.manager.services.metric.service import MetricService

    from promstat import LiveStats
    from promstat.integrations import backendai
    from promstat.planner import PlannerConfig

    pool = ClientPool(tcp_client_session_factory)
    client = PrometheusClient(
        f"{prom_url}/api/v1/",
        pool,
        container_metric_query_builder=ContainerMetricQueryBuilder("5m"),
        container_live_stat_query_builder=ContainerLiveStatQueryBuilder("5m"),
    )
    live = LiveStats(prom_url, planner=PlannerConfig(use_recorded=False), clock=lambda: at)
    out: dict[str, Any] = {"module": gql_kernel.__file__}
    try:
        async with backendai.manager_promstat(client, live_stats=live) as wrapped:
            out["current_started"] = backendai.current() is not None
            repository = MetricRepository(
                db=None,  # type: ignore[arg-type]  # the live-stat path never reads it
                prometheus_client=wrapped,  # type: ignore[arg-type]
                default_timewindow="5m",
                v2_ops_provider=None,  # type: ignore[arg-type]
            )
            service = MetricService(repository)
            passed: list[list[str]] = []

            class Processor:
                """Stands in for the permission-checked processor: passes ``allowed`` only."""

                async def run(self, action: Any) -> Any:
                    ids = [k for k in action.kernel_ids if str(k) in allowed]
                    passed.append([str(k) for k in ids])
                    return await service.batch_get_kernel_live_stats(
                        BatchGetKernelLiveStatsAction(kernel_ids=ids)
                    )

            ctx = SimpleNamespace(
                processors=SimpleNamespace(
                    metric=SimpleNamespace(batch_get_kernel_live_stats=Processor())
                )
            )
            # Every asked id is in promstat's cache, permitted or not.
            await live.load_kernels(asked)
            kernel_ids = [uuid.UUID(k) for k in asked]
            answers = await gql_kernel._batch_load_kernel_live_stat(ctx, kernel_ids)  # type: ignore[arg-type]
            out["resolver"] = [None if a is None else dict(a) for a in answers]
            out["passed"] = passed
            result = await repository.query_container_live_stats([uuid.UUID(k) for k in allowed])
            converted = LegacyLiveStatConverter.convert([uuid.UUID(k) for k in allowed], result)
            out["converter"] = {str(k): v for k, v in converted.items()}
            # The stat client: promstat's live stats, Valkey's everything else.
            valkey = _FakeValkey()
            stat = backendai.ManagerStatClient(valkey)
            out["stat_batch"] = await stat.get_session_statistics_batch(allowed)
            out["stat_other"] = await stat.get_keypair_query_count("AKIA")
        out["current_after"] = backendai.current() is not None
        after = backendai.ManagerStatClient(_FakeValkey())
        out["stat_batch_after"] = await after.get_session_statistics_batch(allowed)
    finally:
        await live.aclose()
        await pool.close()
    return out


class _FakeValkey:
    """The manager's ValkeyStatClient as far as the wrapper can tell: it answers "valkey"."""

    async def get_session_statistics_batch(self, ids: list[str]) -> list[str]:
        return ["valkey" for _ in ids]

    async def get_keypair_query_count(self, access_key: str) -> str:
        return f"valkey:{access_key}"

    async def close(self) -> None:
        return None


async def lifecycle(prom_url: str) -> Any:
    """The patched ``PrometheusClientDependency`` starts promstat with the manager and closes it."""
    from ai.backend.manager.dependencies.system.prometheus_client import (
        PrometheusClientDependency,
    )

    from promstat.integrations import backendai

    host, port = prom_url.removeprefix("http://").split(":")
    address = SimpleNamespace(to_legacy=lambda: f"{host}:{port}")
    config = SimpleNamespace(metric=SimpleNamespace(address=address, timewindow="5m"))
    out: dict[str, Any] = {}
    async with PrometheusClientDependency().provide(config) as client:  # type: ignore[arg-type]
        started = backendai.current()
        out["wrapped"] = type(client).__name__
        out["started"] = started is not None
        out["url"] = None if started is None else str(started.stats.planner.client.url)
        live = None if started is None else started.stats
    out["stopped"] = backendai.current() is None
    out["closed"] = live is not None and live.closed
    return out


async def utilization(vm_url: str, at: float) -> Any:
    """26.9's session utilization against VictoriaMetrics, as shipped and patched (chunked)."""
    from ai.backend.common.clients.http_client import ClientPool, tcp_client_session_factory
    from ai.backend.common.data.entity.prometheus_query_preset import PrometheusQueryPresetID
    from ai.backend.manager.clients.prometheus.client import PrometheusClient
    from ai.backend.manager.clients.prometheus.fixed_query_builder import (
        ContainerLiveStatQueryBuilder,
        ContainerMetricQueryBuilder,
    )
    from ai.backend.manager.data.idle_checker.types import SessionUtilizationQuery
    from ai.backend.manager.repositories.metric.repository import MetricRepository

    from promstat.integrations.backendai import chunked_session_utilization

    pool = ClientPool(tcp_client_session_factory)
    client = PrometheusClient(
        f"{vm_url}/api/v1/",
        pool,
        container_metric_query_builder=ContainerMetricQueryBuilder("5m"),
        container_live_stat_query_builder=ContainerLiveStatQueryBuilder("5m"),
    )
    preset_id = PrometheusQueryPresetID(uuid.UUID(int=7))
    preset = SimpleNamespace(
        id=preset_id,
        query_template=(
            "max by (${{group_by}}) (backendai_container_utilization{"
            'container_metric_name="cpu_util",value_type="current",${{labels}}})'
        ),
        time_window=None,
        filter_labels=[],
        group_labels=["session_id"],
    )
    query = SessionUtilizationQuery(
        preset_id=preset_id, filter_labels=(), group_labels=("session_id",)
    )
    repository = MetricRepository(
        db=None,  # type: ignore[arg-type]
        prometheus_client=client,
        default_timewindow="5m",
        v2_ops_provider=None,  # type: ignore[arg-type]
    )

    class Presets:
        """The preset table, without a database."""

        async def search(self, searcher: Any) -> Any:
            return SimpleNamespace(items=[preset])

    repository._prometheus_query_preset_db_source = Presets()  # type: ignore[assignment]
    sids = [uuid.UUID(s) for s in session_ids()]
    when = datetime.fromtimestamp(at, UTC)
    try:
        unchunked = await repository._query_session_utilization_metrics_for_preset(
            preset, query, sids, when  # type: ignore[arg-type]
        )
        chunked = await chunked_session_utilization(
            repository._query_session_utilization_metrics_for_preset, preset, query, sids, when
        )
        patched = await repository.query_session_utilization_metrics({query: sids}, when)
    finally:
        await pool.close()
    return {
        "unchunked": len(unchunked),
        "chunked": len(chunked),
        "chunked_values": sorted({str(v) for v in chunked.values()}),
        "patched": len(patched.get(query, {})),
    }


async def main(prom_url: str, vm_url: str, at: float, allowed: list[str], asked: list[str]) -> Any:
    """Every scenario, one after the other."""
    return {
        "kernel": await kernel_live_stat(prom_url, at, allowed, asked),
        "lifecycle": await lifecycle(prom_url),
        "utilization": await utilization(vm_url, at),
    }


if __name__ == "__main__":
    prom, vm, at_text, out_path, allowed_text, asked_text = sys.argv[1:7]
    result = asyncio.run(
        main(prom, vm, float(at_text), allowed_text.split(","), asked_text.split(","))
    )
    Path(out_path).write_text(json.dumps(result, default=str))
