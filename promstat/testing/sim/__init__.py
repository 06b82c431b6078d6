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

The package's modules: :mod:`~promstat.testing.sim.config` (the fleet's shape),
:mod:`~promstat.testing.sim.model` (the value model), :mod:`~promstat.testing.sim.fleet` (the
live fleet) and :mod:`~promstat.testing.sim.history` (OpenMetrics history); their public names
are importable from here.
"""

from __future__ import annotations

from promstat.testing.sim.config import ChurnConfig, FleetConfig
from promstat.testing.sim.fleet import SimulatedFleet
from promstat.testing.sim.history import (
    fleet_openmetrics,
    iter_fleet_openmetrics,
    write_fleet_openmetrics,
)
from promstat.testing.sim.model import GPU_MEMORY, SimAgent, SimKernel

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
