"""``promstat serve``: the GraphQL service (legacy list pages) over any Prometheus."""

from __future__ import annotations

import argparse
import asyncio
import sys

from promstat.cli._common import Subparsers, error_line, one_line, url_source
from promstat.errors import ConfigError, PromstatError
from promstat.expressions import RateSource

__all__ = ["register", "run"]

_STACKS = ("graphene", "strawberry")


def register(subparsers: Subparsers) -> None:
    """Register ``promstat serve``."""
    parser = subparsers.add_parser(
        "serve",
        help="serve legacy live_stat list pages over GraphQL from a Prometheus",
        description=(
            "Serve Backend.AI's legacy kernel/agent list pages (live_stat as JSONString) over "
            "GraphQL, reading any Prometheus-compatible API with Backend.AI series. Flags "
            "override the --config YAML (same keys: url, path_prefix, bearer_token, "
            "basic_auth, headers, tenant, host, port, stack, interval, ...)."
        ),
    )
    parser.add_argument("--url", help="Prometheus-compatible base URL (http://host:9090)")
    parser.add_argument("--path-prefix", help="API path prefix, e.g. /select/0/prometheus")
    auth = parser.add_mutually_exclusive_group()
    auth.add_argument("--bearer-token", help="send Authorization: Bearer TOKEN")
    auth.add_argument("--basic-auth", metavar="USER:PASS", help="HTTP basic auth")
    parser.add_argument(
        "--header", action="append", metavar="NAME:VALUE", help="extra request header (repeatable)"
    )
    parser.add_argument("--tenant", metavar="ORGID", help="Mimir/Cortex tenant (X-Scope-OrgID)")
    parser.add_argument("--config", metavar="FILE", help="YAML file with the same keys")
    parser.add_argument("--host", help="listen address (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default: 8080; 0 = any)")
    parser.add_argument("--stack", choices=_STACKS, help="GraphQL library (default: graphene)")
    parser.add_argument("--interval", help="scrape interval of the data (default: 15s)")
    parser.add_argument(
        "--collect-interval",
        help="how often the agents measure (default: 30s, Backend.AI's); a kernel whose "
        "values did not change within it plus two --interval is a terminated one the agent "
        "still exports, not listed as RUNNING",
    )
    parser.add_argument(
        "--rates",
        choices=[r.value for r in RateSource],
        help="as the recording rules were rendered (promstat rules render --rates; "
        "default: both)",
    )
    parser.set_defaults(handler=run, log_stream=True)


def run(args: argparse.Namespace) -> int:
    """Handler of ``promstat serve``: 0 after a clean stop, 2 on bad options, 1 when the
    service could not start (one line on stderr)."""
    from promstat.apps.serve import load_serve_options, serve

    overrides = {
        "url": args.url,
        "path_prefix": args.path_prefix,
        "bearer_token": args.bearer_token,
        "basic_auth": args.basic_auth,
        "headers": args.header,
        "tenant": args.tenant,
        "host": args.host,
        "port": args.port,
        "stack": args.stack,
        "interval": args.interval,
        "collect_interval": args.collect_interval,
        "rates": args.rates,
    }
    try:
        options = load_serve_options(args.config, overrides)
    except ConfigError as exc:
        print(error_line(exc), file=sys.stderr)
        return 2
    source = "--url" if args.url else ("--config" if args.config else url_source(None))
    try:
        asyncio.run(serve(options))
    except ConfigError as exc:
        print(error_line(exc, url=options.base_url, source=source), file=sys.stderr)
        return 2
    except PromstatError as exc:
        print(error_line(exc, url=options.base_url, source=source), file=sys.stderr)
        return 1
    except OSError as exc:  # the port could not be bound
        print(f"promstat: error: {one_line(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        return 0
    return 0
