"""Tests for promstat.testing.fake: FakePrometheus replies, request log, and openmetrics_text."""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from promstat.client import PrometheusClient
from promstat.testing import lab
from promstat.testing.fake import (
    DEFAULT_STATUS_BY_ERROR_TYPE,
    ENDPOINTS,
    FakePrometheus,
    Reply,
    format_sample_value,
    openmetrics_text,
)

Serve = Callable[[FakePrometheus], Awaitable[str]]


@pytest.fixture
def serve(aiohttp_server: Any) -> Serve:
    """Serve a FakePrometheus on 127.0.0.1 and return its base URL (prefix included)."""

    async def _serve(fake: FakePrometheus) -> str:
        server = await aiohttp_server(fake.app)
        return str(server.make_url("")) + fake.prefix

    return _serve


async def _get(url: str, method: str = "GET", **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.request(method, url, **kwargs) as r:
        return r.status, dict(r.headers), await r.read()


def test_format_sample_value_matches_prometheus() -> None:
    """Values are formatted like Prometheus: NaN, +Inf, -Inf, no exponent, no trailing .0."""
    assert [format_sample_value(v) for v in (1.0, 0.5, 1e6, 1e-7, -2.0)] == [
        "1",
        "0.5",
        "1000000",
        "0.0000001",
        "-2",
    ]
    assert [format_sample_value(v) for v in (math.nan, math.inf, -math.inf)] == [
        "NaN",
        "+Inf",
        "-Inf",
    ]
    assert format_sample_value("12.50") == "12.50"


def test_openmetrics_text_is_deterministic_grouped_and_escaped() -> None:
    """Families sorted and typed, series sorted, samples by time, label values escaped, # EOF."""
    samples = [
        ("b_metric", {"z": "1", "a": 'say "hi"\n\\o/'}, 20.0, 2.0),
        ("a_metric", {}, 10.5, math.nan),
        ("b_metric", {"a": 'say "hi"\n\\o/', "z": "1"}, 10.0, 1.0),
        ("b_metric", {"a": "0"}, 10.0, math.inf),
    ]
    text = openmetrics_text(samples)
    assert text == (
        "# TYPE a_metric gauge\n"
        "a_metric NaN 10.5\n"
        "# TYPE b_metric gauge\n"
        'b_metric{a="0"} +Inf 10\n'
        'b_metric{a="say \\"hi\\"\\n\\\\o/",z="1"} 1 10\n'
        'b_metric{a="say \\"hi\\"\\n\\\\o/",z="1"} 2 20\n'
        "# EOF\n"
    )
    assert openmetrics_text(reversed(samples)) == text


@pytest.mark.slow
def test_openmetrics_text_escaping_survives_a_real_backfill() -> None:
    """promtool accepts the text and Prometheus returns the original, unescaped label values."""
    tricky = 'quote " backslash \\ newline \n end'
    text = openmetrics_text([("promstat_testing_escape", {"v": tricky}, 1_700_000_000, 1.0)])
    with lab.start_prometheus(openmetrics=text) as proc:
        result = proc.query("promstat_testing_escape", at=1_700_000_000)
    assert [r["metric"]["v"] for r in result] == [tricky]


async def test_default_replies_are_empty_successes(serve: Serve) -> None:
    """Without configuration every endpoint answers an empty success of its own shape."""
    fake = FakePrometheus()
    async with PrometheusClient(await serve(fake)) as prom:
        assert (await prom.query("up")).vector == []
        assert (await prom.query_range("up", start=0, end=1, step=1)).series == []
        assert await prom.series(["up"]) == []
        assert await prom.labels() == []
        assert await prom.label_values("job") == []
        assert await prom.metadata() == {}
        assert await prom.rules() == []
        assert (await prom.build_info()).version == "2.42.0"
    assert [r.endpoint for r in fake.requests] == list(ENDPOINTS)


async def test_reply_order_queue_then_query_then_endpoint(serve: Serve) -> None:
    """Queued replies win (and respect their endpoint), then per-query, then per-endpoint."""
    fake = FakePrometheus()
    fake.set_reply("query", Reply.scalar(1))
    fake.set_query_reply("special", Reply.scalar(2))
    fake.enqueue(Reply.scalar(3), endpoint="query")
    fake.enqueue(Reply.success(["only-labels"]), endpoint="labels")
    async with PrometheusClient(await serve(fake)) as prom:
        assert await prom.labels() == ["only-labels"]
        assert (await prom.query("special")).scalar == (0.0, "3")
        assert (await prom.query("special")).scalar == (0.0, "2")
        assert (await prom.query("other")).scalar == (0.0, "1")
    assert fake.pending == 0
    fake.clear()
    assert fake.requests == []


async def test_request_log_records_method_params_and_headers(serve: Serve) -> None:
    """The log keeps method, path, endpoint, form, URL params, headers and the label name."""
    fake = FakePrometheus(prefix="prometheus/")
    url = await serve(fake)
    async with PrometheusClient(url, headers={"X-Scope-OrgID": "t1"}) as prom:
        await prom.query("up", time=5)
        await prom.label_values("job", match=["up"])
    query, values = fake.requests
    assert (query.method, query.path, query.endpoint) == (
        "POST",
        "/prometheus/api/v1/query",
        "query",
    )
    assert query.param("query") == "up" and query.param("time") == "5"
    assert query.param("missing") is None
    assert query.headers["X-Scope-OrgID"] == "t1"
    assert (values.label, values.params("match[]")) == ("job", ["up"])


async def test_fake_is_strict_like_prometheus(serve: Serve) -> None:
    """A POST to label values is 405 (GET-only), a missing query is bad_data, unknown paths 404."""
    fake = FakePrometheus()
    url = await serve(fake)
    status, _, _ = await _get(f"{url}/api/v1/label/job/values", "POST")
    assert status == 405
    status, _, body = await _get(f"{url}/api/v1/query", "POST", data={"time": "1"})
    assert status == 400 and json.loads(body)["errorType"] == "bad_data"
    status, _, _ = await _get(f"{url}/api/v1/nope")
    assert status == 404
    with pytest.raises(ValueError, match="unknown endpoint"):
        fake.set_reply("nope", Reply.scalar(1))


async def test_fault_replies_have_the_documented_shapes(serve: Serve) -> None:
    """Error envelopes, plain-text 503 with X-Prometheus-Stopping and HTML pages look real."""
    fake = FakePrometheus()
    fake.enqueue(
        Reply.api_error("timeout", "query timed out"),
        Reply.prometheus_stopping(),
        Reply.bad_gateway(),
        Reply.vm_too_long_query(20000),
    )
    url = f"{await serve(fake)}/api/v1/query?query=up"
    status, _, body = await _get(url)
    assert status == DEFAULT_STATUS_BY_ERROR_TYPE["timeout"] == 503
    assert json.loads(body) == {
        "status": "error",
        "errorType": "timeout",
        "error": "query timed out",
    }
    status, headers, body = await _get(url)
    assert (status, body, headers["X-Prometheus-Stopping"]) == (
        503,
        b"Service Unavailable\n",
        "true",
    )
    assert headers["Content-Type"].startswith("text/plain")
    status, headers, body = await _get(url)
    assert status == 502 and b"<title>502 Bad Gateway</title>" in body
    status, _, body = await _get(url)
    assert status == 422 and "too long query; got 20000 bytes" in json.loads(body)["error"]


async def test_start_and_stop_serve_without_pytest_aiohttp() -> None:
    """start() serves on a free loopback port and returns the base URL; stop() is idempotent."""
    fake = FakePrometheus(prefix="/select/0/prometheus")
    fake.set_reply("query", Reply.vector([({"job": "x"}, 1)]))
    url = await fake.start()
    try:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/select/0/prometheus")
        with pytest.raises(RuntimeError):
            await fake.start()
        async with PrometheusClient(url) as prom:
            result = await prom.query_vector("up")
        assert result.series[0].metric == {"job": "x"}
    finally:
        await fake.stop()
        await fake.stop()


@pytest.mark.slow
async def test_fake_error_envelope_matches_real_prometheus(
    prometheus_empty: Any, serve: Serve
) -> None:
    """The fake's bad_data answer has the same status, content type and keys as Prometheus'."""
    real_status, real_headers, real_body = await _get(
        f"{prometheus_empty.url}/api/v1/query", "POST", data={"query": "sum("}
    )
    fake = FakePrometheus()
    fake.set_reply("query", Reply.api_error("bad_data", "parse error"))
    fake_status, fake_headers, fake_body = await _get(
        f"{await serve(fake)}/api/v1/query", "POST", data={"query": "sum("}
    )
    assert fake_status == real_status == 400
    assert fake_headers["Content-Type"].split(";")[0] == real_headers["Content-Type"].split(";")[0]
    assert set(json.loads(fake_body)) == set(json.loads(real_body))
