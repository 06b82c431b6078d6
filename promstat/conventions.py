"""Names: the agent's raw series, their labels, and promstat's recorded series.

Nothing else in promstat spells these strings (the way sloth's ``conventions`` package owns its
record names), so renaming a metric or a label is a one-place change and the rule generator, the
planner and the exporter cannot drift apart.

Raw series (what Backend.AI agents export today, section 3.1 of the reference)::

    backendai_container_utilization{container_metric_name, agent_id, kernel_id, session_id,
                                    user_id, project_id, value_type="current"|"capacity"}
    backendai_device_utilization{device_metric_name, agent_id, device_id,
                                 value_type="current"|"capacity"}

Recorded series (generated rules, ``level:metric:operations``). One family per level carries
every value a live_stat page needs, told apart by a ``stat`` label, so the planner reads a
page with a single selector per chunk and only the labels it needs survive::

    kernel_metric:backendai_container_utilization:live_stat{kernel_id, container_metric_name, stat}
    agent_device_metric:backendai_device_utilization:live_stat{agent_id, device_id,
                                                              device_metric_name, stat}
    agent_metric:backendai_device_utilization:live_stat{agent_id, device_metric_name, stat}

``stat`` is one of :data:`STATS`: ``current`` (latest gauge or cumulative value; for rate
counters the per-second rate: the agent's own ``value_type="rate"`` series when it exports
one, otherwise ``rate()`` over a window of about four measurements), ``capacity``, ``max`` and
``avg`` (over the rules' window, of the same per-second or gauge values), ``rate`` (per-second
rate of an accumulating counter, legacy ``stats.rate``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "STATS",
    "SeriesNames",
]

#: The values of the ``stat`` label on recorded live_stat families.
STATS: tuple[str, ...] = ("current", "capacity", "max", "avg", "rate")


@dataclass(frozen=True, slots=True)
class SeriesNames:
    """Metric and label names of the raw and recorded series.

    The defaults are Backend.AI's. Every field is configurable because operators relabel.
    """

    container_metric: str = "backendai_container_utilization"
    device_metric: str = "backendai_device_utilization"
    #: Per-process series of the agent (``collect_per_container_process_stat``).
    process_metric: str = "backendai_process_utilization"
    kernel_label: str = "kernel_id"
    agent_label: str = "agent_id"
    session_label: str = "session_id"
    user_label: str = "user_id"
    project_label: str = "project_id"
    container_metric_label: str = "container_metric_name"
    device_metric_label: str = "device_metric_name"
    device_label: str = "device_id"
    process_metric_label: str = "process_metric_name"
    container_label: str = "container_id"
    pid_label: str = "pid"
    value_type_label: str = "value_type"
    stat_label: str = "stat"
    current_value: str = "current"
    capacity_value: str = "capacity"
    #: ``value_type`` of the per-second rate an agent computed between its last two
    #: measurements (promstat's exporter publishes it for counters; upstream agents do not).
    rate_value: str = "rate"

    @property
    def profile_info(self) -> str:
        """The recorded ``vector(1)`` whose labels describe how the rules were rendered.

        Its labels are a :class:`~promstat.profile.RuleProfile` (``to_labels``); the reader
        finds the rule in ``/api/v1/rules`` and reads with the same profile.
        """
        return f"promstat:{self.container_metric}:rule_profile"

    @property
    def kernel_live_stat(self) -> str:
        """Recorded per-kernel, per-metric family with a ``stat`` label."""
        return f"kernel_metric:{self.container_metric}:live_stat"

    @property
    def kernel_pct(self) -> str:
        """Name of the per-kernel percentage family that older rule files recorded.

        No rule records it any more (nothing read it: pages compute ``pct`` from ``current`` and
        ``capacity``); the name stays so cleanup queries and dashboards can still spell it.
        """
        return f"kernel_metric:{self.container_metric}:pct"

    @property
    def device_live_stat(self) -> str:
        """Recorded per-agent, per-device, per-metric family with a ``stat`` label."""
        return f"agent_device_metric:{self.device_metric}:live_stat"

    @property
    def agent_live_stat(self) -> str:
        """Recorded per-agent (node) family: devices summed, with a ``stat`` label."""
        return f"agent_metric:{self.device_metric}:live_stat"
