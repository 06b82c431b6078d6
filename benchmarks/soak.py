"""Soak run: the ``promstat demo`` pipeline for minutes, with kernel churn and a Prometheus restart.

Usage::

    python -m benchmarks.soak --duration 600          # the benchmark suite's 10-minute run
    python -m benchmarks.soak --duration 60 --json /tmp/soak.json

What runs, all on loopback and all torn down at the end (as in ``promstat demo``):

* a :class:`~promstat.testing.sim.SimulatedFleet` whose kernels churn (30 s mean lifetime
  so a 10-minute run sees thousands of kernel ids come and go), scraped by a real Prometheus
  (:func:`promstat.testing.lab.start_prometheus`) with promstat's generated recording rules loaded;
* one :class:`~promstat.service.LiveStats` built from the URL (it owns its client), behind the
  GraphQL service of :func:`promstat.apps.serve.make_app`;
* several clients polling overlapping kernel list pages, and one polling the agent list, over
  HTTP, each about once a second;
* halfway through, Prometheus is stopped (SIGTERM), left down for a few seconds and started
  again on the same port and data directory.

Every few seconds it samples the process' RSS, the asyncio tasks alive and the shared cache
sizes. The report gives them at the start (after a warm-up) and at the end, the errors pages
served while Prometheus was down, how long pages took then, how fast the first clean page came
after Prometheus was back, the loop's "exception never retrieved" reports and the promstat log
lines. There are no thresholds here; ``tests/test_soak.py`` runs 60 s and asserts, with
generous bounds, that memory and task counts end flat and pages recover.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from promstat.apps.registry import FleetRegistry
from promstat.apps.serve import EXAMPLE_QUERY, make_app
from promstat.client import ClientConfig
from promstat.errors import LabError
from promstat.generate.rules import write_rules
from promstat.planner import PlannerConfig
from promstat.profile import RuleProfile
from promstat.promql import parse_duration
from promstat.selfmetrics import PromstatMetrics
from promstat.service import LiveStats
from promstat.testing import lab
from promstat.testing.sim import ChurnConfig, FleetConfig, SimulatedFleet

__all__ = ["SoakOptions", "SoakReport", "main", "run_soak"]

AGENT_QUERY = (
    "query AgentPage($limit: Int!, $offset: Int!) {\n"
    "  agent_list(limit: $limit, offset: $offset) {\n"
    "    total_count\n"
    "    items { id live_stat cpu_cur_pct mem_cur_bytes }\n"
    "  }\n"
    "}"
)
MIB = 2**20


@dataclass(frozen=True, slots=True)
class SoakOptions:
    """Settings of one soak run.

    Attributes:
        duration: seconds of polling (setup and the first scrapes come on top).
        agents: simulated agents.
        kernels_per_agent: kernel slots per agent.
        clients: clients polling kernel pages (one more polls the agent list).
        page_size: kernels per page (client i starts at offset i * page_size / 2).
        interval: scrape, rule evaluation and cache interval.
        poll: seconds between one client's pages (jittered +-20%).
        mean_lifetime: mean kernel lifetime in seconds (churn).
        restart_at: when Prometheus is stopped, as a share of ``duration``.
        down: seconds Prometheus stays down.
        client_timeout: the PrometheusClient deadline (the page deadline follows it).
        sample_every: seconds between RSS / task / cache samples.
        warmup: seconds before the "start" sample (default: a quarter of the run, at most 60).
        seed: simulation seed.
    """

    duration: float = 600.0
    agents: int = 10
    kernels_per_agent: int = 20
    clients: int = 4
    page_size: int = 100
    interval: str = "2s"
    poll: float = 1.0
    mean_lifetime: float = 30.0
    restart_at: float = 0.5
    down: float = 5.0
    client_timeout: float = 2.0
    sample_every: float = 1.0
    warmup: float | None = None
    seed: int = 7

    @property
    def warmup_seconds(self) -> float:
        """The warm-up actually used."""
        return self.warmup if self.warmup is not None else min(60.0, self.duration / 4)


@dataclass(slots=True)
class Sample:
    """One periodic measurement (``t``: seconds since polling began)."""

    t: float
    rss_mib: float
    tasks: int
    promstat_tasks: int
    kernel_cache: int
    agent_cache: int
    sim_kernels: int


@dataclass(slots=True)
class Page:
    """One polled page (``started``: seconds since polling began)."""

    client: int
    started: float
    seconds: float
    rows: int = 0
    with_data: int = 0
    errors: int = 0
    failed: str = ""  # the HTTP request itself failed

    @property
    def clean(self) -> bool:
        """No GraphQL error, no HTTP failure, and some rows with data."""
        return not self.failed and self.errors == 0 and self.with_data > 0


@dataclass(slots=True)
class SoakReport:
    """What a soak run measured (see :meth:`summary`)."""

    options: dict[str, Any]
    samples: list[Sample] = field(default_factory=list)
    pages: int = 0
    clean_pages: int = 0
    key_errors: int = 0
    down_at: float | None = None
    up_at: float | None = None
    pages_while_down: int = 0
    key_errors_while_down: int = 0
    page_seconds_while_down_p50: float | None = None
    page_seconds_while_down_max: float | None = None
    recovery_seconds: float | None = None
    page_seconds_p50: float | None = None
    page_seconds_p95: float | None = None
    kernel_ids_seen: int = 0
    prometheus_queries: int = 0
    loop_reports: int = 0
    log_lines: int = 0
    log_examples: list[str] = field(default_factory=list)
    tasks_before: int = 0
    tasks_after_close: int = 0
    promstat_tasks_after_close: int = 0

    @property
    def start(self) -> Sample:
        """The first sample after the warm-up (the baseline)."""
        warm = self.options.get("warmup_seconds", 0.0)
        return next((s for s in self.samples if s.t >= warm), self.samples[-1])

    @property
    def end(self) -> Sample:
        """The last sample, taken while the clients were still polling."""
        return self.samples[-1]

    def task_floor(self) -> tuple[int, int]:
        """Tasks alive between pages before the outage and after it (or in the two halves).

        Pages in flight add hundreds of short-lived tasks (resolvers, fetches, handlers), so a
        single sample says little. The 10th percentile of the samples is the count between
        pages, robust to a rare quiet moment; a leak shows as a floor that rises. The outage
        itself (failing pages are quick) and the seconds after it are left out.
        """
        warm = [s for s in self.samples if s.t >= self.start.t]
        if self.down_at is not None and self.up_at is not None:
            settled = self.up_at + 5.0
            first = [s.tasks for s in warm if s.t < self.down_at]
            second = [s.tasks for s in warm if s.t >= settled]
        else:
            half = len(warm) // 2 or 1
            first, second = [s.tasks for s in warm[:half]], [s.tasks for s in warm[half:]]
        first = first or [s.tasks for s in warm]
        second = second or [s.tasks for s in warm]
        return int(_pct(first, 0.1) or 0), int(_pct(second, 0.1) or 0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with the start and end samples spelled out."""
        out = asdict(self)
        out["start"] = asdict(self.start)
        out["end"] = asdict(self.end)
        out["task_floor"] = list(self.task_floor())
        return out

    def summary(self) -> list[str]:
        """Human-readable lines."""
        s, e = self.start, self.end
        down = (
            f"{self.up_at - self.down_at:.1f} s"
            if self.up_at is not None and self.down_at is not None
            else "?"
        )
        rec = f"{self.recovery_seconds:.2f} s" if self.recovery_seconds is not None else "never"

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v * 1000:.0f} ms"

        return [
            f"soak: {self.options['duration']:g} s, {self.pages} pages "
            f"({self.clean_pages} clean), {self.kernel_ids_seen} kernel ids seen, "
            f"{self.prometheus_queries} Prometheus queries",
            f"  RSS: {s.rss_mib:.1f} MiB at t={s.t:.0f} s -> {e.rss_mib:.1f} MiB at "
            f"t={e.t:.0f} s (peak {max(x.rss_mib for x in self.samples):.1f})",
            f"  asyncio tasks between pages (10th percentile): {self.task_floor()[0]} before "
            f"the outage -> {self.task_floor()[1]} after it; before LiveStats {self.tasks_before}, "
            f"after its aclose {self.tasks_after_close} ({self.promstat_tasks_after_close} "
            "running promstat code)",
            f"  caches (kernels/agents): {s.kernel_cache}/{s.agent_cache} -> "
            f"{e.kernel_cache}/{e.agent_cache} (max kernels "
            f"{max(x.kernel_cache for x in self.samples)}); simulated kernels known: "
            f"{s.sim_kernels} -> {e.sim_kernels}",
            f"  page latency p50 {ms(self.page_seconds_p50)}, p95 {ms(self.page_seconds_p95)}",
            f"  Prometheus down for {down}: {self.pages_while_down} pages, "
            f"{self.key_errors_while_down} key errors served, page p50 "
            f"{ms(self.page_seconds_while_down_p50)}, max "
            f"{ms(self.page_seconds_while_down_max)}",
            f"  first clean page {rec} after Prometheus was ready again",
            f"  loop 'never retrieved' reports: {self.loop_reports}; promstat log lines: "
            f"{self.log_lines}",
        ]


_PROMSTAT_DIR = str(Path(sys.modules["promstat"].__file__ or "").parent)


#: The agent side (the simulated fleet's measurement timer, its exporters) runs until the
#: fleet stops, after LiveStats has closed: not the manager's tasks this soak checks.
_AGENT_SIDE = ("testing", "agent")  # subpackages of promstat


def promstat_tasks() -> int:
    """Tasks alive whose coroutine is promstat's manager-side code (loaders, planner, refresh,
    resolvers), not the simulated agents'."""
    count = 0
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        if code is None or not code.co_filename.startswith(_PROMSTAT_DIR):
            continue
        if os.path.relpath(code.co_filename, _PROMSTAT_DIR).split(os.sep)[0] not in _AGENT_SIDE:
            count += 1
    return count


def rss_mib() -> float:
    """Resident set size of this process in MiB."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


class _Records(logging.Handler):
    """Counts promstat log lines (WARNING and up) and keeps a few examples."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.examples: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.examples) < 5:
            self.examples.append(f"{record.name}: {record.getMessage()[:200]}")


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as resp:
            return int(resp.status) == 200
    except OSError:
        return False


def _respawn(old: lab.PrometheusProcess) -> lab.PrometheusProcess:
    """Start Prometheus again with the stopped one's command line, port and data directory."""
    proc = lab.PrometheusProcess(
        name=old.name, argv=old.argv, port=old.port, data_dir=old.data_dir, owns_data_dir=False
    )
    for attr in (
        "config_path",
        "tsdb_path",
        "scrape_targets",
        "scrape_interval",
        "evaluation_interval",
        "rule_files",
    ):
        setattr(proc, attr, getattr(old, attr))
    proc.wait_ready(lambda: _ready(proc.url), timeout=60, what="ready after the restart")
    return proc


def _forget_ended_kernels(fleet: SimulatedFleet, before: float) -> None:
    """Drop simulated kernels that ended before ``before`` from the fleet's model.

    The simulator forgets them only after a day; in this process their models would grow
    the RSS the soak is watching (~2 KiB per kernel, thousands of kernels in 10 minutes).
    """
    for slots in fleet._model.slots.values():
        for slot in slots:
            slot.prune(before)


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _post(
    session: aiohttp.ClientSession, url: str, query: str, variables: dict[str, int]
) -> dict[str, Any]:
    async with session.post(url, json={"query": query, "variables": variables}) as resp:
        result: dict[str, Any] = await resp.json()
    return result


def _read_page(client: int, started: float, seconds: float, result: dict[str, Any]) -> Page:
    data = result.get("data") or {}
    listing = data.get("compute_container_list") or data.get("agent_list") or {}
    items = listing.get("items") or []
    return Page(
        client=client,
        started=started,
        seconds=seconds,
        rows=len(items),
        with_data=sum(1 for item in items if item.get("live_stat")),
        errors=len(result.get("errors") or []),
    )


class _Soak:
    """One run's moving parts (see :func:`run_soak`)."""

    def __init__(self, options: SoakOptions, out: Any) -> None:
        self.o = options
        self.out = out
        self.pages: list[Page] = []
        self.ids_seen: set[str] = set()
        self.stop = asyncio.Event()
        self.t0 = 0.0
        self.down_at: float | None = None
        self.up_at: float | None = None
        self.samples: list[Sample] = []

    def now(self) -> float:
        return asyncio.get_running_loop().time() - self.t0

    def say(self, line: str) -> None:
        if self.out is not None:
            self.out.write(line + "\n")
            self.out.flush()

    async def poll(self, client: int, url: str, *, agents: bool) -> None:
        rng = random.Random(client)
        timeout = aiohttp.ClientTimeout(total=60)
        query = AGENT_QUERY if agents else EXAMPLE_QUERY
        offset = 0 if agents else client * self.o.page_size // 2
        variables = {"limit": self.o.page_size, "offset": offset}
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not self.stop.is_set():
                started = self.now()
                try:
                    result = await _post(session, url, query, variables)
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    page = Page(client, started, self.now() - started, failed=repr(exc))
                else:
                    page = _read_page(client, started, self.now() - started, result)
                    listing = (result.get("data") or {}).get("compute_container_list") or {}
                    self.ids_seen.update(i["id"] for i in listing.get("items") or [])
                self.pages.append(page)
                with contextlib.suppress(TimeoutError):
                    wait = self.o.poll * (0.8 + 0.4 * rng.random())
                    await asyncio.wait_for(self.stop.wait(), wait)

    async def sample(self, stats: LiveStats, fleet: SimulatedFleet) -> None:
        while True:
            _forget_ended_kernels(fleet, time.time() - 60)
            sizes = stats.cache_sizes()
            self.samples.append(
                Sample(
                    t=round(self.now(), 2),
                    rss_mib=round(rss_mib(), 2),
                    tasks=len(asyncio.all_tasks()),
                    promstat_tasks=promstat_tasks(),
                    kernel_cache=sizes["kernels"],
                    agent_cache=sizes["agents"],
                    sim_kernels=len(fleet._model.by_id),
                )
            )
            if self.stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.o.sample_every)

    async def restart(self, holder: list[lab.PrometheusProcess]) -> None:
        await asyncio.sleep(self.o.duration * self.o.restart_at)
        self.say(f"[{self.now():6.1f} s] stopping Prometheus for {self.o.down:g} s")
        self.down_at = self.now()
        await asyncio.to_thread(holder[0].stop)
        await asyncio.sleep(self.o.down)
        holder[0] = await asyncio.to_thread(_respawn, holder[0])
        self.up_at = self.now()
        self.say(f"[{self.now():6.1f} s] Prometheus ready again")

    async def wait_for_data(self, url: str, limit: float) -> None:
        """Poll until a page is clean with most rows answered (first scrapes and rules)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + limit
        async with aiohttp.ClientSession() as session:
            while loop.time() < until:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                    result = await _post(
                        session, url, EXAMPLE_QUERY, {"limit": self.o.page_size, "offset": 0}
                    )
                    page = _read_page(0, 0, 0, result)
                    if page.clean and page.with_data >= page.rows // 2:
                        return
                await asyncio.sleep(0.5)
        raise LabError(f"no clean page within {limit:g} s of the fleet starting")

    def report(self, metrics: PromstatMetrics, reports: int, logs: _Records) -> SoakReport:
        o = self.o
        options = {**asdict(o), "warmup_seconds": o.warmup_seconds}
        rep = SoakReport(options=options, samples=self.samples)
        pages = self.pages
        rep.pages = len(pages)
        rep.clean_pages = sum(p.clean for p in pages)
        rep.key_errors = sum(p.errors for p in pages)
        secs = [p.seconds for p in pages if not p.failed]
        rep.page_seconds_p50 = statistics.median(secs) if secs else None
        rep.page_seconds_p95 = _pct(secs, 0.95)
        rep.down_at, rep.up_at = self.down_at, self.up_at
        if self.down_at is not None and self.up_at is not None:
            down = [p for p in pages if self.down_at <= p.started < self.up_at]
            rep.pages_while_down = len(down)
            rep.key_errors_while_down = sum(p.errors for p in down)
            down_secs = [p.seconds for p in down]
            rep.page_seconds_while_down_p50 = statistics.median(down_secs) if down_secs else None
            rep.page_seconds_while_down_max = max(down_secs) if down_secs else None
            after = sorted(
                (p for p in pages if p.started >= self.up_at and p.clean),
                key=lambda p: p.started + p.seconds,
            )
            if after:
                rep.recovery_seconds = round(after[0].started + after[0].seconds - self.up_at, 3)
        rep.kernel_ids_seen = len(self.ids_seen)
        rep.prometheus_queries = metrics.snapshot().queries
        rep.loop_reports = reports
        rep.log_lines = logs.count
        rep.log_examples = logs.examples
        return rep


async def run_soak(options: SoakOptions, out: Any = None) -> SoakReport:
    """Run one soak (see the module docstring) and return its report.

    Args:
        options: settings.
        out: where progress lines go (a text stream), or ``None``.

    Raises:
        LabError: Prometheus did not start (or restart), or no clean page came at all.
    """
    soak = _Soak(options, out)
    loop = asyncio.get_running_loop()
    interval_s = parse_duration(options.interval)
    window = f"{max(60, int(4 * interval_s))}s"
    tmp = Path(tempfile.mkdtemp(prefix="promstat-soak-"))
    churn = ChurnConfig(
        mean_lifetime=options.mean_lifetime,
        min_lifetime=max(1.0, options.mean_lifetime / 3),
        max_gap=3,
    )
    fleet = SimulatedFleet(
        FleetConfig(
            agents=options.agents,
            kernels_per_agent=options.kernels_per_agent,
            seed=options.seed,
            churn=churn,
            detention=2 * interval_s,  # terminated kernels leave the exporters soon
        )
    )
    holder: list[lab.PrometheusProcess] = []
    reports: list[dict[str, Any]] = []
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: reports.append(ctx))
    logs = _Records()
    promstat_log = logging.getLogger("promstat")
    promstat_log.addHandler(logs)
    runner: web.AppRunner | None = None
    metrics = PromstatMetrics()
    try:
        written = write_rules(
            tmp / "rules",
            RuleProfile.parse(interval=options.interval, window=window, lookback=window),
        )
        rule_files = [p for p in written if p.name.endswith(".rules.yml")]
        await fleet.start()
        holder.append(
            await asyncio.to_thread(
                lambda: lab.start_prometheus(
                    scrape_targets=fleet.targets,
                    scrape_interval=options.interval,
                    evaluation_interval=options.interval,
                    rule_files=rule_files,
                    data_dir=tmp / "prometheus",
                )
            )
        )
        config = PlannerConfig(detect_ttl=interval_s)
        profile = RuleProfile.parse(interval=options.interval, lookback=window, window=window)
        tasks_before = len(asyncio.all_tasks())
        stats = LiveStats(
            holder[0].url,
            profile=profile,
            planner=config,
            metrics=metrics,
            client=ClientConfig(timeout=options.client_timeout),
        )
        async with stats:
            runner = web.AppRunner(make_app(stats, FleetRegistry(fleet)), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            url = f"http://{host}:{port}/graphql"
            soak.say(f"soak: Prometheus {holder[0].url}, GraphQL {url}; waiting for data")
            await soak.wait_for_data(url, 90.0)
            soak.t0 = loop.time()
            soak.say(f"soak: polling for {options.duration:g} s")
            workers = [
                asyncio.create_task(soak.poll(i, url, agents=False)) for i in range(options.clients)
            ]
            workers.append(asyncio.create_task(soak.poll(options.clients, url, agents=True)))
            sampler = asyncio.create_task(soak.sample(stats, fleet))
            restarter = asyncio.create_task(soak.restart(holder))
            try:
                await asyncio.sleep(options.duration)
                soak.stop.set()
                await asyncio.gather(*workers)
                await sampler  # one last sample, taken with everything still running
                await restarter
            finally:
                soak.stop.set()
                for task in (*workers, sampler, restarter):
                    task.cancel()
                await asyncio.gather(*workers, sampler, restarter, return_exceptions=True)
        await runner.cleanup()
        runner = None
        await asyncio.sleep(0.1)
        # What is left runs the fleet's exporters (Prometheus' keep-alive scrape connections).
        tasks_after, promstat_after = len(asyncio.all_tasks()), promstat_tasks()
    finally:
        if runner is not None:
            await runner.cleanup()
        for proc in holder:
            await asyncio.to_thread(proc.stop)
        await fleet.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        promstat_log.removeHandler(logs)
        loop.set_exception_handler(previous_handler)
    report = soak.report(metrics, len(reports), logs)
    report.tasks_before, report.tasks_after_close = tasks_before, tasks_after
    report.promstat_tasks_after_close = promstat_after
    for line in report.summary():
        soak.say(line)
    return report


def parse_args(argv: Sequence[str] | None = None) -> tuple[SoakOptions, Path | None]:
    """Command line -> options and the JSON output path."""
    d = SoakOptions()
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.soak", description=__doc__.split("\n")[0]
    )
    p.add_argument("--duration", type=float, default=d.duration, help="seconds (default 600)")
    p.add_argument("--agents", type=int, default=d.agents)
    p.add_argument("--kernels-per-agent", type=int, default=d.kernels_per_agent)
    p.add_argument("--clients", type=int, default=d.clients, help="kernel page pollers")
    p.add_argument("--page-size", type=int, default=d.page_size)
    p.add_argument("--interval", default=d.interval)
    p.add_argument("--mean-lifetime", type=float, default=d.mean_lifetime)
    p.add_argument("--down", type=float, default=d.down, help="seconds Prometheus stays down")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--json", type=Path, help="write the report here")
    a = p.parse_args(argv)
    options = SoakOptions(
        duration=a.duration,
        agents=a.agents,
        kernels_per_agent=a.kernels_per_agent,
        clients=a.clients,
        page_size=a.page_size,
        interval=a.interval,
        mean_lifetime=a.mean_lifetime,
        down=a.down,
        seed=a.seed,
    )
    return options, a.json


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.soak``: run, print the summary, optionally write JSON."""
    options, json_path = parse_args(argv)
    report = asyncio.run(run_soak(options, out=sys.stdout))
    if json_path is not None:
        json_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
