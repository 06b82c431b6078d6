"""The ``promstat`` command.

``main()`` builds one argparse parser with a subcommand per entry of :data:`COMMANDS`. A
subcommand is registered by a function that adds its subparser and sets ``handler`` (a callable
taking the parsed :class:`argparse.Namespace` and returning the exit code)::

    def add_rules_command(subparsers: Subparsers) -> None:
        p = subparsers.add_parser("rules", help="...")
        p.set_defaults(handler=_run_rules)

Exit codes: 0 success, 1 any :class:`~promstat.errors.PromstatError` (printed as one line,
``promstat: error: ...``, on stderr), 2 usage errors (argparse), 130 interrupted.

Subcommands:

``promstat query EXPR [--url URL] [--time T] [--json] [--timeout S]``
    Run an instant query and print an aligned table (labels and value) or the JSON result.
    ``--time`` takes Unix seconds or RFC 3339, as Prometheus does. ``--url`` defaults to
    ``$PROMSTAT_URL``, else ``http://127.0.0.1:9090``; it may carry a path prefix.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO, TypeAlias

from promstat.client import PrometheusClient, QueryResult, TimeArg, format_time
from promstat.errors import ConfigError, PromstatError

__all__ = [
    "COMMANDS",
    "DEFAULT_URL",
    "Handler",
    "Subparsers",
    "add_live_stat_command",
    "add_query_command",
    "build_parser",
    "main",
    "parse_time",
    "resolve_url",
]

#: Prometheus URL used when neither ``--url`` nor ``$PROMSTAT_URL`` is set.
DEFAULT_URL = "http://127.0.0.1:9090"

#: A subcommand's entry point: parsed arguments in, exit code out.
Handler: TypeAlias = Callable[[argparse.Namespace], int]
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def parse_time(text: str) -> TimeArg:
    """Parse ``--time``: Unix seconds (``1700000000.5``) or RFC 3339 (``2023-11-14T22:13:20Z``).

    A timestamp without an offset is taken as UTC.

    Raises:
        argparse.ArgumentTypeError: neither form (argparse turns it into exit code 2).
    """
    try:
        return float(text)
    except ValueError:
        pass
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r}: use Unix seconds or RFC 3339 (2023-11-14T22:13:20Z)"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r}: a number of seconds > 0")
    return value


def resolve_url(url: str | None) -> str:
    """Return ``url``, else ``$PROMSTAT_URL``, else :data:`DEFAULT_URL`."""
    return url or os.environ.get("PROMSTAT_URL") or DEFAULT_URL


def _add_url_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=None,
        help=f"Prometheus base URL, may include a path prefix "
        f"(default: $PROMSTAT_URL or {DEFAULT_URL})",
    )


def add_query_command(subparsers: Subparsers) -> None:
    """Register ``promstat query``."""
    p = subparsers.add_parser(
        "query",
        help="run an instant PromQL query",
        description="Run an instant PromQL query and print the result.",
    )
    p.add_argument("expr", metavar="EXPR", help="PromQL expression")
    _add_url_option(p)
    p.add_argument(
        "--time",
        type=parse_time,
        default=None,
        help="evaluation time: Unix seconds or RFC 3339 (default: server's now)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=30.0,
        help="client deadline in seconds (default: 30)",
    )
    p.set_defaults(handler=_run_query)


def add_live_stat_command(subparsers: Subparsers) -> None:
    """Register ``promstat live-stat``."""
    p = subparsers.add_parser(
        "live-stat",
        help="print kernel (or agent) live_stat in the legacy shape",
        description="Print {id: live_stat or null} as one JSON object, the way the manager's "
        "GraphQL resolvers see it (batched, chunked, concurrent).",
    )
    p.add_argument("ids", metavar="ID", nargs="*", help="kernel ids (agent ids with --agent)")
    p.add_argument(
        "--ids-from",
        metavar="FILE",
        default=None,
        help="read more ids, one per line, from FILE ('-' for stdin)",
    )
    p.add_argument("--agent", action="store_true", help="the ids are agent ids")
    _add_url_option(p)
    p.add_argument(
        "--time",
        type=parse_time,
        default=None,
        help="evaluation time: Unix seconds or RFC 3339 (default: now)",
    )
    p.add_argument(
        "--plan",
        choices=("auto", "recorded", "raw"),
        default="auto",
        help="use the recorded series, the raw fallback, or detect (default)",
    )
    p.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=30.0,
        help="client deadline per query in seconds (default: 30)",
    )
    p.add_argument("--indent", type=int, default=None, help="pretty-print with this indent")
    p.set_defaults(handler=_run_live_stat)


def _add_rules_command(subparsers: Subparsers) -> None:
    from promstat.generate.rules import add_cli

    add_cli(subparsers)


def _add_dashboards_command(subparsers: Subparsers) -> None:
    from promstat.generate.dashboards import add_cli

    add_cli(subparsers)


def _add_alerts_command(subparsers: Subparsers) -> None:
    from promstat.generate.alerts import add_cli

    add_cli(subparsers)


def _add_serve_command(subparsers: Subparsers) -> None:
    from promstat.apps.serve import add_serve_cli

    add_serve_cli(subparsers)


def _add_demo_command(subparsers: Subparsers) -> None:
    from promstat.apps.demo import add_demo_cli

    add_demo_cli(subparsers)


def _add_compare_command(subparsers: Subparsers) -> None:
    from promstat.migration.compare import add_compare_cli

    add_compare_cli(subparsers)


def _add_bench_command(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="run the benchmarks (needs a source checkout)",
        description="Run benchmarks/run.py from a source checkout; arguments pass through.",
    )
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for benchmarks.run")
    p.set_defaults(handler=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    import importlib
    import importlib.util

    if importlib.util.find_spec("benchmarks.run") is None:
        raise ConfigError(
            "the benchmarks live in the source checkout: run `./dev bench` from there"
        )
    runner = importlib.import_module("benchmarks.run")
    return int(runner.main(list(args.args)))


#: Subcommand registrars, in the order ``promstat --help`` lists them.
COMMANDS: list[Callable[[Subparsers], None]] = [
    add_query_command,
    add_live_stat_command,
    _add_rules_command,
    _add_dashboards_command,
    _add_alerts_command,
    _add_serve_command,
    _add_demo_command,
    _add_bench_command,
    _add_compare_command,
]


def build_parser() -> argparse.ArgumentParser:
    """Build the ``promstat`` parser with every subcommand in :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="promstat",
        description="Backend.AI live statistics served from Prometheus.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``promstat`` command.

    Args:
        argv: arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 success, 1 a promstat error (one line on stderr), 130 interrupted.

    Raises:
        SystemExit: with code 2 on usage errors, 0 for ``--help`` (argparse).
    """
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except PromstatError as exc:
        # One line, whatever the server put in its error text.
        message = " ".join(str(exc).split())
        print(f"promstat: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# ---------------------------------------------------------------------- live-stat


def _read_ids(args: argparse.Namespace) -> list[str]:
    ids = list(args.ids)
    if args.ids_from is not None:
        if args.ids_from == "-":
            text = sys.stdin.read()
        else:
            try:
                with open(args.ids_from, encoding="utf-8") as fh:
                    text = fh.read()
            except OSError as exc:
                raise ConfigError(f"cannot read ids from {args.ids_from!r}: {exc}") from exc
        ids.extend(line.strip() for line in text.splitlines() if line.strip())
    if not ids:
        raise ConfigError("give at least one id (arguments or --ids-from)")
    return list(dict.fromkeys(ids))


def _run_live_stat(args: argparse.Namespace) -> int:
    ids = _read_ids(args)
    at: float | None
    if args.time is None:
        at = None
    elif isinstance(args.time, datetime):
        at = args.time.timestamp()
    else:
        at = float(args.time)
    use_recorded = {"auto": None, "recorded": True, "raw": False}[args.plan]
    result = asyncio.run(
        _live_stat(resolve_url(args.url), ids, args.agent, at, use_recorded, args.timeout)
    )
    json.dump(result, sys.stdout, indent=args.indent)
    sys.stdout.write("\n")
    return 0


async def _live_stat(
    url: str,
    ids: list[str],
    agent: bool,
    at: float | None,
    use_recorded: bool | None,
    deadline: float,
) -> dict[str, Any]:
    from promstat.planner import Planner, PlannerConfig

    async with PrometheusClient(url, timeout=deadline) as prom:
        planner = Planner(prom, PlannerConfig(use_recorded=use_recorded))
        out = await (planner.agents(ids, at=at) if agent else planner.kernels(ids, at=at))
    for note in out.warnings:
        print(f"promstat: warning: {note}", file=sys.stderr)
    for value in out.payloads.values():
        # Every id is answered or the command fails: no partial output that would
        # make a failed chunk look like "no data".
        if isinstance(value, PromstatError):
            raise value
    return {key: out.payloads[key] for key in ids}


# ---------------------------------------------------------------------- query


def _run_query(args: argparse.Namespace) -> int:
    result = asyncio.run(_query(resolve_url(args.url), args.expr, args.time, args.timeout))
    for warning in result.warnings:
        print(f"promstat: warning: {warning}", file=sys.stderr)
    for info in result.infos:
        print(f"promstat: info: {info}", file=sys.stderr)
    if args.json:
        json.dump(_result_json(result), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_table(result, sys.stdout)
    return 0


async def _query(url: str, expr: str, at: TimeArg | None, deadline: float) -> QueryResult:
    async with PrometheusClient(url, timeout=deadline) as prom:
        return await prom.query(expr, time=at)


def _result_json(result: QueryResult) -> dict[str, Any]:
    payload: Any
    if result.result_type == "vector":
        payload = [{"metric": s.metric, "value": list(s.value)} for s in result.vector]
    elif result.result_type == "matrix":
        payload = [
            {"metric": s.metric, "values": [list(v) for v in s.values]} for s in result.matrix
        ]
    else:
        sample = result.scalar if result.result_type == "scalar" else result.string
        payload = list(sample) if sample is not None else None
    return {
        "resultType": result.result_type,
        "result": payload,
        "warnings": list(result.warnings),
        "infos": list(result.infos),
    }


def _label_columns(metrics: Sequence[dict[str, str]]) -> list[str]:
    names = sorted({name for metric in metrics for name in metric} - {"__name__"})
    if any("__name__" in metric for metric in metrics):
        names.insert(0, "__name__")
    return names


def _print_table(result: QueryResult, out: TextIO) -> None:
    rows: list[list[str]]
    if result.result_type == "vector":
        columns = _label_columns([s.metric for s in result.vector])
        rows = [[s.metric.get(c, "") for c in columns] + [s.value[1]] for s in result.vector]
        header = [*columns, "value"]
    elif result.result_type == "matrix":
        columns = _label_columns([s.metric for s in result.matrix])
        rows = [
            [s.metric.get(c, "") for c in columns] + [format_time(ts), v]
            for s in result.matrix
            for ts, v in s.values
        ]
        header = [*columns, "timestamp", "value"]
    else:
        sample = result.scalar if result.result_type == "scalar" else result.string
        if sample is not None:
            out.write(f"{sample[1]}\n")
        return
    if not rows:
        print(f"promstat: empty {result.result_type}", file=sys.stderr)
        return
    rows.sort()
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        out.write("\n")


if __name__ == "__main__":
    sys.exit(main())
