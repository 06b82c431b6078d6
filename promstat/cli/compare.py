"""``promstat compare``: diff legacy Valkey live stats against Prometheus, field by field."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime

from promstat.cli._common import (
    DefaultsHelpFormatter,
    Subparsers,
    add_url_option,
    as_unix,
    parse_time,
    positive_seconds,
    resolve_url,
)
from promstat.errors import ConfigError

__all__ = ["register", "run"]


def register(subparsers: Subparsers) -> None:
    """Register ``promstat compare``."""
    p = subparsers.add_parser(
        "compare",
        help="diff legacy Valkey live stats against Prometheus, field by field",
        description="Read the same kernels (and agents) from Valkey/redis and Prometheus, "
        "compare every field and report agreement per metric and field. Exit 3 when "
        "any field is below its own threshold.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("ids", metavar="ID", nargs="*", help="kernel ids (default: the live fleet)")
    p.add_argument("--redis", required=True, metavar="URL", help="redis://host:port/db of Valkey")
    add_url_option(p)
    p.add_argument(
        "--time",
        type=parse_time,
        default=None,
        help="Prometheus evaluation time (default: now; Valkey is always now)",
    )
    p.add_argument(
        "--sample",
        type=int,
        default=None,
        metavar="N",
        help="compare N kernels (and agents) chosen at random from the live fleet",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --sample")
    p.add_argument("--agents", action="store_true", help="compare agents too")
    p.add_argument(
        "--agent-id",
        action="append",
        default=[],
        metavar="ID",
        help="compare this agent (repeatable; default: all live agents)",
    )
    p.add_argument("--json", action="store_true", help="print the reports as JSON")
    p.add_argument(
        "--tolerance",
        metavar="FILE",
        default=None,
        help="YAML/JSON tolerances and thresholds (see the docs)",
    )
    p.add_argument("--interval", default="15s", help="scrape/rule interval")
    p.add_argument("--window", default="5m", help="stats.max/avg window")
    p.add_argument(
        "--plan",
        choices=("auto", "recorded", "raw"),
        default="auto",
        help="recorded series, raw fallback, or detect",
    )
    p.add_argument(
        "--timeout", type=positive_seconds, default=30.0, help="query deadline in seconds"
    )
    p.add_argument(
        "--stale-after",
        type=float,
        default=120.0,
        metavar="S",
        help="a kernel key written more than S seconds ago is stale: reported "
        "apart, not compared (120 = 4 x the 30 s collection interval)",
    )
    p.set_defaults(handler=run, talks_to_prometheus=True)


def run(args: argparse.Namespace) -> int:
    """Handler of ``promstat compare``: 0 agreement within the thresholds, 3 below them.

    Raises:
        ConfigError: bad options or tolerance file.
        TransportError: a server could not be reached.
    """
    from promstat.migration.compare import COMPARE_EXIT_DISAGREE, CompareOptions, run_compare
    from promstat.migration.report import failing_fields, format_report
    from promstat.migration.tolerances import Tolerances

    if args.sample is not None and args.sample < 1:
        raise ConfigError(f"--sample must be >= 1, not {args.sample}")
    tolerances = Tolerances.from_file(args.tolerance) if args.tolerance else Tolerances()
    options = CompareOptions(
        redis_url=args.redis,
        prom_url=resolve_url(args.url),
        ids=tuple(args.ids),
        agent_ids=tuple(args.agent_id),
        sample=args.sample,
        agents=args.agents or bool(args.agent_id),
        at=as_unix(args.time),
        seed=args.seed,
        interval=args.interval,
        window=args.window,
        use_recorded={"auto": None, "recorded": True, "raw": False}[args.plan],
        timeout=args.timeout,
        tolerances=tolerances,
        stale_after=args.stale_after,
    )
    evaluated, reports = asyncio.run(run_compare(options))
    if args.json:
        json.dump(
            {"time": evaluated, "reports": [r.to_json() for r in reports]}, sys.stdout, indent=2
        )
        sys.stdout.write("\n")
    else:
        stamp = datetime.fromtimestamp(evaluated, UTC).isoformat().replace("+00:00", "Z")
        sys.stdout.write(
            f"promstat compare at {stamp} ({options.redis_url} vs {options.prom_url})\n"
        )
        for report in reports:
            sys.stdout.write("\n")
            format_report(report, sys.stdout)
    failing = failing_fields(reports)
    if failing:
        sys.stderr.write(f"promstat compare: below threshold: {', '.join(failing)}\n")
    return COMPARE_EXIT_DISAGREE if failing else 0
