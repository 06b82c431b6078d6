"""A seeded, simulated Backend.AI agent fleet built on :mod:`promstat.agent.exporter`.

Every value is a pure function of ``(seed, kernel or device, time)``, so a live fleet scraped
by a real Prometheus and a fleet backfilled from :func:`fleet_openmetrics` hold the same numbers
and tests can compute what any query must return.

Value model (all numbers drawn once per kernel/agent from the seed; ``t`` in seconds):

* counters are exact lines: ``value(t) = base + rate * (t - start)`` with integer ``base``,
  ``rate`` and ``start``. CPU counters (``cpu_util``, ``cpu_used``: the same msec counter, rate
  50..2000 msec/s) stay floats; byte counters (``io_read``, ``io_write``, ``net_rx``,
  ``net_tx``) are ``floor``-ed to integer bytes. With integer sample timestamps every counter
  is an integer and ``irate``/``rate`` equal :meth:`SimulatedFleet.expected_rate` exactly.
* gauges are piecewise constant over ``gauge_period`` buckets (``floor(t / gauge_period)``,
  aligned to the Unix epoch): a per-series level plus per-bucket noise, integer where the
  agent's are. ``mem``: bytes, 10..90 % of the capacity = cgroup limit (1, 2, 4, 8 or 16 GiB).
  ``cuda_mem``: bytes, capacity = GPUs x :data:`GPU_MEMORY`. ``cuda_util``: sum of per-GPU
  integer percents (10..99 each), capacity = GPUs x 100. ``io_scratch_size``: always 0, no
  capacity. Kernel capacities exported: ``cpu_util`` (1000), ``mem``, ``cuda_mem``,
  ``cuda_util`` only; kernels on GPU agents (``round(agents * gpu_agent_ratio)`` of them) have
  1 or 2 GPUs, others none.
* devices per agent (16, 32 or 64 cores; 128/256/512 GiB; 4 or 8 GPUs on GPU agents):
  ``cpu_util`` per core ``"0".."N-1"`` (cumulative msec, 50..1000 msec/s; capacity = the node
  collection interval in msec, ``node_interval * 1000`` plus 0..19 ms of jitter per
  ``node_interval`` bucket), ``mem`` (device ``root``), ``disk`` (device ``/dev/nvme0n1p2``),
  ``net_rx``/``net_tx`` (device ``node``, cumulative bytes, no capacity) and on GPU agents
  ``cuda_mem``/``cuda_util`` per GPU index (capacity :data:`GPU_MEMORY` and 100). Device values
  are independent of the kernels' values.

Measurement timing: like a real agent, each simulated agent *measures* on its own timer, every
``measure_interval`` seconds (default 30 s, Backend.AI's default since 26.4.4) at ticks
``offset + i * measure_interval`` (a per-agent offset drawn from the seed, or
``measure_offset``), not when Prometheus scrapes. Between ticks the exporter keeps serving the
last measurement, so a faster scrape stores each measurement two or more times, as in
production. A kernel is measured first at its start and last at its end (the values it
freezes at). With ``publish_rates`` (default) the exporter also publishes each counter's
``value_type="rate"`` between the last two measurements (see :mod:`promstat.agent.exporter`).

Processes (``processes_per_kernel``, default 0): each kernel's container (id
:meth:`SimulatedFleet.container_id`, 64 hex digits) runs that many processes, pids ``1000 +
i``, measured with the kernel as the agent's process collection does: ``cpu_util``
(capacity 1000) and ``cpu_used`` (the kernel's CPU counter times the process's share ``(i + 1)
/ (n (n + 1) / 2)``), ``mem``, ``io_read``, ``io_write`` (the kernel's, times the share, in
integer bytes). They freeze and leave with their kernel. The OpenMetrics backfill carries no
process series.

Use :meth:`SimulatedFleet.sample`, :meth:`SimulatedFleet.device_sample` (the value measured
last before a time) and :meth:`SimulatedFleet.expected_rate` to compute expected query results.

Churn: each agent has ``kernels_per_agent`` slots; a slot runs one kernel after another.
Lifetimes are ``min_lifetime`` plus an exponential draw (integer seconds), gaps between
kernels 0..``max_gap`` s. The first kernel of a slot started before ``epoch`` (it is mid-life
at ``epoch``). A kernel is live on ``[start, end)``; from ``end`` its series are frozen at
their values at ``end`` and exported until ``end + detention`` (the exporter's detention),
then removed. Without churn (``churn=None``) kernels never end.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from promstat.agent.exporter import (
    CONTAINER_HELP,
    DEVICE_HELP,
    RATE_METRICS,
    ExporterServer,
    KernelState,
    MeasurementListener,
    UtilizationExporter,
    container_series,
    device_series,
    format_value,
)
from promstat.conventions import SeriesNames
from promstat.errors import ConfigError

__all__ = [
    "GPU_MEMORY",
    "ChurnConfig",
    "FleetConfig",
    "SimAgent",
    "SimKernel",
    "SimulatedFleet",
    "fleet_openmetrics",
    "iter_fleet_openmetrics",
    "write_fleet_openmetrics",
]

GIB: Final = 1 << 30
#: Memory of one simulated GPU (an 80 GB H100 as the CUDA plugin reports it).
GPU_MEMORY: Final = 85520809984
_DISK_DEVICE: Final = "/dev/nvme0n1p2"
_MASK64: Final = (1 << 64) - 1
#: A live fleet forgets kernels whose series vanished longer ago than this (seconds).
_FORGET_AFTER: Final = 86400.0

#: Process metrics in the agent's plugin order (CPUPlugin, MemoryPlugin process measures).
_PROCESS_METRICS: Final = ("cpu_util", "cpu_used", "mem", "io_read", "io_write")
_FIRST_PID: Final = 1000

#: Container metrics in the agent's plugin order (CPU, memory, then accelerators).
_BASE_METRICS: Final = (
    "cpu_util",
    "cpu_used",
    "mem",
    "io_read",
    "io_write",
    "net_rx",
    "net_tx",
    "io_scratch_size",
)
_GPU_METRICS: Final = ("cuda_mem", "cuda_util")
_BYTE_COUNTERS: Final = ("io_read", "io_write", "net_rx", "net_tx")
_CPU_COUNTERS: Final = ("cpu_util", "cpu_used")


def _mix64(x: int) -> int:
    # splitmix64 finaliser: a fast, well-spread, platform-independent integer hash.
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _unit(key: int, salt: int, bucket: int) -> float:
    """A deterministic number in [0, 1) for (key, salt, bucket)."""
    return _mix64(key ^ _mix64((salt << 40) ^ (bucket & _MASK64))) / 18446744073709551616.0


def _level(key: int, salt: int, bucket: int, base: float, spread: float, noise: float) -> float:
    """A gauge fraction: a per-series level (``base + spread * U``) plus per-bucket noise.

    Always in ``[base, base + spread + noise)``.
    """
    return base + spread * _unit(key, salt, -1) + noise * _unit(key, salt, bucket)


@dataclass(frozen=True, slots=True)
class ChurnConfig:
    """How kernels come and go.

    Args:
        mean_lifetime: mean kernel lifetime in seconds.
        min_lifetime: shortest lifetime in seconds.
        max_gap: longest pause in seconds before a slot starts its next kernel.
    """

    mean_lifetime: float = 3600.0
    min_lifetime: float = 60.0
    max_gap: float = 30.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_lifetime < self.mean_lifetime:
            raise ConfigError(
                "churn needs 1 <= min_lifetime < mean_lifetime, got "
                f"{self.min_lifetime!r} and {self.mean_lifetime!r}"
            )
        if not self.max_gap >= 0:
            raise ConfigError(f"churn max_gap must be >= 0, not {self.max_gap!r}")


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """Shape of a simulated fleet.

    Args:
        agents: number of agents (one exporter and one HTTP port each when live).
        kernels_per_agent: kernel slots per agent (kernels alive at a time, gaps aside).
        gpu_agent_ratio: share of agents with GPUs (``round(agents * ratio)`` of them).
        seed: determines every id and value.
        churn: kernel turnover; ``None`` keeps the first kernels forever.
        epoch: reference time (Unix seconds) of the schedule; ``None`` means the live fleet's
            clock at construction, or ``start`` for :func:`fleet_openmetrics`. Set it to
            make a live fleet and a backfill identical.
        detention: seconds terminated kernels stay exported (frozen).
        gauge_period: seconds a gauge value stays constant.
        node_interval: the agent's node collection interval (device ``cpu_util`` capacity).
        names: metric and label names.
        exposition_timestamps: stamp every sample with the instant its value was measured
            (tests comparing query paths use it; terminated kernels then linger for the
            lookback instead of getting staleness markers).
        measure_interval: seconds between an agent's measurements (its own timer).
        measure_offset: the phase of every agent's measurement ticks (``offset + i *
            measure_interval``, Unix seconds); ``None`` draws one per agent from the seed.
        publish_rates: export the agent-computed ``value_type="rate"`` series (promstat's
            exporter); ``False`` exports raw counters only, as upstream agents do.
        processes_per_kernel: processes measured in each kernel's container
            (``backendai_process_utilization`` and the per-container process keys).
    """

    agents: int = 20
    kernels_per_agent: int = 50
    gpu_agent_ratio: float = 0.3
    seed: int = 42
    churn: ChurnConfig | None = field(default_factory=ChurnConfig)
    epoch: float | None = None
    detention: float = 600.0
    gauge_period: float = 15.0
    node_interval: float = 30.0
    names: SeriesNames = field(default_factory=SeriesNames)
    exposition_timestamps: bool = False
    measure_interval: float = 30.0
    measure_offset: float | None = None
    publish_rates: bool = True
    processes_per_kernel: int = 0

    def __post_init__(self) -> None:
        if self.agents < 0 or self.kernels_per_agent < 0 or self.processes_per_kernel < 0:
            raise ConfigError("agents, kernels_per_agent and processes_per_kernel must be >= 0")
        if not 0.0 <= self.gpu_agent_ratio <= 1.0:
            raise ConfigError(f"gpu_agent_ratio must be in [0, 1], not {self.gpu_agent_ratio!r}")
        if not self.gauge_period > 0 or not self.node_interval > 0:
            raise ConfigError("gauge_period and node_interval must be > 0")
        if not (self.measure_interval > 0 and math.isfinite(self.measure_interval)):
            raise ConfigError(f"measure_interval must be > 0, not {self.measure_interval!r}")
        if not self.detention >= 0:
            raise ConfigError(f"detention must be >= 0, not {self.detention!r}")


@dataclass(frozen=True, slots=True, eq=False)
class SimKernel:
    """One simulated kernel and the parameters of its value functions.

    ``rates`` and ``bases`` hold the counters (``cpu_util`` and ``cpu_used`` share one);
    ``end`` is ``None`` for a kernel that never terminates.
    """

    kernel_id: str
    agent_id: str
    session_id: str
    user_id: str
    project_id: str
    start: int
    end: int | None
    cores: int
    mem_limit: int
    gpus: int
    key: int
    rates: Mapping[str, int]
    bases: Mapping[str, int]

    @property
    def metrics(self) -> tuple[str, ...]:
        """Container metric names this kernel reports, in plugin order."""
        return _BASE_METRICS + _GPU_METRICS if self.gpus else _BASE_METRICS

    def live_at(self, t: float) -> bool:
        """Whether the kernel runs at ``t`` (``start <= t < end``)."""
        return self.start <= t and (self.end is None or t < self.end)

    def exported_at(self, t: float, detention: float) -> bool:
        """Whether its series are exported at ``t`` (live or within the detention)."""
        return self.start <= t and (self.end is None or t < self.end + detention)


@dataclass(frozen=True, slots=True, eq=False)
class SimAgent:
    """One simulated agent: its devices and the parameters of their value functions."""

    agent_id: str
    index: int
    boot: int
    cores: int
    mem_total: int
    disk_total: int
    gpus: int
    key: int
    core_rates: tuple[int, ...]
    core_bases: tuple[int, ...]
    net_rates: Mapping[str, int]
    net_bases: Mapping[str, int]

    @property
    def devices(self) -> tuple[tuple[str, str], ...]:
        """``(device_metric_name, device_id)`` pairs this agent reports."""
        out: list[tuple[str, str]] = [("cpu_util", str(c)) for c in range(self.cores)]
        out += [("mem", "root"), ("disk", _DISK_DEVICE), ("net_rx", "node"), ("net_tx", "node")]
        for metric in _GPU_METRICS:
            out += [(metric, str(g)) for g in range(self.gpus)]
        return tuple(out)


Values = tuple[list[float], list[float] | None]


class _Slot:
    """A sequence of kernels sharing one place on an agent, generated lazily and in order."""

    __slots__ = ("agent", "kernels", "model", "rng")

    def __init__(self, model: _FleetModel, agent: SimAgent, slot: int) -> None:
        self.model = model
        self.agent = agent
        self.rng = random.Random(f"promstat-sim:{model.config.seed}:{agent.index}:{slot}")
        self.kernels: list[SimKernel] = []

    def _next(self) -> SimKernel:
        rng, cfg = self.rng, self.model.config
        churn = cfg.churn
        # The draw order below is part of the determinism contract: append, never reorder.
        kernel_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        session_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        user_id = self.model.users[rng.randrange(len(self.model.users))]
        project_id = self.model.projects[rng.randrange(len(self.model.projects))]
        cores = rng.choice((1, 2, 4, 8))
        mem_limit = rng.choice((1, 2, 4, 8, 16)) * GIB
        gpus = rng.choice((1, 2)) if self.agent.gpus else 0
        cpu_rate = rng.randint(50, min(2000, cores * 1000))
        rates = {
            "cpu": cpu_rate,
            "io_read": rng.randint(0, 2_000_000),
            "io_write": rng.randint(0, 1_000_000),
            "net_rx": rng.randint(1_000, 5_000_000),
            "net_tx": rng.randint(500, 1_000_000),
        }
        bases = {
            "cpu": rng.randint(0, 600_000),
            "io_read": rng.randint(0, 10**9),
            "io_write": rng.randint(0, 10**9),
            "net_rx": rng.randint(0, 10**9),
            "net_tx": rng.randint(0, 10**9),
        }
        key = rng.getrandbits(64)
        if churn is None:
            lifetime = None
        else:
            extra = rng.expovariate(1.0 / (churn.mean_lifetime - churn.min_lifetime))
            lifetime = max(1, int(churn.min_lifetime + extra))
        if not self.kernels:
            age = rng.randint(0, (lifetime or 3600) - 1)
            start = self.model.epoch - age
        else:
            prev_end = self.kernels[-1].end
            assert prev_end is not None  # only churned slots have successors
            gap = rng.randint(0, int(churn.max_gap)) if churn is not None else 0
            start = prev_end + gap
        kernel = SimKernel(
            kernel_id=kernel_id,
            agent_id=self.agent.agent_id,
            session_id=session_id,
            user_id=user_id,
            project_id=project_id,
            start=start,
            end=None if lifetime is None else start + lifetime,
            cores=cores,
            mem_limit=mem_limit,
            gpus=gpus,
            key=key,
            rates={"cpu_util": cpu_rate, "cpu_used": cpu_rate, **rates},
            bases={"cpu_util": bases["cpu"], "cpu_used": bases["cpu"], **bases},
        )
        self.model.by_id[kernel_id] = kernel
        return kernel

    def overlapping(self, lo: float, hi: float) -> Iterator[SimKernel]:
        """Kernels with ``start <= hi`` whose exported window ``[start, end + detention)``
        reaches past ``lo``."""
        kernels = self.kernels
        if not kernels:
            kernels.append(self._next())
        while kernels[-1].end is not None and kernels[-1].end <= hi:
            kernels.append(self._next())
        detention = self.model.config.detention
        for k in reversed(kernels):
            if k.end is not None and k.end + detention <= lo:
                break
            if k.start <= hi:
                yield k

    def prune(self, before: float) -> None:
        """Forget (from the slot, not the id index) kernels exported only before ``before``."""
        detention = self.model.config.detention
        keep = [k for k in self.kernels if k.end is None or k.end + detention > before]
        if not keep and self.kernels:
            keep = self.kernels[-1:]  # the successor chain continues from the last
        for k in self.kernels:
            if k not in keep:
                del self.model.by_id[k.kernel_id]
        self.kernels = keep


class _FleetModel:
    """The deterministic schedule and value functions of one fleet configuration."""

    def __init__(self, config: FleetConfig, epoch: float) -> None:
        self.config = config
        self.epoch = math.floor(epoch)
        seed = config.seed
        pool = random.Random(f"promstat-sim:{seed}:owners")
        self.users = [str(uuid.UUID(int=pool.getrandbits(128), version=4)) for _ in range(16)]
        self.projects = [str(uuid.UUID(int=pool.getrandbits(128), version=4)) for _ in range(4)]
        n_gpu = round(config.agents * config.gpu_agent_ratio)
        gpu_agents = set(
            random.Random(f"promstat-sim:{seed}:gpu").sample(range(config.agents), n_gpu)
        )
        self.by_id: dict[str, SimKernel] = {}
        self.agents: dict[str, SimAgent] = {}
        self.slots: dict[str, list[_Slot]] = {}
        for i in range(config.agents):
            agent = self._agent(i, gpu=i in gpu_agents)
            self.agents[agent.agent_id] = agent
            slots = [_Slot(self, agent, s) for s in range(config.kernels_per_agent)]
            for slot in slots:  # the first kernels are known (by id) from the start
                slot.kernels.append(slot._next())
            self.slots[agent.agent_id] = slots

    def _agent(self, index: int, *, gpu: bool) -> SimAgent:
        rng = random.Random(f"promstat-sim:{self.config.seed}:agent:{index}")
        cores = rng.choice((16, 32, 64))
        return SimAgent(
            agent_id=f"i-sim-{index:04d}",
            index=index,
            boot=self.epoch - rng.randint(3600, 30 * 86400),
            cores=cores,
            mem_total=rng.choice((128, 256, 512)) * GIB,
            disk_total=rng.choice((982820896768, 1966013157376, 3840755982336)),
            gpus=rng.choice((4, 8)) if gpu else 0,
            key=rng.getrandbits(64),
            core_rates=tuple(rng.randint(50, 1000) for _ in range(cores)),
            core_bases=tuple(rng.randint(0, 10**9) for _ in range(cores)),
            net_rates={
                "net_rx": rng.randint(10_000, 100_000_000),
                "net_tx": rng.randint(10_000, 50_000_000),
            },
            net_bases={"net_rx": rng.randint(0, 10**12), "net_tx": rng.randint(0, 10**12)},
        )

    def kernels_overlapping(self, agent_id: str, lo: float, hi: float) -> list[SimKernel]:
        """Kernels of an agent exported somewhere in ``[lo, hi]``, in slot order."""
        out: list[SimKernel] = []
        for slot in self.slots[agent_id]:
            out.extend(reversed(list(slot.overlapping(lo, hi))))
        return out

    # -- measurement timing -----------------------------------------------------------------

    def offset(self, agent: SimAgent) -> float:
        """Phase of the agent's measurement ticks."""
        cfg = self.config
        if cfg.measure_offset is not None:
            return cfg.measure_offset
        return float(math.floor(_unit(agent.key, 7, 0) * cfg.measure_interval))

    def tick(self, agent: SimAgent, t: float) -> float:
        """The agent's last measurement time at or before ``t``."""
        c, off = self.config.measure_interval, self.offset(agent)
        return off + math.floor((t - off) / c + 1e-9) * c

    def _tick_before(self, agent: SimAgent, t: float) -> float:
        c, off = self.config.measure_interval, self.offset(agent)
        return off + (math.ceil((t - off) / c - 1e-9) - 1) * c

    def kernel_times(self, k: SimKernel, agent: SimAgent, t: float) -> tuple[float, float | None]:
        """``(measured, previous)``: when the kernel's values served at ``t`` were measured,
        and the measurement before (``None`` for the first one, at the kernel's start)."""
        if k.end is not None and t >= k.end:
            return float(k.end), max(float(k.start), self._tick_before(agent, k.end))
        m = self.tick(agent, t)
        if m <= k.start:
            return float(k.start), None
        return m, max(float(k.start), m - self.config.measure_interval)

    # -- value functions: ``times`` are sample times; frozen kernels are clamped here ------

    def kernel_values(self, k: SimKernel, metric: str, times: Sequence[float]) -> Values:
        """Current and capacity values of one kernel metric at ``times``."""
        if k.end is not None:
            end = k.end
            times = [t if t < end else end for t in times]
        start = k.start
        if metric in _CPU_COUNTERS:
            rate, base = k.rates[metric], k.bases[metric]
            cur = [base + rate * (t - start) for t in times]
            return cur, ([1000.0] * len(cur) if metric == "cpu_util" else None)
        if metric in _BYTE_COUNTERS:
            rate, base = k.rates[metric], k.bases[metric]
            return [float(math.floor(base + rate * (t - start))) for t in times], None
        if metric == "io_scratch_size":
            return [0.0] * len(times), None
        period = self.config.gauge_period
        if metric == "mem":
            cap = k.mem_limit
            cur = [
                float(int(cap * _level(k.key, 1, math.floor(t / period), 0.1, 0.6, 0.2)))
                for t in times
            ]
            return cur, [float(cap)] * len(cur)
        if metric == "cuda_mem" and k.gpus:
            cap = k.gpus * GPU_MEMORY
            cur = [
                float(int(cap * _level(k.key, 2, math.floor(t / period), 0.05, 0.7, 0.2)))
                for t in times
            ]
            return cur, [float(cap)] * len(cur)
        if metric == "cuda_util" and k.gpus:
            cur = []
            for t in times:
                bucket = math.floor(t / period)
                cur.append(
                    float(
                        sum(
                            int(100 * _level(k.key, 16 + g, bucket, 0.1, 0.6, 0.3))
                            for g in range(k.gpus)
                        )
                    )
                )
            return cur, [float(k.gpus * 100)] * len(cur)
        raise ConfigError(f"kernel {k.kernel_id} does not report metric {metric!r}")

    def process_values(
        self, k: SimKernel, index: int, metric: str, times: Sequence[float]
    ) -> Values:
        """Current and capacity values of process ``index`` of a kernel at ``times``."""
        n = self.config.processes_per_kernel
        share = (index + 1) / (n * (n + 1) / 2)
        cur, _ = self.kernel_values(k, metric, times)
        if metric in _CPU_COUNTERS:
            values = [c * share for c in cur]
            return values, ([1000.0] * len(values) if metric == "cpu_util" else None)
        return [float(math.floor(c * share)) for c in cur], None

    def device_values(
        self, a: SimAgent, metric: str, device_id: str, times: Sequence[float]
    ) -> Values:
        """Current and capacity values of one device metric at ``times``."""
        period = self.config.gauge_period
        if metric == "cpu_util":
            core = int(device_id)
            rate, base = a.core_rates[core], a.core_bases[core]
            cur = [base + rate * (t - a.boot) for t in times]
            interval = int(self.config.node_interval * 1000)
            node_period = self.config.node_interval
            cap = [
                float(interval + int(20 * _unit(a.key, 5, math.floor(t / node_period))))
                for t in times
            ]
            return cur, cap
        if metric in ("net_rx", "net_tx"):
            rate, base = a.net_rates[metric], a.net_bases[metric]
            return [float(math.floor(base + rate * (t - a.boot))) for t in times], None
        if metric == "mem":
            total = a.mem_total
            cur = [
                float(int(total * _level(a.key, 4, math.floor(t / period), 0.1, 0.5, 0.1)))
                for t in times
            ]
            return cur, [float(total)] * len(cur)
        if metric == "disk":
            total = a.disk_total
            cur = [
                float(int(total * _level(a.key, 3, math.floor(t / period), 0.2, 0.6, 0.01)))
                for t in times
            ]
            return cur, [float(total)] * len(cur)
        if metric in _GPU_METRICS and a.gpus and device_id.isdigit() and int(device_id) < a.gpus:
            g = int(device_id)
            if metric == "cuda_mem":
                cur = [
                    float(
                        int(
                            GPU_MEMORY
                            * _level(a.key, 32 + g, math.floor(t / period), 0.05, 0.7, 0.2)
                        )
                    )
                    for t in times
                ]
                return cur, [float(GPU_MEMORY)] * len(cur)
            cur = [
                float(int(100 * _level(a.key, 64 + g, math.floor(t / period), 0.0, 0.6, 0.4)))
                for t in times
            ]
            return cur, [100.0] * len(cur)
        raise ConfigError(f"agent {a.agent_id} has no device metric {metric!r}/{device_id!r}")


def _legacy_rate(cur: float, prev: float | None, at: float, prev_at: float | None) -> float:
    """The exporter's rate between two measurements (0 first and at a reset)."""
    if prev is None or prev_at is None or cur < prev or not at > prev_at:
        return 0.0
    return (cur - prev) / (at - prev_at)


def _expected_rate(rates: Mapping[str, int], metric: str, what: str) -> float:
    try:
        return float(rates[metric])
    except KeyError:
        raise ConfigError(f"{what}: {metric!r} is not a counter in the simulation") from None


class SimulatedFleet:
    """A live simulated fleet: one :class:`UtilizationExporter` (and HTTP port) per agent.

    Each agent measures at its own ticks (``measure_interval``); while started, a timer task
    observes every measurement into the exporters as its tick passes (so a measurement
    listener sees them on time), and every render (a scrape) first catches up with the
    fleet clock, so a scrape never serves an older measurement than its time calls for.
    :meth:`step` does the same for all agents on demand.

    Args:
        config: fleet shape and seed.
        clock: wall-clock time source (Unix seconds); also the exporters' detention clock.
        listeners: added to every agent's exporter (:meth:`UtilizationExporter.add_listener`),
            e.g. a :class:`~promstat.migration.publisher.ValkeyPublisher` for dual publishing.
    """

    def __init__(
        self,
        config: FleetConfig = FleetConfig(),
        *,
        clock: Callable[[], float] = time.time,
        listeners: Sequence[MeasurementListener] = (),
    ) -> None:
        self.config = config
        self.clock = clock
        epoch = config.epoch if config.epoch is not None else clock()
        self._model = _FleetModel(config, epoch)
        self._exporters: dict[str, UtilizationExporter] = {}
        self._last_prune: dict[str, float] = {}
        for agent_id in self._model.agents:
            exporter = UtilizationExporter(
                agent_id,
                names=config.names,
                detention=config.detention,
                clock=clock,
                publish_rates=config.publish_rates,
            )
            exporter.add_collect_hook(self._hook(agent_id))
            for listener in listeners:
                exporter.add_listener(listener)
            self._exporters[agent_id] = exporter
            self._last_prune[agent_id] = -math.inf
        self._servers: list[ExporterServer] = []
        self._timer: asyncio.Task[None] | None = None
        # agent -> {kernel id, or "" for the devices: measurement time last observed}
        self._observed: dict[str, dict[str, float]] = {a: {} for a in self._model.agents}

    def _hook(self, agent_id: str) -> Callable[[], None]:
        def collect() -> None:
            self._step_agent(agent_id, self.clock())

        return collect

    async def _measure(self) -> None:
        # The agents' own timers: observe each measurement as its tick passes.
        model, c = self._model, self.config.measure_interval
        while True:
            now = self.clock()
            self.step(now)
            upcoming = min((model.tick(a, now) + c for a in model.agents.values()), default=now + c)
            await asyncio.sleep(min(c, max(0.05, upcoming - now)))

    @property
    def epoch(self) -> int:
        """The schedule's reference time (integer Unix seconds)."""
        return self._model.epoch

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start one HTTP server per agent on a loopback port chosen by the OS."""
        if self._servers:
            return
        servers = [ExporterServer(e) for e in self._exporters.values()]
        try:
            await asyncio.gather(*(s.start() for s in servers))
        except BaseException:
            await asyncio.gather(*(s.stop() for s in servers), return_exceptions=True)
            raise
        self._servers = servers
        self.step()  # the first measurement is there before the first scrape
        self._timer = asyncio.create_task(self._measure(), name="promstat-sim-measure")

    async def stop(self) -> None:
        """Stop the measurement timer and every server. Idempotent."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
        servers, self._servers = self._servers, []
        await asyncio.gather(*(s.stop() for s in servers))

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

    @property
    def targets(self) -> list[str]:
        """Scrape targets, ``"127.0.0.1:PORT"``, one per agent in agent order (after start)."""
        return [s.target for s in self._servers]

    @property
    def exporters(self) -> Mapping[str, UtilizationExporter]:
        """The exporter of each agent id."""
        return self._exporters

    # -- updates --------------------------------------------------------------------------

    def step(self, now: float | None = None) -> None:
        """Bring every exporter up to date with the model at ``now`` (default: the clock).

        Scrapes do this per agent on their own; call it to inspect exporters without HTTP.
        """
        t = self.clock() if now is None else now
        for agent_id in self._exporters:
            self._step_agent(agent_id, t)

    def _step_agent(self, agent_id: str, now: float) -> None:
        model = self._model
        exporter = self._exporters[agent_id]
        agent = model.agents[agent_id]
        observed = self._observed[agent_id]
        for k in model.kernels_overlapping(agent_id, now, now):
            state = exporter.kernel_state(k.kernel_id)
            if state is KernelState.DETAINED:
                continue
            if state is None:
                exporter.add_kernel(
                    k.kernel_id,
                    session_id=k.session_id,
                    user_id=k.user_id,
                    project_id=k.project_id,
                )
                observed.pop(k.kernel_id, None)
            at, prev = model.kernel_times(k, agent, now)
            last = observed.get(k.kernel_id)
            if last != at:
                observed[k.kernel_id] = at
                # The previous measurement first unless it was observed (a scrape can skip
                # ticks), so the exporter's rate spans one measurement interval, as the
                # agent's does, and each measurement is observed once.
                for when in (at,) if prev is None or last == prev else (prev, at):
                    for metric in k.metrics:
                        cur, cap = model.kernel_values(k, metric, (when,))
                        exporter.observe_container(
                            k.kernel_id, metric, cur[0], cap[0] if cap else None, at=when
                        )
                    self._observe_processes(exporter, k, when)
            if k.end is not None and now >= k.end:
                exporter.terminate_kernel(k.kernel_id, at=float(k.end))
        tick = model.tick(agent, now)
        last = observed.get("")
        if last != tick:
            observed[""] = tick
            prev = tick - self.config.measure_interval
            for when in (tick,) if last == prev else (prev, tick):
                for metric, device_id in agent.devices:
                    cur, cap = model.device_values(agent, metric, device_id, (when,))
                    exporter.observe_device(
                        metric, device_id, cur[0], cap[0] if cap else None, at=when
                    )
        if self.config.exposition_timestamps:
            exporter.sample_time = round(tick, 3)
        # Bound memory in a long-running fleet: forget kernels gone for more than a day.
        if now - self._last_prune[agent_id] > 3600:
            self._last_prune[agent_id] = now
            for slot in model.slots[agent_id]:
                slot.prune(now - _FORGET_AFTER)
            live = set(exporter.kernel_ids(include_detained=True))
            for kernel_id in [k for k in observed if k and k not in live]:
                del observed[kernel_id]

    def _observe_processes(self, exporter: UtilizationExporter, k: SimKernel, at: float) -> None:
        n = self.config.processes_per_kernel
        if not n:
            return
        container_id = self.container_id(k.kernel_id)
        for index in range(n):
            for metric in _PROCESS_METRICS:
                cur, cap = self._model.process_values(k, index, metric, (at,))
                exporter.observe_process(
                    k.kernel_id,
                    container_id,
                    _FIRST_PID + index,
                    metric,
                    cur[0],
                    cap[0] if cap else None,
                    at=at,
                )

    # -- model queries for tests ----------------------------------------------------------

    def container_id(self, kernel_id: str) -> str:
        """The container id of a kernel (64 hex digits, from the seed)."""
        key = self.kernel(kernel_id).key
        return "".join(f"{_mix64(key ^ (0x5EED + part)):016x}" for part in range(4))

    def process_sample(
        self, kernel_id: str, index: int, metric: str, t: float
    ) -> tuple[float, float | None]:
        """Process ``index``'s (current, capacity) as measured last at or before ``t``."""
        k = self.kernel(kernel_id)
        at, _ = self._model.kernel_times(k, self._model.agents[k.agent_id], t)
        cur, cap = self._model.process_values(k, index, metric, (at,))
        return cur[0], cap[0] if cap else None

    def agent_ids(self) -> list[str]:
        """Agent ids in order (``i-sim-0000`` ...)."""
        return list(self._model.agents)

    def agent(self, agent_id: str) -> SimAgent:
        """The model of one agent.

        Raises:
            ConfigError: unknown agent id.
        """
        try:
            return self._model.agents[agent_id]
        except KeyError:
            raise ConfigError(f"unknown simulated agent {agent_id!r}") from None

    def kernel_ids(self, at: float | None = None, *, agent_id: str | None = None) -> list[str]:
        """Kernels live at ``at`` (default: now), per agent in slot order.

        Args:
            at: the time; detained (terminated) kernels are not included.
            agent_id: only this agent's kernels.
        """
        t = self.clock() if at is None else at
        agents = [agent_id] if agent_id is not None else list(self._model.agents)
        return [
            k.kernel_id
            for a in agents
            for k in self._model.kernels_overlapping(a, t, t)
            if k.live_at(t)
        ]

    def kernel(self, kernel_id: str) -> SimKernel:
        """The model of a kernel: any first kernel of a slot, or any later kernel the schedule
        has produced so far (up to the latest time rendered or asked about).

        Raises:
            ConfigError: unknown kernel id.
        """
        try:
            return self._model.by_id[kernel_id]
        except KeyError:
            raise ConfigError(f"unknown simulated kernel {kernel_id!r}") from None

    def expected_rate(self, kernel_id: str, metric: str) -> float:
        """Per-second rate of a kernel's counter (msec/s for ``cpu_*``, B/s for bytes).

        Raises:
            ConfigError: unknown kernel, or ``metric`` is not a counter.
        """
        return _expected_rate(self.kernel(kernel_id).rates, metric, kernel_id)

    def expected_device_rate(self, agent_id: str, metric: str, device_id: str) -> float:
        """Per-second rate of a device counter (``cpu_util`` per core, ``net_*``).

        Raises:
            ConfigError: unknown agent, device, or not a counter.
        """
        a = self.agent(agent_id)
        if metric == "cpu_util" and device_id.isdigit() and int(device_id) < a.cores:
            return float(a.core_rates[int(device_id)])
        if device_id == "node":
            return _expected_rate(a.net_rates, metric, agent_id)
        raise ConfigError(f"{agent_id}: {metric!r}/{device_id!r} is not a device counter")

    def sample(self, kernel_id: str, metric: str, t: float) -> tuple[float, float | None]:
        """The kernel's ``(current, capacity)`` served at ``t``: its last measurement (frozen
        at ``end`` after it ends).

        Raises:
            ConfigError: unknown kernel or metric.
        """
        k = self.kernel(kernel_id)
        at, _ = self._model.kernel_times(k, self._model.agents[k.agent_id], t)
        cur, cap = self._model.kernel_values(k, metric, (at,))
        return cur[0], (cap[0] if cap else None)

    def measured_at(self, agent_id: str, t: float) -> float:
        """The agent's last measurement time at or before ``t`` (its timer's tick).

        Raises:
            ConfigError: unknown agent id.
        """
        return self._model.tick(self.agent(agent_id), t)

    def device_sample(
        self, agent_id: str, metric: str, device_id: str, t: float
    ) -> tuple[float, float | None]:
        """A device's ``(current, capacity)`` served at ``t`` (its last measurement).

        Raises:
            ConfigError: unknown agent, metric or device.
        """
        a = self.agent(agent_id)
        cur, cap = self._model.device_values(a, metric, device_id, (self._model.tick(a, t),))
        return cur[0], (cap[0] if cap else None)


# -- backfill -----------------------------------------------------------------------------


def _timestamps(start: float, end: float, step: float) -> list[float]:
    if not step > 0:
        raise ConfigError(f"step must be > 0, not {step!r}")
    if end < start:
        raise ConfigError(f"end ({end!r}) is before start ({start!r})")
    n = math.floor((end - start) / step + 1e-9) + 1
    return [float(start + i * step) for i in range(n)]


def _series_lines(prefix: str, values: list[float], stamps: list[str]) -> str:
    # One series' samples, contiguous and in time order (OpenMetrics wants both).
    return "".join([prefix + format_value(v) + s for v, s in zip(values, stamps, strict=True)])


def iter_fleet_openmetrics(
    config: FleetConfig, start: float, end: float, step: float
) -> Iterator[str]:
    """Stream the fleet's samples from ``start`` to ``end`` as OpenMetrics text with timestamps.

    Same value functions, measurement timer and lifecycle as :class:`SimulatedFleet`: kernels
    appear at their start, are frozen from their end and vanish after the detention. Samples
    are at ``start + i * step`` (the scrape times) and hold the last measurement before them,
    plus the agent-computed rate series with ``publish_rates``. Chunks are whole series (one
    kernel metric or device metric each), so the output can be written straight to a file for
    ``promtool tsdb create-blocks-from openmetrics``.

    Args:
        config: the fleet; ``config.epoch`` (default ``start``) fixes the schedule.
        start: first sample time, Unix seconds.
        end: last sample time (included when on the step grid).
        step: seconds between samples.

    Yields:
        Text chunks; joined they form one OpenMetrics exposition ending in ``# EOF``.

    Raises:
        ConfigError: ``step <= 0`` or ``end < start``.
    """
    times = _timestamps(start, end, step)
    model = _FleetModel(config, config.epoch if config.epoch is not None else start)
    names = config.names
    stamps = [" " + format_value(t) + "\n" for t in times]
    cur_vt, cap_vt, rate_vt = names.current_value, names.capacity_value, names.rate_value
    rated = RATE_METRICS if config.publish_rates else frozenset[str]()
    detention = config.detention
    cm, dm = names.container_metric, names.device_metric
    yield f"# HELP {cm} {CONTAINER_HELP}\n# TYPE {cm} gauge\n"
    for agent_id in model.agents:
        for k in model.kernels_overlapping(agent_id, times[0], times[-1]):
            lo = bisect.bisect_left(times, k.start)
            hi = len(times) if k.end is None else bisect.bisect_left(times, k.end + detention)
            if lo >= hi:
                continue
            ts, st = times[lo:hi], stamps[lo:hi]
            agent = model.agents[agent_id]
            measured = [model.kernel_times(k, agent, t) for t in ts]
            at = [m for m, _ in measured]
            chunk: list[str] = []
            for metric in k.metrics:
                cur, cap = model.kernel_values(k, metric, at)
                rate = None
                if metric in rated:
                    before = [m if p is None else p for m, p in measured]
                    prev, _ = model.kernel_values(k, metric, before)
                    rate = [
                        _legacy_rate(c, None if p is None else v, m, p)
                        for c, v, (m, p) in zip(cur, prev, measured, strict=True)
                    ]
                for values, vt in ((cur, cur_vt), (cap, cap_vt), (rate, rate_vt)):
                    if values is None:
                        continue
                    prefix = container_series(
                        names,
                        metric=metric,
                        agent_id=agent_id,
                        kernel_id=k.kernel_id,
                        session_id=k.session_id,
                        user_id=k.user_id,
                        project_id=k.project_id,
                        value_type=vt,
                    )
                    chunk.append(_series_lines(prefix + " ", values, st))
            yield "".join(chunk)
    yield f"# HELP {dm} {DEVICE_HELP}\n# TYPE {dm} gauge\n"
    for agent in model.agents.values():
        ticks = [model.tick(agent, t) for t in times]
        before = [m - config.measure_interval for m in ticks]
        for metric, device_id in agent.devices:
            cur, cap = model.device_values(agent, metric, device_id, ticks)
            rate = None
            if metric in rated:
                prev, _ = model.device_values(agent, metric, device_id, before)
                rate = [
                    _legacy_rate(c, v, m, p)
                    for c, v, m, p in zip(cur, prev, ticks, before, strict=True)
                ]
            for values, vt in ((cur, cur_vt), (cap, cap_vt), (rate, rate_vt)):
                if values is None:
                    continue
                prefix = device_series(
                    names,
                    metric=metric,
                    agent_id=agent.agent_id,
                    device_id=device_id,
                    value_type=vt,
                )
                yield _series_lines(prefix + " ", values, stamps)
    yield "# EOF\n"


def fleet_openmetrics(config: FleetConfig, start: float, end: float, step: float) -> str:
    """Return :func:`iter_fleet_openmetrics` joined into one string (small fleets)."""
    return "".join(iter_fleet_openmetrics(config, start, end, step))


def write_fleet_openmetrics(
    config: FleetConfig, path: str | Path, start: float, end: float, step: float
) -> Path:
    """Stream :func:`iter_fleet_openmetrics` into a file (big fleets) and return its path."""
    out = Path(path)
    with out.open("w", encoding="utf-8") as fh:
        for chunk in iter_fleet_openmetrics(config, start, end, step):
            fh.write(chunk)
    return out
