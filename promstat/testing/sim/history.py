"""The simulated fleet's history as OpenMetrics text, for backfilling Prometheus."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator
from pathlib import Path

from promstat.agent.exporter import (
    CONTAINER_HELP,
    DEVICE_HELP,
    RATE_METRICS,
    container_series,
    device_series,
    format_value,
)
from promstat.errors import ConfigError
from promstat.testing.sim.config import FleetConfig
from promstat.testing.sim.model import FleetModel, legacy_rate

__all__ = [
    "fleet_openmetrics",
    "iter_fleet_openmetrics",
    "write_fleet_openmetrics",
]


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
    model = FleetModel(config, config.epoch if config.epoch is not None else start)
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
                        legacy_rate(c, None if p is None else v, m, p)
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
                    legacy_rate(c, v, m, p)
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
