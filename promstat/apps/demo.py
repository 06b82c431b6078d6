"""``promstat demo``: the whole pipeline on loopback, with a live view of a kernel list page.

It starts, all on 127.0.0.1 and all torn down on exit:

1. a :class:`~promstat.testing.sim.SimulatedFleet` (one exporter per agent) whose agents measure on
   their own timer, every ``--measure-interval`` (default twice the scrape interval, as
   Backend.AI agents measure every 30 s and Prometheus scrapes every 15-20 s; each agent's
   ticks have their own phase, not aligned with the scrapes),
2. a real Prometheus (:func:`~promstat.testing.lab.start_prometheus`) scraping it every
``--interval``
   with promstat's generated recording rules loaded (same interval; their ``collect_interval``
   and the planner's are the measurement interval),
3. the GraphQL service (:func:`promstat.apps.serve.make_app`) over a
   :class:`~promstat.service.LiveStats` and the fleet's kernel rows,

prints the URLs and a ``curl`` command, waits for the first scrape, then fetches one kernel
list page through the GraphQL HTTP endpoint every few seconds and shows it: kernel, agent,
CPU %, memory used/limit, network rx/tx rates, GPU utilisation, how long the page took and
how many Prometheus queries it cost (:class:`~promstat.selfmetrics.PromstatMetrics` deltas), and
which plan answered (``raw`` until the recording rules have produced data, then
``recorded``: the planner re-detects every interval in the demo).

Prometheus stores each measurement about twice, as in production; the exporter's
``value_type="rate"`` series carries the rate between an agent's last two measurements, so a
steady kernel shows the same CPU and network rates on every page (``0`` only until its second
measurement, as legacy showed a kernel's first ``live_stat``).

Kernels come and go (``--lifetime``: mean seconds a kernel runs; a slot starts its next kernel
at once). Below the live page the view lists the most recently terminated kernels with their
final stats — their ``last_stat``, answered from Prometheus history at their termination time
(:mod:`promstat.final`), which stays available after the exporter dropped their series.

On a terminal the view redraws in place; otherwise the first refresh and every
:data:`PLAIN_TABLE_EVERY`-th print the table and the others their one summary line
(``--table-every``).
``--duration`` bounds the run (exit 0 after a clean shutdown); Ctrl-C and SIGTERM stop it
too. A missing ``prometheus`` binary prints the one-line install hint and exits 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

import aiohttp
from aiohttp import web

from promstat.errors import BinaryNotFoundError, ConfigError, LabError, PromstatError
from promstat.selfmetrics import MetricsSnapshot, PromstatMetrics

if TYPE_CHECKING:
    from promstat.client import PrometheusClient

__all__ = [
    "DemoOptions",
    "PageView",
    "alert_summary",
    "format_bytes",
    "render_view",
    "run_demo",
]

T = TypeVar("T")

#: Rows of the page shown when the output is not a terminal.
PLAIN_ROWS = 10

#: When the output is not a terminal, the table is printed every this many refreshes (and on
#: the first); the refreshes in between print their one summary line. A log file then grows
#: by about one line per refresh instead of a whole table (~27 lines).
PLAIN_TABLE_EVERY = 10


async def alert_summary(client: PrometheusClient) -> str:
    """One line saying how many alerts fire (and are pending) on the server, and which.

    Reads the alerting rules' active alerts (``/api/v1/rules?type=alert``: the same alerts as
    ``/api/v1/alerts``, grouped by rule), e.g. ``alerts: 2 firing (BackendAIKernelMemoryNear
    Limit x2), 1 pending (BackendAIAgentNotReporting x1)``.
    """
    try:
        groups = await client.rules("alert")
    except PromstatError as exc:
        return f"alerts: unavailable ({' '.join(str(exc).split())})"
    states: dict[str, Counter[str]] = {"firing": Counter(), "pending": Counter()}
    for group in groups:
        for rule in group.rules:
            for alert in rule.alerts:
                states.setdefault(alert.state, Counter())[rule.name] += 1
    parts = []
    for state in ("firing", "pending"):
        counts = states[state]
        text = f"{sum(counts.values())} {state}"
        if counts:
            text += " (" + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())) + ")"
        parts.append(text)
    return "alerts: " + ", ".join(parts)


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """Settings of ``promstat demo``.

    Attributes:
        duration: seconds to run (``None``: until Ctrl-C / SIGTERM).
        agents: simulated agents.
        kernels_per_agent: kernels per agent.
        interval: scrape and rule evaluation interval (a Prometheus duration).
        measure_interval: how often the simulated agents measure (a Prometheus duration);
            ``None``: twice ``interval`` (Backend.AI: measure 30 s, scrape 15-20 s).
        page_size: kernels per GraphQL page.
        port: GraphQL port (0: any free port).
        stack: ``graphene`` or ``strawberry``.
        refresh: seconds between page fetches (default ``max(3, interval)``).
        seed: simulation seed.
        rows: rows shown on a terminal (default: fit the terminal height).
        lifetime: mean seconds a kernel runs before it terminates (churn).
        ended_rows: terminated kernels listed with their final stats.
        table_every: print the page table every this many refreshes and a one-line summary
            in between (``None``: every refresh on a terminal, which redraws in place;
            :data:`PLAIN_TABLE_EVERY` otherwise).
    """

    duration: float | None = None
    agents: int = 20
    kernels_per_agent: int = 50
    interval: str = "2s"
    measure_interval: str | None = None
    page_size: int = 200
    port: int = 0
    stack: str = "graphene"
    refresh: float | None = None
    seed: int = 42
    rows: int | None = None
    lifetime: float = 600.0
    ended_rows: int = 5
    table_every: int | None = None

    def __post_init__(self) -> None:
        if self.table_every is not None and self.table_every < 1:
            raise ConfigError(f"table_every must be >= 1, not {self.table_every!r}")


#: A terminated kernel in the view: ``(kernel id, agent id, terminated_at text, last_stat)``.
EndedRow = tuple[str, str, str, dict[str, Any] | None]


@dataclass(slots=True)
class PageView:
    """One refresh of the view: what a page fetch returned and what it cost.

    Attributes:
        number: refresh counter (1-based).
        rows: ``(kernel id, agent id, live_stat dict or None)`` for the page's kernels.
        total_count: kernels in the whole list.
        seconds: wall time of the GraphQL request.
        queries: Prometheus HTTP queries made for the page.
        response_bytes: bytes Prometheus sent for the page.
        cache_hits: ids served from the shared cache.
        plan: the planner's plan(s) used (``recorded/filtered``, ``raw/fleet``, ...).
        errors: GraphQL error messages.
        ended: the most recently terminated kernels with their final stats.
        ended_total: terminated kernels the registry knows.
        alerts: how many alerts fire and which (:func:`alert_summary`).
    """

    number: int
    rows: list[tuple[str, str, dict[str, Any] | None]]
    total_count: int
    seconds: float
    queries: int
    response_bytes: int
    cache_hits: int
    plan: str
    errors: list[str] = field(default_factory=list)
    ended: list[EndedRow] = field(default_factory=list)
    ended_total: int = 0
    alerts: str = ""


def format_bytes(value: float, *, suffix: str = "") -> str:
    """Human-readable binary size (``1.5Gi``), with an optional suffix such as ``/s``."""
    units = ("", "Ki", "Mi", "Gi", "Ti", "Pi")
    v, i = float(value), 0
    while abs(v) >= 1024 and i < len(units) - 1:
        v, i = v / 1024, i + 1
    text = f"{v:.0f}" if i == 0 else f"{v:.1f}{units[i]}"
    return text + suffix


def _num(stat: Mapping[str, Any] | None, metric: str, key: str) -> float | None:
    try:
        return float(stat[metric][key])  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        return None


def _row_cells(kernel_id: str, agent: str, stat: Mapping[str, Any] | None) -> list[str]:
    short = kernel_id.replace("-", "")[:8]
    if stat is None:
        return [short, agent, "-", "(no data yet)", "", "", ""]
    cpu = _num(stat, "cpu_util", "pct")
    mem, cap = _num(stat, "mem", "current"), _num(stat, "mem", "capacity")
    rx, tx = _num(stat, "net_rx", "current"), _num(stat, "net_tx", "current")
    gpu = _num(stat, "cuda_util", "pct")
    mem_text = "-" if mem is None else format_bytes(mem)
    if cap is not None:
        mem_text += f" / {format_bytes(cap)}"
    return [
        short,
        agent,
        "-" if cpu is None else f"{cpu:.1f}",
        mem_text,
        "-" if rx is None else format_bytes(rx, suffix="/s"),
        "-" if tx is None else format_bytes(tx, suffix="/s"),
        "-" if gpu is None else f"{gpu:.0f}",
    ]


_HEADERS = ("KERNEL", "AGENT", "CPU%", "MEM USED / LIMIT", "NET RX", "NET TX", "GPU%")
_RIGHT = (False, False, True, True, True, True, True)


def render_view(view: PageView, *, rows: int, stamp: str = "") -> list[str]:
    """The lines of one refresh: a summary line, a table of up to ``rows`` kernels.

    Args:
        view: the refresh to show.
        rows: how many of the page's kernels to list.
        stamp: wall-clock text for the summary line.
    """
    with_data = sum(1 for _, _, s in view.rows if s is not None)
    cost = (
        f"{view.queries} Prometheus quer{'y' if view.queries == 1 else 'ies'}"
        f" ({format_bytes(view.response_bytes)}B)"
    )
    if view.queries == 0 and view.cache_hits:
        cost = "0 Prometheus queries (shared cache)"
    lines = [
        f"[{view.number}] {stamp} page of {len(view.rows)}/{view.total_count} kernels: "
        f"{with_data} with live_stat, {view.seconds * 1000:.1f} ms, {cost}, plan {view.plan}"
    ]
    lines.extend(_table([_row_cells(k, a, s) for k, a, s in view.rows[:rows]], _HEADERS, _RIGHT))
    if len(view.rows) > rows:
        lines.append(f"... {len(view.rows) - rows} more kernels on this page")
    if view.ended:
        lines.append(
            f"recently terminated ({len(view.ended)} of {view.ended_total}), final stats "
            "from Prometheus history at their termination (last_stat):"
        )
        lines.extend(
            _table(
                [[*_row_cells(k, a, s), ended] for k, a, ended, s in view.ended],
                (*_HEADERS, "TERMINATED"),
                (*_RIGHT, False),
            )
        )
    if view.alerts:
        lines.append(view.alerts)
    lines.extend(f"error: {e}" for e in view.errors)
    return lines


def _table(body: list[list[str]], headers: Sequence[str], right: Sequence[bool]) -> list[str]:
    table = [list(headers), *body]
    widths = [max(len(r[i]) for r in table) for i in range(len(headers))]
    return [
        "  ".join(
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True)
        ).rstrip()
        for row in table
    ]


def _plan_delta(before: MetricsSnapshot, after: MetricsSnapshot) -> str:
    used = [p for p, n in after.plans.items() if n > before.plans.get(p, 0)]
    return ",".join(sorted(used))


async def _in_thread(fn: Callable[[], T], started: list[Future[T]]) -> T:
    """Run a blocking call in a thread; ``started`` keeps its future so cleanup can reap it."""
    loop = asyncio.get_running_loop()
    cfut: Future[T] = loop.run_in_executor(None, fn)  # type: ignore[assignment]
    started.append(cfut)
    return await asyncio.wrap_future(cfut)


def _durations(interval: str) -> tuple[float, str, str]:
    from promstat.promql import parse_duration

    seconds = parse_duration(interval)
    if not seconds > 0:
        raise ConfigError(f"--interval must be > 0, not {interval!r}")
    # Short windows so the demo's max/avg move; rules require window >= 4x, lookback >= 2x.
    window = f"{max(60, math.ceil(4 * seconds))}s"
    return seconds, window, window


def _measure_interval(options: DemoOptions, interval_s: float) -> tuple[float, str]:
    """The agents' measurement interval in seconds and as a Prometheus duration.

    Default: twice the scrape interval, Backend.AI's ratio (measure 30 s, scrape 15-20 s), so
    Prometheus stores each measurement about twice and the rates must not alias.
    """
    from promstat.promql import duration, parse_duration

    if options.measure_interval is None:
        seconds = 2 * interval_s
        return seconds, duration(seconds)
    try:
        seconds = parse_duration(options.measure_interval)
    except ConfigError as exc:
        raise ConfigError(f"--measure-interval: {exc}") from exc
    if not seconds > 0:
        raise ConfigError(f"--measure-interval must be > 0, not {options.measure_interval!r}")
    return seconds, options.measure_interval


async def _count(client: Any, query: str) -> int:
    try:
        res = await client.query_vector(query)
    except PromstatError:
        return 0
    return int(float(res.series[0].value[1])) if res.series else 0


async def _wait_for_data(
    client: Any, names: Any, targets: int, interval: float, stop: asyncio.Event, until: float
) -> bool:
    """Wait until every exporter was scraped twice (rates need two samples) and the recording
    rules have evaluated over those scrapes.

    Returns False on ``stop``, or when the scrapes did not happen by ``until`` (monotonic).
    """

    async def pause(seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    window = f"{max(60, math.ceil(4 * interval))}s"
    scraped = f'count(count_over_time(up{{job="promstat"}}[{window}]) > 1)'
    while await _count(client, scraped) < targets:
        if stop.is_set() or time.monotonic() >= until:
            return False
        await pause(min(0.25, interval))
    raw = (
        f"count(count by ({names.kernel_label}) ({names.container_metric}"
        f'{{{names.value_type_label}="{names.current_value}"}}))'
    )
    recorded = (
        f"count(count by ({names.kernel_label}) "
        f'({names.kernel_live_stat}{{{names.stat_label}="current"}}))'
    )
    # Best effort: without rules the planner simply stays on "raw".
    limit = min(until, time.monotonic() + 5 * interval)
    while not stop.is_set() and time.monotonic() < limit:
        if await _count(client, recorded) >= await _count(client, raw):
            await pause(interval)  # one more evaluation: rates over both scrapes
            break
        await pause(min(0.25, interval))
    return not stop.is_set()


#: The demo's request: a page of running kernels and the latest terminated ones.
DEMO_QUERY = """query DemoPage($limit: Int!, $offset: Int!, $ended: Int!) {
  compute_container_list(limit: $limit, offset: $offset, status: "RUNNING") {
    total_count
    items { id agent status live_stat }
  }
  terminated: compute_container_list(limit: $ended, offset: 0, status: "TERMINATED") {
    total_count
    items { id agent terminated_at last_stat }
  }
}"""


async def _fetch_page(
    session: aiohttp.ClientSession, url: str, page_size: int, ended: int
) -> tuple[dict[str, Any], float]:
    variables = {"limit": page_size, "offset": 0, "ended": ended}
    body = {"query": DEMO_QUERY, "variables": variables}
    t0 = time.perf_counter()
    async with session.post(url, json=body) as resp:
        result: dict[str, Any] = await resp.json()
    return result, time.perf_counter() - t0


def _page_view(
    number: int,
    result: Mapping[str, Any],
    seconds: float,
    before: MetricsSnapshot,
    after: MetricsSnapshot,
    last_plan: str,
) -> PageView:
    data = (result.get("data") or {}).get("compute_container_list") or {}
    rows: list[tuple[str, str, dict[str, Any] | None]] = []
    for item in data.get("items") or []:
        raw = item.get("live_stat")
        rows.append(
            (str(item["id"]), str(item.get("agent") or "-"), json.loads(raw) if raw else None)
        )
    ended_data = (result.get("data") or {}).get("terminated") or {}
    ended: list[EndedRow] = []
    for item in ended_data.get("items") or []:
        raw = item.get("last_stat")
        when = str(item.get("terminated_at") or "-")[11:19]  # HH:MM:SS of the ISO time
        ended.append(
            (str(item["id"]), str(item.get("agent") or "-"), when, json.loads(raw) if raw else None)
        )
    return PageView(
        number=number,
        rows=rows,
        ended=ended,
        ended_total=int(ended_data.get("total_count") or 0),
        total_count=int(data.get("total_count") or 0),
        seconds=seconds,
        queries=after.queries - before.queries,
        response_bytes=after.response_bytes - before.response_bytes,
        cache_hits=after.cache_hits - before.cache_hits,
        plan=_plan_delta(before, after) or f"{last_plan} (cached)",
        errors=[str(e.get("message", e)) for e in result.get("errors") or []],
    )


def _terminal_rows(options: DemoOptions, header_lines: int) -> int:
    if options.rows is not None:
        return options.rows
    height = shutil.get_terminal_size((100, 40)).lines
    return max(5, height - header_lines - 4)


async def run_demo(
    options: DemoOptions, out: TextIO | None = None, *, stop: asyncio.Event | None = None
) -> int:
    """Run the demo until ``duration`` passes, ``stop`` is set, or SIGINT/SIGTERM arrives.

    Args:
        options: demo settings.
        out: where the view goes (default ``sys.stdout``).
        stop: an event that ends the run (signal handlers are installed when it is None).

    Returns:
        0 after a clean shutdown, 1 when a server could not start (message on stderr).
    """
    from promstat.apps.registry import FleetRegistry
    from promstat.apps.serve import curl_example, make_app
    from promstat.client import PrometheusClient
    from promstat.generate.alerts import demo_settings, write_alerts
    from promstat.generate.rules import write_rules
    from promstat.planner import PlannerConfig
    from promstat.profile import RuleProfile
    from promstat.service import LiveStats
    from promstat.testing import lab
    from promstat.testing.sim import ChurnConfig, FleetConfig, SimulatedFleet

    out = out or sys.stdout
    tty = out.isatty()
    interval_s, window, lookback = _durations(options.interval)
    measure_s, collect_interval = _measure_interval(options, interval_s)
    refresh = options.refresh if options.refresh is not None else max(3.0, interval_s)
    stop_event = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if stop is None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop_event.set)
                installed.append(sig)
    deadline = None if options.duration is None else time.monotonic() + options.duration

    def say(line: str = "") -> None:
        out.write(line + "\n")
        out.flush()

    tmp = Path(tempfile.mkdtemp(prefix="promstat-demo-"))
    prom_starts: list[Future[lab.PrometheusProcess]] = []
    prom: lab.PrometheusProcess | None = None
    # A slot starts its next kernel at once (no gap), so the live page keeps its size.
    churn = ChurnConfig(
        mean_lifetime=options.lifetime, min_lifetime=min(60.0, options.lifetime / 2), max_gap=0
    )
    fleet = SimulatedFleet(
        FleetConfig(
            agents=options.agents,
            kernels_per_agent=options.kernels_per_agent,
            seed=options.seed,
            churn=churn,
            measure_interval=measure_s,
        )
    )
    runner: web.AppRunner | None = None
    try:
        rule_dir = tmp / "rules"
        profile = RuleProfile.parse(
            interval=options.interval,
            window=window,
            lookback=lookback,
            collect_interval=collect_interval,
        )
        written = write_rules(rule_dir, profile)
        rule_files = [p for p in written if p.parent == rule_dir and p.name.endswith(".rules.yml")]
        # alerting rules with durations of a few intervals, so a short demo shows them fire
        rule_files += write_alerts(rule_dir / "alerts", settings=demo_settings(options.interval))
        await fleet.start()
        prom = await _in_thread(
            lambda: lab.start_prometheus(
                scrape_targets=fleet.targets,
                scrape_interval=options.interval,
                evaluation_interval=options.interval,
                rule_files=rule_files,
                data_dir=tmp / "prometheus",
            ),
            prom_starts,
        )
        metrics = PromstatMetrics()
        config = PlannerConfig(detect_ttl=interval_s)
        profile = RuleProfile.parse(
            interval=options.interval,
            lookback=lookback,
            window=window,
            collect_interval=collect_interval,
        )
        async with PrometheusClient(prom.url, observer=metrics) as client:
            stats = LiveStats(client, profile=profile, planner=config, metrics=metrics)
            app = make_app(stats, FleetRegistry(fleet), stack=options.stack)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", options.port)
            await site.start()
            host, port = runner.addresses[0][:2]
            graphql_url = f"http://{host}:{port}/graphql"
            header = [
                f"promstat demo: {options.agents} agents x {options.kernels_per_agent} kernels, "
                f"scrape + rules every {options.interval}, agents measure every "
                f"{collect_interval}, {options.stack} schema",
                f"  GraphQL:    {graphql_url}   (GET http://{host}:{port}/ for help)",
                f"  Prometheus: {prom.url}   (data: {prom.data_dir})",
                f"  exporters:  http://{fleet.targets[0]}/metrics ... ({len(fleet.targets)})"
                if fleet.targets
                else "  exporters:  none",
                f"  temp dir:   {tmp}",
                f"  self-metrics: http://{host}:{port}/metrics",
                "Try:",
                "  " + curl_example(graphql_url, page_size=min(options.page_size, 5)),
                "Stop with Ctrl-C.",
            ]
            for line in header:
                say(line)
            say("waiting for the first scrapes ...")
            scrape_limit = time.monotonic() + 60.0
            until = scrape_limit if deadline is None else min(scrape_limit, deadline)
            ready = await _wait_for_data(
                client, profile.names, len(fleet.targets), interval_s, stop_event, until
            )
            if not ready and not stop_event.is_set():
                if time.monotonic() >= scrape_limit:
                    say("no complete scrape within 60 s; the last lines of the Prometheus log:")
                    say(prom.log_tail(20))
                    return 1
                say("--duration ended before the first complete scrapes")
            rows = _terminal_rows(options, len(header)) if tty else PLAIN_ROWS
            every = options.table_every or (1 if tty else PLAIN_TABLE_EVERY)
            number, last_plan = 0, "?"
            async with aiohttp.ClientSession() as session:
                while not stop_event.is_set():
                    if deadline is not None and time.monotonic() >= deadline:
                        break
                    number += 1
                    before = metrics.snapshot()
                    result, seconds = await _fetch_page(
                        session, graphql_url, options.page_size, options.ended_rows
                    )
                    after = metrics.snapshot()
                    view = _page_view(number, result, seconds, before, after, last_plan)
                    view.alerts = await alert_summary(client)
                    if not view.plan.endswith("(cached)"):
                        last_plan = view.plan
                    lines = render_view(view, rows=rows, stamp=time.strftime("%H:%M:%S"))
                    if (number - 1) % every:
                        # Between tables: the summary line, and errors (never hidden).
                        for line in [lines[0], *(f"error: {e}" for e in view.errors)]:
                            say(line)
                    elif tty:
                        out.write("\x1b[H\x1b[2J" + "\n".join([*header, "", *lines]) + "\n")
                        out.flush()
                    else:
                        for line in lines:
                            say(line)
                        say()
                    wait = refresh
                    if deadline is not None:
                        wait = min(wait, max(0.0, deadline - time.monotonic()))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop_event.wait(), wait)
        return 0
    except BinaryNotFoundError as exc:
        print(f"promstat demo: {exc}", file=sys.stderr)
        return 1
    except (LabError, ConfigError, OSError) as exc:
        print(f"promstat demo: {exc}", file=sys.stderr)
        return 1
    finally:
        if runner is not None:
            await runner.cleanup()
        # A start that was still running in its thread (Ctrl-C during startup) is reaped too.
        for cfut in prom_starts:
            with contextlib.suppress(BaseException):
                started = await asyncio.wrap_future(cfut)
                if started is not prom:
                    await asyncio.to_thread(started.stop)
        if prom is not None:
            await asyncio.to_thread(prom.stop)
        await fleet.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        for sig in installed:
            loop.remove_signal_handler(sig)
        if tty:
            out.write("\n")
        with contextlib.suppress(Exception):
            out.write("promstat demo: stopped; servers and temp files removed\n")
            out.flush()
