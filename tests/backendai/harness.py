"""The real Backend.AI 26.9 agent's statistics, driven without docker, beside promstat's.

:class:`AgentRig` runs the installed agent's own ``ai.backend.agent.stats.StatContext`` with its
own intrinsic ``CPUPlugin`` and ``MemoryPlugin`` and its own ``ValkeyStatClient``; only the
inputs at the edges are fakes a test sets per collection:

* the docker stats JSON each container answers (``intrinsic.fetch_api_stats``);
* ``psutil`` as the plugins use it (``cpu_times``, ``virtual_memory``, ``net_io_counters``,
  ``disk_partitions``, ``Process``) and ``os.statvfs``;
* ``docker top`` (the process list of a container) for the process collection;
* ``time.perf_counter`` in ``ai.backend.agent.stats``, so every rate is exact;
* the Valkey connection under the real ``ValkeyStatClient`` (:class:`FakeValkey`: it keeps
  each key's bytes and the TTL the client put in its glide command).

The same measurements reach promstat, the way an agent integration would pass them: the rig
wraps the context's ``observe_container_metric`` / ``observe_node_metric`` /
``observe_process_metric`` (each measurement as it is taken) and the plugins'
``gather_node_measures`` (the per-node values), and feeds promstat's
:class:`~promstat.agent.exporter.UtilizationExporter`, which feeds promstat's
:class:`~promstat.migration.publisher.ValkeyPublisher` over a fake redis. Nothing of promstat's
is computed from the agent's results: both sides see only the measurements.

Imported by the ``backendai`` fixtures only (it imports ``ai.backend`` at module level).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import ai.backend.agent.metrics.metric as bai_metric
import ai.backend.agent.stats as bai_stats
import psutil
import pytest
from ai.backend.agent.docker import intrinsic
from ai.backend.common import msgpack as bai_msgpack
from ai.backend.common.clients.valkey_client.valkey_stat.client import ValkeyStatClient
from ai.backend.common.types import AgentId, ContainerId, KernelId, SessionId, SlotName
from glide import Batch
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from promstat.agent.exporter import UtilizationExporter
from promstat.catalog import DEFAULT_CATALOG, Catalog
from promstat.migration.publisher import ValkeyPublisher

#: The families the agent's UtilizationMetricObserver fills.
FAMILIES = (
    "backendai_container_utilization",
    "backendai_device_utilization",
    "backendai_process_utilization",
)

_SET = Batch(is_atomic=False).set("k", b"v").commands[0][0]  # glide's request type of SET


def _ttl(args: Sequence[Any]) -> int | None:
    """The ``EX`` seconds of a SET's trailing arguments (``["EX", "30"]``), else None."""
    rest = [a.decode() if isinstance(a, bytes) else str(a) for a in args]
    if not rest:
        return None
    assert rest[0] == "EX" and len(rest) == 2, rest
    return int(rest[1])


class FakeValkey:
    """The connection under the real ``ValkeyStatClient``: SET and batches of SET only.

    ``store`` maps each key to ``(value bytes, TTL seconds or None)``, the last write wins.
    """

    def __init__(self) -> None:
        self.store: dict[str, tuple[bytes, int | None]] = {}

    @asynccontextmanager
    async def client(self) -> AsyncIterator[FakeValkey]:
        """``AbstractValkeyClient.client()``: the connection (this object)."""
        yield self

    async def set(self, key: str, value: bytes, expiry: Any = None) -> None:
        """``GlideClient.set`` with an ``ExpirySet``."""
        self.store[key] = (value, None if expiry is None else _ttl(expiry.get_cmd_args()))

    async def exec(self, batch: Batch, raise_on_error: bool) -> list[Any]:
        """``GlideClient.exec`` of a batch of SETs, read from glide's own command list."""
        for request, args in batch.commands:
            assert request == _SET, f"unexpected glide request {request}"
            key, value, *rest = args
            self.store[key.decode() if isinstance(key, bytes) else key] = (value, _ttl(rest))
        return ["OK"] * len(batch.commands)


class FakeRedis:
    """``redis.asyncio.Redis`` as the publisher uses it: a non-transactional SET pipeline."""

    def __init__(self) -> None:
        self.store: dict[str, tuple[bytes, int | None]] = {}

    def pipeline(self, transaction: bool = True) -> _Pipe:
        return _Pipe(self)


class _Pipe:
    def __init__(self, redis: FakeRedis) -> None:
        self.redis = redis
        self.sets: list[tuple[str, bytes, int | None]] = []

    def set(self, key: str, value: bytes, ex: int | None = None) -> None:
        self.sets.append((key, value, ex))

    async def execute(self) -> list[bool]:
        for key, value, ex in self.sets:
            self.redis.store[key] = (value, ex)
        return [True] * len(self.sets)


@dataclass
class Container:
    """One container's docker stats inputs (a ``None`` field is absent from the JSON)."""

    cpu_ns: int = 0
    mem: int = 0
    mem_limit: int = 4 << 30
    io_read: int = 0
    io_write: int = 0
    rx: int | None = 0
    tx: int = 0
    #: pid -> (cpu msec, rss, io read, io write) of its processes (``docker top`` + psutil).
    processes: dict[int, tuple[float, int, int, int]] = field(default_factory=dict)

    def stats_json(self) -> dict[str, Any]:
        """What docker's stats API answers for it."""
        doc: dict[str, Any] = {
            "read": "2026-12-03T08:00:00Z",
            "preread": "2026-12-03T07:59:30Z",
            "cpu_stats": {"cpu_usage": {"total_usage": self.cpu_ns}},
            "memory_stats": {"usage": self.mem, "limit": self.mem_limit},
            "blkio_stats": {
                "io_service_bytes_recursive": [
                    {"op": "Read", "value": self.io_read},
                    {"op": "Write", "value": self.io_write},
                ]
            },
        }
        if self.rx is not None:  # None: a partial reading without "networks"
            doc["networks"] = {"eth0": {"rx_bytes": self.rx, "tx_bytes": self.tx}}
        return doc


@dataclass
class Host:
    """The node's psutil and statvfs inputs."""

    #: per core (user, system) seconds
    cores: list[tuple[float, float]] = field(default_factory=lambda: [(10.0, 5.0), (20.0, 2.5)])
    mem_total: int = 64 << 30
    mem_available: int = 48 << 30
    net_recv: int = 1_000_000
    net_sent: int = 500_000
    #: (device, mountpoint, fstype, f_frsize, f_blocks, f_bavail)
    partitions: list[tuple[str, str, str, int, int, int]] = field(
        default_factory=lambda: [("/dev/nvme0n1p2", "/", "ext4", 4096, 1_000_000, 400_000)]
    )


class _FakeKernel(dict[str, Any]):
    """A kernel registry entry: ``info["container_id"]`` and ``.ownership_data``."""

    def __init__(self, container_id: str, ownership: Any) -> None:
        super().__init__(container_id=container_id)
        self.ownership_data = ownership


def _owner_label(value: uuid.UUID | None) -> str:
    return "undefined" if value is None else str(value)


class AgentRig:
    """The real agent's StatContext and promstat's exporter + publisher on the same inputs.

    Args:
        monkeypatch: patches the edges (restored by pytest).
        catalog: promstat's catalog (its unit hints must be 26.9's to match).
        node_interval / container_interval / process_interval: the agent's configured
            intervals (``[agent.utilization-metric]``); TTLs derive from them.
        detention: promstat's detention (exporter) and ``forget_after`` (publisher), in
            measurement time; the agent's own removal sleeps its ``UTILIZATION_METRIC_DETENTION``
            in wall time (a test shortening both patches that).
    """

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        *,
        catalog: Catalog = DEFAULT_CATALOG,
        node_interval: float = 30.0,
        container_interval: float = 30.0,
        process_interval: float = 30.0,
        agent_id: str = "i-real-agent",
        detention: float = 600.0,
    ) -> None:
        self.now = 1000.0
        self.host = Host()
        self.containers: dict[str, Container] = {}
        self._kernel_of: dict[str, KernelId] = {}
        self._pids: dict[str, set[int]] = {}
        self.agent_id = AgentId(agent_id)
        self._patch_edges(monkeypatch)

        self.observer = bai_metric.UtilizationMetricObserver.instance()
        for gauge in self._gauges():
            gauge.clear()  # a process-wide singleton: start every rig from empty families
        self.registry = CollectorRegistry()
        for gauge in self._gauges():
            self.registry.register(gauge)

        self.valkey = FakeValkey()
        intervals = SimpleNamespace(
            node=SimpleNamespace(interval=node_interval),
            container=SimpleNamespace(interval=container_interval),
            process=SimpleNamespace(interval=process_interval),
        )
        local_config = SimpleNamespace(
            agent=SimpleNamespace(utilization_metric=intervals),
            debug=SimpleNamespace(log_stats=False),
        )
        plugin_config: dict[str, Any] = {}
        plugin_local = {"agent": {"docker-mode": "default"}}
        self.cpu = intrinsic.CPUPlugin(plugin_config, plugin_local)
        self.mem = intrinsic.MemoryPlugin(plugin_config, plugin_local)
        self.cpu._docker = None  # type: ignore[assignment]  # stats come from fetch_api_stats
        self.mem._docker = None  # type: ignore[assignment]
        self.mem._graph_root_prefix = "/var/lib/docker/"
        self.agent = SimpleNamespace(
            id=self.agent_id,
            kernel_registry={},
            computers={
                "cpu": SimpleNamespace(instance=self.cpu),
                "mem": SimpleNamespace(instance=self.mem),
            },
            local_config=local_config,
            valkey_stat_client=ValkeyStatClient(self.valkey),  # type: ignore[arg-type]
        )
        self.ctx = bai_stats.StatContext(
            self.agent,  # type: ignore[arg-type]
            local_config,  # type: ignore[arg-type]
            mode=bai_stats.StatModes.DOCKER,
        )

        # promstat, fed the same measurements.
        self.redis = FakeRedis()
        self.publisher = ValkeyPublisher(
            self.redis,  # type: ignore[arg-type]
            catalog=catalog,
            node_interval=node_interval,
            process_interval=process_interval,
            forget_after=detention,
            auto_flush=False,
        )
        self.exporter = UtilizationExporter(
            agent_id, publish_rates=False, clock=lambda: self.now, detention=detention
        )
        self.rate_exporter = UtilizationExporter(
            agent_id, clock=lambda: self.now, detention=detention
        )
        self.exporter.add_listener(self.publisher)
        self._tee()

    # -- the edges ------------------------------------------------------------------------------

    def _patch_edges(self, monkeypatch: pytest.MonkeyPatch) -> None:
        rig = self

        async def fetch_api_stats(container: Any) -> dict[str, Any] | None:
            c = rig.containers.get(container.id)
            return None if c is None else c.stats_json()

        class FakeProcess:
            def __init__(self, pid: int) -> None:
                for c in rig.containers.values():
                    if pid in c.processes:
                        self._values = c.processes[pid]
                        return
                raise psutil.NoSuchProcess(pid)

            def cpu_times(self) -> SimpleNamespace:
                return SimpleNamespace(user=self._values[0] / 1000, system=0.0)

            def as_dict(self, attrs: Iterable[str]) -> dict[str, Any]:
                _, rss, rd, wr = self._values
                return {
                    "memory_info": SimpleNamespace(rss=rss),
                    "io_counters": SimpleNamespace(read_bytes=rd, write_bytes=wr),
                }

        fake_psutil = SimpleNamespace(
            cpu_times=lambda percpu=False: [
                SimpleNamespace(user=u, system=s) for u, s in rig.host.cores
            ],
            virtual_memory=lambda: SimpleNamespace(
                total=rig.host.mem_total, available=rig.host.mem_available
            ),
            net_io_counters=lambda: SimpleNamespace(
                bytes_recv=rig.host.net_recv, bytes_sent=rig.host.net_sent
            ),
            disk_partitions=lambda: [
                SimpleNamespace(device=d, mountpoint=m, fstype=f)
                for d, m, f, *_ in rig.host.partitions
            ],
            Process=FakeProcess,
            NoSuchProcess=psutil.NoSuchProcess,
        )

        def statvfs(mountpoint: str) -> SimpleNamespace:
            for _, m, _, frsize, blocks, bavail in rig.host.partitions:
                if m == mountpoint:
                    return SimpleNamespace(f_frsize=frsize, f_blocks=blocks, f_bavail=bavail)
            raise FileNotFoundError(mountpoint)

        class FakeDocker:
            async def __aenter__(self) -> FakeDocker:
                return self

            async def __aexit__(self, *exc: object) -> None:
                return None

            async def _query_json(self, path: str, method: str = "GET") -> dict[str, Any]:
                cid = path.split("/")[1]
                c = rig.containers[cid]
                return {"Processes": [["root", str(pid), "1", "python"] for pid in c.processes]}

        class FakeTime:
            """``time`` in ai.backend.agent.stats: a perf_counter the test drives."""

            def perf_counter(self) -> float:
                return rig.now

            def __getattr__(self, name: str) -> Any:
                return getattr(time, name)

        monkeypatch.setattr(intrinsic, "fetch_api_stats", fetch_api_stats)
        monkeypatch.setattr(intrinsic, "psutil", fake_psutil)
        monkeypatch.setattr(intrinsic, "os", SimpleNamespace(statvfs=statvfs, environ=os.environ))
        monkeypatch.setattr(bai_stats, "time", FakeTime())
        monkeypatch.setattr(
            bai_stats,
            "aiodocker",
            SimpleNamespace(Docker=FakeDocker, exceptions=bai_stats.aiodocker.exceptions),
        )

    def _gauges(self) -> list[Any]:
        o = self.observer
        return [o._container_metric, o._device_metric, o._process_metric]

    def _tee(self) -> None:
        """Pass every measurement the real context takes to promstat's exporters as well."""
        ctx, rig = self.ctx, self
        real_container = ctx.observe_container_metric
        real_device = ctx.observe_node_metric
        real_process = ctx.observe_process_metric

        def cap(measure: Any) -> str | None:
            return None if measure.capacity is None else str(measure.capacity)

        def container(kernel_id: KernelId, key: str, measure: Any) -> None:
            real_container(kernel_id, key, measure)
            for exp in (rig.exporter, rig.rate_exporter):
                exp.observe_container(
                    str(kernel_id), key, str(measure.value), cap(measure), at=rig.now
                )

        def device(device_id: str, metric_key: str, measure: Any) -> None:
            real_device(device_id=device_id, metric_key=metric_key, measure=measure)
            for exp in (rig.exporter, rig.rate_exporter):
                exp.observe_device(
                    metric_key, str(device_id), str(measure.value), cap(measure), at=rig.now
                )

        def process(kernel_id: KernelId, cid: str, pid: int, key: str, measure: Any) -> None:
            real_process(kernel_id, cid, pid, key, measure)
            for exp in (rig.exporter, rig.rate_exporter):
                exp.observe_process(
                    str(kernel_id), str(cid), int(pid), key, str(measure.value), cap(measure),
                    at=rig.now,
                )  # fmt: skip

        ctx.observe_container_metric = container  # type: ignore[method-assign]
        ctx.observe_node_metric = device  # type: ignore[method-assign,assignment]
        ctx.observe_process_metric = process  # type: ignore[method-assign]

        for plugin in (self.cpu, self.mem):
            self._tee_node(plugin)

    def _tee_node(self, plugin: Any) -> None:
        rig = self
        real_gather = plugin.gather_node_measures

        async def gather(ctx: Any) -> Any:
            measures = await real_gather(ctx)
            # The per-node values, as an agent integration passes them (scale factor 1).
            for m in measures:
                value, capacity = m.per_node.value, m.per_node.capacity
                for exp in (rig.exporter, rig.rate_exporter):
                    exp.observe_node(
                        m.key,
                        str(value),
                        None if capacity is None else str(capacity),
                        at=rig.now,
                    )
            return measures

        plugin.gather_node_measures = gather

    def add_computer(self, name: str, plugin: Any) -> None:
        """Install another compute plugin (an accelerator) after the intrinsic ones."""
        self.agent.computers[name] = SimpleNamespace(instance=plugin)
        self._tee_node(plugin)

    # -- the fleet ------------------------------------------------------------------------------

    def start_kernel(
        self,
        container_id: str,
        container: Container,
        *,
        owner_user: uuid.UUID | None = None,
        owner_project: uuid.UUID | None = None,
    ) -> str:
        """Register a kernel (the agent's registry and promstat's exporters); its kernel id."""
        from ai.backend.agent.types import KernelOwnershipData

        kernel_id = KernelId(uuid.uuid4())
        session_id = SessionId(uuid.uuid4())
        ownership = KernelOwnershipData(
            kernel_id, session_id, self.agent_id, owner_user, owner_project
        )
        self.agent.kernel_registry[kernel_id] = _FakeKernel(container_id, ownership)
        self.containers[container_id] = container
        self._kernel_of[container_id] = kernel_id
        for exp in (self.exporter, self.rate_exporter):
            exp.add_kernel(
                str(kernel_id),
                session_id=str(session_id),
                user_id=_owner_label(owner_user),
                project_id=_owner_label(owner_project),
            )
        return str(kernel_id)

    async def stop_kernel(self, container_id: str) -> None:
        """The kernel terminated: the agent's remove_kernel_metric, promstat's terminate.

        In the agent's order (``_handle_clean_event``): the metrics removal is scheduled while
        the kernel is still registered (it reads the ownership labels from the registry), then
        the kernel leaves the registry.
        """
        kernel_id = self._kernel_of.pop(container_id)
        await self.ctx.remove_kernel_metric(kernel_id, ContainerId(container_id))
        del self.agent.kernel_registry[kernel_id]
        del self.containers[container_id]
        for exp in (self.exporter, self.rate_exporter):
            exp.terminate_kernel(str(kernel_id))

    async def collect(self, at: float) -> None:
        """One collection at ``at``: node, containers, processes (the agent's three loops);
        then promstat's publisher writes what it was told."""
        self.now = at
        cids = [ContainerId(c) for c in self.containers]
        scaling = {
            SlotName(slot): Decimal(1)
            for computer in self.agent.computers.values()
            for slot, _ in computer.instance.slot_types
        }
        await self.ctx.collect_node_stat(scaling)
        await self.ctx.collect_container_stat(cids)
        await self.ctx.collect_per_container_process_stat(cids)
        for cid, kernel_id in self._kernel_of.items():
            alive = set(self.containers[cid].processes)
            for pid in self._pids.get(cid, set()) - alive:
                for exp in (self.exporter, self.rate_exporter):
                    exp.end_process(str(kernel_id), cid, pid)
            self._pids[cid] = self._pids.get(cid, set()) | alive
        await self.publisher.flush()

    async def close(self) -> None:
        """Cancel the agent's pending 600 s removal tasks (a test never waits for them)."""
        for task in [
            *self.observer._removal_kernel_tasks.values(),
            *self.observer._removal_process_tasks.values(),
        ]:
            task.cancel()
        self.observer._removal_kernel_tasks.clear()
        self.observer._removal_process_tasks.clear()

    # -- what each side wrote -------------------------------------------------------------------

    def real_series(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """The real agent's exposition (``generate_latest`` of its observer's registry)."""
        return parse_series(generate_latest(self.registry).decode())

    def promstat_series(self, *, rates: bool = False) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:  # noqa: E501
        """promstat's exposition (without or with its ``value_type="rate"`` series)."""
        exporter = self.rate_exporter if rates else self.exporter
        return parse_series(exporter.render().decode())


def parse_series(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Exposition text -> {(series name, label set): value} of the utilization families."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in FAMILIES:
            continue
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in out, f"duplicate series {key}"
            out[key] = sample.value
    return out


def unpack(value: bytes) -> Any:
    """Decode a value as Backend.AI's readers do (``ai.backend.common.msgpack.unpackb``)."""
    return bai_msgpack.unpackb(value)


def decoded(store: Mapping[str, tuple[bytes, int | None]]) -> dict[str, tuple[Any, int | None]]:
    """A store with its values decoded, for readable assertion diffs."""
    return {key: (unpack(value), ttl) for key, (value, ttl) in store.items()}
