"""The CLI's errors as a new user meets them: one line on stderr, saying what to check.

Each case runs ``promstat.cli.main`` against something that is not a healthy Prometheus: a
port nothing listens on (given, from ``$PROMSTAT_URL`` and as the default), a host name that
does not resolve, promstat serve's GraphQL port, a URL ending in ``/api/v1``, an nginx proxy
answering 502 with its HTML page, a server that never answers. The HTTP servers are tiny
aiohttp apps on a thread of their own (``main`` runs its own event loop).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from promstat.cli import _common, build_parser, main
from promstat.cli._common import LogCapture, error_line, one_line
from promstat.errors import RuleError, UnavailableError
from promstat.testing import lab

K1 = "3467e9c9-0c47-4825-af52-bd94bb872211"

NGINX_502 = """<html>
<head><title>502 Bad Gateway</title></head>
<body>
<center><h1>502 Bad Gateway</h1></center>
<hr><center>nginx/1.24.0</center>
</body>
</html>
"""


@dataclass
class Server:
    """A running test server: its base URL and the paths it was asked for."""

    url: str
    paths: list[str] = field(default_factory=list)


#: Set when the server stops: handlers that hang wait for it.
STOP: web.AppKey[asyncio.Event] = web.AppKey("stop", asyncio.Event)


def _serve(app: web.Application) -> Iterator[Server]:
    """Run ``app`` on a loopback port in a thread until the generator is closed."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop = asyncio.Event()
    app[STOP] = stop
    port = lab.free_port()
    server = Server(f"http://127.0.0.1:{port}")

    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        server.paths.append(request.path)
        return await handler(request)

    app.middlewares.append(record)

    async def run() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        started.set()
        await stop.wait()
        await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    assert started.wait(30), "the test server did not start"
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()


@pytest.fixture
def nginx_502() -> Iterator[Server]:
    """A proxy whose upstream is down: every path answers nginx's 502 HTML page."""

    async def bad_gateway(request: web.Request) -> web.Response:
        return web.Response(status=502, text=NGINX_502, content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", bad_gateway)
    yield from _serve(app)


@pytest.fixture
def graphql_port() -> Iterator[Server]:
    """promstat serve's own app (the GraphQL port someone gives instead of Prometheus')."""
    from promstat.apps.registry import StaticRegistry
    from promstat.apps.serve import make_app

    class NoStats:
        async def load_kernels(self, ids: Any, *, at: Any = None) -> list[Any]:
            return [None] * len(ids)

        load_agents = load_kernels

        async def load_kernel_stats(self, pairs: Any, *, at: Any = None) -> list[Any]:
            return [None] * len(pairs)

    yield from _serve(make_app(NoStats(), StaticRegistry([K1])))


@pytest.fixture
def hanging() -> Iterator[Server]:
    """A server that accepts requests and never answers them (within a test's patience)."""

    async def hang(request: web.Request) -> web.Response:
        await request.app[STOP].wait()
        return web.Response(status=503, text="stopping")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hang)
    yield from _serve(app)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err  # one line: no logger line repeating the error
    assert lines[0].startswith("promstat: error: ")
    return code, lines[0]


@pytest.fixture(autouse=True)
def _no_env_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMSTAT_URL", raising=False)


def test_nothing_listening_names_the_url_and_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """A port nothing listens on: says so, and to check --url."""
    url = f"http://127.0.0.1:{lab.free_port()}"
    code, line = _run(capsys, "live-stat", "--url", url, K1)
    assert code == 1
    assert f"nothing is listening at {url} (connection refused)" in line
    assert f"check --url ({url})" in line


def test_env_url_is_named_as_the_source(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong $PROMSTAT_URL is named as what to check."""
    url = f"http://127.0.0.1:{lab.free_port()}"
    monkeypatch.setenv("PROMSTAT_URL", url)
    code, line = _run(capsys, "query", "up")
    assert code == 1 and f"check $PROMSTAT_URL ({url})" in line


def test_default_url_with_nothing_listening(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither --url nor $PROMSTAT_URL: the line says the default was used and how to set one."""
    url = f"http://127.0.0.1:{lab.free_port()}"  # the default's stand-in: 9090 may be taken
    monkeypatch.setattr(_common, "DEFAULT_URL", url)
    code, line = _run(capsys, "live-stat", K1)
    assert code == 1
    assert f"set --url or $PROMSTAT_URL (neither is set, so the default {url} was used)" in line


def test_unresolvable_host(capsys: pytest.CaptureFixture[str]) -> None:
    """A host name that does not resolve (.invalid never does, RFC 6761)."""
    code, line = _run(capsys, "live-stat", "--url", "http://prometheus.invalid:9090",
                      "--timeout", "10", K1)  # fmt: skip
    assert code == 1
    assert "cannot resolve the host of http://prometheus.invalid:9090" in line
    assert "is the host name right?" in line


def test_graphql_port_is_not_prometheus(
    graphql_port: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    """promstat serve's port answers 404 for /api/v1/query: "is it Prometheus?"."""
    code, line = _run(capsys, "live-stat", "--url", graphql_port.url, K1)
    assert code == 1
    assert f"HTTP 404 for {graphql_port.url}/api/v1/query" in line
    assert "is it Prometheus?" in line and "GraphQL port" in line
    assert graphql_port.paths and all(p == "/api/v1/query" for p in graphql_port.paths)


@pytest.mark.parametrize("suffix", ["/api/v1", "/api/v1/", "/api/v1/query", "/prom/api/v1"])
def test_api_v1_suffix_is_refused_before_sending(
    graphql_port: Server, suffix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--url .../api/v1 would request /api/v1/api/v1/query: refused, nothing sent."""
    base = graphql_port.url + suffix.split("/api/v1")[0]
    code, line = _run(capsys, "query", "up", "--url", graphql_port.url + suffix)
    assert code == 1
    assert f"drop the /api/v1 suffix, promstat adds it (use {base})" in line
    assert graphql_port.paths == []


def test_nginx_502_page_is_one_short_line(
    nginx_502: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    """A proxy's 502 HTML page: its title, not eight lines of HTML; the planner's own WARNING
    about the failed detection is not printed as a second line."""
    for argv in (["live-stat", K1], ["query", "up"]):
        code, line = _run(capsys, *argv, "--url", nginx_502.url, "--timeout", "5")
        assert code == 1
        assert "a proxy (nginx) answered HTTP 502 with an HTML page: 502 Bad Gateway" in line
        assert "Prometheus behind the proxy is down" in line
        assert "<" not in line and len(line) < 400


def test_verbose_shows_the_library_log(
    nginx_502: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    """-v prints the library's records as they happen, then the same one error line."""
    code = main(["-v", "live-stat", K1, "--url", nginx_502.url, "--timeout", "5"])
    lines = capsys.readouterr().err.splitlines()
    assert code == 1
    assert any("plan detection failed" in x for x in lines[:-1]), lines
    assert all("\n" not in x for x in lines) and lines[-1].startswith("promstat: error: ")


def test_no_answer_within_the_timeout(hanging: Server, capsys: pytest.CaptureFixture[str]) -> None:
    """A server that never answers: "no answer within", and --timeout to raise."""
    code, line = _run(capsys, "query", "up", "--url", hanging.url, "--timeout", "0.5")
    assert code == 1
    assert f"no answer from {hanging.url}" in line and "--timeout" in line


def test_non_http_url_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """A URL without a scheme is a one-line error naming an example."""
    code, line = _run(capsys, "query", "up", "--url", "localhost:9090")
    assert code == 1 and "is not an http:// or https:// URL" in line


def test_error_line_collapses_and_cuts_long_messages() -> None:
    """A long multi-line server text becomes one line, cut with '...'."""
    exc = UnavailableError(status=503, error="starting\n" + "x" * 1000)
    line = error_line(exc)
    assert "\n" not in line and line.endswith("...") and len(line) < 250
    assert one_line("a\n  b\tc") == "a b c"
    # promstat's own advice and promtool's verdicts are kept whole (up to 1,000 characters).
    advice = RuleError("promtool test rules failed (exit 1):\n" + "  FAILED: " * 40)
    assert error_line(advice) == "promstat: error: " + one_line(str(advice), 1000)
    assert not error_line(advice).endswith("...")


def test_warnings_print_once_after_success(capsys: pytest.CaptureFixture[str]) -> None:
    """On success each distinct library WARNING prints once, one line; INFO stays quiet."""
    capture = LogCapture()
    remove = capture.install()
    try:
        log = logging.getLogger("promstat.planner")
        for _ in range(3):
            log.warning("the rules were rendered\nwith --rates %s", "exporter")
        log.info("detected plan recorded")
    finally:
        remove()
    import sys

    capture.flush_to(sys.stderr)
    assert capsys.readouterr().err.splitlines() == [
        "promstat: warning: the rules were rendered with --rates exporter"
    ]
    assert logging.getLogger("promstat").propagate  # restored


def test_every_command_is_in_the_parser() -> None:
    """The parser lists one subcommand per command module."""
    parser = build_parser()
    for argv in (
        ["query", "up"],
        ["live-stat", K1],
        ["rules", "check", "."],
        ["alerts", "check", "."],
        ["dashboards", "render", "--output", "x"],
        ["serve"],
        ["demo"],
        ["bench"],
        ["compare", "--redis", "redis://x"],
    ):
        assert callable(parser.parse_args(argv).handler), argv


@pytest.fixture
def empty_prometheus() -> Iterator[Server]:
    """Answers every instant query with an empty vector, as a Prometheus without data."""

    async def empty(request: web.Request) -> web.Response:
        return web.json_response(
            {"status": "success", "data": {"resultType": "vector", "result": []}}
        )

    app = web.Application()
    app.router.add_route("*", "/api/v1/query", empty)
    yield from _serve(app)


def test_library_warnings_show_once_when_the_command_succeeds(
    empty_prometheus: Server,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A WARNING the library logs during a successful command is printed once, as one line,
    after the answer (here: a planner that warns twice about the same thing)."""
    from promstat.planner import Planner

    original = Planner.kernels

    async def warn_then_load(self: Planner, ids: Any, *, at: Any = None) -> Any:
        for _ in range(2):
            logging.getLogger("promstat.planner").warning("rules rendered\n  differently")
        return await original(self, ids, at=at)

    monkeypatch.setattr(Planner, "kernels", warn_then_load)
    code = main(["live-stat", "--url", empty_prometheus.url, K1])
    captured = capsys.readouterr()
    assert code == 0 and captured.out == f'{{"{K1}": null}}\n'
    assert captured.err.splitlines() == [
        f"promstat: note: 1 of 1 kernel ids had no data (null): {K1} (not running at that "
        "time, or not exported to this Prometheus)",
        "promstat: warning: rules rendered differently",
    ]


def test_compare_names_valkey_not_prometheus_when_valkey_is_down(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """compare's --redis address refusing connections is named as itself, not as Prometheus."""
    redis_url = f"redis://127.0.0.1:{lab.free_port()}"
    prom_url = f"http://127.0.0.1:{lab.free_port()}"
    code, line = _run(capsys, "compare", "--redis", redis_url, "--url", prom_url, K1)
    assert code == 1
    assert f"nothing is listening at {redis_url} (connection refused)" in line
    assert "check that address" in line and prom_url not in line
