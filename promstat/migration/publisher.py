"""Dual publishing: write the legacy Valkey live_stat payloads from the exporter's measurements.

During a migration a fleet runs both pipelines side by side: the agent-side
:class:`~promstat.agent.exporter.UtilizationExporter` publishes the raw series Prometheus scrapes,
and a :class:`ValkeyPublisher` listening to the same exporter writes exactly what the legacy
agent wrote to the Valkey statistics database (reference sections 1.2-1.10), so
``promstat compare`` can diff the two on the real fleet::

    publisher = ValkeyPublisher(redis.asyncio.from_url("redis://valkey:6379/0"))
    exporter.add_listener(publisher)        # or SimulatedFleet(..., listeners=[publisher])
    ...                                     # measurements are written as they happen
    await publisher.close()

What is written, as the agent's ``StatContext`` did (``agent/stats.py``):

* kernel payloads: ``msgpack({metric: MetricValue})`` under the bare kernel id, ``SET ... EX``
  :data:`KERNEL_TTL` (the ``ValkeyStatClient`` default of 24 h: ``collect_container_stat``
  passes no expiry), only for kernels measured since the last write;
* agent payloads: ``msgpack({"node": {metric: MetricValue}, "devices": {metric: {device_id:
  MetricValue}}})`` under the bare agent id, ``EX`` 4 x the node interval
  (``_METRIC_TTL_FACTOR``);
* process payloads (``collect_per_container_process_stat``): ``msgpack({pid: {metric:
  MetricValue}})`` (integer pids) under the bare container id, ``EX`` 4 x the process
  interval, for containers with a process measured since the last write;
* every number through legacy ``_to_serializable_value`` (3-decimal quantize, exponent
  removed), ``pct`` through its 2-decimal variant or the literal ``"0.00"``;
* legacy stat semantics from the same measurements: ``MovingStatistics`` over the raw values
  since the first observation of that metric in this process (``min``/``max``/``sum``/``avg``
  lifetime statistics, so ``cpu_util``'s ``stats.max`` is the cumulative counter, upstream
  #4126), ``diff``/``rate`` from the last two measurements (``0`` with one measurement or at a
  counter reset), ``current`` through the metric's hook: the rate for rate counters
  (``cpu_util`` msec/s, ``net_*`` B/s), the diff for node/device ``cpu_util`` (msec of CPU in
  the interval); a kernel metric's ``capacity`` is the measurement's, else the *first raw
  value* (``measure.capacity or measure.value``), kept until a measurement brings one;
  node/device capacities have no fallback (``None``). Only the ``stats.*`` keys of the
  metric's ``stats_filter`` are published (taken from the catalog, which mirrors the plugins).

The node entry is the plugin's per-node measurement when the exporter passes one
(:meth:`~promstat.agent.exporter.UtilizationExporter.observe_node`, as the agent's
``NodeMeasurement.per_node``: a ``disk`` entry of zeros when every partition was filtered
out), otherwise it is built from the device measurements of one collection: devices summed,
capacity summed or ``max`` per the catalog's ``node_capacity`` (the CPU interval), ``None``
when no device has one. Measurement times are the exporter's
(``Measured.at``), so rates are exact in simulations with a fake clock.

One *collection* is the device measurements of one measurement time (``Measured.at``): a
write that carries two (a simulated fleet catching up observes the previous measurement
first) folds each into the node in turn, as the agent did collection by collection. With
``auto_flush`` (default) a write is scheduled on the running event loop as soon as a
measurement arrives, so it runs right after the synchronous collection that produced it, as
the agent wrote right after collecting; without a running loop (or with ``auto_flush=False``)
call :meth:`ValkeyPublisher.flush`.

The legacy computation (:class:`LegacyStatContext`) is pure and usable without redis. The
``redis`` client package (``redis.asyncio``) is needed only for :class:`ValkeyPublisher`.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Context, Decimal, DecimalException
from typing import TYPE_CHECKING, Any, Final, cast

from promstat.agent.exporter import Measured
from promstat.catalog import DEFAULT_CATALOG, Catalog, Kind, NodeCurrent
from promstat.errors import ConfigError, TransportError
from promstat.renderer import to_msgpack

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from promstat.testing.sim import SimulatedFleet

__all__ = [
    "AGENT_TTL_FACTOR",
    "KERNEL_TTL",
    "LegacyMetric",
    "LegacySpec",
    "LegacyStatContext",
    "MovingStatistics",
    "ValkeyPublisher",
    "legacy_spec",
    "pack",
    "replay",
    "serializable_value",
]

log = logging.getLogger(__name__)

#: TTL of kernel keys: ``ValkeyStatClient._DEFAULT_EXPIRATION`` (the agent passes none).
KERNEL_TTL: Final = 86400
#: Agent keys live ``AGENT_TTL_FACTOR x node interval`` seconds (``_METRIC_TTL_FACTOR``).
AGENT_TTL_FACTOR: Final = 4

# The agent runs with Python's default decimal context; fixed here so a caller changing the
# thread's context cannot change the payloads.
_CTX = Context()
_Q3 = Decimal("0.000")
_Q2 = Decimal("0.00")
_ONE = Decimal(1)
_ZERO = Decimal(0)
_HUNDRED = Decimal(100)


def _remove_exponent(num: Decimal) -> Decimal:
    # agent/utils.py remove_exponent
    if num == num.to_integral_value(context=_CTX):
        return num.quantize(_ONE, context=_CTX)
    return num.normalize(_CTX)


def serializable_value(value: Decimal, *, exponent: Decimal = _Q3) -> str:
    """Legacy ``_to_serializable_value``: quantize, drop the exponent, ``str()``.

    Falls back to ``str(value)`` when quantizing fails (more than 28 digits, infinities), as
    the agent does.
    """
    try:
        quantized = value.quantize(exponent, context=_CTX)
    except DecimalException:
        return str(value)
    try:
        return str(_remove_exponent(quantized))
    except DecimalException:
        return str(quantized)


def _decimal(value: float | str) -> Decimal:
    # The agent measures Decimals; the exporter receives str(Decimal) or floats. A float is
    # read as its shortest repr (what the agent would have printed), not its binary value.
    if isinstance(value, str):
        return Decimal(value)
    if isinstance(value, int):
        return Decimal(value)
    return Decimal(repr(float(value)))


class MovingStatistics:
    """The agent's ``MovingStatistics``: lifetime min/max/sum/avg, diff/rate of the last two.

    Times are explicit (the agent used ``time.perf_counter()`` at each update).
    """

    __slots__ = ("_count", "_last", "_max", "_min", "_sum")

    def __init__(self, initial: Decimal, at: float) -> None:
        self._sum = initial
        self._min = initial
        self._max = initial
        self._count = 1
        self._last: list[tuple[Decimal, float]] = [(initial, at)]

    def update(self, value: Decimal, at: float) -> None:
        """Add a measurement taken at ``at`` (seconds)."""
        self._sum = _CTX.add(self._sum, value)
        self._min = min(self._min, value)
        self._max = max(self._max, value)
        self._count += 1
        self._last.append((value, at))
        if len(self._last) > 2:
            self._last.pop(0)

    @property
    def min(self) -> Decimal:
        """Smallest raw value seen."""
        return self._min

    @property
    def max(self) -> Decimal:
        """Largest raw value seen."""
        return self._max

    @property
    def sum(self) -> Decimal:
        """Sum of the raw values seen."""
        return self._sum

    @property
    def avg(self) -> Decimal:
        """Mean of the raw values seen."""
        return _CTX.divide(self._sum, Decimal(self._count))

    def _delta(self) -> Decimal | None:
        if len(self._last) != 2:
            return None
        delta = _CTX.subtract(self._last[1][0], self._last[0][0])
        return None if delta < 0 else delta  # a counter reset (container restart) -> 0

    @property
    def diff(self) -> Decimal:
        """Last minus previous value; 0 with one value or at a counter reset."""
        delta = self._delta()
        return _ZERO if delta is None else delta

    @property
    def rate(self) -> Decimal:
        """:attr:`diff` per second between the last two measurements; 0 likewise."""
        delta = self._delta()
        if delta is None:
            return _ZERO
        seconds = Decimal(self._last[1][1] - self._last[0][1])
        if seconds <= 0:
            return _ZERO  # two measurements at one instant: no rate (the agent never had this)
        return _CTX.divide(delta, seconds)

    def to_serializable_dict(self) -> dict[str, str]:
        """The agent's serialized statistics (``version`` omitted: no filter ever kept it)."""
        return {
            "min": serializable_value(self.min),
            "max": serializable_value(self.max),
            "sum": serializable_value(self.sum),
            "avg": serializable_value(self.avg),
            "diff": serializable_value(self.diff),
            "rate": serializable_value(self.rate),
        }


@dataclass(frozen=True, slots=True)
class LegacySpec:
    """What a plugin declared for one metric: unit hint, ``stats_filter`` and hook.

    ``hook`` is ``"rate"`` (``current = stats.rate``), ``"diff"`` (``current = stats.diff``)
    or ``None`` (``current`` = the raw value).
    """

    unit_hint: str
    stats_filter: frozenset[str]
    hook: str | None


def legacy_spec(catalog: Catalog, metric: str, *, node: bool) -> LegacySpec:
    """The plugin declaration of ``metric`` at kernel (``node=False``) or node/device level.

    Derived from the catalog, which mirrors the plugins: rate counters have the rate hook
    (node ``cpu_util``, ``node_current=interval_diff``: the diff hook); ``stats`` and the unit
    hint are the catalog's (node overrides at node level).
    """
    spec = catalog.lookup(metric)
    hook: str | None = None
    if spec.kind is Kind.RATE_COUNTER:
        hook = "diff" if node and spec.node_current is NodeCurrent.INTERVAL_DIFF else "rate"
    return LegacySpec(
        unit_hint=spec.unit_hint_node if node else spec.unit_hint,
        stats_filter=frozenset(spec.stats_node if node else spec.stats),
        hook=hook,
    )


class LegacyMetric:
    """The agent's ``Metric``: current (through the hook), capacity, moving statistics."""

    __slots__ = ("capacity", "current", "spec", "stats")

    def __init__(
        self, spec: LegacySpec, value: Decimal, capacity: Decimal | None, at: float
    ) -> None:
        self.spec = spec
        self.stats = MovingStatistics(value, at)
        self.capacity = capacity
        # Since BA-7002 the hook also applies to the first measurement (rate/diff 0 then).
        self.current = self._hooked(value)

    def _hooked(self, value: Decimal) -> Decimal:
        hook = self.spec.hook
        if hook == "rate":
            return self.stats.rate
        if hook == "diff":
            return self.stats.diff
        return value

    def update(self, value: Decimal, capacity: Decimal | None, at: float) -> None:
        """The agent's ``Metric.update``: a capacity only replaces the old one when given."""
        if capacity is not None:
            self.capacity = capacity
        self.stats.update(value, at)
        self.current = self._hooked(value)

    def to_serializable_dict(self) -> dict[str, str | None]:
        """The agent's ``MetricValue`` dict."""
        cap = self.capacity
        if cap is not None and cap.is_normal(_CTX) and cap > 0:
            ratio = _CTX.multiply(_CTX.divide(self.current, cap), _HUNDRED)
            pct = serializable_value(ratio, exponent=_Q2)
        else:
            pct = "0.00"
        out: dict[str, str | None] = {
            "current": serializable_value(self.current),
            "capacity": serializable_value(cap) if cap is not None else None,
            "pct": pct,
            "unit_hint": self.spec.unit_hint,
        }
        if self.spec.stats_filter:
            for key, value in self.stats.to_serializable_dict().items():
                if key in self.spec.stats_filter:
                    out[f"stats.{key}"] = value
        return out


class _Agent:
    """One agent's legacy state: per-kernel, per-process, per-device and node metrics."""

    __slots__ = (
        "container_at",
        "device_round",
        "devices",
        "kernel_seen",
        "kernels",
        "node",
        "node_round",
        "process_missing",
        "process_seen",
        "processes",
        "round_at",
    )

    def __init__(self) -> None:
        self.kernels: dict[str, dict[str, LegacyMetric]] = {}
        self.kernel_seen: dict[str, float] = {}
        # container id -> pid -> metric (the agent's process_metrics).
        self.processes: dict[str, dict[int, dict[str, LegacyMetric]]] = {}
        self.process_seen: dict[tuple[str, int], float] = {}
        # container id -> its latest process collection; (container, pid) -> the collection
        # that first missed the pid (the agent's lazy_remove_process_metric starts there).
        self.container_at: dict[str, float] = {}
        self.process_missing: dict[tuple[str, int], float] = {}
        self.devices: dict[str, dict[str, LegacyMetric]] = {}
        self.node: dict[str, LegacyMetric] = {}
        # Device measurements of the current collection: metric -> device -> (value, capacity).
        self.device_round: dict[str, dict[str, tuple[Decimal, Decimal | None]]] = {}
        # Per-node measurements of the current collection: metric -> (value, capacity).
        self.node_round: dict[str, tuple[Decimal, Decimal | None]] = {}
        self.round_at = -math.inf


class LegacyStatContext:
    """The agent's ``StatContext`` computation, without I/O, for many agents.

    Feed it measurements (:meth:`observe`), end a collection (:meth:`end_collection`), read
    the payloads (:meth:`kernel_payload`, :meth:`agent_payload`).

    Args:
        catalog: metric specs (hooks, unit hints, stats filters, node capacity rule).
        forget_after: seconds (of measurement time) after its last measurement when a kernel's
            state is dropped (the agent drops a terminated kernel's metrics after its 600 s
            detention); its Valkey key keeps its TTL.
    """

    def __init__(self, *, catalog: Catalog = DEFAULT_CATALOG, forget_after: float = 600.0) -> None:
        if not forget_after > 0:
            raise ConfigError(f"forget_after must be > 0 seconds, not {forget_after!r}")
        self.catalog = catalog
        self.forget_after = float(forget_after)
        self._agents: dict[str, _Agent] = {}
        self._specs: dict[tuple[str, bool], LegacySpec] = {}
        self.dirty_kernels: dict[str, str] = {}  # kernel id -> agent id, in measurement order
        self.dirty_agents: set[str] = set()
        self.dirty_containers: dict[str, str] = {}  # container id -> agent id

    def _spec(self, metric: str, node: bool) -> LegacySpec:
        spec = self._specs.get((metric, node))
        if spec is None:
            spec = self._specs[metric, node] = legacy_spec(self.catalog, metric, node=node)
        return spec

    def observe(self, m: Measured) -> None:
        """Take one measurement (a :class:`~promstat.agent.exporter.Measured` from the exporter).

        Non-finite values are skipped (the agent's Decimal arithmetic cannot hold them).
        """
        value = _decimal(m.current)
        capacity = None if m.capacity is None else _decimal(m.capacity)
        if not value.is_finite() or (capacity is not None and not capacity.is_finite()):
            return
        agent = self._agents.get(m.agent_id)
        if agent is None:
            agent = self._agents[m.agent_id] = _Agent()
        if m.pid is not None and m.container_id is not None:
            per_pid = agent.processes.setdefault(m.container_id, {})
            proc_metrics = per_pid.setdefault(m.pid, {})
            proc_metric = proc_metrics.get(m.metric)
            if proc_metric is None:
                # collect_per_container_process_stat: as a kernel's, capacity or first value
                first_capacity = capacity if capacity else value
                proc_metrics[m.metric] = LegacyMetric(
                    self._spec(m.metric, False), value, first_capacity, m.at
                )
            else:
                proc_metric.update(value, capacity, m.at)
            agent.process_seen[m.container_id, m.pid] = m.at
            agent.process_missing.pop((m.container_id, m.pid), None)
            agent.container_at[m.container_id] = max(
                m.at, agent.container_at.get(m.container_id, m.at)
            )
            self.dirty_containers[m.container_id] = m.agent_id
            return
        if m.kernel_id is not None:
            metrics = agent.kernels.get(m.kernel_id)
            if metrics is None:
                metrics = agent.kernels[m.kernel_id] = {}
            metric = metrics.get(m.metric)
            if metric is None:
                # collect_container_stat: capacity = measure.capacity or measure.value
                first_capacity = capacity if capacity else value
                metrics[m.metric] = LegacyMetric(
                    self._spec(m.metric, False), value, first_capacity, m.at
                )
            else:
                metric.update(value, capacity, m.at)
            agent.kernel_seen[m.kernel_id] = m.at
            self.dirty_kernels[m.kernel_id] = m.agent_id
            return
        if (agent.device_round or agent.node_round) and m.at != agent.round_at:
            # A new measurement time starts a new collection: the agent folds each collection
            # into the node before measuring again, even when one write carries two of them
            # (a fleet catching up observes its previous measurement first).
            self._fold(agent)
        if m.node:
            agent.node_round[m.metric] = (value, capacity)
            agent.round_at = m.at
            self.dirty_agents.add(m.agent_id)
            return
        device_id = m.device_id if m.device_id is not None else ""
        devices = agent.devices.get(m.metric)
        if devices is None:
            devices = agent.devices[m.metric] = {}
        device = devices.get(device_id)
        if device is None:
            devices[device_id] = LegacyMetric(self._spec(m.metric, True), value, capacity, m.at)
        else:
            device.update(value, capacity, m.at)
        agent.device_round.setdefault(m.metric, {})[device_id] = (value, capacity)
        agent.round_at = m.at
        self.dirty_agents.add(m.agent_id)

    def end_collection(self, agent_id: str) -> None:
        """Fold the devices measured since the last call (or since the last measurement time
        change: one collection per measurement time) into the node metrics.

        Node value: the devices' sum; capacity: summed, or the largest for metrics whose
        catalog entry says ``node_capacity="max"``; ``None`` when no device had one.
        """
        agent = self._agents.get(agent_id)
        if agent is not None and (agent.device_round or agent.node_round):
            self._fold(agent)

    def _fold(self, agent: _Agent) -> None:
        at = agent.round_at
        # The plugin's per-node values where given (the agent's node entries), else the
        # devices combined; metrics in plugin order: node measurements come first.
        names = dict.fromkeys([*agent.node_round, *agent.device_round])
        for name in names:
            given = agent.node_round.get(name)
            if given is not None:
                total, node_capacity = given
            else:
                total, node_capacity = self._combine(name, agent.device_round[name])
            node = agent.node.get(name)
            if node is None:
                agent.node[name] = LegacyMetric(self._spec(name, True), total, node_capacity, at)
            else:
                node.update(total, node_capacity, at)
        agent.device_round = {}
        agent.node_round = {}
        # The agent forgets a kernel's (and an exited process's) metrics after its detention;
        # so does this context.
        horizon = at - self.forget_after
        for kernel_id, seen in list(agent.kernel_seen.items()):
            if seen < horizon:
                del agent.kernel_seen[kernel_id]
                agent.kernels.pop(kernel_id, None)
        # A container no longer measured at all (its kernel ended): its processes go after
        # the detention, as remove_kernel_metric's lazy process removal.
        for container_id, seen in list(agent.container_at.items()):
            if seen < horizon:
                del agent.container_at[container_id]
                for pid in agent.processes.pop(container_id, {}):
                    agent.process_seen.pop((container_id, pid), None)
                    agent.process_missing.pop((container_id, pid), None)

    def _prune_processes(self, agent: _Agent, container_id: str) -> None:
        """The agent keeps an exited process in its payload until the removal it scheduled
        at the first collection that missed it runs, ``forget_after`` later."""
        latest = agent.container_at.get(container_id)
        per_pid = agent.processes.get(container_id)
        if latest is None or not per_pid:
            return
        for pid in list(per_pid):
            if agent.process_seen.get((container_id, pid), latest) >= latest:
                continue
            missing_at = agent.process_missing.setdefault((container_id, pid), latest)
            if latest - missing_at >= self.forget_after:
                del per_pid[pid]
                agent.process_seen.pop((container_id, pid), None)
                del agent.process_missing[container_id, pid]

    def _combine(
        self, name: str, per_device: Mapping[str, tuple[Decimal, Decimal | None]]
    ) -> tuple[Decimal, Decimal | None]:
        spec = self.catalog.lookup(name)
        total = _ZERO
        caps: list[Decimal] = []
        for value, capacity in per_device.values():
            total = _CTX.add(total, value)
            if capacity is not None:
                caps.append(capacity)
        node_capacity: Decimal | None = None
        if caps:
            node_capacity = max(caps) if spec.node_capacity == "max" else sum(caps, _ZERO)
        return total, node_capacity

    def kernel_payload(self, kernel_id: str, agent_id: str) -> dict[str, dict[str, str | None]]:
        """The legacy kernel value (metrics in first-measurement order, as the agent)."""
        agent = self._agents.get(agent_id)
        metrics = agent.kernels.get(kernel_id, {}) if agent is not None else {}
        return {name: metric.to_serializable_dict() for name, metric in metrics.items()}

    def process_payload(
        self, container_id: str, agent_id: str
    ) -> dict[int, dict[str, dict[str, str | None]]]:
        """The legacy process value of one container: ``{pid: {metric: MetricValue}}``
        (pids and metrics in first-measurement order, as the agent). An exited process stays
        until ``forget_after`` after the first collection that missed it, then leaves."""
        agent = self._agents.get(agent_id)
        if agent is None:
            return {}
        self._prune_processes(agent, container_id)
        per_pid = agent.processes.get(container_id, {})
        return {
            pid: {name: metric.to_serializable_dict() for name, metric in metrics.items()}
            for pid, metrics in per_pid.items()
        }

    def agent_payload(self, agent_id: str) -> dict[str, Any]:
        """The legacy agent value ``{"node": ..., "devices": ...}``."""
        agent = self._agents.get(agent_id)
        if agent is None:
            return {"node": {}, "devices": {}}
        return {
            "node": {name: m.to_serializable_dict() for name, m in agent.node.items()},
            "devices": {
                name: {dev: m.to_serializable_dict() for dev, m in per_device.items()}
                for name, per_device in agent.devices.items()
            },
        }


def pack(payload: Mapping[str, Any] | Mapping[int, Any]) -> bytes:
    """msgpack as Backend.AI's wrapper packs a stats dict (:func:`promstat.renderer.to_msgpack`);
    process payloads have integer pids as keys."""
    return to_msgpack(cast("Mapping[str, Any]", payload))


class ValkeyPublisher:
    """Writes legacy live_stat payloads to Valkey/redis from exporter measurements.

    Use it as an exporter listener (it is callable with a
    :class:`~promstat.agent.exporter.Measured`).

    Args:
        redis: a ``redis.asyncio.Redis`` connected to the statistics database (DB 0). Closed
            by :meth:`close` only if ``own_client``.
        catalog: metric specs (see :class:`LegacyStatContext`).
        node_interval: the agents' node collection interval; agent keys expire after
            :data:`AGENT_TTL_FACTOR` times this.
        process_interval: the agents' process collection interval; process keys expire
            after :data:`AGENT_TTL_FACTOR` times this.
        kernel_ttl: expiry of kernel keys (legacy: 24 h).
        forget_after: see :class:`LegacyStatContext`.
        auto_flush: schedule a write on the running loop when measurements arrive.
        own_client: close ``redis`` in :meth:`close`.

    Attributes:
        writes: keys written so far.
        errors: failed automatic writes (each logged; the next write retries the payloads).
        last_error: the last such failure.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        catalog: Catalog = DEFAULT_CATALOG,
        node_interval: float = 30.0,
        process_interval: float = 30.0,
        kernel_ttl: int = KERNEL_TTL,
        forget_after: float = 600.0,
        auto_flush: bool = True,
        own_client: bool = False,
    ) -> None:
        if not node_interval > 0 or not process_interval > 0 or kernel_ttl <= 0:
            raise ConfigError("node_interval, process_interval and kernel_ttl must be > 0")
        self.redis = redis
        self.context = LegacyStatContext(catalog=catalog, forget_after=forget_after)
        # int(interval * 4), as the agent's _metric_ttl (truncated, at least 1 s).
        self.agent_ttl = max(1, int(node_interval * AGENT_TTL_FACTOR))
        self.process_ttl = max(1, int(process_interval * AGENT_TTL_FACTOR))
        self.kernel_ttl = int(kernel_ttl)
        self.auto_flush = auto_flush
        self.own_client = own_client
        self.writes = 0
        self.errors = 0
        self.last_error: BaseException | None = None
        self._pending: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> ValkeyPublisher:
        """Connect with ``redis.asyncio.from_url(url)``; the client is closed by :meth:`close`."""
        from redis.asyncio import from_url

        return cls(from_url(url), own_client=True, **kwargs)

    def __call__(self, measured: Measured) -> None:
        """The exporter listener: record the measurement, schedule a write."""
        self.context.observe(measured)
        if self.auto_flush and self._pending is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop (a synchronous caller): flush() writes it later
            self._pending = loop.create_task(self._auto_flush())

    async def _auto_flush(self) -> None:
        async with self._lock:
            # Measurements arriving while this write runs schedule the next one.
            self._pending = None
            try:
                await self._flush_locked()
            except TransportError as exc:
                self.errors += 1
                self.last_error = exc
                log.warning("legacy live_stat write failed: %s", exc)
            except Exception as exc:  # a background task must not die silently
                self.errors += 1
                self.last_error = exc
                log.exception("legacy live_stat write failed unexpectedly")

    async def flush(self) -> int:
        """Write every kernel and agent measured since the last write.

        Returns:
            The number of keys written.

        Raises:
            TransportError: redis could not be reached or refused the write; the payloads are
                kept and written by the next flush.
        """
        async with self._lock:
            return await self._flush_locked()

    async def _flush_locked(self) -> int:
        ctx = self.context
        kernels, agents, containers = ctx.dirty_kernels, ctx.dirty_agents, ctx.dirty_containers
        ctx.dirty_kernels, ctx.dirty_agents, ctx.dirty_containers = {}, set(), {}
        for agent_id in agents:
            ctx.end_collection(agent_id)
        count = len(kernels) + len(agents) + len(containers)
        if not count:
            return 0
        pipe = self.redis.pipeline(transaction=False)  # the agent's non-atomic batch
        for kernel_id, agent_id in kernels.items():
            pipe.set(kernel_id, pack(ctx.kernel_payload(kernel_id, agent_id)), ex=self.kernel_ttl)
        for agent_id in sorted(agents):
            pipe.set(agent_id, pack(ctx.agent_payload(agent_id)), ex=self.agent_ttl)
        for container_id, agent_id in containers.items():
            payload = ctx.process_payload(container_id, agent_id)
            pipe.set(container_id, pack(payload), ex=self.process_ttl)
        try:
            await pipe.execute()
        except Exception as exc:  # redis raises its own tree; callers see one promstat error
            # Keep them dirty so the next write carries the latest payloads.
            for kernel_id, agent_id in kernels.items():
                ctx.dirty_kernels.setdefault(kernel_id, agent_id)
            for container_id, agent_id in containers.items():
                ctx.dirty_containers.setdefault(container_id, agent_id)
            ctx.dirty_agents |= agents
            url = _redis_url(self.redis)
            what = f"writing {count} legacy live_stat keys failed: {exc}"
            raise TransportError(what, url=url) from exc
        self.writes += count
        return count

    async def close(self) -> None:
        """Wait for a scheduled write, write what is left, close an owned client."""
        pending = self._pending
        if pending is not None:
            await pending
        try:
            await self.flush()
        finally:
            if self.own_client:
                await self.redis.aclose()


def _redis_url(client: Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    host, port, db = kwargs.get("host", "?"), kwargs.get("port", "?"), kwargs.get("db", 0)
    return f"redis://{host}:{port}/{db}"


async def replay(fleet: SimulatedFleet, publisher: ValkeyPublisher, times: Sequence[float]) -> int:
    """Step a simulated fleet through ``times``, writing the legacy payloads after each step.

    With a fleet whose clock the caller controls this is the dual-publishing fleet's history,
    deterministic: the same values :func:`~promstat.testing.sim.fleet_openmetrics` backfills into
    Prometheus for the same configuration and times. The fleet must have ``publisher`` among
    its listeners and a clock returning the current step (``clock=lambda: now[0]``).

    Returns:
        The number of keys written.
    """
    written = 0
    for t in times:
        fleet.step(t)
        written += await publisher.flush()
    return written
