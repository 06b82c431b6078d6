"""``promstat live-stat ID...``: kernel (or agent) live_stat in the legacy shape, as JSON.

The library answers any string (legacy ids are opaque: a wrong id is simply ``null``); the
command says on stderr which of the ids without data look wrong and why (the 8-character
prefix the demo's table shows, an uppercase or undashed UUID, ``a,b`` as one argument, an
agent id without ``--agent``), and how many had no data. ``--plan recorded`` against a
Prometheus without promstat's recorded series is an error: every answer would be ``null``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import uuid
from typing import Any

from promstat.cli._common import (
    DefaultsHelpFormatter,
    Subparsers,
    add_url_option,
    as_unix,
    first,
    parse_time,
    positive_seconds,
    resolve_url,
)
from promstat.client import PrometheusClient
from promstat.errors import ConfigError, PromstatError

__all__ = ["id_problem", "register", "run"]

#: Ids listed by name in the "look wrong" note; the rest are counted.
SHOWN_IDS = 10

_HEX8 = re.compile(r"[0-9a-fA-F]{8}")
_HEX32 = re.compile(r"[0-9a-fA-F]{32}")


def register(subparsers: Subparsers) -> None:
    """Register ``promstat live-stat``."""
    p = subparsers.add_parser(
        "live-stat",
        help="print kernel (or agent) live_stat in the legacy shape",
        description="Print {id: live_stat or null} as one JSON object, the way the manager's "
        "GraphQL resolvers see it (batched, chunked, concurrent). Ids without data are null; "
        "stderr says how many, and which look wrong.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("ids", metavar="ID", nargs="*", help="kernel ids (agent ids with --agent)")
    p.add_argument(
        "--ids-from",
        metavar="FILE",
        default=None,
        help="read more ids, one per line, from FILE ('-' for stdin)",
    )
    p.add_argument("--agent", action="store_true", help="the ids are agent ids")
    add_url_option(p)
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
        help="the recorded series (needs promstat's rules loaded), the raw fallback, or "
        "detect which applies",
    )
    p.add_argument(
        "--timeout",
        type=positive_seconds,
        default=30.0,
        help="client deadline per query in seconds",
    )
    p.add_argument("--indent", type=int, default=None, help="pretty-print with this indent")
    p.set_defaults(handler=run, talks_to_prometheus=True)


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


def id_problem(value: str, *, agent: bool, other_level: bool = False) -> str | None:
    """Why ``value`` does not look like a Backend.AI kernel (or agent) id, or ``None``.

    Kernel ids are lowercase, dashed UUIDs (``str(uuid.UUID)``); agent ids are free-form
    (``i-...`` on clouds, host names elsewhere), so only a kernel id passed with ``--agent``
    is flagged for them.

    Args:
        value: the id as given.
        agent: the ids were given as agent ids (``--agent``).
        other_level: Prometheus has series of ``value`` as the other kind of id (an agent's
            when ``agent`` is false, a kernel's when it is true).
    """
    if other_level:
        if agent:
            return "is a kernel id (Prometheus has kernel series for it): drop --agent"
        return "is an agent id (Prometheus has agent series for it): add --agent"
    if "," in value:
        return "is one argument with commas: give the ids as separate arguments (a b, not a,b)"
    if any(c.isspace() for c in value):
        return "contains whitespace: quote one id per argument"
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        parsed = None
    if agent:
        if parsed is not None:
            return "looks like a kernel id (a UUID): drop --agent"
        return None
    if value.startswith("i-"):
        return "looks like an agent id (i-...): add --agent"
    if _HEX8.fullmatch(value):
        return (
            "is an 8-character prefix (as the demo's table shows): give the whole kernel id, "
            "36 characters like 3467e9c9-0c47-4825-af52-bd94bb872211"
        )
    if parsed is not None and str(parsed) != value:
        kind = "undashed" if _HEX32.fullmatch(value) else "uppercase"
        if _HEX32.fullmatch(value) and value != value.lower():
            kind = "uppercase, undashed"
        return f"is an {kind} UUID: kernel ids are lowercase and dashed, try {parsed}"
    if parsed is None:
        return "is not a UUID: kernel ids look like 3467e9c9-0c47-4825-af52-bd94bb872211"
    return None


def run(args: argparse.Namespace) -> int:
    """Handler of ``promstat live-stat``."""
    ids = _read_ids(args)
    at = as_unix(args.time)
    use_recorded = {"auto": None, "recorded": True, "raw": False}[args.plan]
    url = resolve_url(args.url)
    result, other = asyncio.run(
        _live_stat(url, ids, args.agent, at, use_recorded, args.timeout)
    )
    json.dump(result, sys.stdout, indent=args.indent)
    sys.stdout.write("\n")
    sys.stdout.flush()  # the answer first: the notes below are about it
    _report_missing(ids, result, agent=args.agent, other_level=other)
    return 0


def _report_missing(
    ids: list[str], result: dict[str, Any], *, agent: bool, other_level: set[str]
) -> None:
    missing = [key for key in ids if result.get(key) is None]
    if not missing:
        return
    what = "agent" if agent else "kernel"
    odd = [
        (key, why)
        for key in missing
        if (why := id_problem(key, agent=agent, other_level=key in other_level))
    ]
    for key, why in odd[:SHOWN_IDS]:
        print(f"promstat: warning: {what} id {key!r} {why}", file=sys.stderr)
    if len(odd) > SHOWN_IDS:
        rest = [key for key, _ in odd[SHOWN_IDS:]]
        print(f"promstat: warning: {len(rest)} more ids look wrong: {first(rest, 3)}",
              file=sys.stderr)  # fmt: skip
    print(
        f"promstat: note: {len(missing)} of {len(ids)} {what} ids had no data (null): "
        f"{first(missing, 3)}; {len(odd)} of them {'looks' if len(odd) == 1 else 'look'} wrong "
        "(above)"
        if odd
        else f"promstat: note: {len(missing)} of {len(ids)} {what} ids had no data (null): "
        f"{first(missing, 3)} (not running at that time, or not exported to this Prometheus)",
        file=sys.stderr,
    )


async def _recorded_series(prom: PrometheusClient, agent: bool, at: float | None) -> str | None:
    """The recorded family ``--plan recorded`` reads, or ``None`` when it has series."""
    from promstat.conventions import SeriesNames

    names = SeriesNames()
    family = names.agent_live_stat if agent else names.kernel_live_stat
    res = await prom.query_vector(f"count({family})", time=at)
    return None if res.series else family


#: Ids without data that are looked up as the other kind of id, at most.
OTHER_LEVEL_LOOKUPS = 200


async def _other_level(
    prom: PrometheusClient, ids: list[str], agent: bool, at: float | None
) -> set[str]:
    """Which of ``ids`` Prometheus knows as the other kind of id (best effort: a failed
    lookup finds nothing, the answer itself already stands)."""
    from promstat.conventions import SeriesNames
    from promstat.promql import set_matcher

    if not ids:
        return set()
    n = SeriesNames()
    if agent:
        label = n.kernel_label
        expr = f"group by ({label}) ({n.container_metric}{{{set_matcher(label, ids)}}})"
    else:
        label = n.agent_label
        matcher = set_matcher(label, ids)
        expr = (
            f"group by ({label}) ({n.device_metric}{{{matcher}}}) "
            f"or group by ({label}) ({n.container_metric}{{{matcher}}})"
        )
    try:
        res = await prom.query_vector(expr, time=at)
    except PromstatError:
        return set()
    return {s.metric.get(label, "") for s in res.series} & set(ids)


async def _live_stat(
    url: str,
    ids: list[str],
    agent: bool,
    at: float | None,
    use_recorded: bool | None,
    deadline: float,
) -> tuple[dict[str, Any], set[str]]:
    """``{id: payload or None}`` in the order of ``ids``, and the ids without data that
    Prometheus knows as the other kind of id."""
    from promstat.planner import Planner, PlannerConfig

    async with PrometheusClient(url, timeout=deadline) as prom:
        if use_recorded:
            family = await _recorded_series(prom, agent, at)
            if family is not None:
                raise ConfigError(
                    f"--plan recorded: {url} has no recorded series {family} (promstat's "
                    "recording rules are not loaded, or have not evaluated yet): load the "
                    "rules (promstat rules render --output DIR; add DIR/*.rules.yml to "
                    "rule_files) or use --plan auto"
                )
        planner = Planner(prom, PlannerConfig(use_recorded=use_recorded))
        out = await (planner.agents(ids, at=at) if agent else planner.kernels(ids, at=at))
        for value in out.payloads.values():
            # Every id is answered or the command fails: no partial output that would
            # make a failed chunk look like "no data".
            if isinstance(value, PromstatError):
                raise value
        missing = [key for key in ids if out.payloads[key] is None]
        other = await _other_level(prom, missing[:OTHER_LEVEL_LOOKUPS], agent, at)
    for note in out.warnings:
        print(f"promstat: warning: {note}", file=sys.stderr)
    return {key: out.payloads[key] for key in ids}, other
