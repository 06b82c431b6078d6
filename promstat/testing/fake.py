"""Test helpers shipped with promstat: a fault-injecting fake Prometheus and OpenMetrics text.

:class:`FakePrometheus` is an :class:`aiohttp.web.Application` that speaks the exact envelope and
error shapes of the Prometheus HTTP API (``/api/v1/query``, ``query_range``, ``series``,
``labels``, ``label/<name>/values``, ``metadata``, ``rules``, ``status/buildinfo``). It answers
from in-memory canned replies, not from a PromQL engine: it exists to test how *your* code
reacts to what a server (or a proxy in front of it) can do — error envelopes of every
``errorType``, delays, dropped connections, HTML and plain-text bodies, 414/431, VictoriaMetrics'
422 "too long query" — and to assert on what your code sent. Features themselves are best tested
against a real Prometheus (see :mod:`promstat.testing.lab` and :func:`openmetrics_text`).

With pytest-aiohttp::

    async def test_retries_on_stopping(aiohttp_server):
        fake = FakePrometheus()
        fake.enqueue(Reply.prometheus_stopping())
        fake.set_reply("query", Reply.vector([({"job": "a"}, 1.0)], at=1700000000))
        server = await aiohttp_server(fake.app)
        async with PrometheusClient(str(server.make_url(""))) as prom:
            result = await prom.query_vector("up")
        assert len(fake.requests) == 2

Reply selection order for each request: the first queued reply (:meth:`FakePrometheus.enqueue`)
whose endpoint matches, then a reply registered for the exact query text
(:meth:`FakePrometheus.set_query_reply`), then the endpoint's reply
(:meth:`FakePrometheus.set_reply`), then an empty success of the endpoint's shape.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Final

from aiohttp import web

__all__ = [
    "DEFAULT_STATUS_BY_ERROR_TYPE",
    "ENDPOINTS",
    "FakePrometheus",
    "RecordedRequest",
    "Reply",
    "format_sample_value",
    "openmetrics_text",
]

#: Endpoint names FakePrometheus serves (keys for replies and :attr:`RecordedRequest.endpoint`).
ENDPOINTS: Final = (
    "query", "query_range", "series", "labels", "label_values", "metadata", "rules", "buildinfo",
)

#: Prometheus' HTTP status per ``errorType`` (``web/api/v1/api.go``, ``getDefaultErrorCode``):
#: ``unavailable`` has no explicit case there and falls through to 500.
DEFAULT_STATUS_BY_ERROR_TYPE: Final[Mapping[str, int]] = {
    "bad_data": 400,
    "execution": 422,
    "canceled": 499,
    "timeout": 503,
    "internal": 500,
    "not_found": 404,
    "not_acceptable": 406,
    "unavailable": 500,
}

_JSON: Final = "application/json"
_EMPTY_DATA: Final[Mapping[str, Any]] = {
    "query": {"resultType": "vector", "result": []},
    "query_range": {"resultType": "matrix", "result": []},
    "series": [],
    "labels": [],
    "label_values": [],
    "metadata": {},
    "rules": {"groups": []},
    "buildinfo": {
        "version": "2.42.0", "revision": "fake", "branch": "HEAD", "buildUser": "promstat",
        "buildDate": "20230101-00:00:00", "goVersion": "go1.20",
    },
}


def format_sample_value(value: float | str) -> str:
    """Format a sample value the way Prometheus does (``"NaN"``, ``"+Inf"``, ``"-Inf"``, ``"1.5"``).

    Strings pass through unchanged. Finite floats use the shortest text that round-trips,
    without an exponent and without a trailing ``.0`` (Go's ``FormatFloat(f, 'f', -1, 64)``).
    """
    if isinstance(value, str):
        return value
    f = float(value)
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    text = repr(f)
    if "e" in text or "E" in text:
        text = format(Decimal(text), "f")
    if text.endswith(".0"):
        text = text[:-2]
    return text


@dataclass(frozen=True, slots=True)
class Reply:
    """One canned HTTP answer. Build it with the classmethods; adjust with :meth:`with_delay`.

    Attributes:
        status: HTTP status.
        body: response body.
        content_type: ``Content-Type`` (without charset).
        headers: extra response headers.
        delay: seconds to wait before answering (or before dropping).
        drop: close the connection without answering.
    """

    status: int = 200
    body: bytes = b""
    content_type: str = _JSON
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False

    def with_delay(self, seconds: float) -> Reply:
        """Return a copy that waits ``seconds`` before answering."""
        return replace(self, delay=seconds)

    @classmethod
    def envelope(cls, payload: Mapping[str, Any], *, status: int = 200) -> Reply:
        """A JSON reply with an arbitrary envelope (for shapes the other helpers do not cover)."""
        return cls(status=status, body=json.dumps(payload).encode())

    @classmethod
    def success(
        cls, data: Any, *, warnings: Sequence[str] = (), infos: Sequence[str] = ()
    ) -> Reply:
        """A ``"status": "success"`` envelope around ``data`` (warnings/infos only if given)."""
        payload: dict[str, Any] = {"status": "success", "data": data}
        if warnings:
            payload["warnings"] = list(warnings)
        if infos:
            payload["infos"] = list(infos)
        return cls.envelope(payload)

    @classmethod
    def vector(
        cls,
        series: Iterable[tuple[Mapping[str, str], float | str]],
        *,
        at: float = 0.0,
        warnings: Sequence[str] = (),
        infos: Sequence[str] = (),
    ) -> Reply:
        """An instant-vector success: ``(labels, value)`` pairs, all sampled at ``at``."""
        result = [
            {"metric": dict(labels), "value": [at, format_sample_value(value)]}
            for labels, value in series
        ]
        return cls.success({"resultType": "vector", "result": result},
                           warnings=warnings, infos=infos)

    @classmethod
    def matrix(
        cls,
        series: Iterable[tuple[Mapping[str, str], Iterable[tuple[float, float | str]]]],
        *,
        warnings: Sequence[str] = (),
        infos: Sequence[str] = (),
    ) -> Reply:
        """A range-vector success: ``(labels, [(timestamp, value), ...])`` per series."""
        result = [
            {"metric": dict(labels),
             "values": [[ts, format_sample_value(v)] for ts, v in samples]}
            for labels, samples in series
        ]
        return cls.success({"resultType": "matrix", "result": result},
                           warnings=warnings, infos=infos)

    @classmethod
    def scalar(cls, value: float | str, *, at: float = 0.0) -> Reply:
        """A scalar success."""
        return cls.success({"resultType": "scalar", "result": [at, format_sample_value(value)]})

    @classmethod
    def api_error(
        cls,
        error_type: str,
        error: str = "",
        *,
        status: int | None = None,
        warnings: Sequence[str] = (),
    ) -> Reply:
        """An error envelope; ``status`` defaults to Prometheus' code for ``error_type``."""
        payload: dict[str, Any] = {
            "status": "error", "errorType": error_type, "error": error or f"fake {error_type}",
        }
        if warnings:
            payload["warnings"] = list(warnings)
        code = status if status is not None else DEFAULT_STATUS_BY_ERROR_TYPE.get(error_type, 500)
        return cls.envelope(payload, status=code)

    @classmethod
    def plain_text(
        cls, status: int, text: str, *, headers: Mapping[str, str] | None = None
    ) -> Reply:
        """A ``text/plain`` body (what Go's ``http.Error`` writes)."""
        return cls(status=status, body=text.encode(), content_type="text/plain",
                   headers=dict(headers or {}))

    @classmethod
    def html(cls, status: int, title: str) -> Reply:
        """An HTML error page, as a reverse proxy (nginx) writes it."""
        page = (f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
                f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n"
                "</body>\r\n</html>\r\n")
        return cls(status=status, body=page.encode(), content_type="text/html")

    @classmethod
    def prometheus_starting(cls) -> Reply:
        """Prometheus' plain-text 503 while starting (``X-Prometheus-Stopping: false``)."""
        return cls.plain_text(503, "Service Unavailable\n",
                              headers={"X-Prometheus-Stopping": "false"})

    @classmethod
    def prometheus_stopping(cls) -> Reply:
        """Prometheus' plain-text 503 while shutting down (``X-Prometheus-Stopping: true``)."""
        return cls.plain_text(503, "Service Unavailable\n",
                              headers={"X-Prometheus-Stopping": "true"})

    @classmethod
    def bad_gateway(cls) -> Reply:
        """A proxy's HTML 502 page."""
        return cls.html(502, "502 Bad Gateway")

    @classmethod
    def gateway_timeout(cls) -> Reply:
        """A proxy's HTML 504 page."""
        return cls.html(504, "504 Gateway Time-out")

    @classmethod
    def uri_too_long(cls) -> Reply:
        """A proxy's HTML 414 page (a GET URL over its buffer)."""
        return cls.html(414, "414 Request-URI Too Large")

    @classmethod
    def header_fields_too_large(cls) -> Reply:
        """Go net/http's plain-text 431 (request line + headers over ``MaxHeaderBytes``)."""
        return cls.plain_text(431, "431 Request Header Fields Too Large")

    @classmethod
    def vm_too_long_query(cls, query_len: int = 16385, max_len: int = 16384) -> Reply:
        """VictoriaMetrics' 422 for a query over ``-search.maxQueryLen`` (errorType "422")."""
        error = (f"too long query; got {query_len} bytes; mustn't exceed "
                 f"`-search.maxQueryLen={max_len}` bytes")
        return cls.envelope({"status": "error", "errorType": "422", "error": error}, status=422)

    @classmethod
    def not_json(cls, status: int = 200, body: bytes = b"<html>surprise</html>") -> Reply:
        """A body that is not JSON at all, with any status."""
        return cls(status=status, body=body, content_type="text/html")

    @classmethod
    def dropped(cls, *, delay: float = 0.0) -> Reply:
        """Close the connection without answering (the client sees a disconnect)."""
        return cls(drop=True, delay=delay)


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request the fake received.

    Attributes:
        method: ``"GET"`` or ``"POST"``.
        path: URL path as sent (prefix included).
        endpoint: one of :data:`ENDPOINTS`.
        query: URL query parameters, in order.
        form: form-body parameters (POST only: like Go's ``ParseForm``, bodies of GETs are ignored).
        headers: request headers (last value wins).
        label: the ``<name>`` of ``label/<name>/values`` requests, else ``None``.
    """

    method: str
    path: str
    endpoint: str
    query: tuple[tuple[str, str], ...]
    form: tuple[tuple[str, str], ...]
    headers: Mapping[str, str]
    label: str | None = None

    def params(self, name: str) -> list[str]:
        """All values of ``name``, form body first, then the URL (as Prometheus merges them)."""
        return [v for k, v in self.form if k == name] + [v for k, v in self.query if k == name]

    def param(self, name: str) -> str | None:
        """The first value of ``name`` (form body, then URL), or ``None``."""
        values = self.params(name)
        return values[0] if values else None


class FakePrometheus:
    """A fault-injecting fake of the Prometheus HTTP API (see the module docstring).

    Args:
        prefix: path prefix to serve under, e.g. ``"/prometheus"`` or ``"/select/0/prometheus"``.

    Attributes:
        requests: every request received, in arrival order.
    """

    def __init__(self, *, prefix: str = "") -> None:
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.requests: list[RecordedRequest] = []
        self._queue: deque[tuple[str | None, Reply]] = deque()
        self._by_query: dict[tuple[str, str], Reply] = {}
        self._by_endpoint: dict[str, Reply] = {}
        self._app: web.Application | None = None
        self._runner: web.AppRunner | None = None

    @property
    def app(self) -> web.Application:
        """The aiohttp application (built once); serve it with ``aiohttp_server(fake.app)``."""
        if self._app is None:
            app = web.Application()
            api = f"{self.prefix}/api/v1"
            for name in ("query", "query_range", "series", "labels"):
                app.router.add_route("GET", f"{api}/{name}", self._handler(name))
                app.router.add_route("POST", f"{api}/{name}", self._handler(name))
            # GET only, as in Prometheus: a POST gets 405 Method Not Allowed.
            app.router.add_route("GET", f"{api}/label/{{name}}/values",
                                 self._handler("label_values"))
            app.router.add_route("GET", f"{api}/metadata", self._handler("metadata"))
            app.router.add_route("GET", f"{api}/rules", self._handler("rules"))
            app.router.add_route("GET", f"{api}/status/buildinfo", self._handler("buildinfo"))
            self._app = app
        return self._app

    def set_reply(self, endpoint: str, reply: Reply) -> None:
        """Answer every request to ``endpoint`` with ``reply`` (unless queued/per-query wins)."""
        self._by_endpoint[_check_endpoint(endpoint)] = reply

    def set_query_reply(self, query: str, reply: Reply, *, endpoint: str = "query") -> None:
        """Answer requests whose ``query`` parameter is exactly ``query`` with ``reply``."""
        self._by_query[(_check_endpoint(endpoint), query)] = reply

    def enqueue(self, *replies: Reply, endpoint: str | None = None) -> None:
        """Script the next answers: each reply is used once, in order.

        Args:
            replies: answers to give.
            endpoint: only requests to this endpoint consume them (default: any endpoint).
        """
        key = None if endpoint is None else _check_endpoint(endpoint)
        self._queue.extend((key, r) for r in replies)

    @property
    def pending(self) -> int:
        """Number of queued replies not yet used."""
        return len(self._queue)

    def clear(self) -> None:
        """Forget queued and registered replies and the request log."""
        self._queue.clear()
        self._by_query.clear()
        self._by_endpoint.clear()
        self.requests.clear()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve outside pytest-aiohttp; returns the base URL (prefix included).

        Raises:
            RuntimeError: already started.
        """
        if self._runner is not None:
            raise RuntimeError("FakePrometheus is already started")
        runner = web.AppRunner(self.app, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        return f"http://{bound_host}:{bound_port}{self.prefix}"

    async def stop(self) -> None:
        """Stop serving (idempotent)."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def _handler(self, endpoint: str) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._handle(endpoint, request)

        return handle

    def _pick(self, endpoint: str, query: str | None) -> Reply:
        for i, (key, reply) in enumerate(self._queue):
            if key is None or key == endpoint:
                del self._queue[i]
                return reply
        if query is not None and (endpoint, query) in self._by_query:
            return self._by_query[(endpoint, query)]
        if endpoint in self._by_endpoint:
            return self._by_endpoint[endpoint]
        return Reply.success(_EMPTY_DATA[endpoint])

    async def _handle(self, endpoint: str, request: web.Request) -> web.StreamResponse:
        form: tuple[tuple[str, str], ...] = ()
        if request.method == "POST":
            posted = await request.post()
            form = tuple((k, v) for k, v in posted.items() if isinstance(v, str))
        recorded = RecordedRequest(
            method=request.method,
            path=request.path,
            endpoint=endpoint,
            query=tuple(request.query.items()),
            form=form,
            headers=dict(request.headers),
            label=request.match_info.get("name"),
        )
        self.requests.append(recorded)
        query = recorded.param("query")
        if endpoint in ("query", "query_range") and not query:
            reply = Reply.api_error("bad_data", 'invalid parameter "query": empty query')
        else:
            reply = self._pick(endpoint, query)
        if reply.delay > 0:
            await asyncio.sleep(reply.delay)
        if reply.drop:
            if request.transport is not None:
                request.transport.close()
            return web.Response()  # never reaches the client: the transport is closed
        return web.Response(status=reply.status, body=reply.body,
                            content_type=reply.content_type, headers=reply.headers)


def _check_endpoint(endpoint: str) -> str:
    if endpoint not in ENDPOINTS:
        raise ValueError(f"unknown endpoint {endpoint!r}; expected one of {ENDPOINTS}")
    return endpoint


def _escape_label_value(value: str) -> str:
    # OpenMetrics escapes exactly these three in label values.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_timestamp(ts: float) -> str:
    if float(ts).is_integer():
        return str(int(ts))
    return format_sample_value(float(ts))


def openmetrics_text(samples: Iterable[tuple[str, Mapping[str, str], float, float]]) -> str:
    """Render samples as deterministic OpenMetrics text, ready for promtool or VictoriaMetrics.

    Each metric family gets ``# TYPE <name> gauge`` and its samples together (families sorted
    by name, series sorted by labels, samples by timestamp); the text ends with ``# EOF``.
    Label values are escaped per OpenMetrics (backslash, double quote, newline). Duplicate
    (series, timestamp) samples keep the last value given.

    Args:
        samples: ``(metric name, labels, timestamp in Unix seconds, value)``.

    Returns:
        The exposition text.
    """
    families: dict[str, dict[tuple[tuple[str, str], ...], dict[float, float]]] = {}
    for name, labels, ts, value in samples:
        key = tuple(sorted(labels.items()))
        families.setdefault(name, {}).setdefault(key, {})[float(ts)] = value
    lines: list[str] = []
    for name in sorted(families):
        lines.append(f"# TYPE {name} gauge")
        for key in sorted(families[name]):
            if key:
                inner = ",".join(f'{k}="{_escape_label_value(v)}"' for k, v in key)
                head = f"{name}{{{inner}}}"
            else:
                head = name
            points = families[name][key]
            for ts in sorted(points):
                text = format_sample_value(float(points[ts]))
                lines.append(f"{head} {text} {_format_timestamp(ts)}")
    lines.append("# EOF")
    return "\n".join(lines) + "\n"
