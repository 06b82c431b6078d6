"""The simulated fleet's value model: every value a pure function of seed, series and time.

Kernels and agents drawn from the seed (:class:`SimKernel`, :class:`SimAgent`), the churn of
kernel slots, and :class:`FleetModel`, which answers what any series holds at any time; see
:mod:`promstat.testing.sim` for the model itself.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from promstat.errors import ConfigError
from promstat.testing.sim.config import FleetConfig

__all__ = [
    "FIRST_PID",
    "FORGET_AFTER",
    "GIB",
    "GPU_MEMORY",
    "PROCESS_METRICS",
    "FleetModel",
    "SimAgent",
    "SimKernel",
    "expected_rate",
    "legacy_rate",
    "mix64",
]

GIB: Final = 1 << 30
#: Memory of one simulated GPU (an 80 GB H100 as the CUDA plugin reports it).
GPU_MEMORY: Final = 85520809984
_DISK_DEVICE: Final = "/dev/nvme0n1p2"
_MASK64: Final = (1 << 64) - 1
#: A live fleet forgets kernels whose series vanished longer ago than this (seconds).
FORGET_AFTER: Final = 86400.0

#: Process metrics in the agent's plugin order (CPUPlugin, MemoryPlugin process measures).
PROCESS_METRICS: Final = ("cpu_util", "cpu_used", "mem", "io_read", "io_write")
FIRST_PID: Final = 1000

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


def mix64(x: int) -> int:
    """Hash an integer to 64 well-spread bits (the splitmix64 finaliser).

    Fast and platform-independent: every simulated value derives from it and the seed.
    """
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _unit(key: int, salt: int, bucket: int) -> float:
    """A deterministic number in [0, 1) for (key, salt, bucket)."""
    return mix64(key ^ mix64((salt << 40) ^ (bucket & _MASK64))) / 18446744073709551616.0


def _level(key: int, salt: int, bucket: int, base: float, spread: float, noise: float) -> float:
    """A gauge fraction: a per-series level (``base + spread * U``) plus per-bucket noise.

    Always in ``[base, base + spread + noise)``.
    """
    return base + spread * _unit(key, salt, -1) + noise * _unit(key, salt, bucket)


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

    def __init__(self, model: FleetModel, agent: SimAgent, slot: int) -> None:
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


class FleetModel:
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


def legacy_rate(cur: float, prev: float | None, at: float, prev_at: float | None) -> float:
    """The exporter's rate between two measurements (0 first and at a reset)."""
    if prev is None or prev_at is None or cur < prev or not at > prev_at:
        return 0.0
    return (cur - prev) / (at - prev_at)


def expected_rate(rates: Mapping[str, int], metric: str, what: str) -> float:
    """The exact per-second rate of counter ``metric`` in ``rates``.

    Raises:
        ConfigError: ``metric`` is not a counter of the simulation (``what`` names whose).
    """
    try:
        return float(rates[metric])
    except KeyError:
        raise ConfigError(f"{what}: {metric!r} is not a counter in the simulation") from None
