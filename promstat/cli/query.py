"""``promstat query EXPR``: run an instant PromQL query, print an aligned table or JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from promstat.api import QueryResult, TimeArg, format_time
from promstat.cli._common import (
    DefaultsHelpFormatter,
    Subparsers,
    add_url_option,
    parse_time,
    positive_seconds,
    resolve_url,
)
from promstat.client import PrometheusClient

__all__ = ["register", "run"]


def register(subparsers: Subparsers) -> None:
    """Register ``promstat query``."""
    p = subparsers.add_parser(
        "query",
        help="run an instant PromQL query",
        description="Run an instant PromQL query and print the result.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("expr", metavar="EXPR", help="PromQL expression")
    add_url_option(p)
    p.add_argument(
        "--time",
        type=parse_time,
        default=None,
        help="evaluation time: Unix seconds or RFC 3339 (default: the server's now)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--timeout", type=positive_seconds, default=30.0, help="client deadline in seconds"
    )
    p.set_defaults(handler=run, talks_to_prometheus=True)


def run(args: argparse.Namespace) -> int:
    """Handler of ``promstat query``."""
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
