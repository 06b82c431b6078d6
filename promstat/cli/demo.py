"""``promstat demo``: a simulated fleet, a real Prometheus and the GraphQL service, live."""

from __future__ import annotations

import argparse
import asyncio

from promstat.cli._common import DefaultsHelpFormatter, Subparsers, positive_int
from promstat.errors import ConfigError

__all__ = ["register", "run"]


def _lifetime(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 4:
        raise argparse.ArgumentTypeError(f"must be >= 4 seconds, got {text}")
    return value


def _positive_duration(text: str) -> str:
    from promstat.promql import parse_duration

    try:
        seconds = parse_duration(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return text


def register(subparsers: Subparsers) -> None:
    """Register ``promstat demo``."""
    parser = subparsers.add_parser(
        "demo",
        help="simulated fleet + real Prometheus + GraphQL service, with a live kernel page view",
        description=(
            "Run a simulated Backend.AI fleet, a real Prometheus scraping it with promstat's "
            "recording rules, and the GraphQL service, all on loopback; show a kernel list "
            "page live (numbers, latency, Prometheus queries per page). Needs prometheus."
        ),
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds to run (default: until Ctrl-C)"
    )
    parser.add_argument("--agents", type=positive_int, default=20, help="simulated agents")
    parser.add_argument(
        "--kernels-per-agent", type=positive_int, default=50, help="kernels per agent"
    )
    parser.add_argument(
        "--interval", type=_positive_duration, default="2s", help="scrape and rule interval"
    )
    parser.add_argument(
        "--measure-interval",
        type=_positive_duration,
        default=None,
        help="how often the simulated agents measure (default: twice --interval, as "
        "Backend.AI's 30 s measurements vs 15-20 s scrapes)",
    )
    parser.add_argument("--page-size", type=positive_int, default=200, help="kernels per page")
    parser.add_argument("--port", type=int, default=0, help="GraphQL port (0: any free port)")
    parser.add_argument(
        "--stack", choices=("graphene", "strawberry"), default="graphene", help="GraphQL library"
    )
    parser.add_argument("--seed", type=int, default=42, help="simulation seed")
    parser.add_argument(
        "--lifetime",
        type=_lifetime,
        default=600.0,
        help="mean seconds a kernel runs before it terminates",
    )
    parser.add_argument(
        "--table-every",
        type=positive_int,
        default=None,
        metavar="N",
        help="print the page table every N refreshes, a one-line summary in between (default: "
        "every refresh on a terminal, which redraws in place; every 10th when the output "
        "is a file or a pipe)",
    )
    parser.set_defaults(handler=run, log_stream=True)


def run(args: argparse.Namespace) -> int:
    """Handler of ``promstat demo``: the exit code of :func:`promstat.apps.demo.run_demo`."""
    from promstat.apps.demo import DemoOptions, run_demo

    options = DemoOptions(
        duration=args.duration,
        agents=args.agents,
        kernels_per_agent=args.kernels_per_agent,
        interval=args.interval,
        measure_interval=args.measure_interval,
        page_size=args.page_size,
        port=args.port,
        stack=args.stack,
        seed=args.seed,
        lifetime=args.lifetime,
        table_every=args.table_every,
    )
    try:
        return asyncio.run(run_demo(options))
    except KeyboardInterrupt:  # Ctrl-C before the handlers were installed; cleanup ran
        return 0
