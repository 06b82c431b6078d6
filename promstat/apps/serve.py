"""The GraphQL service: legacy live_stat list pages over HTTP, and ``promstat serve``.

:func:`make_app` builds an aiohttp application around a :class:`~promstat.service.LiveStats`
and a row :class:`~promstat.apps.registry.Registry`:

* ``POST /graphql`` — JSON body ``{"query", "variables"?, "operationName"?}``; answers the
  GraphQL response ``{"data", "errors"?}`` (also ``GET /graphql?query=...``);
* ``GET /`` — a short text page with an example query and ``curl`` command;
* ``GET /metrics`` — promstat's own counters (:class:`~promstat.selfmetrics.PromstatMetrics`) in
  the Prometheus text format, when ``prometheus_client`` is installed (extra ``prometheus``).

The schema is the legacy subset of :mod:`promstat.apps.schema_graphene` or the equivalent
:mod:`promstat.apps.schema_strawberry` (``stack=``); each request gets fresh loaders.

``promstat serve`` (:func:`serve` with :class:`ServeOptions`; the flags are parsed in
:mod:`promstat.cli.serve`) runs it against any Prometheus-compatible backend with Backend.AI
data: rows come from the live series themselves
(:class:`~promstat.apps.registry.PrometheusRegistry`), so no manager database is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Final, Literal, cast

import yaml
from aiohttp import web

from promstat.apps.registry import PrometheusRegistry, Registry
from promstat.apps.schema import SchemaExecutor
from promstat.errors import ConfigError
from promstat.expressions import RateSource
from promstat.integrations import DEFAULT_MAX_BATCH_SIZE, StatsSource
from promstat.selfmetrics import PromstatMetrics

__all__ = [
    "EXAMPLE_QUERY",
    "GraphQLExecutor",
    "ServeOptions",
    "curl_example",
    "load_serve_options",
    "make_app",
    "make_executor",
    "serve",
]

Stack = Literal["graphene", "strawberry"]
STACKS: Final[tuple[str, ...]] = ("graphene", "strawberry")

#: The kernel list page query the demo and the index page use.
EXAMPLE_QUERY: Final = (
    "query KernelPage($limit: Int!, $offset: Int!) {\n"
    '  compute_container_list(limit: $limit, offset: $offset, status: "RUNNING") {\n'
    "    total_count\n"
    "    items { id agent status live_stat }\n"
    "  }\n"
    "}"
)


#: What the app runs requests with: a graphene or strawberry executor.
GraphQLExecutor = SchemaExecutor


def make_executor(
    stats: StatsSource,
    registry: Registry,
    *,
    stack: str = "graphene",
    max_batch_size: int | None = DEFAULT_MAX_BATCH_SIZE,
) -> GraphQLExecutor:
    """Build the schema executor of ``stack``.

    Raises:
        ConfigError: unknown stack, or its extra (``graphene``/``strawberry``) is missing.
    """
    try:
        if stack == "graphene":
            from promstat.apps.schema_graphene import GrapheneExecutor

            return GrapheneExecutor(stats, registry, max_batch_size=max_batch_size)
        if stack == "strawberry":
            from promstat.apps.schema_strawberry import StrawberryExecutor

            return StrawberryExecutor(stats, registry, max_batch_size=max_batch_size)
    except ImportError as exc:
        raise ConfigError(
            f"the {stack} stack needs its extra: pip install 'promstat[{stack}]' ({exc})"
        ) from exc
    raise ConfigError(f"unknown GraphQL stack {stack!r}; expected one of {', '.join(STACKS)}")


def curl_example(graphql_url: str, *, page_size: int = 50) -> str:
    """A ready-to-paste ``curl`` command fetching one kernel page from ``graphql_url``."""
    body = json.dumps(
        {"query": " ".join(EXAMPLE_QUERY.split()), "variables": {"limit": page_size, "offset": 0}}
    )
    quoted = body.replace("'", "'\\''")
    return f"curl -s -H 'Content-Type: application/json' -d '{quoted}' {graphql_url}"


_EXECUTOR: Final = web.AppKey("promstat_executor", object)
_METRICS_REGISTRY: Final = web.AppKey("promstat_metrics_registry", object)


def _executor(request: web.Request) -> GraphQLExecutor:
    executor: GraphQLExecutor = request.app[_EXECUTOR]  # type: ignore[assignment]
    return executor


def _bad_request(message: str) -> web.Response:
    return web.json_response({"data": None, "errors": [{"message": message}]}, status=400)


async def _graphql(request: web.Request) -> web.Response:
    if request.method == "GET":
        query: object = request.query.get("query")
        raw_vars: object = request.query.get("variables")
        operation: object = request.query.get("operationName")
        if isinstance(raw_vars, str) and raw_vars:
            try:
                raw_vars = json.loads(raw_vars)
            except ValueError:
                return _bad_request("variables must be a JSON object")
    else:
        try:
            body = await request.json()
        except ValueError:
            return _bad_request(
                "the request body must be JSON: {query, variables?, operationName?}"
            )
        if not isinstance(body, dict):
            return _bad_request("the request body must be a JSON object")
        query, raw_vars, operation = (
            body.get("query"),
            body.get("variables"),
            body.get("operationName"),
        )
    if not isinstance(query, str) or not query.strip():
        return _bad_request("missing 'query' (a GraphQL document)")
    if raw_vars in (None, ""):
        raw_vars = None
    elif not isinstance(raw_vars, dict):
        return _bad_request("'variables' must be a JSON object")
    if operation is not None and not isinstance(operation, str):
        return _bad_request("'operationName' must be a string")
    result = await _executor(request).execute(query, raw_vars, operation)
    return web.json_response(result)


async def _index(request: web.Request) -> web.Response:
    executor = _executor(request)
    url = str(request.url.with_path("/graphql").with_query(None))
    text = (
        f"promstat — Backend.AI live_stat from Prometheus ({executor.stack} schema)\n\n"
        f"POST {url} with a JSON body {{query, variables}}. Example query:\n\n"
        f"{EXAMPLE_QUERY}\n\n"
        f"Try it:\n\n{curl_example(url)}\n\n"
        "live_stat is a JSON-encoded string (legacy JSONString) or null.\n"
        "Also: agent_list(limit, offset) { items { id live_stat cpu_cur_pct mem_cur_bytes } }\n"
        "Metrics about promstat itself: GET /metrics\n"
    )
    return web.Response(text=text, content_type="text/plain")


async def _metrics(request: web.Request) -> web.Response:
    registry = request.app.get(_METRICS_REGISTRY)
    if registry is None:
        return web.Response(
            status=501,
            text="prometheus_client is not installed: pip install 'promstat[prometheus]'\n",
        )
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    body = generate_latest(cast(CollectorRegistry, registry))
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(
    stats: StatsSource,
    registry: Registry,
    *,
    stack: str = "graphene",
    max_batch_size: int | None = DEFAULT_MAX_BATCH_SIZE,
    metrics: PromstatMetrics | None = None,
) -> web.Application:
    """The aiohttp application serving ``/graphql``, ``/`` and ``/metrics``.

    Args:
        stats: the batch functions (a :class:`~promstat.service.LiveStats`).
        registry: where list rows come from.
        stack: ``"graphene"`` or ``"strawberry"``.
        max_batch_size: ids per batch call (Backend.AI: 128).
        metrics: counters exposed at ``/metrics``; default ``stats.metrics`` when it has one.

    Raises:
        ConfigError: unknown stack or missing extra.
    """
    app = web.Application()
    app[_EXECUTOR] = make_executor(stats, registry, stack=stack, max_batch_size=max_batch_size)
    counters = metrics if metrics is not None else getattr(stats, "metrics", None)
    if isinstance(counters, PromstatMetrics):
        try:
            from prometheus_client import CollectorRegistry
        except ImportError:  # optional extra: /metrics answers 501
            pass
        else:
            # A private registry: no clash with the host process' default registry.
            collectors = CollectorRegistry(auto_describe=False)
            counters.register(collectors)
            app[_METRICS_REGISTRY] = collectors
    app.router.add_get("/", _index)
    app.router.add_route("GET", "/graphql", _graphql)
    app.router.add_route("POST", "/graphql", _graphql)
    app.router.add_get("/metrics", _metrics)
    return app


# -- promstat serve ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """Settings of ``promstat serve`` (command-line flags or the ``--config`` YAML keys).

    Attributes:
        url: Prometheus-compatible base URL (required).
        path_prefix: appended to the URL path (``/prometheus``, ``/select/0/prometheus``).
        bearer_token: ``Authorization: Bearer`` token.
        basic_auth: ``USER:PASS`` for HTTP basic auth.
        headers: extra request headers.
        tenant: Mimir/Cortex tenant, sent as ``X-Scope-OrgID``.
        host, port: where the GraphQL service listens.
        stack: ``graphene`` or ``strawberry``.
        interval: scrape interval of the data (cache TTL, rate windows).
        collect_interval: how often the agents measure (Backend.AI: 30 s); with ``interval``
            it sizes the window in which a running kernel's values change, which tells it
            from a terminated kernel whose frozen series the agent still exports.
        lookback, window: planner ranges (must match the recording rules if loaded).
        rates: ``both`` or ``exporter``, as the recording rules were rendered (``promstat
            rules render --rates``); ``exporter`` rules record no kernel current.
        timeout: client deadline per Prometheus call, seconds.
        max_batch_size: ids per DataLoader batch.
        registry_ttl: seconds a kernel/agent row snapshot is reused.
    """

    url: str = ""
    path_prefix: str = ""
    bearer_token: str | None = None
    basic_auth: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    tenant: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    stack: str = "graphene"
    interval: str = "15s"
    collect_interval: str = "30s"
    lookback: str = "5m"
    window: str = "5m"
    rates: str = "both"
    timeout: float = 30.0
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    registry_ttl: float = 10.0

    @property
    def base_url(self) -> str:
        """``url`` with ``path_prefix`` appended."""
        prefix = self.path_prefix.strip("/")
        return self.url.rstrip("/") + (f"/{prefix}" if prefix else "")

    def live_window(self) -> float:
        """Seconds within which a running kernel's values change: one measurement interval
        plus two scrape intervals (:class:`~promstat.apps.registry.PrometheusRegistry`).

        Raises:
            ConfigError: ``interval`` or ``collect_interval`` is not a positive duration.
        """
        from promstat.promql import parse_duration

        seconds = []
        for name in ("interval", "collect_interval"):
            value = parse_duration(getattr(self, name))
            if not value > 0:
                raise ConfigError(f"{name} must be > 0, not {getattr(self, name)!r}")
            seconds.append(value)
        return seconds[1] + 2 * seconds[0]

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :class:`~promstat.client.PrometheusClient` (auth, headers).

        Raises:
            ConfigError: malformed ``basic_auth``, or both auth kinds given.
        """
        headers = dict(self.headers)
        if self.tenant:
            headers["X-Scope-OrgID"] = self.tenant
        out: dict[str, Any] = {"headers": headers, "timeout": self.timeout}
        if self.basic_auth is not None and self.bearer_token is not None:
            raise ConfigError("pass either basic_auth or bearer_token, not both")
        if self.basic_auth is not None:
            user, sep, password = self.basic_auth.partition(":")
            if not sep or not user:
                raise ConfigError("basic_auth must be USER:PASS")
            out["auth"] = (user, password)
        if self.bearer_token is not None:
            out["bearer_token"] = self.bearer_token
        return out


def _parse_headers(values: Sequence[str] | Mapping[str, Any]) -> dict[str, str]:
    if isinstance(values, Mapping):
        return {str(k): str(v) for k, v in values.items()}
    out: dict[str, str] = {}
    for item in values:
        name, sep, value = str(item).partition(":")
        if not sep or not name.strip():
            raise ConfigError(f"header must be NAME:VALUE, got {item!r}")
        out[name.strip()] = value.strip()
    return out


_OPTION_NAMES: Final = frozenset(f.name for f in fields(ServeOptions))


def load_serve_options(
    config_file: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> ServeOptions:
    """Merge the YAML config (same keys as the flags, ``-`` or ``_``) with flag overrides.

    ``overrides`` entries that are ``None`` are ignored; ``headers`` from both are merged.

    Raises:
        ConfigError: unreadable/invalid file, unknown key, bad value, or no ``url``.
    """
    data: dict[str, Any] = {}
    if config_file is not None:
        try:
            loaded = yaml.safe_load(Path(config_file).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {str(config_file)!r}: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config {str(config_file)!r} must be a mapping of options")
        for key, value in loaded.items():
            name = str(key).replace("-", "_")
            if name not in _OPTION_NAMES:
                raise ConfigError(
                    f"unknown key {key!r} in {str(config_file)!r}; "
                    f"known: {', '.join(sorted(_OPTION_NAMES))}"
                )
            data[name] = value
    headers = _parse_headers(data.pop("headers", None) or {})
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key == "headers":
            headers.update(_parse_headers(value))
        elif key in _OPTION_NAMES:
            data[key] = value
    try:
        options = replace(ServeOptions(), headers=headers, **data)
    except TypeError as exc:
        raise ConfigError(f"bad serve option: {exc}") from exc
    if not options.url:
        raise ConfigError("a Prometheus URL is required (--url or 'url:' in --config)")
    if options.stack not in STACKS:
        raise ConfigError(f"stack must be one of {', '.join(STACKS)}, not {options.stack!r}")
    if not isinstance(options.port, int) or not 0 <= options.port <= 65535:
        raise ConfigError(f"port must be 0..65535, not {options.port!r}")
    RateSource.parse(options.rates)  # a ConfigError naming the choices
    options.live_window()  # a ConfigError naming a bad interval
    return options


async def serve(options: ServeOptions, *, stop: asyncio.Event | None = None) -> None:
    """Run the GraphQL service until ``stop`` is set (or SIGINT/SIGTERM when it is None).

    Raises:
        ConfigError: invalid options.
        OSError: the port could not be bound.
    """
    from promstat.client import ClientConfig
    from promstat.profile import RuleProfile
    from promstat.service import LiveStats

    metrics = PromstatMetrics()
    given = (options.interval, options.lookback, options.window, options.rates)
    default = ServeOptions()
    defaults = (default.interval, default.lookback, default.window, default.rates)
    # Settings left at their defaults: read with the loaded rules' profile (LiveStats learns
    # it from /api/v1/rules); settings given: read with them (a mismatch is logged once).
    profile = (
        None
        if given == defaults
        else RuleProfile.parse(
            interval=options.interval,
            lookback=options.lookback,
            window=options.window,
            rates=RateSource.parse(options.rates),
        )
    )
    stop_event = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if stop is None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop_event.set)
                installed.append(sig)
    try:
        # LiveStats owns the client it builds from the URL: leaving the block stops the
        # background refresh first, then closes the client.
        async with LiveStats(
            options.base_url,
            profile=profile,
            metrics=metrics,
            client=ClientConfig(**options.client_kwargs()),
        ) as stats:
            client = stats.client
            registry = PrometheusRegistry(
                client,
                names=stats.profile.names,
                ttl=options.registry_ttl,
                live_window=options.live_window(),
            )
            app = make_app(
                stats, registry, stack=options.stack, max_batch_size=options.max_batch_size
            )
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            try:
                site = web.TCPSite(runner, options.host, options.port)
                await site.start()
                host, port = runner.addresses[0][:2]
                print(
                    f"promstat serving http://{host}:{port}/graphql ({options.stack}) "
                    f"from {options.base_url}; Ctrl-C stops",
                    flush=True,
                )
                await stop_event.wait()
            finally:
                await runner.cleanup()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
