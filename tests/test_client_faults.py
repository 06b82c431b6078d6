"""Fault tests for promstat.client: FakePrometheus, plus aioresponses for transport faults."""

from __future__ import annotations

import errno
import math
import ssl
import warnings
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import aiohttp
import msgspec
import pytest
from aioresponses import aioresponses

from promstat.api import format_duration, format_time
from promstat.client import PrometheusClient, RetryPolicy
from promstat.errors import (
    APIError,
    BadDataError,
    ClosedError,
    ConfigError,
    ExecutionError,
    InternalError,
    NotAcceptableError,
    NotFoundError,
    PromstatError,
    QueryCanceledError,
    QueryTimeoutError,
    QueryTooLargeError,
    RequestTimeoutError,
    ResponseDecodeError,
    TransportError,
    UnavailableError,
)
from promstat.testing.fake import FakePrometheus, Reply
from promstat.wire import parse_value

Serve = Callable[[FakePrometheus], Awaitable[str]]
NO_RETRY = RetryPolicy(attempts=1)
FAST_RETRY = RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.002)


class KernelLabels(msgspec.Struct, frozen=True, gc=False):
    """The two labels a live-stat row needs."""

    kernel_id: str
    metric: str = msgspec.field(name="container_metric_name")


class RecordingObserver:
    """A QueryObserver fake that keeps every call's keyword arguments."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def on_request(self, **kwargs: Any) -> None:
        """Record one call."""
        self.calls.append(kwargs)


@pytest.fixture
def serve(aiohttp_server: Any) -> Serve:
    """Serve a FakePrometheus on 127.0.0.1 and return its base URL (prefix included)."""

    async def _serve(fake: FakePrometheus) -> str:
        server = await aiohttp_server(fake.app)
        return str(server.make_url("")) + fake.prefix

    return _serve


async def test_query_vector_posts_a_form_and_decodes_typed_labels(serve: Serve) -> None:
    """query_vector POSTs query/time/timeout as a form and decodes into the label Struct."""
    fake = FakePrometheus()
    fake.set_reply(
        "query",
        Reply.vector(
            [({"kernel_id": "k1", "container_metric_name": "cpu_util", "x": "y"}, 12.5)],
            at=1700000000,
            infos=["PromQL info: metric might not be a counter"],
        ),
    )
    async with PrometheusClient(await serve(fake), timeout=10) as prom:
        result = await prom.query_vector('x{a="b"}', labels=KernelLabels, time=1700000000.25)
    assert [s.metric for s in result.series] == [KernelLabels("k1", "cpu_util")]
    assert parse_value(result.series[0].value[1]) == 12.5
    assert result.infos == ("PromQL info: metric might not be a counter",)
    assert result.response_bytes > 0
    (req,) = fake.requests
    assert req.method == "POST" and req.query == ()
    assert req.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert req.headers["Accept-Encoding"] == "identity"  # loopback: gzip off by default
    assert dict(req.form) == {"query": 'x{a="b"}', "time": "1700000000.25", "timeout": "9s"}


async def test_server_timeout_is_below_the_client_deadline(serve: Serve) -> None:
    """The server-side timeout is 90% of the deadline, or server_timeout when that is smaller."""
    fake = FakePrometheus()
    url = await serve(fake)
    async with PrometheusClient(url, timeout=30) as prom:
        await prom.query("1")
        await prom.query("1", timeout=3)
    async with PrometheusClient(url, timeout=30, server_timeout=5) as prom:
        await prom.query("1")
        await prom.query("1", timeout=2)
    assert [r.param("timeout") for r in fake.requests] == ["27s", "2700ms", "5s", "1800ms"]


def test_format_helpers() -> None:
    """Times format as decimal Unix seconds (naive datetimes are UTC); durations as s or ms."""
    assert format_time(1700000000) == "1700000000"
    assert format_time(1700000000.5) == "1700000000.5"
    assert format_time(datetime(2023, 11, 14, 22, 13, 20)) == "1700000000"
    assert format_time(datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)) == "1700000000"
    plus_one = timezone(timedelta(hours=1))
    assert format_time(datetime(2023, 11, 14, 23, 13, 20, tzinfo=plus_one)) == "1700000000"
    assert format_duration(27) == "27s"
    assert format_duration(2.7) == "2700ms"
    assert format_duration(0.0001) == "1ms"
    with pytest.raises(ConfigError):
        format_time("now")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        format_duration(-1)


async def test_get_method_puts_encoded_params_in_the_url(serve: Serve) -> None:
    """With method GET the parameters travel in the URL, '+' and spaces encoded the Go way."""
    fake = FakePrometheus()
    async with PrometheusClient(await serve(fake), method="GET") as prom:
        await prom.query('a + b{c="d e"}', limit=5)
    (req,) = fake.requests
    assert req.method == "GET" and req.form == ()
    assert req.param("query") == 'a + b{c="d e"}'
    assert req.param("limit") == "5"


async def test_label_values_sends_match_in_the_url(serve: Serve) -> None:
    """label_values is GET-only: match[] goes in the URL query string, never in a GET body."""
    fake = FakePrometheus()
    fake.set_reply("label_values", Reply.success(["k1", "k2"]))
    async with PrometheusClient(await serve(fake)) as prom:
        values = await prom.label_values("kernel_id", match=['up{job="a"}', "x"], start=1, end=2)
    assert values == ["k1", "k2"]
    (req,) = fake.requests
    assert (req.method, req.label, req.form) == ("GET", "kernel_id", ())
    assert [v for k, v in req.query if k == "match[]"] == ['up{job="a"}', "x"]
    assert (req.param("start"), req.param("end")) == ("1", "2")


@pytest.mark.parametrize("prefix", ["/prometheus", "/select/0/prometheus"])
@pytest.mark.parametrize("trailing_slash", [False, True])
async def test_path_prefix_is_joined(serve: Serve, prefix: str, trailing_slash: bool) -> None:
    """Base URLs with a path prefix (with or without a trailing slash) reach every endpoint."""
    fake = FakePrometheus(prefix=prefix)
    url = await serve(fake)
    async with PrometheusClient(url + ("/" if trailing_slash else "")) as prom:
        await prom.query("1")
        await prom.label_values("job")
        await prom.build_info()
    assert [r.path for r in fake.requests] == [
        f"{prefix}/api/v1/query",
        f"{prefix}/api/v1/label/job/values",
        f"{prefix}/api/v1/status/buildinfo",
    ]


async def test_other_endpoints_send_the_right_requests(serve: Serve) -> None:
    """series/labels POST match[] forms; metadata, rules and buildinfo are GETs with params."""
    fake = FakePrometheus()
    fake.set_reply("series", Reply.success([{"__name__": "up", "job": "a"}]))
    fake.set_reply("labels", Reply.success(["__name__", "job"]))
    fake.set_reply("metadata", Reply.success({"up": [{"type": "gauge", "help": "h", "unit": ""}]}))
    fake.set_reply(
        "rules",
        Reply.success(
            {
                "groups": [
                    {
                        "name": "g",
                        "rules": [
                            {"name": "r", "query": "sum(up)", "type": "recording", "health": "ok"}
                        ],
                    }
                ]
            }
        ),
    )
    async with PrometheusClient(await serve(fake)) as prom:
        assert await prom.series(["up"], start=1, end=2, limit=10) == [
            {"__name__": "up", "job": "a"}
        ]
        assert await prom.labels(match=["up"]) == ["__name__", "job"]
        meta = await prom.metadata("up", limit=1)
        groups = await prom.rules("record")
        info = await prom.build_info()
    assert meta["up"][0].type == "gauge"
    assert groups[0].rules[0].name == "r"
    assert info.version == "2.42.0"
    series, labels, metadata, rules, _ = fake.requests
    assert series.method == "POST" and series.params("match[]") == ["up"]
    assert (series.param("start"), series.param("end"), series.param("limit")) == ("1", "2", "10")
    assert labels.method == "POST" and labels.params("match[]") == ["up"]
    assert metadata.method == "GET" and dict(metadata.query) == {"metric": "up", "limit": "1"}
    assert rules.method == "GET" and dict(rules.query) == {"type": "record"}


async def test_query_returns_each_result_type_with_annotations(serve: Serve) -> None:
    """query() exposes vector, scalar and string answers and never drops warnings or infos."""
    fake = FakePrometheus()
    fake.set_query_reply("v", Reply.vector([({"a": "b"}, math.inf)], at=5, warnings=["w1"]))
    fake.set_query_reply("s", Reply.scalar(-math.inf, at=5))
    fake.set_query_reply(
        "str", Reply.success({"resultType": "string", "result": [5, "hi"]}, infos=["i1"])
    )
    fake.set_query_reply("m", Reply.matrix([({"a": "b"}, [(1, 1.0), (2, float("nan"))])]))
    async with PrometheusClient(await serve(fake)) as prom:
        v, s, st, m = [await prom.query(q) for q in ("v", "s", "str", "m")]
    assert (v.result_type, v.vector[0].value, v.warnings) == ("vector", (5.0, "+Inf"), ("w1",))
    assert (s.result_type, s.scalar) == ("scalar", (5.0, "-Inf"))
    assert (st.result_type, st.string, st.infos) == ("string", (5.0, "hi"), ("i1",))
    assert m.result_type == "matrix" and m.matrix[0].values == [(1.0, "1"), (2.0, "NaN")]


async def test_auth_headers_and_params_are_sent(serve: Serve) -> None:
    """Basic auth, bearer tokens, extra headers and client/per-call params reach the server."""
    fake = FakePrometheus()
    url = await serve(fake)
    async with PrometheusClient(
        url,
        auth=("user", "pw"),
        headers={"X-Scope-OrgID": "tenant-1"},
        params={"dedup": "false", "partial_response": "false"},
    ) as prom:
        await prom.query("1", params={"partial_response": "true", "nocache": "1"})
    async with PrometheusClient(url, bearer_token="tok") as prom:
        await prom.labels()
    basic, bearer = fake.requests
    assert basic.headers["Authorization"] == "Basic dXNlcjpwdw=="
    assert basic.headers["X-Scope-OrgID"] == "tenant-1"
    assert (basic.param("dedup"), basic.param("partial_response"), basic.param("nocache")) == (
        "false",
        "true",
        "1",
    )
    assert bearer.headers["Authorization"] == "Bearer tok"


def test_invalid_configuration_is_rejected(tmp_path: Any) -> None:
    """Bad URLs, both auth kinds, unreadable CA files and bad retry policies raise ConfigError."""
    with pytest.raises(ConfigError):
        PrometheusClient("127.0.0.1:9090")
    with pytest.raises(ConfigError):
        PrometheusClient("http://h", auth=("u", "p"), bearer_token="t")
    with pytest.raises(ConfigError):
        PrometheusClient("http://h", auth=("u:x", "p"))
    with pytest.raises(ConfigError):
        PrometheusClient("http://h", ca_file=str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError):
        PrometheusClient("http://h", timeout=0)
    with pytest.raises(ConfigError):
        RetryPolicy(attempts=0)
    insecure = PrometheusClient("https://h", verify_tls=False)
    assert insecure._ssl is False
    cafile = ssl.get_default_verify_paths().cafile
    if cafile is not None:
        assert isinstance(PrometheusClient("https://h", ca_file=cafile)._ssl, ssl.SSLContext)


ERROR_CASES = [
    (Reply.api_error("bad_data", "1:18: parse error"), BadDataError, 400, "bad_data"),
    (
        Reply.api_error("execution", "query processing would load too many samples into memory"),
        ExecutionError,
        422,
        "execution",
    ),
    (
        Reply.api_error("timeout", "query timed out in query execution"),
        QueryTimeoutError,
        503,
        "timeout",
    ),
    (Reply.api_error("canceled"), QueryCanceledError, 499, "canceled"),
    (Reply.api_error("internal"), InternalError, 500, "internal"),
    (Reply.api_error("not_found"), NotFoundError, 404, "not_found"),
    (Reply.api_error("not_acceptable"), NotAcceptableError, 406, "not_acceptable"),
    (Reply.api_error("unavailable"), UnavailableError, 500, "unavailable"),
    (Reply.vm_too_long_query(), QueryTooLargeError, 422, "422"),
    (Reply.uri_too_long(), QueryTooLargeError, 414, ""),
    (Reply.header_fields_too_large(), QueryTooLargeError, 431, ""),
    (Reply.plain_text(413, "Request Entity Too Large"), QueryTooLargeError, 413, ""),
    (Reply.bad_gateway(), UnavailableError, 502, ""),
    (Reply.gateway_timeout(), UnavailableError, 504, ""),
    (Reply.prometheus_stopping(), UnavailableError, 503, ""),
    (Reply.prometheus_starting(), UnavailableError, 503, ""),
]


@pytest.mark.parametrize(("reply", "cls", "status", "error_type"), ERROR_CASES)
async def test_error_answers_map_to_typed_errors(
    serve: Serve, reply: Reply, cls: type[APIError], status: int, error_type: str
) -> None:
    """Every errorType and error status becomes its APIError subclass with status and query."""
    fake = FakePrometheus()
    fake.set_reply("query", reply)
    async with PrometheusClient(await serve(fake), retry=NO_RETRY) as prom:
        with pytest.raises(cls) as caught:
            await prom.query("up")
    err = caught.value
    assert type(err) is cls
    assert (err.status, err.error_type, err.query) == (status, error_type, "up")
    assert err.url.endswith("/api/v1/query")


async def test_typed_errors_keep_builtin_meanings_and_details(serve: Serve) -> None:
    """bad_data is a ValueError, server timeouts are TimeoutErrors, stopping says so."""
    fake = FakePrometheus()
    fake.enqueue(
        Reply.api_error("bad_data", "parse error", warnings=["w"]),
        Reply.api_error("timeout"),
        Reply.prometheus_stopping(),
    )
    async with PrometheusClient(await serve(fake), retry=NO_RETRY) as prom:
        with pytest.raises(ValueError, match="parse error") as bad:
            await prom.query("(")
        with pytest.raises(TimeoutError):
            await prom.query("up")
        with pytest.raises(UnavailableError, match="X-Prometheus-Stopping: true"):
            await prom.query("up")
    assert isinstance(bad.value, BadDataError) and bad.value.warnings == ("w",)


@pytest.mark.parametrize(
    ("reply", "needle"),
    [
        (Reply.not_json(200, b"<html>login page</html>"), "login page"),
        (Reply.plain_text(404, "404 page not found\n"), "404 page not found"),
        (Reply.not_json(500, b"<html>oops</html>"), "oops"),
        (
            Reply.envelope({"status": "success", "data": {"resultType": "vector", "result": 5}}),
            "result",
        ),
        (Reply(status=200, body=b'{"status":"success","data":'), "truncated"),
    ],
)
async def test_bodies_that_are_not_the_envelope_raise_response_decode_error(
    serve: Serve, reply: Reply, needle: str
) -> None:
    """Non-JSON or malformed bodies raise ResponseDecodeError showing status and first bytes."""
    fake = FakePrometheus()
    fake.set_reply("query", reply)
    async with PrometheusClient(await serve(fake), retry=NO_RETRY) as prom:
        with pytest.raises(ResponseDecodeError, match=needle) as caught:
            await prom.query("up")
    assert caught.value.status == reply.status
    assert f"HTTP {reply.status}" in str(caught.value)


async def test_query_vector_rejects_a_matrix(serve: Serve) -> None:
    """query_vector raises ResponseDecodeError when the expression yields a range vector."""
    fake = FakePrometheus()
    fake.set_reply("query", Reply.matrix([({"a": "b"}, [(1, 1)])]))
    fake.set_query_reply("up", Reply.vector([({"kernel_id": "k"}, 1)]))
    async with PrometheusClient(await serve(fake)) as prom:
        with pytest.raises(ResponseDecodeError, match="resultType"):
            await prom.query_vector("up[5m]")
        with pytest.raises(ResponseDecodeError, match="container_metric_name"):
            await prom.query_vector("up", labels=KernelLabels)


@pytest.mark.parametrize(
    "fault",
    [
        Reply.prometheus_stopping(),
        Reply.prometheus_starting(),
        Reply.bad_gateway(),
        Reply.gateway_timeout(),
        Reply.api_error("unavailable", status=503),
        Reply.api_error("unavailable"),
        Reply.dropped(),
    ],
)
async def test_retryable_faults_are_retried(serve: Serve, fault: Reply) -> None:
    """Not-ready answers, proxy 502/504 and dropped connections are retried until success."""
    fake = FakePrometheus()
    fake.enqueue(fault, fault)
    fake.set_reply("query", Reply.vector([({"a": "b"}, 1)]))
    observer = RecordingObserver()
    async with PrometheusClient(await serve(fake), retry=FAST_RETRY, observer=observer) as prom:
        result = await prom.query_vector("up")
    assert len(result.series) == 1
    assert len(fake.requests) == 3
    (call,) = observer.calls
    assert (call["ok"], call["retries"], call["series"], call["error_type"]) == (True, 2, 1, None)


@pytest.mark.parametrize(
    "fault",
    [
        Reply.api_error("bad_data"),
        Reply.api_error("execution"),
        Reply.api_error("timeout"),
        Reply.api_error("internal"),
        Reply.api_error("not_found"),
        Reply.vm_too_long_query(),
        Reply.uri_too_long(),
        Reply.plain_text(404, "404 page not found"),
    ],
)
async def test_non_retryable_faults_are_not_retried(serve: Serve, fault: Reply) -> None:
    """bad_data, execution, server timeouts, 4xx and too-large answers are raised at once."""
    fake = FakePrometheus()
    fake.enqueue(fault)
    async with PrometheusClient(await serve(fake), retry=FAST_RETRY) as prom:
        with pytest.raises(PromstatError):
            await prom.query("up")
    assert len(fake.requests) == 1
    assert fake.pending == 0


async def test_retries_give_up_after_the_attempt_budget(serve: Serve) -> None:
    """After `attempts` tries the last error is raised and the observer sees the retries."""
    fake = FakePrometheus()
    fake.set_reply("query", Reply.bad_gateway())
    observer = RecordingObserver()
    async with PrometheusClient(await serve(fake), retry=FAST_RETRY, observer=observer) as prom:
        with pytest.raises(UnavailableError):
            await prom.query("up")
    assert len(fake.requests) == 3
    (call,) = observer.calls
    assert (call["ok"], call["retries"], call["error_type"], call["endpoint"]) == (
        False,
        2,
        "http_502",
        "query",
    )


def test_backoff_is_full_jitter_and_capped() -> None:
    """delay(n) is jitter * min(max_delay, base * 2**n)."""
    policy = RetryPolicy(attempts=10, base_delay=0.1, max_delay=1.0, jitter=lambda: 1.0)
    assert [policy.delay(n) for n in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    half = RetryPolicy(base_delay=0.1, max_delay=1.0, jitter=lambda: 0.5)
    assert half.delay(10) == 0.5


async def test_client_applies_the_backoff_cap(serve: Serve) -> None:
    """A huge base delay is capped by max_delay, so the retries still fit in the deadline."""
    fake = FakePrometheus()
    fake.enqueue(Reply.bad_gateway(), Reply.bad_gateway())
    policy = RetryPolicy(attempts=3, base_delay=1000.0, max_delay=0.001, jitter=lambda: 1.0)
    async with PrometheusClient(await serve(fake), retry=policy, timeout=30) as prom:
        await prom.query("up")
    # Without the cap the first sleep (1000 s) would not fit in the 30 s deadline and the
    # client would have raised after one request.
    assert len(fake.requests) == 3


async def test_client_deadline_raises_request_timeout(serve: Serve) -> None:
    """A server slower than the deadline gives RequestTimeoutError, also a TimeoutError."""
    fake = FakePrometheus()
    fake.set_reply("query", Reply.vector([]).with_delay(30))
    observer = RecordingObserver()
    async with PrometheusClient(await serve(fake), timeout=0.2, observer=observer) as prom:
        with pytest.raises(TimeoutError) as caught:
            await prom.query("up")
    assert isinstance(caught.value, RequestTimeoutError)
    assert isinstance(caught.value, TransportError)
    assert caught.value.timeout == 0.2
    assert len(fake.requests) == 1  # the deadline is spent: no retry
    assert observer.calls[0]["error_type"] == "client_timeout"


async def test_dropped_connection_is_a_transport_error(serve: Serve) -> None:
    """A server that closes the connection without answering gives TransportError."""
    fake = FakePrometheus()
    fake.set_reply("query", Reply.dropped())
    async with PrometheusClient(await serve(fake), retry=NO_RETRY) as prom:
        with pytest.raises(TransportError) as caught:
            await prom.query("up")
    assert isinstance(caught.value.__cause__, aiohttp.ServerDisconnectedError)
    assert not isinstance(caught.value, RequestTimeoutError)


async def test_connection_refused_is_retried_then_raised(unused_tcp_port: int) -> None:
    """Nothing listening: each attempt is refused, then TransportError is raised from the cause."""
    observer = RecordingObserver()
    async with PrometheusClient(
        f"http://127.0.0.1:{unused_tcp_port}", retry=FAST_RETRY, observer=observer
    ) as prom:
        with pytest.raises(TransportError) as caught:
            await prom.query("up")
    assert isinstance(caught.value.__cause__, aiohttp.ClientConnectorError)
    assert str(unused_tcp_port) in str(caught.value)
    assert observer.calls[0]["retries"] == 2
    assert observer.calls[0]["error_type"] == "transport"


@pytest.mark.parametrize(
    "exc",
    [
        aiohttp.ClientOSError(errno.ECONNRESET, "Connection reset by peer"),
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientPayloadError("Response payload is not completed"),
    ],
)
async def test_transport_faults_mid_request_are_retried(exc: Exception) -> None:
    """Resets and disconnects raised inside aiohttp are retried, then raised as TransportError."""
    with aioresponses() as mocked:
        mocked.post("http://prom.test/api/v1/query", exception=exc, repeat=True)
        async with PrometheusClient("http://prom.test", retry=FAST_RETRY) as prom:
            with pytest.raises(TransportError) as caught:
                await prom.query_vector("up")
        (calls,) = mocked.requests.values()
    assert len(calls) == FAST_RETRY.attempts
    assert caught.value.__cause__ is exc


async def test_transport_faults_never_leak_aiohttp_exceptions() -> None:
    """Non-retryable aiohttp errors become TransportError raised from the original."""
    with aioresponses() as mocked:
        mocked.post(
            "http://prom.test/api/v1/query",
            exception=aiohttp.ClientOSError(errno.EHOSTUNREACH, "No route to host"),
        )
        mocked.post("http://prom.test/api/v1/query", exception=TimeoutError())
        async with PrometheusClient("http://prom.test", retry=FAST_RETRY) as prom:
            with pytest.raises(TransportError) as unreachable:
                await prom.query("up")
            with pytest.raises(RequestTimeoutError):
                await prom.query("up")
        (calls,) = mocked.requests.values()
    assert isinstance(unreachable.value.__cause__, aiohttp.ClientOSError)
    assert len(calls) == 2  # one each: neither was retried


async def test_observer_is_called_once_per_call_and_may_fail(serve: Serve) -> None:
    """The observer sees endpoint, bytes, series and ok; an observer exception is swallowed."""
    fake = FakePrometheus()
    fake.set_reply("query", Reply.vector([({"a": "1"}, 1), ({"a": "2"}, 2)]))
    observer = RecordingObserver()
    async with PrometheusClient(await serve(fake), observer=observer) as prom:
        result = await prom.query_vector("up")
        await prom.labels()
    query, labels = observer.calls
    assert query["endpoint"] == "query" and query["series"] == 2
    assert query["response_bytes"] == result.response_bytes and query["seconds"] >= 0
    assert labels["endpoint"] == "labels" and labels["ok"] is True

    class Broken:
        def on_request(self, **kwargs: Any) -> None:
            raise RuntimeError("observer bug")

    async with PrometheusClient(await serve(FakePrometheus()), observer=Broken()) as prom:
        assert (await prom.query("up")).result_type == "vector"


async def test_borrowed_session_is_left_open(serve: Serve) -> None:
    """A session passed in is used and not closed by the client."""
    fake = FakePrometheus()
    url = await serve(fake)
    async with aiohttp.ClientSession() as session:
        async with PrometheusClient(url, session=session) as prom:
            await prom.query("up")
        assert not session.closed
        async with PrometheusClient(url, session=session) as prom:
            await prom.query("up")
    assert len(fake.requests) == 2


async def test_owned_session_is_closed_and_close_is_idempotent(serve: Serve) -> None:
    """close() closes the owned session; calling it twice is fine."""
    prom = PrometheusClient(await serve(FakePrometheus()))
    await prom.query("up")
    session = prom._session
    assert session is not None
    await prom.close()
    await prom.close()
    assert session.closed


async def test_a_closed_client_raises_closed_error_and_opens_no_session(serve: Serve) -> None:
    """A call after close() is a ClosedError; it does not open a session nobody closes."""
    fake = FakePrometheus()
    prom = PrometheusClient(await serve(fake))
    await prom.query("up")
    await prom.close()
    with pytest.raises(ClosedError, match="PrometheusClient is closed"):
        await prom.query("up")
    with pytest.raises(ClosedError):
        async with prom:
            pass
    assert prom._session is None
    assert len(fake.requests) == 1


async def test_invalid_arguments_raise_config_error(serve: Serve) -> None:
    """Empty series selectors, a bare string as match and bad label names are ConfigErrors."""
    async with PrometheusClient(await serve(FakePrometheus())) as prom:
        with pytest.raises(ConfigError):
            await prom.series([])
        with pytest.raises(ConfigError):
            await prom.labels(match="up")
        with pytest.raises(ConfigError):
            await prom.label_values("a/b")
        with pytest.raises(ConfigError):
            await prom.query_range("up", start=1, end=2, step=0)


async def test_aiohttp_basic_auth_objects_are_accepted(serve: Serve) -> None:
    """An aiohttp.BasicAuth (deprecated in aiohttp 3.14) still becomes the same header."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        auth = aiohttp.BasicAuth("user", "pw")
    fake = FakePrometheus()
    async with PrometheusClient(await serve(fake), auth=auth) as prom:
        await prom.query("up")
    assert fake.requests[0].headers["Authorization"] == "Basic dXNlcjpwdw=="


async def test_observer_names_decode_errors(serve: Serve) -> None:
    """A body that is not the envelope is reported to the observer as error_type "decode"."""
    fake = FakePrometheus()
    fake.set_reply("query", Reply.not_json(200))
    observer = RecordingObserver()
    async with PrometheusClient(await serve(fake), observer=observer) as prom:
        with pytest.raises(ResponseDecodeError):
            await prom.query("up")
    assert [(c["ok"], c["error_type"], c["retries"]) for c in observer.calls] == [
        (False, "decode", 0)
    ]


async def test_closed_borrowed_session_and_bad_headers_raise_promstat_errors(
    serve: Serve,
) -> None:
    """A borrowed session closed under the client, or an invalid header, never leaks aiohttp."""
    url = await serve(FakePrometheus())
    session = aiohttp.ClientSession()
    await session.close()
    async with PrometheusClient(url, session=session, retry=NO_RETRY) as prom:
        with pytest.raises(TransportError, match="closed"):
            await prom.query("up")
    async with PrometheusClient(url, headers={"X-Bad": "a\nb"}) as prom:
        with pytest.raises(ConfigError):
            await prom.query("up")


async def test_compression_can_be_turned_off(serve: Serve) -> None:
    """compress=False asks for an identity response (for a Prometheus on the same host)."""
    fake = FakePrometheus()
    fake.set_reply("query", Reply.vector([], at=1700000000))
    async with PrometheusClient(await serve(fake), compress=False) as prom:
        await prom.query_vector("up", time=1700000000)
    (req,) = fake.requests
    assert req.headers["Accept-Encoding"] == "identity"
