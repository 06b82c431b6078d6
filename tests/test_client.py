"""promstat.client against a real Prometheus and a real VictoriaMetrics, endpoint by endpoint.

Data is deterministic: OpenMetrics text with fixed timestamps ending at ``T0``, backfilled into
Prometheus (promtool) and imported into VictoriaMetrics, and every query pins ``time``.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgspec
import pytest

from promstat.client import PrometheusClient
from promstat.errors import BadDataError, ExecutionError
from promstat.testing import lab
from promstat.testing.fake import openmetrics_text
from promstat.wire import parse_value

pytestmark = pytest.mark.slow

T0 = 1_700_000_000.0
KERNELS = [f"00000000-0000-4000-8000-00000000000{i}" for i in (1, 2, 3)]
METRIC = "promstat_client_test_utilization"
SCRAPED = "promstat_client_test_scraped"
RULES = """\
groups:
  - name: promstat_client_test
    interval: 15s
    rules:
      - record: kernel_metric:promstat_client_test_utilization:sum
        expr: sum by (kernel_id) (promstat_client_test_utilization)
      - alert: PromstatClientTestNever
        expr: vector(1) > 2
        labels:
          severity: none
"""


class KernelLabels(msgspec.Struct, frozen=True, gc=False):
    """Only the labels a live-stat row needs; ``metric`` renames ``container_metric_name``."""

    kernel_id: str
    metric: str = msgspec.field(name="container_metric_name")


def expected_current(kernel: int, metric: str, step: int) -> float:
    """The value of kernel ``kernel`` (1-based) for ``metric`` ``step`` scrapes before T0."""
    return 10.0 * kernel + step if metric == "cpu_util" else 1000.0 * kernel


def dataset(metric: str) -> str:
    """3 kernels x 2 metrics x {current, capacity}, every 15 s for 10 minutes, plus ±Inf."""
    samples: list[tuple[str, dict[str, str], float, float]] = []
    for i, kernel in enumerate(KERNELS, start=1):
        for name, capacity in (("cpu_util", 100.0), ("mem", 4096.0)):
            for step in range(41):
                ts = T0 - 15 * step
                base = {"kernel_id": kernel, "container_metric_name": name, "agent_id": "a1"}
                samples.append(
                    (metric, {**base, "value_type": "current"}, ts, expected_current(i, name, step))
                )
                samples.append((metric, {**base, "value_type": "capacity"}, ts, capacity))
    samples.append((f"{metric}_special", {"kind": "inf"}, T0, math.inf))
    samples.append((f"{metric}_special", {"kind": "neg_inf"}, T0, -math.inf))
    return openmetrics_text(samples)


class _Metrics(BaseHTTPRequestHandler):
    body = (
        f"# HELP {SCRAPED} A gauge scraped so metadata exists.\n"
        f"# TYPE {SCRAPED} gauge\n{SCRAPED} 1\n"
    ).encode()

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def metrics_target() -> Iterator[str]:
    """A tiny /metrics endpoint (host:port) for Prometheus to scrape, so metadata is real."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def prometheus(
    tmp_path_factory: pytest.TempPathFactory, metrics_target: str
) -> Iterator[lab.PrometheusProcess]:
    """A Prometheus with the dataset backfilled, one rule file and one scrape target."""
    rule_file: Path = tmp_path_factory.mktemp("rules") / "rules.yml"
    rule_file.write_text(RULES, encoding="utf-8")
    with lab.start_prometheus(
        openmetrics=dataset(METRIC),
        rule_files=[rule_file],
        scrape_targets=[metrics_target],
        scrape_interval="1s",
    ) as proc:
        yield proc


@pytest.fixture(scope="module")
def vm_url(victoria_metrics: lab.VictoriaMetricsProcess) -> str:
    """The shared VictoriaMetrics with this module's dataset imported, under /prometheus."""
    victoria_metrics.import_openmetrics(dataset(METRIC))
    return f"{victoria_metrics.url}/prometheus"


def vm_client(url: str, **kwargs: Any) -> PrometheusClient:
    """A client for VictoriaMetrics: nocache=1 so pinned past times are answered as asked."""
    return PrometheusClient(url, params={"nocache": "1"}, **kwargs)


async def check_endpoints(prom: PrometheusClient) -> None:
    """The endpoint checks both backends must pass on the same dataset."""
    sel = f'{METRIC}{{value_type="current"}}'
    # Instant query, dict labels.
    result = await prom.query(sel, time=T0)
    assert result.result_type == "vector" and len(result.vector) == 6
    by_key = {(s.metric["kernel_id"], s.metric["container_metric_name"]): s for s in result.vector}
    for i, kernel in enumerate(KERNELS, start=1):
        sample = by_key[(kernel, "cpu_util")]
        assert sample.value == (T0, format(expected_current(i, "cpu_util", 0), "g"))
        assert sample.metric["agent_id"] == "a1"
    # Typed labels.
    typed = await prom.query_vector(sel, labels=KernelLabels, time=T0)
    got = {(s.metric.kernel_id, s.metric.metric): parse_value(s.value[1]) for s in typed.series}
    assert got == {
        (k, m): expected_current(i, m, 0)
        for i, k in enumerate(KERNELS, start=1)
        for m in ("cpu_util", "mem")
    }
    assert typed.response_bytes > 0
    # Special values.
    special = await prom.query_vector(f"{METRIC}_special", time=T0)
    assert sorted(parse_value(s.value[1]) for s in special.series) == [-math.inf, math.inf]
    # Range query.
    matrix = await prom.query_range(
        f'{METRIC}{{value_type="current",container_metric_name="cpu_util"}}',
        start=T0 - 120,
        end=T0,
        step=60,
        labels=KernelLabels,
    )
    assert len(matrix.series) == 3
    for series in matrix.series:
        i = KERNELS.index(series.metric.kernel_id) + 1
        assert [(ts, parse_value(v)) for ts, v in series.values] == [
            (T0 - 120, expected_current(i, "cpu_util", 8)),
            (T0 - 60, expected_current(i, "cpu_util", 4)),
            (T0, expected_current(i, "cpu_util", 0)),
        ]
    # Series, labels, label values (match[] must be honoured: it travels in the URL).
    series_sets = await prom.series(
        [f'{METRIC}{{kernel_id="{KERNELS[0]}"}}'], start=T0 - 600, end=T0
    )
    assert len(series_sets) == 4
    assert {s["value_type"] for s in series_sets} == {"current", "capacity"}
    names = await prom.labels(match=[METRIC], start=T0 - 600, end=T0)
    assert {"__name__", "kernel_id", "container_metric_name", "value_type"} <= set(names)
    values = await prom.label_values("kernel_id", match=[METRIC], start=T0 - 600, end=T0)
    assert sorted(values) == KERNELS
    one = await prom.label_values(
        "kernel_id", match=[f'{METRIC}{{kernel_id="{KERNELS[1]}"}}'], start=T0 - 600, end=T0
    )
    assert one == [KERNELS[1]]
    # Errors come back typed.
    with pytest.raises((BadDataError, ExecutionError), match="sum"):
        await prom.query("sum(", time=T0)


async def test_prometheus_endpoints(prometheus: lab.PrometheusProcess) -> None:
    """Every query endpoint returns the backfilled data from a real Prometheus (POST)."""
    async with PrometheusClient(prometheus.url) as prom:
        await check_endpoints(prom)
        scalar = await prom.query("1 + 1", time=T0)
        string = await prom.query('"hello"', time=T0)
    assert (scalar.result_type, scalar.scalar) == ("scalar", (T0, "2"))
    assert (string.result_type, string.string) == ("string", (T0, "hello"))


async def test_prometheus_endpoints_with_get(prometheus: lab.PrometheusProcess) -> None:
    """The same checks pass with method="GET" (parameters in the URL)."""
    async with PrometheusClient(prometheus.url, method="GET") as prom:
        await check_endpoints(prom)


async def test_prometheus_parse_error_is_bad_data(prometheus: lab.PrometheusProcess) -> None:
    """Prometheus answers a parse error with 400 bad_data, which is a BadDataError/ValueError."""
    async with PrometheusClient(prometheus.url) as prom:
        with pytest.raises(BadDataError, match="parse error") as caught:
            await prom.query("sum(", time=T0)
    assert (caught.value.status, caught.value.error_type) == (400, "bad_data")


async def test_prometheus_rules_metadata_and_buildinfo(prometheus: lab.PrometheusProcess) -> None:
    """rules, metadata (from a real scrape) and buildinfo decode from a real Prometheus."""
    async with PrometheusClient(prometheus.url) as prom:
        groups = await prom.rules()
        recording = await prom.rules("record")
        info = await prom.build_info()
        metadata = await prom.metadata(SCRAPED)
        for _ in range(150):  # the first scrape lands within a few 1 s intervals
            if metadata:
                break
            await asyncio.sleep(0.2)
            metadata = await prom.metadata(SCRAPED)
    (group,) = [g for g in groups if g.name == "promstat_client_test"]
    assert {r.type for r in group.rules} == {"recording", "alerting"}
    assert group.interval == 15.0
    (rec_group,) = [g for g in recording if g.name == "promstat_client_test"]
    assert [r.name for r in rec_group.rules] == [
        "kernel_metric:promstat_client_test_utilization:sum"
    ]
    assert info.version.startswith("2.")
    assert metadata[SCRAPED][0].type == "gauge"
    assert metadata[SCRAPED][0].help == "A gauge scraped so metadata exists."


async def test_victoria_metrics_endpoints(vm_url: str) -> None:
    """Every query endpoint works against VictoriaMetrics under its /prometheus prefix."""
    async with vm_client(vm_url) as prom:
        await check_endpoints(prom)


async def test_victoria_metrics_endpoints_with_get(vm_url: str) -> None:
    """The same checks pass against VictoriaMetrics with method="GET"."""
    async with vm_client(vm_url, method="GET") as prom:
        await check_endpoints(prom)


async def test_victoria_metrics_stub_endpoints(vm_url: str) -> None:
    """rules, metadata and buildinfo decode from VictoriaMetrics' stub answers."""
    async with vm_client(vm_url) as prom:
        assert await prom.rules() == []
        assert await prom.metadata() == {}
        info = await prom.build_info()
    # 1.79 answers an empty object; newer releases always claim 2.24.0.
    assert info.version in ("", "2.24.0")
