"""promstat's ``value_type="rate"`` series inside a Backend.AI agent's own registry.

A Backend.AI agent (26.9) already serves ``prometheus_client`` gauges filled by its
``ai.backend.agent.metrics.metric.UtilizationMetricObserver``: ``value_type="current"`` (raw,
cumulative for counters) and ``"capacity"`` only, so Prometheus cannot tell when a measurement
was taken and a rate over scrapes aliases. :class:`RateCollector` adds, to the *same*
families, the rate between the agent's last two measurements, computed as promstat's
exporter (:class:`~promstat.agent.exporter.UtilizationExporter`) and the agent's own
``stats.rate`` do: ``(value - previous) / (at - previous_at)``, ``0`` on the first measurement
and at a counter reset. A fleet then gets alias-free rates without a second ``/metrics``, and
the rules can be rendered with ``--rates exporter``::

    from ai.backend.agent.metrics.metric import UtilizationMetricObserver
    from promstat.agent.collector import RateCollector

    RateCollector().attach(UtilizationMetricObserver.instance())   # once, at agent start

or, where the agent may build its ``StatContext`` more than once (the two-line agent half of
``contrib/backendai-agent-26.9.6.patch`` calls it from ``StatContext.__init__``)::

    install_rate_collector(UtilizationMetricObserver.instance(), clock=time.perf_counter)

:meth:`RateCollector.attach` wraps the observer's three ``observe_*_metric`` methods (each
measurement also updates the rate) and takes the observer's three gauges out of the registry,
serving them through itself with the rate samples appended to each family, so every family
stays one contiguous block in the exposition. A rate sample exists exactly while its
``current`` sample does: the observer's 600 s removal of a terminated kernel removes both.

Time: ``clock`` (default :func:`time.perf_counter`, the clock the agent's own
``MovingStatistics`` reads right after observing) stamps each measurement as it is observed.

Needs the ``prometheus`` extra (``prometheus_client``); imports nothing from Backend.AI (the
observer is duck-typed: its ``_container_metric``, ``_device_metric``, ``_process_metric``
gauges and ``observe_container_metric``/``observe_device_metric``/``observe_process_metric``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any, Final

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from promstat.agent.exporter import RATE_METRICS, _legacy_rate
from promstat.conventions import SeriesNames
from promstat.errors import ConfigError

__all__ = ["UNDEFINED", "RateCollector", "install_rate_collector"]

#: The agent's label value for an unknown owner (``ai.backend.common.metrics.types``).
UNDEFINED: Final = "undefined"

#: The observer attribute that holds the collector :func:`install_rate_collector` attached.
_INSTALLED: Final = "_promstat_rate_collector"

# (family name, label items without value_type, sorted) -> (at, value, rate)
_Key = tuple[str, tuple[tuple[str, str], ...]]


def _label(value: object) -> str:
    # The observer passes `x or UNDEFINED`; prometheus_client then str()s every label value.
    return UNDEFINED if value is None or value == "" else str(value)


class RateCollector(Collector):
    """Appends ``value_type="rate"`` samples to the agent's utilization families.

    Args:
        names: metric and label names (the agent's defaults).
        rate_metrics: metric names (container, device and process) that get a rate.
        clock: measurement time source, seconds (see the module docstring).
    """

    def __init__(
        self,
        *,
        names: SeriesNames = SeriesNames(),  # noqa: B008 - frozen dataclass, safe default
        rate_metrics: Collection[str] = RATE_METRICS,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.names = names
        self.rate_metrics = frozenset(rate_metrics)
        self.clock = clock
        self._state: dict[_Key, tuple[float, float, float]] = {}
        self._gauges: list[Any] = []
        self._registry: CollectorRegistry | None = None
        self._restore: list[tuple[Any, str, Any]] = []
        self._observer: Any = None

    # -- measurements -------------------------------------------------------------------------

    def observe(
        self, family: str, labels: Mapping[str, str], metric: str, current: str | float
    ) -> float | None:
        """Record one raw ``current`` measurement of a series (labels without ``value_type``).

        Returns:
            The rate now published for it, or ``None`` when the metric gets no rate (or the
            value is the same measurement again).

        Raises:
            ConfigError: ``current`` is not a number.
        """
        if metric not in self.rate_metrics:
            return None
        try:
            value = float(current)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{metric}: {current!r} is not a number") from exc
        key = (family, tuple(sorted(labels.items())))
        last = self._state.get(key)
        now = self.clock()
        rate = _legacy_rate(None if last is None else (last[0], last[1]), now, value)
        if rate is None:
            return None
        self._state[key] = (now, value, rate)
        return rate

    def rate(self, family: str, labels: Mapping[str, str]) -> float | None:
        """The rate currently published for a series, if any."""
        state = self._state.get((family, tuple(sorted(labels.items()))))
        return None if state is None else state[2]

    # -- the agent's observer -----------------------------------------------------------------

    def attach(self, observer: Any, registry: CollectorRegistry | None = None) -> None:
        """Serve ``observer``'s gauges through this collector in ``registry`` (default: the
        global one the agent serves) and see every measurement it observes.

        Raises:
            ConfigError: already attached, or the gauges are not in ``registry``.
        """
        if self._registry is not None:
            raise ConfigError("RateCollector is already attached")
        reg = REGISTRY if registry is None else registry
        n = self.names
        gauges = [observer._container_metric, observer._device_metric, observer._process_metric]
        removed: list[Any] = []
        try:
            for gauge in gauges:
                reg.unregister(gauge)
                removed.append(gauge)
        except KeyError as exc:
            for done in removed:  # leave the registry as it was
                reg.register(done)
            raise ConfigError(f"the observer's gauges are not in that registry: {exc}") from exc
        self._gauges, self._registry = gauges, reg
        reg.register(self)
        self._observer = observer

        def wrap(method: str, family: str, labels: Callable[[Any], dict[str, str]]) -> None:
            original = getattr(observer, method)

            def observe(*, metric: Any) -> None:
                original(metric=metric)
                for value_type, value in metric.value_pairs:
                    if value_type == n.current_value:
                        self.observe(family, labels(metric), str(metric.key), value)

            self._restore.append((observer, method, observer.__dict__.get(method)))
            setattr(observer, method, observe)

        def owner(m: Any) -> dict[str, str]:
            return {
                n.agent_label: str(m.agent_id),
                n.kernel_label: str(m.kernel_id),
                n.session_label: _label(m.session_id),
                n.user_label: _label(m.owner_user_id),
                n.project_label: _label(m.project_id),
            }

        wrap(
            "observe_container_metric",
            n.container_metric,
            lambda m: {n.container_metric_label: str(m.key), **owner(m)},
        )
        wrap(
            "observe_device_metric",
            n.device_metric,
            lambda m: {
                n.device_metric_label: str(m.key),
                n.agent_label: str(m.agent_id),
                n.device_label: str(m.device_id),
            },
        )
        wrap(
            "observe_process_metric",
            n.process_metric,
            lambda m: {
                n.process_metric_label: str(m.key),
                **owner(m),
                n.container_label: str(m.container_id),
                n.pid_label: str(m.pid),
            },
        )

    def detach(self) -> None:
        """Undo :meth:`attach`: the observer's methods and gauges are its own again."""
        for obj, method, previous in reversed(self._restore):
            if previous is None:
                obj.__dict__.pop(method, None)
            else:
                setattr(obj, method, previous)
        self._restore.clear()
        observer, self._observer = self._observer, None
        if observer is not None and getattr(observer, _INSTALLED, None) is self:
            delattr(observer, _INSTALLED)
        if self._registry is not None:
            self._registry.unregister(self)
            for gauge in self._gauges:
                self._registry.register(gauge)
        self._registry, self._gauges = None, []

    # -- exposition ---------------------------------------------------------------------------

    def collect(self) -> Iterable[Metric]:
        """The wrapped gauges' families, each with its rate samples appended."""
        live: set[_Key] = set()
        for gauge in self._gauges:
            for family in gauge.collect():
                family.samples.extend(self._rates(family, live))
                yield family
        # Series the observer removed (a terminated kernel's, after its detention) lose
        # their rate too.
        for key in [k for k in self._state if k not in live]:
            del self._state[key]

    def _rates(self, family: Metric, live: set[_Key]) -> Iterator[Sample]:
        vt = self.names.value_type_label
        for sample in list(family.samples):
            if sample.labels.get(vt) != self.names.current_value:
                continue
            labels = {k: v for k, v in sample.labels.items() if k != vt}
            key = (family.name, tuple(sorted(labels.items())))
            state = self._state.get(key)
            if state is not None:
                live.add(key)
                yield Sample(
                    sample.name, {**labels, vt: self.names.rate_value}, state[2]
                )

    def describe(self) -> Iterable[Metric]:
        """Nothing up front: the names are the wrapped gauges' (taken out of the registry)."""
        return []


def install_rate_collector(
    observer: Any,
    registry: CollectorRegistry | None = None,
    *,
    clock: Callable[[], float] = time.perf_counter,
) -> RateCollector:
    """Attach a :class:`RateCollector` to ``observer`` once; later calls return the same one.

    The agent's hook: ``StatContext.__init__`` runs per context, the observer is a process-wide
    singleton, and a second :meth:`RateCollector.attach` would be an error. Pass the clock the
    agent's ``StatContext`` reads (``time.perf_counter`` as its module sees it), so the rate's
    time base is the agent's own.

    Args:
        observer: the agent's ``UtilizationMetricObserver``.
        registry: where its gauges are registered (default: the global one the agent serves).
        clock: the measurement time source of a newly attached collector.

    Returns:
        The collector attached to ``observer`` (new, or the one attached before).

    Raises:
        ConfigError: the observer's gauges are not in ``registry``.
    """
    installed = getattr(observer, _INSTALLED, None)
    if isinstance(installed, RateCollector):
        return installed
    collector = RateCollector(clock=clock)
    collector.attach(observer, registry)
    setattr(observer, _INSTALLED, collector)
    return collector
