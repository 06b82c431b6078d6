"""The agent-side publisher of the raw utilization series, with the legacy kernel lifecycle.

An agent uses :class:`UtilizationExporter` *instead of* writing live_stat to Valkey. It keeps
exactly the two families Backend.AI agents export today (section 3.1 of the reference), with
the agent's label names in the agent's order (:class:`~promstat.conventions.SeriesNames`)::

    backendai_container_utilization{container_metric_name, agent_id, kernel_id, session_id,
                                    user_id, project_id, value_type}
    backendai_device_utilization{device_metric_name, agent_id, device_id, value_type}
    backendai_process_utilization{process_metric_name, agent_id, kernel_id, session_id,
                                  user_id, project_id, container_id, pid, value_type}

and the agent's *raw* semantics: ``value_type="current"`` is the raw measurement (counters such
as ``cpu_util``, ``net_*`` and ``io_*`` are cumulative), ``value_type="capacity"`` exists only
once a measurement came with a capacity. A later measurement without a capacity leaves the
capacity series at its last value, as the agent's gauge does.

One addition (``publish_rates=True``, the default): for the counters whose rate live_stat shows
(:data:`RATE_METRICS`), ``value_type="rate"`` carries the per-second rate between the agent's
last two measurements, computed here exactly as legacy's ``stats.rate``: ``(value - previous) /
(at - previous_at)``, ``0`` on the first measurement and when the counter went down (a reset,
BA-3926). Prometheus scrapes on its own timer, usually faster than agents measure, so it stores
each measurement two or more times and cannot tell when a measurement was taken; the agent can.
The rules and the planner prefer this series and fall back to a windowed ``rate()`` of the raw
counter for agents that do not export it (upstream agents), so mixed fleets work.

A measurement flows as ``observe_container(kernel_id, metric, current, capacity, at=t)`` /
``observe_device(metric, device_id, current, capacity, at=t)`` /
``observe_process(kernel_id, container_id, pid, metric, current, capacity, at=t)``: ``at`` is
the measurement time (default: the exporter's clock); observing the same ``at`` again changes no
rate. ``observe_node(metric, current, capacity, at=t)`` passes a plugin's per-node value (the
agent's ``NodeMeasurement.per_node``) to the listeners only: the agent exports no node series
(Prometheus sums the devices), but its Valkey payload has a node entry even when a plugin
reported no device (``disk`` with every partition filtered out).

Processes belong to their kernel: they freeze and leave with it. A process that exited is
ended with :meth:`UtilizationExporter.end_process`; its series stay for the detention, as the
agent's ``lazy_remove_process_metric`` keeps them.

Lifecycle (the agent's ``lazy_remove_container_metric``):
:meth:`UtilizationExporter.terminate_kernel` freezes a kernel's series at their last values;
they stay exported for ``detention`` seconds of the injected clock and are then removed, so
Prometheus marks them stale. Expiry is lazy: it runs whenever the exporter is touched (render,
add, terminate), so tests advance a fake clock instead of sleeping, and nothing leaks as long
as the exporter is used at all.

Exposition is hand-written (no ``prometheus_client``): each series keeps its full line as bytes
(label prefix built once, value formatted when observed), a scrape is one ``bytes.join`` and an
unchanged exporter serves its cached body. :func:`make_app` serves ``GET /metrics`` in the
Prometheus text format 0.0.4, or OpenMetrics 1.0.0 when the ``Accept`` header asks for it;
:class:`ExporterServer` runs that app on a loopback port.

Not thread-safe: use it from one thread (the agent's event loop).
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Final, Self

from aiohttp import web

from promstat.catalog import DEFAULT_CATALOG, rated_counters
from promstat.conventions import SeriesNames
from promstat.errors import ConfigError

__all__ = [
    "CONTAINER_HELP",
    "DEVICE_HELP",
    "OPENMETRICS_CONTENT_TYPE",
    "PROCESS_HELP",
    "RATE_METRICS",
    "TEXT_CONTENT_TYPE",
    "ExporterServer",
    "KernelState",
    "Measured",
    "MeasurementListener",
    "UtilizationExporter",
    "container_series",
    "device_series",
    "escape_label_value",
    "format_value",
    "make_app",
    "process_series",
    "wants_openmetrics",
]

#: ``Content-Type`` of the Prometheus text exposition format.
TEXT_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
#: ``Content-Type`` of the OpenMetrics text format.
OPENMETRICS_CONTENT_TYPE: Final = "application/openmetrics-text; version=1.0.0; charset=utf-8"

#: ``# HELP`` text of the two families.
CONTAINER_HELP: Final = "Backend.AI container utilization: raw measurement (current) and capacity."
DEVICE_HELP: Final = "Backend.AI device utilization: raw measurement (current) and capacity."
PROCESS_HELP: Final = "Backend.AI process utilization: raw measurement (current) and capacity."

#: Counters whose per-second rate live_stat shows (``cpu_util``, ``net_*``: ``current``;
#: ``io_*``: ``stats.rate``): the exporter publishes ``value_type="rate"`` for these.
RATE_METRICS: Final = frozenset(rated_counters(DEFAULT_CATALOG))

# (metric name, value type) -> line.
_Key = tuple[str, str]
# A counter's last measurement: (at, value).
_Last = tuple[float, float]


def _legacy_rate(last: _Last | None, at: float, value: float) -> float | None:
    """Legacy's ``stats.rate`` for a new measurement, or ``None`` if it is not new.

    0 on the first measurement and when the counter went down (diff 0 at a reset).
    """
    if last is None:
        return 0.0
    prev_at, prev = last
    if not at > prev_at:
        return None
    diff = value - prev
    return diff / (at - prev_at) if diff >= 0 else 0.0


@dataclass(frozen=True, slots=True)
class Measured:
    """One measurement as a listener sees it, with the values exactly as passed to the exporter.

    A process's when ``pid`` is set (with ``kernel_id`` and ``container_id``), else a
    container's when ``kernel_id`` is set, else the node's when ``node`` is set, else a
    device's.
    """

    agent_id: str
    metric: str
    current: float | str
    capacity: float | str | None
    #: When it was measured: the exporter's ``sample_time`` if set, else its clock.
    at: float
    kernel_id: str | None = None
    device_id: str | None = None
    #: A plugin's per-node value (:meth:`UtilizationExporter.observe_node`).
    node: bool = False
    container_id: str | None = None
    pid: int | None = None


#: Called with every recorded measurement (e.g. the legacy Valkey publisher).
MeasurementListener = Callable[[Measured], None]


class KernelState(StrEnum):
    """Where a kernel is in the exporter's lifecycle."""

    #: Registered and updated by observations.
    LIVE = "live"
    #: Terminated: series frozen at their last values until the detention passes.
    DETAINED = "detained"


def escape_label_value(value: str) -> str:
    """Escape a label value for the text and OpenMetrics formats.

    Args:
        value: the raw label value.

    Returns:
        The value with ``\\``, ``"`` and newline escaped (the body between the quotes).
    """
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def format_value(value: float) -> str:
    """Format a sample value the way Prometheus parses it.

    Integral values print without a fraction (``"1181116006"``), others as Python's shortest
    round-tripping repr (``"0.5"``, ``"1.5e+21"``); NaN and infinities as ``NaN``, ``+Inf``,
    ``-Inf``.

    Args:
        value: the sample value.

    Returns:
        The text for the value.
    """
    if isinstance(value, int):  # ints pass type checks as floats but lack is_integer() on 3.11
        return str(value)
    if value.is_integer():
        # Exactly representable integers print shorter without ".0"; beyond 2**53 repr keeps
        # the exponent form that round-trips.
        if -9007199254740992.0 <= value <= 9007199254740992.0:
            return str(int(value))
        return repr(value)
    if value != value:
        return "NaN"
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    return repr(value)


def _fmt(value: float) -> bytes:
    return format_value(value).encode("ascii")


def _as_float(value: float | str, what: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what}: {value!r} is not a number") from exc


def _q(value: str) -> str:
    return '"' + escape_label_value(value) + '"'


def container_series(
    names: SeriesNames,
    *,
    metric: str,
    agent_id: str,
    kernel_id: str,
    session_id: str,
    user_id: str,
    project_id: str,
    value_type: str,
) -> str:
    """Return ``name{labels}`` of a container series, labels in the agent's order.

    Args:
        names: metric and label names.
        metric: the ``container_metric_name`` value.
        agent_id: the ``agent_id`` value.
        kernel_id: the ``kernel_id`` value.
        session_id: the ``session_id`` value.
        user_id: the ``user_id`` value.
        project_id: the ``project_id`` value.
        value_type: ``names.current_value`` or ``names.capacity_value``.

    Returns:
        The series text, label values escaped, as the exporter writes it.
    """
    n = names
    return (
        f"{n.container_metric}{{{n.container_metric_label}={_q(metric)},"
        f"{n.agent_label}={_q(agent_id)},{n.kernel_label}={_q(kernel_id)},"
        f"{n.session_label}={_q(session_id)},{n.user_label}={_q(user_id)},"
        f"{n.project_label}={_q(project_id)},{n.value_type_label}={_q(value_type)}}}"
    )


def process_series(
    names: SeriesNames,
    *,
    metric: str,
    agent_id: str,
    kernel_id: str,
    owner: tuple[str, str, str],
    container_id: str,
    pid: int,
    value_type: str,
) -> str:
    """Return ``name{labels}`` of a process series, labels in the agent's order.

    Args:
        names: metric and label names.
        metric: the ``process_metric_name`` value.
        agent_id: the ``agent_id`` value.
        kernel_id: the ``kernel_id`` value.
        owner: the (session, user, project) label values.
        container_id: the ``container_id`` value.
        pid: the ``pid`` value (the process id in the agent's namespace).
        value_type: ``names.current_value`` or ``names.capacity_value``.

    Returns:
        The series text, label values escaped, as the exporter writes it.
    """
    n = names
    return (
        f"{n.process_metric}{{{n.process_metric_label}={_q(metric)},"
        f"{n.agent_label}={_q(agent_id)},{n.kernel_label}={_q(kernel_id)},"
        f"{n.session_label}={_q(owner[0])},{n.user_label}={_q(owner[1])},"
        f"{n.project_label}={_q(owner[2])},{n.container_label}={_q(container_id)},"
        f"{n.pid_label}={_q(str(pid))},{n.value_type_label}={_q(value_type)}}}"
    )


def device_series(
    names: SeriesNames, *, metric: str, agent_id: str, device_id: str, value_type: str
) -> str:
    """Return ``name{labels}`` of a device series, labels in the agent's order.

    Args:
        names: metric and label names.
        metric: the ``device_metric_name`` value.
        agent_id: the ``agent_id`` value.
        device_id: the ``device_id`` value.
        value_type: ``names.current_value`` or ``names.capacity_value``.

    Returns:
        The series text, label values escaped, as the exporter writes it.
    """
    n = names
    return (
        f"{n.device_metric}{{{n.device_metric_label}={_q(metric)},"
        f"{n.agent_label}={_q(agent_id)},{n.device_label}={_q(device_id)},"
        f"{n.value_type_label}={_q(value_type)}}}"
    )


# (container id, pid, metric, value type) -> line; (container id, pid) -> a process.
_ProcKey = tuple[str, int, str, str]
_Proc = tuple[str, int]


class _Kernel:
    """One kernel's series: label prefixes and full exposition lines, in observation order."""

    __slots__ = (
        "kernel_id",
        "last",
        "lines",
        "owner",
        "prefixes",
        "process_ends",
        "process_last",
        "process_lines",
        "state",
    )

    def __init__(self, kernel_id: str, owner: tuple[str, str, str]) -> None:
        self.kernel_id = kernel_id
        self.owner = owner
        # Series text plus the separating space, built once per series.
        self.prefixes: dict[_Key, bytes] = {}
        self.lines: dict[_Key, bytes] = {}
        # Last measurement of each rated counter.
        self.last: dict[str, _Last] = {}
        self.state = KernelState.LIVE
        # Its processes' lines, last rated measurements, and when ended processes leave.
        self.process_lines: dict[_ProcKey, bytes] = {}
        self.process_last: dict[tuple[str, int, str], _Last] = {}
        self.process_ends: dict[_Proc, float] = {}


class UtilizationExporter:
    """Publishes one agent's container and device utilization series.

    Args:
        agent_id: the agent's id (the ``agent_id`` label of every series).
        names: metric and label names (operators relabel; the defaults are Backend.AI's).
        detention: seconds a terminated kernel's series stay exported, frozen (agent default
            ``UTILIZATION_METRIC_DETENTION = 600``). ``0`` removes them at once.
        clock: the time source of the detention and the default measurement time; inject a
            fake in tests.
        publish_rates: also export ``value_type="rate"`` for ``rate_metrics`` (see the module
            docstring); ``False`` exports exactly what upstream agents do.
        rate_metrics: counter names (container and device) that get a rate series.

    Raises:
        ConfigError: ``detention`` is negative or NaN.
    """

    def __init__(
        self,
        agent_id: str,
        *,
        names: SeriesNames = SeriesNames(),  # noqa: B008 - frozen dataclass, safe default
        detention: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        publish_rates: bool = True,
        rate_metrics: Collection[str] = RATE_METRICS,
    ) -> None:
        if not detention >= 0:
            raise ConfigError(f"detention must be >= 0 seconds, not {detention!r}")
        self.agent_id = agent_id
        self.names = names
        self.detention = float(detention)
        self.clock = clock
        self.rate_metrics: frozenset[str] = (
            frozenset(rate_metrics) if publish_rates else frozenset()
        )
        self._kernels: dict[str, _Kernel] = {}
        self._device_prefixes: dict[tuple[str, str, str], bytes] = {}
        self._device_lines: dict[tuple[str, str, str], bytes] = {}
        self._device_last: dict[tuple[str, str], _Last] = {}
        # (deadline, sequence, kernel record): lazily popped; stale entries (re-added or removed
        # kernels) are recognised by identity and skipped.
        self._expiry: list[tuple[float, int, _Kernel]] = []
        self._seq = 0
        self._hooks: list[Callable[[], None]] = []
        self._listeners: list[MeasurementListener] = []
        #: When set (Unix seconds), every sample line carries this exposition timestamp.
        #: A simulator sets it to the instant its values were computed, so rates are exact
        #: whatever the scrape jitter (Prometheus then skips staleness markers for these
        #: series; a real agent leaves it None).
        self.sample_time: float | None = None
        self._version = 0
        self._cache: dict[bool, tuple[int, bytes]] = {}
        n = names
        self._headers = {
            fmt: (
                self._family_header(n.container_metric, CONTAINER_HELP),
                self._family_header(n.device_metric, DEVICE_HELP),
            )
            for fmt in (False, True)
        }
        self._process_headers = {
            fmt: self._family_header(n.process_metric, PROCESS_HELP) for fmt in (False, True)
        }

    @staticmethod
    def _family_header(metric: str, help_text: str) -> bytes:
        return f"# HELP {metric} {help_text}\n# TYPE {metric} gauge\n".encode()

    # -- kernels ------------------------------------------------------------------------------

    def add_kernel(
        self,
        kernel_id: str,
        *,
        session_id: str = "undefined",
        user_id: str = "undefined",
        project_id: str = "undefined",
    ) -> None:
        """Register a kernel so its measurements can be observed.

        Idempotent for a live kernel with the same ownership. A live kernel with different
        ownership is relabelled (its series move to the new label set, values kept). A detained
        kernel starts fresh: its frozen series are dropped at once.

        Args:
            kernel_id: ``str(KernelId)``, a lowercase hyphenated UUID.
            session_id: session id label; ``"undefined"`` when unknown (agent's ``UNDEFINED``).
            user_id: owner user id label.
            project_id: owner project id label.
        """
        self._expire(self.clock())
        owner = (session_id, user_id, project_id)
        rec = self._kernels.get(kernel_id)
        if rec is not None and rec.state is KernelState.LIVE:
            if rec.owner == owner:
                return
            self._relabel(rec, owner)
            return
        if rec is not None:
            del self._kernels[kernel_id]
        self._kernels[kernel_id] = _Kernel(kernel_id, owner)
        self._version += 1

    def _relabel(self, rec: _Kernel, owner: tuple[str, str, str]) -> None:
        fresh = _Kernel(rec.kernel_id, owner)
        for key, line in rec.lines.items():
            prefix = self._container_prefix(fresh, key)
            fresh.lines[key] = prefix + line[len(rec.prefixes[key]) :]
        fresh.last = rec.last
        for pkey, line in rec.process_lines.items():
            fresh.process_lines[pkey] = self._process_prefix(fresh, pkey) + line.rsplit(b" ", 1)[1]
        fresh.process_last = rec.process_last
        fresh.process_ends = rec.process_ends
        self._kernels[rec.kernel_id] = fresh
        self._version += 1

    def _container_prefix(self, rec: _Kernel, key: _Key) -> bytes:
        prefix = rec.prefixes.get(key)
        if prefix is None:
            n = self.names
            text = container_series(
                n,
                metric=key[0],
                agent_id=self.agent_id,
                kernel_id=rec.kernel_id,
                session_id=rec.owner[0],
                user_id=rec.owner[1],
                project_id=rec.owner[2],
                value_type=key[1],
            )
            prefix = (text + " ").encode()
            rec.prefixes[key] = prefix
        return prefix

    def observe_container(
        self,
        kernel_id: str,
        metric: str,
        current: float | str,
        capacity: float | str | None = None,
        *,
        at: float | None = None,
    ) -> bool:
        """Record one container measurement (the agent's ``observe_container_metric``).

        Args:
            kernel_id: a kernel registered with :meth:`add_kernel`.
            metric: container metric name, e.g. ``"cpu_util"``.
            current: the raw value (cumulative for counters); numbers or numeric strings
                (the agent passes ``str(Decimal)``).
            capacity: the measurement's capacity, or ``None`` when it has none (an existing
                capacity series then keeps its last value).
            at: when the value was measured (seconds, any epoch; default: the clock). The
                rate series of a counter in :attr:`rate_metrics` is the rate since the
                previous ``at``; the same ``at`` again is the same measurement (rate kept).

        Returns:
            ``True`` if recorded; ``False`` if the kernel is detained (terminated: values stay
            frozen, so a collection racing the termination is harmless).

        Raises:
            ConfigError: the kernel was never added (or was removed or expired), or a value is
                not a number. Unknown kernels are an error rather than auto-registered so a late
                observation cannot resurrect a terminated kernel without ownership labels.
        """
        rec = self._kernels.get(kernel_id)
        if rec is None:
            raise ConfigError(
                f"kernel {kernel_id!r} is not registered with agent {self.agent_id!r}; "
                "call add_kernel() first"
            )
        if rec.state is not KernelState.LIVE:
            return False
        n = self.names
        value = _as_float(current, metric)
        lines = [(n.current_value, value)]
        if capacity is not None:
            lines.append((n.capacity_value, _as_float(capacity, f"{metric} capacity")))
        if metric in self.rate_metrics:
            when = self.clock() if at is None else at
            rate = _legacy_rate(rec.last.get(metric), when, value)
            if rate is not None:
                rec.last[metric] = (when, value)
                lines.append((n.rate_value, rate))
        for value_type, v in lines:
            key = (metric, value_type)
            rec.lines[key] = self._container_prefix(rec, key) + _fmt(v) + b"\n"
        self._version += 1
        if self._listeners:
            self._notify(
                Measured(self.agent_id, metric, current, capacity, self._now(at), kernel_id)
            )
        return True

    def _process_prefix(self, rec: _Kernel, key: _ProcKey) -> bytes:
        text = process_series(
            self.names,
            metric=key[2],
            agent_id=self.agent_id,
            kernel_id=rec.kernel_id,
            owner=rec.owner,
            container_id=key[0],
            pid=key[1],
            value_type=key[3],
        )
        return (text + " ").encode()

    def observe_process(
        self,
        kernel_id: str,
        container_id: str,
        pid: int,
        metric: str,
        current: float | str,
        capacity: float | str | None = None,
        *,
        at: float | None = None,
    ) -> bool:
        """Record one process measurement (the agent's ``observe_process_metric``).

        Args:
            kernel_id: the kernel the container runs (registered with :meth:`add_kernel`).
            container_id: the container id (the agent's process keys in Valkey are these).
            pid: the process id.
            metric: e.g. ``"cpu_util"``, ``"cpu_used"``, ``"mem"``, ``"io_read"``.
            current: the raw value (cumulative for counters).
            capacity: the measurement's capacity, or ``None``.
            at: when the value was measured, as for :meth:`observe_container`.

        Returns:
            ``True`` if recorded; ``False`` if the kernel is detained.

        Raises:
            ConfigError: the kernel was never added, or a value is not a number.
        """
        rec = self._kernels.get(kernel_id)
        if rec is None:
            raise ConfigError(
                f"kernel {kernel_id!r} is not registered with agent {self.agent_id!r}; "
                "call add_kernel() first"
            )
        if rec.state is not KernelState.LIVE:
            return False
        n = self.names
        value = _as_float(current, metric)
        lines = [(n.current_value, value)]
        if capacity is not None:
            lines.append((n.capacity_value, _as_float(capacity, f"{metric} capacity")))
        if metric in self.rate_metrics:
            when = self.clock() if at is None else at
            last_key = (container_id, pid, metric)
            rate = _legacy_rate(rec.process_last.get(last_key), when, value)
            if rate is not None:
                rec.process_last[last_key] = (when, value)
                lines.append((n.rate_value, rate))
        # A process measured again is alive again (a pid seen after its end, as the agent).
        rec.process_ends.pop((container_id, pid), None)
        for value_type, v in lines:
            key = (container_id, pid, metric, value_type)
            line = rec.process_lines.get(key)
            if line is not None:  # reuse the label prefix: up to the value
                prefix = line[: line.rindex(b" ") + 1]
            else:
                prefix = self._process_prefix(rec, key)
            rec.process_lines[key] = prefix + _fmt(v) + b"\n"
        self._version += 1
        if self._listeners:
            self._notify(
                Measured(
                    self.agent_id,
                    metric,
                    current,
                    capacity,
                    self._now(at),
                    kernel_id,
                    container_id=container_id,
                    pid=pid,
                )
            )
        return True

    def end_process(
        self, kernel_id: str, container_id: str, pid: int, *, at: float | None = None
    ) -> bool:
        """A process exited: keep its series for the detention, then remove them.

        The agent's ``lazy_remove_process_metric``. A later measurement of the same pid keeps
        it (the end is cancelled).

        Returns:
            ``True`` if the process had series and was not already ending.
        """
        rec = self._kernels.get(kernel_id)
        proc = (container_id, pid)
        if rec is None or proc in rec.process_ends:
            return False
        if not any(k[:2] == proc for k in rec.process_lines):
            return False
        rec.process_ends[proc] = (self.clock() if at is None else at) + self.detention
        self._expire(self.clock())
        return True

    def process_ids(self, kernel_id: str) -> list[tuple[str, int]]:
        """The (container id, pid) pairs exported for a kernel, in first-observation order."""
        self._expire(self.clock())
        rec = self._kernels.get(kernel_id)
        if rec is None:
            return []
        return list(dict.fromkeys(k[:2] for k in rec.process_lines))

    def terminate_kernel(self, kernel_id: str, *, at: float | None = None) -> bool:
        """Freeze a kernel's series and schedule their removal after the detention.

        Args:
            kernel_id: the kernel.
            at: clock time the termination counts from (default: now). The series are removed
                once ``clock() >= at + detention``.

        Returns:
            ``True`` if the kernel was live; ``False`` if unknown or already detained
            (a repeated CLEAN event is harmless).
        """
        rec = self._kernels.get(kernel_id)
        if rec is None or rec.state is not KernelState.LIVE:
            return False
        now = self.clock()
        rec.state = KernelState.DETAINED
        self._seq += 1
        heapq.heappush(self._expiry, ((now if at is None else at) + self.detention, self._seq, rec))
        self._version += 1
        self._expire(now)
        return True

    def remove_kernel(self, kernel_id: str) -> bool:
        """Remove a kernel's series now (live or detained).

        Returns:
            ``True`` if the kernel had series registered.
        """
        rec = self._kernels.pop(kernel_id, None)
        if rec is None:
            return False
        self._version += 1
        return True

    def kernel_state(self, kernel_id: str) -> KernelState | None:
        """Return the kernel's lifecycle state, or ``None`` if it is not exported."""
        self._expire(self.clock())
        rec = self._kernels.get(kernel_id)
        return None if rec is None else rec.state

    def kernel_ids(self, *, include_detained: bool = False) -> list[str]:
        """Return the exported kernel ids in registration order.

        Args:
            include_detained: also list terminated kernels still in their detention.
        """
        self._expire(self.clock())
        return [
            k
            for k, rec in self._kernels.items()
            if include_detained or rec.state is KernelState.LIVE
        ]

    def _expire(self, now: float) -> int:
        removed = 0
        for rec in self._kernels.values():
            if rec.process_ends:
                self._expire_processes(rec, now)
        heap = self._expiry
        while heap and heap[0][0] <= now:
            _, _, rec = heapq.heappop(heap)
            if self._kernels.get(rec.kernel_id) is rec:
                del self._kernels[rec.kernel_id]
                removed += 1
        if removed:
            self._version += 1
        return removed

    def _expire_processes(self, rec: _Kernel, now: float) -> None:
        gone = {proc for proc, deadline in rec.process_ends.items() if deadline <= now}
        if not gone:
            return
        for proc in gone:
            del rec.process_ends[proc]
        rec.process_lines = {k: v for k, v in rec.process_lines.items() if k[:2] not in gone}
        rec.process_last = {k: v for k, v in rec.process_last.items() if k[:2] not in gone}
        self._version += 1

    def expire(self) -> int:
        """Remove kernels whose detention has passed (also done lazily by every render).

        Returns:
            How many kernels were removed.
        """
        return self._expire(self.clock())

    # -- devices ------------------------------------------------------------------------------

    def _device_prefix(self, key: tuple[str, str, str]) -> bytes:
        prefix = self._device_prefixes.get(key)
        if prefix is None:
            n = self.names
            text = device_series(
                n,
                metric=key[0],
                agent_id=self.agent_id,
                device_id=key[1],
                value_type=key[2],
            )
            prefix = (text + " ").encode()
            self._device_prefixes[key] = prefix
        return prefix

    def observe_device(
        self,
        metric: str,
        device_id: str,
        current: float | str,
        capacity: float | str | None = None,
        *,
        at: float | None = None,
    ) -> None:
        """Record one device measurement (the agent's ``observe_device_metric``).

        Args:
            metric: device metric name, e.g. ``"cpu_util"`` (per core), ``"mem"`` (``root``).
            device_id: device id, e.g. ``"0"``, ``"root"``, ``"/dev/nvme0n1p2"``, ``"node"``.
            current: the raw value (per-core cumulative msec for ``cpu_util``).
            capacity: the capacity, or ``None`` (``net_*`` have none).
            at: when the value was measured (default: the clock); as for
                :meth:`observe_container`.

        Raises:
            ConfigError: a value is not a number.
        """
        n = self.names
        value = _as_float(current, metric)
        lines = [(n.current_value, value)]
        if capacity is not None:
            lines.append((n.capacity_value, _as_float(capacity, f"{metric} capacity")))
        if metric in self.rate_metrics:
            when = self.clock() if at is None else at
            rate = _legacy_rate(self._device_last.get((metric, device_id)), when, value)
            if rate is not None:
                self._device_last[(metric, device_id)] = (when, value)
                lines.append((n.rate_value, rate))
        for value_type, v in lines:
            key = (metric, device_id, value_type)
            self._device_lines[key] = self._device_prefix(key) + _fmt(v) + b"\n"
        self._version += 1
        if self._listeners:
            m = Measured(
                self.agent_id, metric, current, capacity, self._now(at), device_id=device_id
            )
            self._notify(m)

    def observe_node(
        self,
        metric: str,
        current: float | str,
        capacity: float | str | None = None,
        *,
        at: float | None = None,
    ) -> None:
        """Pass a plugin's per-node measurement to the listeners (no series is exported).

        The agent's ``NodeMeasurement.per_node``: its Valkey payload's ``node`` entry comes
        from it, not from the devices, so a plugin reporting no device (``disk`` with every
        partition filtered out: zeros) still has one. Prometheus sums the device series.

        Args:
            metric: node metric name, e.g. ``"disk"``.
            current: the raw value (cumulative for counters).
            capacity: the capacity, or ``None``.
            at: when the value was measured, as for :meth:`observe_device`.

        Raises:
            ConfigError: a value is not a number.
        """
        _as_float(current, metric)
        if capacity is not None:
            _as_float(capacity, f"{metric} capacity")
        if self._listeners:
            self._notify(
                Measured(self.agent_id, metric, current, capacity, self._now(at), node=True)
            )

    def remove_device(self, metric: str, device_id: str) -> bool:
        """Remove a device metric's series (current, capacity and rate) now.

        Returns:
            ``True`` if there was a series to remove.
        """
        found = False
        n = self.names
        self._device_last.pop((metric, device_id), None)
        for value_type in (n.current_value, n.capacity_value, n.rate_value):
            key = (metric, device_id, value_type)
            self._device_prefixes.pop(key, None)
            found = self._device_lines.pop(key, None) is not None or found
        if found:
            self._version += 1
        return found

    # -- exposition ---------------------------------------------------------------------------

    def add_listener(self, listener: MeasurementListener) -> None:
        """Call ``listener(Measured(...))`` after every recorded container or device measurement.

        Lets a second pipeline consume the same measurements (dual publishing to Valkey during
        a migration, :mod:`promstat.migration.publisher`). Listeners run synchronously, in order.
        """
        self._listeners.append(listener)

    def _now(self, at: float | None = None) -> float:
        # The measurement time the caller passed wins: it is when the agent measured.
        if at is not None:
            return at
        return self.sample_time if self.sample_time is not None else self.clock()

    def _notify(self, measured: Measured) -> None:
        for listener in self._listeners:
            listener(measured)

    def add_collect_hook(self, hook: Callable[[], None]) -> None:
        """Call ``hook()`` at the start of every :meth:`render`, before expiry.

        Lets a caller compute values at scrape time (the simulator does, so counters are exact
        functions of the scrape time).
        """
        self._hooks.append(hook)

    @property
    def series_count(self) -> int:
        """Number of exported series (both families, both value types)."""
        self._expire(self.clock())
        return sum(
            len(r.lines) + len(r.process_lines) for r in self._kernels.values()
        ) + len(self._device_lines)

    def __len__(self) -> int:
        """Number of exported kernels, live or detained."""
        self._expire(self.clock())
        return len(self._kernels)

    def _chunks(self, openmetrics: bool) -> list[bytes]:
        container_header, device_header = self._headers[openmetrics]
        parts = [container_header]
        extend = parts.extend
        for rec in self._kernels.values():
            extend(rec.lines.values())
        parts.append(device_header)
        extend(self._device_lines.values())
        # The process family only once a process was measured: agents without process
        # collection expose exactly the two families.
        if any(rec.process_lines for rec in self._kernels.values()):
            parts.append(self._process_headers[openmetrics])
            for rec in self._kernels.values():
                extend(rec.process_lines.values())
        if openmetrics:
            parts.append(b"# EOF\n")
        return parts

    def render(self, openmetrics: bool = False) -> bytes:
        """Return the exposition of every exported series.

        Runs the collect hooks, drops expired kernels, then joins the cached lines. Families
        are grouped (container, then device), each with ``# HELP``/``# TYPE gauge``; kernels
        appear in registration order, a kernel's series in first-observation order.

        Args:
            openmetrics: OpenMetrics 1.0.0 (ends with ``# EOF``) instead of text format 0.0.4.

        Returns:
            The UTF-8 body.
        """
        for hook in self._hooks:
            hook()
        self._expire(self.clock())
        if self.sample_time is not None:
            return self._render_timestamped(openmetrics, self.sample_time)
        cached = self._cache.get(openmetrics)
        if cached is not None and cached[0] == self._version:
            return cached[1]
        body = b"".join(self._chunks(openmetrics))
        self._cache[openmetrics] = (self._version, body)
        return body

    def _render_timestamped(self, openmetrics: bool, sample_time: float) -> bytes:
        stamp = _timestamp_text(sample_time, openmetrics)
        return b"".join(
            part if part.startswith(b"#") else part[:-1] + stamp
            for part in self._chunks(openmetrics)
        )


def _timestamp_text(sample_time: float, openmetrics: bool) -> bytes:
    # OpenMetrics timestamps are seconds, the text format's are milliseconds.
    if openmetrics:
        return f" {sample_time:.3f}\n".encode()
    return f" {round(sample_time * 1000)}\n".encode()


def wants_openmetrics(accept: str) -> bool:
    """Return whether an ``Accept`` header asks for OpenMetrics (with a non-zero ``q``).

    Prometheus sends ``application/openmetrics-text;version=1.0.0,...;q=0.75,
    text/plain;version=0.0.4;q=0.5,*/*;q=0.1``.
    """
    for media_range in accept.split(","):
        media_type, *params = media_range.split(";")
        if media_type.strip().lower() != "application/openmetrics-text":
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
        if q > 0:
            return True
    return False


_EXPORTER_KEY: Final = web.AppKey("promstat_exporter", UtilizationExporter)


async def _metrics_handler(request: web.Request) -> web.Response:
    exporter = request.app[_EXPORTER_KEY]
    openmetrics = wants_openmetrics(request.headers.get("Accept", ""))
    body = exporter.render(openmetrics=openmetrics)
    return web.Response(
        body=body,
        headers={"Content-Type": OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE},
    )


def make_app(exporter: UtilizationExporter, *, path: str = "/metrics") -> web.Application:
    """Return an aiohttp application serving ``GET path`` (and ``HEAD``) from ``exporter``.

    The format follows the ``Accept`` header: OpenMetrics 1.0.0 when it names
    ``application/openmetrics-text``, otherwise the text format 0.0.4.
    """
    app = web.Application()
    app[_EXPORTER_KEY] = exporter
    app.router.add_get(path, _metrics_handler)
    return app


class ExporterServer:
    """Serves one exporter over HTTP on a loopback port; an async context manager.

    Args:
        exporter: what to serve.
        host: interface to bind (loopback by default).
        port: port to bind; ``0`` lets the OS choose (see :attr:`port` after start).
    """

    def __init__(
        self, exporter: UtilizationExporter, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.exporter = exporter
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Bind and start serving. Idempotent."""
        if self._runner is not None:
            return
        runner = web.AppRunner(make_app(self.exporter), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self._requested_port)
            await site.start()
            address = runner.addresses[0]
            self._port = int(address[1])
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner

    async def stop(self) -> None:
        """Stop serving and release the port. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def port(self) -> int:
        """The bound port.

        Raises:
            ConfigError: the server was never started.
        """
        if self._port is None:
            raise ConfigError("ExporterServer is not started")
        return self._port

    @property
    def target(self) -> str:
        """``host:port``, the form Prometheus' ``static_configs`` targets take."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The metrics URL, ``http://host:port/metrics``."""
        return f"http://{self.target}/metrics"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
