"""Tests for promstat.agent.exporter: exposition text, kernel lifecycle, HTTP endpoint."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from promstat.agent.exporter import (
    OPENMETRICS_CONTENT_TYPE,
    RATE_METRICS,
    TEXT_CONTENT_TYPE,
    ExporterServer,
    KernelState,
    Measured,
    UtilizationExporter,
    container_series,
    device_series,
    escape_label_value,
    format_value,
    make_app,
    wants_openmetrics,
)
from promstat.conventions import SeriesNames
from promstat.errors import ConfigError

ClientFactory = Callable[
    [web.Application], Awaitable["TestClient[web.Request, web.Application]"]
]  # quoted: TestClient is generic only from aiohttp 3.11 (the floor is 3.10.10)

K1 = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
K2 = "6fa459ea-ee8a-3ca4-894e-db77e160355e"


class FakeClock:
    """A settable clock for detention tests."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def small_exporter(clock: FakeClock | None = None) -> UtilizationExporter:
    """One kernel with cpu_util (capacity), io_read (none), one device metric.

    Without rate series: exactly what upstream agents export (rates are tested apart).
    """
    exporter = UtilizationExporter("i-ag1", clock=clock or FakeClock(), publish_rates=False)
    exporter.add_kernel(K1, session_id="s1", user_id="u1", project_id="p1")
    exporter.observe_container(K1, "cpu_util", "1290.608", "1000")
    exporter.observe_container(K1, "io_read", 3387392)
    exporter.observe_device("net_rx", "node", 125000.25)
    exporter.observe_device("mem", "root", 20615843840, 67108864000)
    return exporter


EXPECTED_TEXT = """\
# HELP backendai_container_utilization Backend.AI container utilization: raw measurement (current) and capacity.
# TYPE backendai_container_utilization gauge
backendai_container_utilization{container_metric_name="cpu_util",agent_id="i-ag1",kernel_id="1b4e28ba-2fa1-11d2-883f-0016d3cca427",session_id="s1",user_id="u1",project_id="p1",value_type="current"} 1290.608
backendai_container_utilization{container_metric_name="cpu_util",agent_id="i-ag1",kernel_id="1b4e28ba-2fa1-11d2-883f-0016d3cca427",session_id="s1",user_id="u1",project_id="p1",value_type="capacity"} 1000
backendai_container_utilization{container_metric_name="io_read",agent_id="i-ag1",kernel_id="1b4e28ba-2fa1-11d2-883f-0016d3cca427",session_id="s1",user_id="u1",project_id="p1",value_type="current"} 3387392
# HELP backendai_device_utilization Backend.AI device utilization: raw measurement (current) and capacity.
# TYPE backendai_device_utilization gauge
backendai_device_utilization{device_metric_name="net_rx",agent_id="i-ag1",device_id="node",value_type="current"} 125000.25
backendai_device_utilization{device_metric_name="mem",agent_id="i-ag1",device_id="root",value_type="current"} 20615843840
backendai_device_utilization{device_metric_name="mem",agent_id="i-ag1",device_id="root",value_type="capacity"} 67108864000
"""  # noqa: E501


def test_render_text_exact() -> None:
    """The text format lists both families with HELP/TYPE and the agent's label order."""
    assert small_exporter().render().decode() == EXPECTED_TEXT


def test_render_openmetrics_exact() -> None:
    """OpenMetrics is the same body terminated by '# EOF'."""
    assert small_exporter().render(openmetrics=True).decode() == EXPECTED_TEXT + "# EOF\n"


def test_empty_exporter_renders_headers_only() -> None:
    """An exporter without series still declares both families."""
    body = UtilizationExporter("a").render().decode()
    assert body.count("# TYPE") == 2
    assert "{" not in body


def test_values_update_in_place() -> None:
    """A new observation replaces the value of the same series, keeping its position."""
    exporter = small_exporter()
    exporter.observe_container(K1, "cpu_util", 2000.5)
    lines = exporter.render().decode().splitlines()
    assert lines[2].endswith('value_type="current"} 2000.5')
    assert lines[3].endswith('value_type="capacity"} 1000')  # kept: no capacity given
    assert exporter.series_count == 6


def test_capacity_only_when_given() -> None:
    """A metric observed without capacity has no capacity series."""
    exporter = UtilizationExporter("a")
    exporter.add_kernel(K1)
    exporter.observe_container(K1, "io_scratch_size", 0)
    exporter.observe_device("net_tx", "node", 1)
    body = exporter.render().decode()
    assert 'value_type="capacity"' not in body
    assert 'session_id="undefined",user_id="undefined",project_id="undefined"' in body


def test_label_escaping() -> None:
    """Backslash, double quote and newline in label values are escaped."""
    assert escape_label_value('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    exporter = UtilizationExporter('ag"1')
    exporter.add_kernel(K1, session_id="x\\y", user_id='q"', project_id="line\nbreak")
    exporter.observe_container(K1, "m\n", 1)
    exporter.observe_device("disk", "C:\\", 5)
    body = exporter.render().decode()
    assert (
        'container_metric_name="m\\n",agent_id="ag\\"1",kernel_id="'
        + K1
        + '",session_id="x\\\\y",user_id="q\\"",project_id="line\\nbreak",value_type="current"} 1'
    ) in body
    assert 'device_id="C:\\\\",value_type="current"} 5' in body
    assert body.count("\n") == 6  # no raw newline leaked into a line


def test_series_helpers_match_exporter() -> None:
    """container_series/device_series spell exactly what the exporter writes."""
    names = SeriesNames()
    body = small_exporter().render().decode()
    cs = container_series(
        names,
        metric="cpu_util",
        agent_id="i-ag1",
        kernel_id=K1,
        session_id="s1",
        user_id="u1",
        project_id="p1",
        value_type="capacity",
    )
    ds = device_series(
        names, metric="mem", agent_id="i-ag1", device_id="root", value_type="current"
    )
    assert f"{cs} 1000\n" in body
    assert f"{ds} 20615843840\n" in body


def test_custom_names() -> None:
    """Relabelled metric and label names are used everywhere."""
    names = SeriesNames(container_metric="c", device_metric="d", kernel_label="kid")
    exporter = UtilizationExporter("a", names=names)
    exporter.add_kernel(K1)
    exporter.observe_container(K1, "mem", 1, 2)
    body = exporter.render().decode()
    assert "# TYPE c gauge" in body and "# TYPE d gauge" in body
    assert f'c{{container_metric_name="mem",agent_id="a",kid="{K1}"' in body


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0"),
        (-0.0, "0"),
        (1181116006.0, "1181116006"),
        (3, "3"),
        (0.5, "0.5"),
        (1.5e21, "1.5e+21"),
        (2.0**60, "1.152921504606847e+18"),
        (math.nan, "NaN"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (-2.25, "-2.25"),
    ],
)
def test_format_value(value: float, text: str) -> None:
    """Values print the way Prometheus parses them."""
    assert format_value(value) == text


def test_format_value_round_trips() -> None:
    """Formatted values parse back to the same float."""
    for v in (0.1, 1 / 3, 123456789.123456, 9.007199254740993e15, 1e-300, 5e-324):
        assert float(format_value(v)) == v


def test_string_values_and_bad_values() -> None:
    """Numeric strings are accepted (agents pass str(Decimal)); garbage is a ConfigError."""
    exporter = UtilizationExporter("a")
    exporter.add_kernel(K1)
    exporter.observe_container(K1, "cpu_used", "NaN")
    assert exporter.render().decode().splitlines()[2].endswith(" NaN")
    with pytest.raises(ConfigError, match="not a number"):
        exporter.observe_container(K1, "cpu_used", "abc")
    with pytest.raises(ConfigError, match="capacity"):
        exporter.observe_device("mem", "root", 1, "x")


def test_unknown_kernel_is_an_error() -> None:
    """Observing a kernel that was never added raises a typed error."""
    exporter = UtilizationExporter("a")
    with pytest.raises(ConfigError, match="add_kernel"):
        exporter.observe_container(K1, "mem", 1)


def test_negative_detention_rejected() -> None:
    """A negative detention is a configuration error."""
    with pytest.raises(ConfigError):
        UtilizationExporter("a", detention=-1)


def test_terminate_freezes_until_detention_passes() -> None:
    """Terminated kernels stay exported, frozen, for the detention, then disappear."""
    clock = FakeClock(1000.0)
    exporter = small_exporter(clock)
    before = exporter.render()
    assert exporter.terminate_kernel(K1) is True
    assert exporter.kernel_state(K1) is KernelState.DETAINED
    assert exporter.observe_container(K1, "cpu_util", 99999) is False  # frozen
    clock.now = 1599.999
    assert exporter.render() == before
    assert exporter.kernel_ids() == []
    assert exporter.kernel_ids(include_detained=True) == [K1]
    clock.now = 1600.0
    body = exporter.render().decode()
    assert K1 not in body
    assert exporter.kernel_state(K1) is None
    assert "device_id" in body  # devices are not affected
    with pytest.raises(ConfigError):
        exporter.observe_container(K1, "cpu_util", 1)


def test_terminate_at_explicit_time_and_repeat() -> None:
    """terminate_kernel(at=...) counts the detention from that time; repeats are no-ops."""
    clock = FakeClock(1000.0)
    exporter = UtilizationExporter("a", detention=10, clock=clock)
    exporter.add_kernel(K1)
    exporter.add_kernel(K2)
    exporter.observe_container(K1, "mem", 1)
    assert exporter.terminate_kernel(K1, at=995.0) is True
    assert exporter.terminate_kernel(K1) is False
    assert exporter.terminate_kernel("nope") is False
    clock.now = 1005.0
    assert exporter.kernel_ids(include_detained=True) == [K2]
    assert exporter.expire() == 0


def test_zero_detention_removes_at_once() -> None:
    """With detention 0, terminate removes the series immediately."""
    exporter = UtilizationExporter("a", detention=0, clock=FakeClock())
    exporter.add_kernel(K1)
    exporter.observe_container(K1, "mem", 1)
    exporter.terminate_kernel(K1)
    assert len(exporter) == 0
    assert K1.encode() not in exporter.render()


def test_remove_kernel_immediately() -> None:
    """remove_kernel drops live or detained kernels at once."""
    exporter = small_exporter()
    exporter.add_kernel(K2)
    exporter.observe_container(K2, "mem", 7)
    assert exporter.remove_kernel(K1) is True
    assert exporter.remove_kernel(K1) is False
    exporter.terminate_kernel(K2)
    assert exporter.remove_kernel(K2) is True
    body = exporter.render().decode()
    assert K1 not in body and K2 not in body
    assert exporter.series_count == 3  # devices only


def test_readd_detained_kernel_starts_fresh() -> None:
    """Re-adding a detained kernel id drops its frozen series; the old deadline is ignored."""
    clock = FakeClock(0.0)
    exporter = UtilizationExporter("a", detention=100, clock=clock)
    exporter.add_kernel(K1, session_id="old")
    exporter.observe_container(K1, "mem", 1, 10)
    exporter.terminate_kernel(K1)
    clock.now = 50.0
    exporter.add_kernel(K1, session_id="new")
    assert exporter.kernel_state(K1) is KernelState.LIVE
    assert exporter.series_count == 0
    exporter.observe_container(K1, "cpu_used", 5)
    clock.now = 150.0  # the old detention deadline passes: the new kernel must survive
    body = exporter.render().decode()
    assert 'session_id="new"' in body and 'session_id="old"' not in body
    assert exporter.series_count == 1


def test_add_kernel_idempotent_and_relabel() -> None:
    """add_kernel is a no-op for the same ownership and relabels for a new one."""
    exporter = UtilizationExporter("a", clock=FakeClock())
    exporter.add_kernel(K1)
    exporter.observe_container(K1, "mem", 1, 10)
    exporter.add_kernel(K1)
    assert exporter.series_count == 2
    exporter.add_kernel(K1, session_id="s", user_id="u", project_id="p")
    body = exporter.render().decode()
    assert "undefined" not in body
    assert 'session_id="s",user_id="u",project_id="p",value_type="current"} 1\n' in body
    assert 'session_id="s",user_id="u",project_id="p",value_type="capacity"} 10\n' in body
    exporter.observe_container(K1, "mem", 2)
    assert 'project_id="p",value_type="current"} 2\n' in exporter.render().decode()


def test_no_leak_after_many_cycles() -> None:
    """Thousands of add/observe/terminate cycles leave nothing behind after the detention."""
    clock = FakeClock(0.0)
    exporter = UtilizationExporter("a", detention=600, clock=clock)
    for i in range(5000):
        kid = f"k-{i % 700}"  # ids are reused while older incarnations are still detained
        exporter.add_kernel(kid, session_id=str(i))
        exporter.observe_container(kid, "cpu_util", i, 1000)
        exporter.terminate_kernel(kid)
        clock.now += 1.0
        if i % 97 == 0:
            exporter.render()
    assert len(exporter) <= 600
    clock.now += 600.0
    assert exporter.series_count == 0
    assert len(exporter) == 0
    assert exporter._expiry == []  # the expiry heap is drained too
    assert exporter.render() == UtilizationExporter("a").render()


def test_remove_device() -> None:
    """remove_device drops both value types of one device metric."""
    exporter = small_exporter()
    assert exporter.remove_device("mem", "root") is True
    assert exporter.remove_device("mem", "root") is False
    assert b"root" not in exporter.render()


def test_collect_hook_runs_before_render() -> None:
    """Collect hooks run on every render and their updates are in the body."""
    exporter = UtilizationExporter("a")
    calls: list[int] = []

    def hook() -> None:
        calls.append(1)
        exporter.observe_device("mem", "root", len(calls))

    exporter.add_collect_hook(hook)
    assert exporter.render().endswith(b'value_type="current"} 1\n')
    assert exporter.render().endswith(b'value_type="current"} 2\n')


def test_render_cache_invalidated_by_changes() -> None:
    """An unchanged exporter returns the cached body; any change produces a new one."""
    exporter = small_exporter()
    first = exporter.render()
    assert exporter.render() is first
    exporter.observe_device("mem", "root", 1)
    assert exporter.render() != first


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("", False),
        ("text/plain;version=0.0.4", False),
        (
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
            "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            True,
        ),
        ("application/openmetrics-text; q=0", False),
        ("text/plain, Application/OpenMetrics-Text; version=1.0.0", True),
    ],
)
def test_wants_openmetrics(accept: str, expected: bool) -> None:
    """Accept negotiation picks OpenMetrics only when asked for with q > 0."""
    assert wants_openmetrics(accept) is expected


async def test_http_endpoint_content_types(aiohttp_client: ClientFactory) -> None:
    """GET /metrics serves text 0.0.4 by default and OpenMetrics when the Accept asks."""
    client = await aiohttp_client(make_app(small_exporter()))
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == TEXT_CONTENT_TYPE
    assert await resp.text() == EXPECTED_TEXT
    resp = await client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text;version=1.0.0"}
    )
    assert resp.headers["Content-Type"] == OPENMETRICS_CONTENT_TYPE
    assert await resp.text() == EXPECTED_TEXT + "# EOF\n"
    resp = await client.get("/other")
    assert resp.status == 404


async def test_exporter_server_serves_on_loopback() -> None:
    """ExporterServer binds an OS-chosen loopback port and releases it on exit."""
    async with ExporterServer(small_exporter()) as server:
        assert server.target == f"127.0.0.1:{server.port}"
        async with aiohttp.ClientSession() as session, session.get(server.url) as resp:
            assert resp.status == 200
            assert await resp.text() == EXPECTED_TEXT
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as session, session.get(server.url):
            pass


def test_exporter_server_port_before_start() -> None:
    """Asking for the port of a server that never started is an error."""
    with pytest.raises(ConfigError):
        _ = ExporterServer(UtilizationExporter("a")).port


def test_exposition_parses_with_prometheus_client() -> None:
    """prometheus_client's reference parsers accept both formats with every label intact."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
    from prometheus_client.parser import text_string_to_metric_families as text

    exporter = small_exporter()
    exporter.add_kernel(K2, session_id='we"ird\\', user_id="a\nb")
    exporter.observe_container(K2, "cuda_util", math.nan, math.inf)
    for parse, body in ((text, exporter.render()), (om, exporter.render(openmetrics=True))):
        families = {f.name: f for f in parse(body.decode())}
        samples = families["backendai_container_utilization"].samples
        assert len(samples) == 5
        weird = [s for s in samples if s.labels["kernel_id"] == K2]
        assert weird[0].labels["session_id"] == 'we"ird\\'
        assert weird[0].labels["user_id"] == "a\nb"
        assert math.isnan(weird[0].value) and weird[1].value == math.inf
        assert list(samples[0].labels) == [
            "container_metric_name",
            "agent_id",
            "kernel_id",
            "session_id",
            "user_id",
            "project_id",
            "value_type",
        ]
        assert len(families["backendai_device_utilization"].samples) == 3


def _rate_lines(exporter: UtilizationExporter) -> dict[str, float]:
    """``{metric or metric/device: value}`` of the exported rate series."""
    out: dict[str, float] = {}
    for line in exporter.render().decode().splitlines():
        if 'value_type="rate"' not in line:
            continue
        labels, _, value = line.rpartition(" ")
        metric = labels.split('_metric_name="', 1)[1].split('"', 1)[0]
        device = labels.split('device_id="', 1)[1].split('"', 1)[0] if "device_id" in labels else ""
        out[f"{metric}/{device}" if device else metric] = float(value)
    return out


def test_rate_series_is_legacy_rate_between_measurements() -> None:
    """The rate series is (value - previous) / (at - previous at), 0 on the first
    measurement, 0 at a counter reset (legacy diff), and unchanged when the same measurement
    is observed again (a scrape between measurements)."""
    exporter = UtilizationExporter("a", clock=FakeClock())
    exporter.add_kernel(K1)
    exporter.observe_container(K1, "cpu_util", 1000, 1000, at=100.0)
    exporter.observe_container(K1, "mem", 5, 10, at=100.0)  # a gauge: no rate series
    exporter.observe_device("net_rx", "node", 0, at=100.0)
    assert _rate_lines(exporter) == {"cpu_util": 0.0, "net_rx/node": 0.0}
    exporter.observe_container(K1, "cpu_util", 31000, at=130.0)
    exporter.observe_device("net_rx", "node", 6000, at=130.0)
    assert _rate_lines(exporter) == {"cpu_util": 1000.0, "net_rx/node": 200.0}
    exporter.observe_container(K1, "cpu_util", 31000, at=130.0)  # same measurement again
    assert _rate_lines(exporter)["cpu_util"] == 1000.0
    exporter.observe_container(K1, "cpu_util", 500, at=160.0)  # the counter was reset
    exporter.observe_device("net_rx", "node", 9000, at=145.0)
    assert _rate_lines(exporter) == {"cpu_util": 0.0, "net_rx/node": 200.0}
    exporter.observe_container(K1, "cpu_util", 15500, at=175.0)
    assert _rate_lines(exporter)["cpu_util"] == 1000.0


def test_rate_series_uses_the_clock_by_default_and_can_be_disabled() -> None:
    """Without ``at`` the measurement time is the clock; ``publish_rates=False`` exports
    exactly the upstream agent's series; ``rate_metrics`` picks the counters."""
    clock = FakeClock(0.0)
    exporter = UtilizationExporter("a", clock=clock, rate_metrics={"io_read"})
    exporter.add_kernel(K1)
    exporter.observe_container(K1, "io_read", 0)
    exporter.observe_container(K1, "cpu_util", 0)
    clock.now = 10.0
    exporter.observe_container(K1, "io_read", 2500)
    assert _rate_lines(exporter) == {"io_read": 250.0}
    plain = UtilizationExporter("a", publish_rates=False)
    plain.add_kernel(K1)
    plain.observe_container(K1, "cpu_util", 0, at=1.0)
    plain.observe_device("cpu_util", "0", 0, 30000, at=1.0)
    assert b'value_type="rate"' not in plain.render()
    assert {"cpu_util", "net_rx", "net_tx", "io_read", "io_write"} == set(RATE_METRICS)


def test_remove_device_forgets_its_rate() -> None:
    """A removed device starts over: its next measurement is a first one (rate 0)."""
    exporter = UtilizationExporter("a", clock=FakeClock())
    exporter.observe_device("net_tx", "node", 0, at=0.0)
    exporter.observe_device("net_tx", "node", 100, at=10.0)
    assert exporter.remove_device("net_tx", "node")
    assert exporter.series_count == 0
    exporter.observe_device("net_tx", "node", 500, at=20.0)
    assert _rate_lines(exporter) == {"net_tx/node": 0.0}


def test_process_series_follow_the_agents_family_and_lifecycle() -> None:
    """backendai_process_utilization: the agent's labels and order; an ended process stays for
    the detention, then leaves; the family appears only once a process was measured."""
    now = [0.0]
    exp = UtilizationExporter("i-a", clock=lambda: now[0], detention=600, publish_rates=False)
    exp.add_kernel(K1, session_id="s", user_id="u")
    assert b"backendai_process_utilization" not in exp.render()
    assert exp.observe_process(K1, "c1", 7, "cpu_util", "1500", "1000", at=0.0)
    assert exp.observe_process(K1, "c1", 8, "mem", 4096, at=0.0)
    body = exp.render().decode()
    assert (
        'backendai_process_utilization{process_metric_name="cpu_util",agent_id="i-a",'
        f'kernel_id="{K1}",session_id="s",user_id="u",project_id="undefined",'
        'container_id="c1",pid="7",value_type="capacity"} 1000\n'
    ) in body
    assert "# TYPE backendai_process_utilization gauge\n" in body
    assert exp.process_ids(K1) == [("c1", 7), ("c1", 8)]
    assert exp.end_process(K1, "c1", 8, at=0.0)
    assert not exp.end_process(K1, "c1", 8)  # already ending
    now[0] = 599.0
    assert exp.process_ids(K1) == [("c1", 7), ("c1", 8)]
    now[0] = 600.0
    assert exp.process_ids(K1) == [("c1", 7)]
    exp.terminate_kernel(K1)
    assert exp.observe_process(K1, "c1", 7, "cpu_util", "1600") is False  # frozen with it
    with pytest.raises(ConfigError, match="not registered"):
        exp.observe_process("nope", "c1", 7, "cpu_util", 1)


def test_node_measurements_reach_listeners_only() -> None:
    seen: list[Measured] = []
    exp = UtilizationExporter("i-a", clock=lambda: 5.0)
    exp.add_listener(seen.append)
    before = exp.render()
    exp.observe_node("disk", "0", "0", at=3.0)
    assert exp.render() == before  # no series: Prometheus sums the devices
    assert seen == [Measured("i-a", "disk", "0", "0", 3.0, node=True)]
    with pytest.raises(ConfigError):
        exp.observe_node("disk", "x")
