"""The usage-statistics consumers of the real 26.9.6 manager, with stubs at the database edge.

``models.resource_usage.parse_resource_usage_groups``, ``ProjectDBSource.
get_container_stats_for_period`` and ``UserRepository.get_admin_time_binned_monthly_stats``
read terminated and live kernels' last stats through ``get_user_kernel_statistics_batch``
(26.9 persists no ``kernels.last_stat``). Here they run on kernel rows built from a simulated
fleet; only the database is stubbed.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from _support.bai_manager import require
from promstat.testing.sim import SimulatedFleet


def kernel_row(fleet: SimulatedFleet, kernel_id: str, *, ended: float) -> Any:
    """A KernelRow as ``_parse_query`` loads it, with its session, project and user.

    ``ended``: its ``terminated_at`` (Unix seconds).
    """
    kernel_mod = require("ai.backend.manager.models.kernel")
    sim = fleet.kernel(kernel_id)
    created = dt.datetime.fromtimestamp(sim.start, dt.UTC)
    terminated = dt.datetime.fromtimestamp(ended, dt.UTC)
    project = SimpleNamespace(id=uuid.UUID(int=7), name="project")
    user = SimpleNamespace(email="u@example.com", full_name="U", username="u")
    session = SimpleNamespace(
        group=project,
        user_uuid=sim.user_id,
        user=user,
        access_key="AKIA",
        name="session",
        domain_name="default",
    )
    status = kernel_mod.KernelStatus.TERMINATED
    return SimpleNamespace(
        id=uuid.UUID(kernel_id),
        last_stat=None,  # 26.9 persists none: the stat client is the only source
        session=session,
        session_id=sim.session_id,
        created_at=created,
        terminated_at=terminated,
        status_history={},
        used_time=str(terminated - created),
        get_used_days=lambda tz: 1,
        agent=sim.agent_id,
        container_id=None,
        image="python:3.13",
        status=status,
        cluster_mode="single-node",
        status_info=None,
        vfolder_mounts=[],
        mounts=[],
        attached_devices={},
        resource_opts={"shmem": 64},
    )


async def usage_groups(stat_client: Any, rows: Sequence[Any]) -> list[Any]:
    """``models.resource_usage.parse_resource_usage_groups``: the total usage per kernel."""
    usage = require("ai.backend.manager.models.resource_usage")
    types = require("ai.backend.common.types")
    slots = {r.id: types.ResourceSlot({"cpu": Decimal(2), "mem": Decimal(2**30)}) for r in rows}
    groups = await usage.parse_resource_usage_groups(list(rows), slots, stat_client, dt.UTC)
    return [(g.kernel_id, g.total_usage) for g in groups]


class _Result:
    def __init__(self, rows: Sequence[Any]) -> None:
        self.rows = rows

    def fetchall(self) -> Sequence[Any]:
        return self.rows


class _Db:
    """The database edge of ``ProjectDBSource``: one read-only connection returning rows."""

    def __init__(self, rows: Sequence[Any]) -> None:
        self.rows = rows

    @asynccontextmanager
    async def begin_readonly(self) -> AsyncIterator[Any]:
        async def execute(query: Any) -> _Result:
            return _Result(self.rows)

        yield SimpleNamespace(execute=execute)


def project_row(row: Any) -> Any:
    """The columns ``get_container_stats_for_period`` selects, for one kernel row."""
    return SimpleNamespace(
        id=row.id,
        container_id=row.container_id,
        session_id=row.session_id,
        session_name="session",
        access_key="AKIA",
        agent=row.agent,
        domain_name="default",
        group_id=row.session.group.id,
        attached_devices={},
        occupied_slots={"cpu": Decimal(2), "mem": Decimal(2**30)},
        resource_opts=row.resource_opts,
        vfolder_mounts=[],
        mounts=[],
        image=row.image,
        status=row.status,
        status_info=None,
        status_changed=row.terminated_at,
        last_stat=None,
        status_history={},
        created_at=row.created_at,
        terminated_at=row.terminated_at,
        cluster_mode="single-node",
        name="project",
        email="u@example.com",
        full_name="U",
    )


async def project_stats(stat_client: Any, rows: Sequence[Any]) -> list[dict[str, Any]]:
    """``ProjectDBSource.get_container_stats_for_period`` over stub rows."""
    db_source = require("ai.backend.manager.repositories.project.db_source.db_source")
    source = db_source.ProjectDBSource(_Db([project_row(r) for r in rows]), None)
    config = SimpleNamespace(config=SimpleNamespace(system=SimpleNamespace(timezone=dt.UTC)))
    start = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    out: list[dict[str, Any]] = await source.get_container_stats_for_period(
        start, dt.datetime.now(dt.UTC), stat_client, config
    )
    return out


async def monthly_stats(stat_client: Any, kernel_ids: Sequence[str]) -> list[dict[str, Any]]:
    """``UserRepository.get_admin_time_binned_monthly_stats`` over stub kernel rows.

    The bins are relative to the wall clock, so the rows' times are too (the stats come from
    the stat client, whatever the rows' times).
    """
    repository = require("ai.backend.manager.repositories.user.repository")
    repo = repository.UserRepository.__new__(repository.UserRepository)
    now = dt.datetime.now(dt.UTC)
    rows = [
        SimpleNamespace(
            id=uuid.UUID(k),
            occupied_slots={"cpu": Decimal(2), "mem": Decimal(2**30), "cuda.device": Decimal(1)},
            created_at=now - dt.timedelta(days=2, minutes=15 * i),
            terminated_at=now - dt.timedelta(hours=1),
        )
        for i, k in enumerate(kernel_ids)
    ]

    async def get_kernel_rows_for_monthly_stats(user_uuid: Any) -> list[Any]:
        return rows

    repo._db_source = SimpleNamespace(
        get_kernel_rows_for_monthly_stats=get_kernel_rows_for_monthly_stats
    )
    out: list[dict[str, Any]] = await repo.get_admin_time_binned_monthly_stats(stat_client)
    return out
