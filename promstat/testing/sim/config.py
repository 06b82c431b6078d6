"""How a simulated fleet is shaped: agents, kernels, timing, churn (frozen, validated)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from promstat.conventions import SeriesNames
from promstat.errors import ConfigError

__all__ = [
    "ChurnConfig",
    "FleetConfig",
]


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
