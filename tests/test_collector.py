"""RateCollector over a stand-in for the agent's observer (the real one: tests/backendai)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from promstat.agent.collector import RateCollector


@dataclass
class KernelMetric:
    agent_id: str
    kernel_id: str
    session_id: str | None
    owner_user_id: str | None
    project_id: str | None
    key: str
    value_pairs: list[tuple[str, str]] = field(default_factory=list)


class Observer:
    """The agent's UtilizationMetricObserver, reduced to the container family."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["container_metric_name", "agent_id", "kernel_id", "session_id", "user_id"]
        self._container_metric = Gauge(
            "backendai_container_utilization", "c", [*labels, "project_id", "value_type"],
            registry=registry,
        )  # fmt: skip
        self._device_metric = Gauge(
            "backendai_device_utilization", "d",
            ["device_metric_name", "agent_id", "device_id", "value_type"], registry=registry,
        )  # fmt: skip
        self._process_metric = Gauge("backendai_process_utilization", "p", ["x"], registry=registry)

    def observe_container_metric(self, *, metric: KernelMetric) -> None:
        for value_type, value in metric.value_pairs:
            self._container_metric.labels(
                container_metric_name=metric.key,
                agent_id=metric.agent_id,
                kernel_id=metric.kernel_id,
                session_id=metric.session_id or "undefined",
                user_id=metric.owner_user_id or "undefined",
                project_id=metric.project_id or "undefined",
                value_type=value_type,
            ).set(float(value))

    def observe_device_metric(self, *, metric: Any) -> None:
        raise AssertionError("unused")

    def observe_process_metric(self, *, metric: Any) -> None:
        raise AssertionError("unused")


def samples(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
    text = generate_latest(registry).decode()
    assert text.count("# TYPE backendai_container_utilization ") == 1  # one family block
    return [
        (s.name, s.labels, s.value)
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.labels.get("value_type") == "rate"
    ]


def test_rates_join_the_observers_family_and_follow_its_series() -> None:
    now = [0.0]
    registry = CollectorRegistry()
    observer = Observer(registry)
    collector = RateCollector(clock=lambda: now[0])
    collector.attach(observer, registry)

    def measure(at: float, cpu: str, mem: str) -> None:
        now[0] = at
        for key, value in (("cpu_util", cpu), ("mem", mem)):
            observer.observe_container_metric(
                metric=KernelMetric("i-a", "k1", "s1", None, None, key, [("current", value)])
            )

    measure(0.0, "1000", "5")
    labels = {
        "container_metric_name": "cpu_util",
        "agent_id": "i-a",
        "kernel_id": "k1",
        "session_id": "s1",
        "user_id": "undefined",
        "project_id": "undefined",
        "value_type": "rate",
    }
    assert samples(registry) == [("backendai_container_utilization", labels, 0.0)]
    measure(30.0, "16000", "6")
    assert samples(registry) == [("backendai_container_utilization", labels, 500.0)]
    measure(60.0, "10", "6")  # a reset
    assert samples(registry) == [("backendai_container_utilization", labels, 0.0)]
    series = {k: v for k, v in labels.items() if k != "value_type"}
    assert collector.rate("backendai_container_utilization", series) == 0.0
    # The observer's removal of the series removes its rate as well.
    observer._container_metric.clear()
    assert samples(registry) == []
    assert collector.rate("backendai_container_utilization", series) is None
    collector.detach()
    assert "observe_container_metric" not in vars(observer)
    assert b"backendai_container_utilization" in generate_latest(registry)  # gauge is back


def test_install_attaches_once_per_observer_and_detach_forgets_it() -> None:
    """The agent's hook runs per StatContext: the second install returns the first collector
    (a second attach would be an error) with the first clock; after detach a new one attaches."""
    from promstat.agent.collector import install_rate_collector

    registry = CollectorRegistry()
    observer = Observer(registry)
    first = install_rate_collector(observer, registry, clock=lambda: 1.0)
    assert install_rate_collector(observer, registry, clock=lambda: 2.0) is first
    assert first.clock() == 1.0
    first.detach()
    second = install_rate_collector(observer, registry)
    assert second is not first
    second.detach()
    assert not hasattr(observer, "_promstat_rate_collector")
