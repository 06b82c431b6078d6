"""SimulatedFleet: the model served live, one exporter per agent measuring on its own timer."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Final, Self

from promstat.agent.exporter import (
    ExporterServer,
    KernelState,
    MeasurementListener,
    UtilizationExporter,
)
from promstat.errors import ConfigError
from promstat.testing.sim.config import FleetConfig
from promstat.testing.sim.model import (
    FIRST_PID,
    FORGET_AFTER,
    PROCESS_METRICS,
    FleetModel,
    SimAgent,
    SimKernel,
    expected_rate,
    mix64,
)

__all__ = [
    "SimulatedFleet",
]

#: The default fleet shape (a frozen value, shared safely).
_DEFAULT_CONFIG: Final = FleetConfig()


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
        config: FleetConfig = _DEFAULT_CONFIG,
        *,
        clock: Callable[[], float] = time.time,
        listeners: Sequence[MeasurementListener] = (),
    ) -> None:
        self.config = config
        self.clock = clock
        epoch = config.epoch if config.epoch is not None else clock()
        self._model = FleetModel(config, epoch)
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
                slot.prune(now - FORGET_AFTER)
            live = set(exporter.kernel_ids(include_detained=True))
            for kernel_id in [k for k in observed if k and k not in live]:
                del observed[kernel_id]

    def _observe_processes(self, exporter: UtilizationExporter, k: SimKernel, at: float) -> None:
        n = self.config.processes_per_kernel
        if not n:
            return
        container_id = self.container_id(k.kernel_id)
        for index in range(n):
            for metric in PROCESS_METRICS:
                cur, cap = self._model.process_values(k, index, metric, (at,))
                exporter.observe_process(
                    k.kernel_id,
                    container_id,
                    FIRST_PID + index,
                    metric,
                    cur[0],
                    cap[0] if cap else None,
                    at=at,
                )

    # -- model queries for tests ----------------------------------------------------------

    def container_id(self, kernel_id: str) -> str:
        """The container id of a kernel (64 hex digits, from the seed)."""
        key = self.kernel(kernel_id).key
        return "".join(f"{mix64(key ^ (0x5EED + part)):016x}" for part in range(4))

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
        return expected_rate(self.kernel(kernel_id).rates, metric, kernel_id)

    def expected_device_rate(self, agent_id: str, metric: str, device_id: str) -> float:
        """Per-second rate of a device counter (``cpu_util`` per core, ``net_*``).

        Raises:
            ConfigError: unknown agent, device, or not a counter.
        """
        a = self.agent(agent_id)
        if metric == "cpu_util" and device_id.isdigit() and int(device_id) < a.cores:
            return float(a.core_rates[int(device_id)])
        if device_id == "node":
            return expected_rate(a.net_rates, metric, agent_id)
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
