"""Backend matrix and Prometheus' own cost of the recording rules.

* :func:`backend_matrix` — the cold recorded 1,000-kernel page against VictoriaMetrics with the
  rules evaluated by vmalert, in the same run as the Prometheus measurements. The fleet's raw
  history is imported into a fresh VictoriaMetrics, ``vmalert -replay.*`` evaluates the
  generated rules over the last window before the pinned time (range queries at the rule
  interval, results remote-written back; chained rules a ``rulesDelay`` apart), and the same
  page is loaded through ``LiveStats`` at the pinned time.
* :func:`measure_rules_cost` — a live, scraped fleet (``promstat.testing.sim`` exporters in a child
  process, Prometheus scraping them every 15 s with the generated rules loaded) of N kernels:
  Prometheus CPU-seconds per minute, each rule group's evaluation time from ``/api/v1/rules``,
  and the extra Prometheus CPU of polling a 1,000-kernel page once per interval through
  promstat (recorded plan) vs through upstream's six queries per 128-id batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from promstat.client import PrometheusClient
from promstat.expressions import RateSource
from promstat.generate.rules import write_rules
from promstat.loader import CacheConfig
from promstat.planner import PlannerConfig
from promstat.profile import RuleProfile
from promstat.selfmetrics import PromstatMetrics
from promstat.service import LiveStats
from promstat.testing import lab
from promstat.testing.sim import FleetConfig, SimulatedFleet, write_fleet_openmetrics

from .contenders import PageResult, PinnedClient, Upstream
from .fleet import Fleet
from .polling import process_cpu_seconds
from .pprof import cpu_breakdown, fetch_cpu_profile

__all__ = ["LAYOUTS", "backend_matrix", "measure_rules_cost", "measure_rules_cost_vm"]

ROOT = Path(__file__).resolve().parent.parent
Log = Callable[[str], None]


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _summary(results: Sequence[PageResult]) -> dict[str, Any]:
    times = sorted(r.seconds * 1000 for r in results)
    return {
        "p50_ms": round(statistics.median(times), 2),
        "p95_ms": round(times[min(len(times) - 1, round(0.95 * (len(times) - 1)))], 2),
        "queries": statistics.median(r.queries for r in results),
        "found": min(r.found for r in results),
        "reps": len(results),
    }


async def _cold_pages(url: str, at: float, ids: list[str], reps: int) -> list[PageResult]:
    metrics = PromstatMetrics()
    client = PrometheusClient(url, observer=metrics)
    stats = LiveStats(
        PinnedClient(client, at), planner=PlannerConfig(use_recorded=True, detect_ttl=1e9),
        cache=CacheConfig(ttl=0), metrics=metrics,
    )
    out = []
    try:
        await stats.learn_profile()  # the rules read, once: outside the timings
        await stats.planner.detect("kernel")
        await stats.load_kernels(ids)  # warm-up
        for _ in range(reps):
            before = metrics.snapshot()
            t0 = time.perf_counter()
            values = await stats.load_kernels(ids)
            seconds = time.perf_counter() - t0
            after = metrics.snapshot()
            found = sum(1 for v in values if isinstance(v, dict))
            out.append(PageResult(seconds, after.queries - before.queries,
                                  after.response_bytes - before.response_bytes, found, 0,
                                  len(ids)))
    finally:
        await client.close()
    return out


def backend_matrix(
    fleet: Fleet, settings: Any, page_results: Mapping[int, Mapping[str, Sequence[PageResult]]]
) -> dict[str, Any]:
    """The cold 1,000-kernel recorded page on Prometheus (from this run) and on VM + vmalert."""
    size = 1000 if 1000 in page_results else max(page_results)
    out: dict[str, Any] = {}
    prom = page_results[size].get("promstat_rec")
    if prom:
        out["prometheus"] = {"page": size, **_summary(prom)}
    spec = fleet.spec
    work = Path(tempfile.mkdtemp(prefix="promstat-bench-vm-"))
    try:
        t0 = time.perf_counter()
        # Raw history from two windows before the pinned time: enough for irate's lookback
        # and the window statistics of every replayed evaluation.
        start = spec.at - 2 * spec.window - 4 * spec.step
        om = write_fleet_openmetrics(spec.sim_config(), work / "fleet.om.txt", start, spec.at,
                                     spec.step)
        rules = write_rules(work / "rules",
                            RuleProfile.parse(interval=f"{spec.step}s", window=f"{spec.window}s"))
        rule_files = [p for p in rules if p.name.endswith(".rules.yml")]
        with lab.start_victoria_metrics(openmetrics=om, disable_cache=True,
                                        import_timeout=900.0) as vm:
            imported = time.perf_counter() - t0
            t0 = time.perf_counter()
            argv = [
                lab.require_binary("vmalert"),
                f"-datasource.url={vm.url}",
                f"-remoteWrite.url={vm.url}",
                *(f"-rule={p}" for p in rule_files),
                f"-replay.timeFrom={_rfc3339(spec.at - spec.window - 2 * spec.step)}",
                f"-replay.timeTo={_rfc3339(spec.at)}",
                f"-datasource.queryStep={spec.step}s",
                "-replay.rulesDelay=2s",
                "-remoteWrite.flushInterval=200ms",
                "-replay.disableProgressBar",
                "-httpListenAddr=127.0.0.1:0",
            ]
            done = subprocess.run(argv, capture_output=True, text=True, check=False,
                                  timeout=1800)
            if done.returncode != 0:
                raise RuntimeError(f"vmalert replay failed: {(done.stdout + done.stderr)[-400:]}")
            vm.force_flush()
            replayed = time.perf_counter() - t0
            ids = fleet.page(size, 0)
            results = asyncio.run(_cold_pages(vm.url, fleet.at, ids, settings.cold_reps))
            out["victoriametrics+vmalert"] = {
                "page": size,
                **_summary(results),
                "setup_s": {"import": round(imported, 1), "replay": round(replayed, 1)},
            }
    except Exception as exc:  # reported, not fatal: the Prometheus figures stand on their own
        out["victoriametrics+vmalert"] = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return out


# -------------------------------------------------------------------------------------------
# Rule cost on a live, scraped fleet


def _rule_groups(url: str) -> dict[str, tuple[float, str, dict[str, float]]]:
    """Group name -> (evaluation time, last evaluation, rule label -> evaluation time)."""
    # Generous: a 20,000-kernel fleet's rule evaluation keeps the server busy on 2 cores.
    with urllib.request.urlopen(f"{url}/api/v1/rules?type=record", timeout=120) as resp:
        doc = json.load(resp)
    out = {}
    for g in doc["data"]["groups"]:
        rules: dict[str, float] = {}
        for i, r in enumerate(g.get("rules", [])):
            key = ",".join(f"{k}={v}" for k, v in sorted((r.get("labels") or {}).items()))
            # Several rules may write one stat (split by the series they read): number them.
            rules[f"{i:02d} {key or r.get('name', '?')}"] = float(r.get("evaluationTime", 0.0))
        out[g["name"]] = (
            float(g.get("evaluationTime", 0.0)), str(g.get("lastEvaluation", "")), rules
        )
    return out


async def _poll_pages(url: str, ids: list[str], *, upstream: bool, seconds: float,
                      interval: float, rates: str = "both",
                      every: float | None = None) -> tuple[int, float]:
    """Load the page once per ``interval`` for ``seconds`` (live data: evaluated at now);
    promstat reads with the profile the rules were rendered with (``every``: their interval).

    Returns the pages loaded and their median latency in ms (uncached: every page asks
    Prometheus).
    """
    pages = 0
    took: list[float] = []
    if upstream:
        up = Upstream(url, at=0.0)
        await up.start()
        up.at = time.time()
        try:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                up.at = time.time()
                t0 = time.perf_counter()
                await up.load(ids)
                took.append((time.perf_counter() - t0) * 1000)
                pages += 1
                await asyncio.sleep(max(0.0, interval - 0.0))
        finally:
            await up.close()
        return pages, round(statistics.median(took), 1)
    client = PrometheusClient(url)
    profile = RuleProfile(interval=float(every or interval), rates=RateSource.parse(rates))
    stats = LiveStats(client, profile=profile, planner=PlannerConfig(use_recorded=True),
                      cache=CacheConfig(ttl=0))
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.perf_counter()
            await stats.load_kernels(ids)
            took.append((time.perf_counter() - t0) * 1000)
            pages += 1
            await asyncio.sleep(interval)
    finally:
        await client.close()
    return pages, round(statistics.median(took), 1)


#: Agent layouts of the rule-cost fleet: which agents export ``value_type="rate"`` series.
LAYOUTS = ("plain", "exporter", "mixed")


def _live_fleet_main(kernels: int, agents: int, port_file: Path, seconds: float,
                     layout: str = "exporter") -> None:
    """Child process: serve a simulated fleet's exporters until killed or ``seconds`` pass.

    ``layout``: ``plain`` agents export raw counters only (every Backend.AI agent today),
    ``exporter`` agents run promstat's exporter (rate series too), ``mixed`` has every other
    agent of each kind (a fleet half way through its migration).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")

    async def serve() -> None:
        fleet = SimulatedFleet(FleetConfig(agents=agents,
                                           kernels_per_agent=-(-kernels // agents), seed=7,
                                           publish_rates=layout != "plain"))
        if layout == "mixed":
            # One fleet, so agent and kernel ids stay unique; every other agent drops its
            # rate series (what publish_rates=False does at construction).
            for i, exporter in enumerate(fleet._exporters.values()):
                if i % 2:
                    exporter.rate_metrics = frozenset()
        await fleet.start()
        port_file.write_text(json.dumps(fleet.targets))  # noqa: ASYNC240 - once, tiny
        try:
            await asyncio.sleep(seconds)
        finally:
            await fleet.stop()

    asyncio.run(serve())


def _rule_profile(every: float, rates: str, kernel_shards: int) -> RuleProfile:
    """The rule-cost runs' rules: ``promstat rules render --interval EVERY --rates
    --kernel-shards`` with the default window, lookback and measurement interval."""
    return RuleProfile.parse(interval=f"{every:g}s", window="5m", lookback="5m",
                             rates=rates, kernel_shards=kernel_shards)


def measure_rules_cost(
    kernels: int, *, seconds: float = 60.0, interval: float = 15.0, log: Log = print,
    page: int = 1000, rates: str = "both", kernel_shards: int = 1, pages: bool = True,
    layout: str = "exporter", profile: bool = True, every: float | None = None,
) -> dict[str, Any]:
    """Prometheus CPU and rule evaluation time on a live fleet of ``kernels`` kernels.

    Args:
        interval: the scrape interval.
        rates, kernel_shards, every: how the rules are rendered (``promstat rules render
            --rates --kernel-shards --interval``); ``every`` (the rule groups' interval) is
            by default ``interval``.
        pages: also measure the Prometheus CPU of polling a page through promstat and
            through upstream's queries (one minute each).
        layout: which agents export rate series (:data:`LAYOUTS`): ``plain`` (none, every
            Backend.AI agent today), ``exporter`` (all) or ``mixed`` (every other agent).
        profile: also take Prometheus' own CPU profile for ``seconds`` after the idle
            measurement, rules and scrapes only (:func:`benchmarks.pprof.cpu_breakdown`).

    Returns:
        ``prometheus_cpu_s_per_min`` (rules + scraping, no page traffic), the same without the
        rules and ``rules_cpu_share_of_core`` (the difference per second), ``group_eval_s``
        (mean evaluation time per rule group over the measurement), ``kernel_eval_s`` (the
        kernel groups' total: Prometheus CPU-seconds per evaluation, as a group evaluates
        its rules one after another), ``kernel_share_of_core`` (that total per interval),
        ``kernel_max_group_s`` (the slowest kernel group: the one that must finish within the
        interval), ``kernel_median_group_s`` (the typical kernel group), and with ``pages``
        the extra Prometheus CPU-s per minute of polling a ``page``-kernel page once per
        interval through promstat and through upstream's queries; with ``profile``,
        ``profile``: Prometheus' CPU per second and the shares of rule evaluation, the head
        postings sort, the garbage collector and scraping in it, and its top functions.
    """
    agents = max(1, kernels // 100)
    work = Path(tempfile.mkdtemp(prefix="promstat-bench-rules-"))
    child: subprocess.Popen[str] | None = None
    try:
        targets_file = work / "targets.json"
        total = 60 + 4 * interval + seconds * 5 + 120
        child = subprocess.Popen(
            [sys.executable, "-c",
             "import sys; from benchmarks.matrix import _live_fleet_main as m; "
             f"m({kernels}, {agents}, __import__('pathlib').Path(sys.argv[1]), {total}, "
             f"{layout!r})",
             str(targets_file)],
            cwd=ROOT, text=True,
        )
        limit = time.monotonic() + 120
        while not targets_file.exists():
            if child.poll() is not None or time.monotonic() > limit:
                raise RuntimeError("the simulated fleet did not start")
            time.sleep(0.5)
        targets = json.loads(targets_file.read_text())
        every = every or interval
        rules = write_rules(work / "rules", _rule_profile(every, rates, kernel_shards))
        rule_files = [p for p in rules if p.name.endswith(".rules.yml")]
        with lab.start_prometheus(scrape_targets=targets, scrape_interval=f"{interval:g}s",
                                  evaluation_interval=f"{every:g}s",
                                  rule_files=rule_files) as prom:
            warm = 4 * max(interval, every)
            log(f"rules cost: {kernels} kernels scraped; warming up {warm:g}s")
            time.sleep(warm)

            def cpu_per_min(during: Callable[[], Any]) -> tuple[float, Any]:
                c0, t0 = process_cpu_seconds(prom.pid) or 0.0, time.monotonic()
                result = during()
                c1, t1 = process_cpu_seconds(prom.pid) or 0.0, time.monotonic()
                return (c1 - c0) / (t1 - t0) * 60.0, result

            samples: dict[str, list[float]] = {}
            per_rule: dict[str, list[float]] = {}

            def idle() -> None:
                end = time.monotonic() + seconds
                seen: dict[str, str] = {}
                while time.monotonic() < end:
                    for name, (took, last, rules) in _rule_groups(prom.url).items():
                        if seen.get(name) != last:
                            seen[name] = last
                            samples.setdefault(name, []).append(took)
                            if name.startswith("promstat.kernel."):
                                for rule, t in rules.items():
                                    per_rule.setdefault(rule, []).append(t)
                    time.sleep(interval / 3)

            base, _ = cpu_per_min(idle)
            extra: dict[str, Any] = {}
            if profile:
                # A separate phase: profiling costs Prometheus a little CPU of its own, which
                # must not count in the with/without difference above.
                try:
                    prof = fetch_cpu_profile(prom.url, max(5, int(seconds)))
                    extra["profile"] = {
                        **cpu_breakdown(prof),
                        "top": [[name, round(share, 4)] for name, share in prof.top(8)],
                    }
                except (OSError, ValueError) as exc:
                    extra["profile"] = {"error": f"{type(exc).__name__}: {exc}"}
            if pages:
                ids = _live_ids(prom.url, page)
                promstat_cpu, (n1, ms1) = cpu_per_min(lambda: asyncio.run(
                    _poll_pages(prom.url, ids, upstream=False, seconds=seconds,
                                interval=interval, rates=rates, every=every)))
                upstream_cpu, (n2, ms2) = cpu_per_min(lambda: asyncio.run(
                    _poll_pages(prom.url, ids, upstream=True, seconds=seconds,
                                interval=interval)))
                extra.update({
                    "page": len(ids),
                    "promstat_prom_cpu_s_per_min": round(promstat_cpu - base, 2),
                    "upstream_prom_cpu_s_per_min": round(upstream_cpu - base, 2),
                    "pages": {"promstat": n1, "upstream": n2},
                    # the uncached page's median latency while the rules and scrapes run
                    "page_ms_p50": {"promstat": ms1, "upstream": ms2},
                })
            series = _head_series(prom.url)
            # The same scrapes without the rules: the difference is what evaluating them costs
            # Prometheus in CPU (evaluation wall time also counts waiting for a core, and the
            # simulated fleet shares this machine's cores, unlike real agents).
            prom.configure(rule_files=[])
            time.sleep(interval)
            no_rules, _ = cpu_per_min(lambda: time.sleep(seconds))
        means = {k: statistics.mean(v) for k, v in samples.items()}
        kernel_groups = [v for k, v in means.items() if k.startswith("promstat.kernel.")]
        return {
            "kernels": kernels,
            "agents": agents,
            "layout": layout,
            "rates": rates,
            "kernel_shards": kernel_shards,
            "interval_s": interval,
            "rule_interval_s": every,
            "seconds": seconds,
            "series": series,
            "prometheus_cpu_s_per_min": round(base, 2),
            "prometheus_cpu_s_per_min_without_rules": round(no_rules, 2),
            "rules_cpu_share_of_core": round(max(0.0, base - no_rules) / 60.0, 4),
            "group_eval_s": {k: round(v, 4) for k, v in means.items()},
            "group_eval_share_of_interval": {k: round(v / every, 4) for k, v in means.items()},
            "kernel_eval_s": round(sum(kernel_groups), 4),
            "kernel_share_of_core": round(sum(kernel_groups) / every, 4),
            "kernel_max_group_s": round(max(kernel_groups, default=0.0), 4),
            "kernel_median_group_s": round(statistics.median(kernel_groups), 4)
            if kernel_groups
            else 0.0,
            # mean per evaluation, summed over shards
            "kernel_rule_eval_s": {
                k: round(statistics.mean(v) * max(1, kernel_shards), 4)
                for k, v in sorted(per_rule.items())
            },
            **extra,
        }
    except Exception as exc:  # reported, not fatal
        return {"kernels": kernels, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        if child is not None:
            child.terminate()
            with contextlib.suppress(Exception):
                child.wait(timeout=30)
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def _vmalert_iterations(url: str) -> dict[str, tuple[float, float]]:
    """Group name -> (sum, count) of ``vmalert_iteration_duration_seconds`` (vmalert's own
    evaluation time per group iteration, from its ``/metrics``)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=60) as resp:
        text = resp.read().decode()
    out: dict[str, list[float]] = {}
    for line in text.splitlines():
        for suffix, slot in (("_sum{", 0), ("_count{", 1)):
            prefix = "vmalert_iteration_duration_seconds" + suffix
            if line.startswith(prefix):
                labels, value = line[len(prefix):].rsplit("} ", 1)
                group = next((x.split("=", 1)[1].strip('"') for x in labels.split(",")
                              if x.startswith("group=")), "?")
                out.setdefault(group, [0.0, 0.0])[slot] += float(value)
    return {k: (v[0], v[1]) for k, v in out.items()}


def measure_rules_cost_vm(
    kernels: int, *, seconds: float = 60.0, interval: float = 15.0, log: Log = print,
    rates: str = "both", kernel_shards: int = 1, layout: str = "exporter",
    every: float | None = None,
) -> dict[str, Any]:
    """:func:`measure_rules_cost` on VictoriaMetrics + vmalert: the same live fleet scraped
    by VictoriaMetrics (``-promscrape.config``), the same rules evaluated by vmalert against
    it and remote-written back.

    Returns:
        ``vm_cpu_s_per_min`` and ``vmalert_cpu_s_per_min`` with the rules, ``vm_cpu_s_per_min
        _without_rules`` (vmalert stopped), ``rules_cpu_share_of_core`` (both processes' extra
        CPU per second), ``group_eval_s`` (vmalert's mean iteration time per group),
        ``kernel_eval_s``/``kernel_max_group_s``/``kernel_median_group_s`` as for Prometheus.
    """
    agents = max(1, kernels // 100)
    work = Path(tempfile.mkdtemp(prefix="promstat-bench-vmrules-"))
    child: subprocess.Popen[str] | None = None
    try:
        targets_file = work / "targets.json"
        total = 60 + 4 * interval + seconds * 2 + 120
        child = subprocess.Popen(
            [sys.executable, "-c",
             "import sys; from benchmarks.matrix import _live_fleet_main as m; "
             f"m({kernels}, {agents}, __import__('pathlib').Path(sys.argv[1]), {total}, "
             f"{layout!r})",
             str(targets_file)],
            cwd=ROOT, text=True,
        )
        limit = time.monotonic() + 120
        while not targets_file.exists():
            if child.poll() is not None or time.monotonic() > limit:
                raise RuntimeError("the simulated fleet did not start")
            time.sleep(0.5)
        targets = json.loads(targets_file.read_text())
        scrape = work / "scrape.yml"
        scrape.write_text(json.dumps({
            "global": {"scrape_interval": f"{interval:g}s"},
            "scrape_configs": [{"job_name": "promstat",
                                "static_configs": [{"targets": targets}]}],
        }))
        every = every or interval
        rules = write_rules(work / "rules", _rule_profile(every, rates, kernel_shards))
        rule_files = [p for p in rules if p.name.endswith(".rules.yml")]
        with lab.start_victoria_metrics(extra_flags=[f"-promscrape.config={scrape}"],
                                        disable_cache=False) as vm:
            log(f"rules cost (VictoriaMetrics): {kernels} kernels scraped; warming up "
                f"{4 * interval:g}s")
            time.sleep(4 * interval)
            alert = lab.start_vmalert(datasource_url=vm.url, remote_write_url=vm.url,
                                      rule_files=rule_files,
                                      evaluation_interval=f"{every:g}s")
            try:
                time.sleep(2 * every)
                it0 = _vmalert_iterations(alert.url)
                v0, a0 = process_cpu_seconds(vm.pid) or 0.0, process_cpu_seconds(alert.pid) or 0.0
                t0 = time.monotonic()
                time.sleep(seconds)
                v1, a1 = process_cpu_seconds(vm.pid) or 0.0, process_cpu_seconds(alert.pid) or 0.0
                t1 = time.monotonic()
                it1 = _vmalert_iterations(alert.url)
            finally:
                alert.stop()
            time.sleep(interval)
            n0, u0 = process_cpu_seconds(vm.pid) or 0.0, time.monotonic()
            time.sleep(seconds)
            n1, u1 = process_cpu_seconds(vm.pid) or 0.0, time.monotonic()
            series = None
            with contextlib.suppress(Exception):
                rows = vm.query('count({__name__=~"backendai_.+"})')
                series = int(float(rows[0]["value"][1])) if rows else None
        per_min = 60.0 / (t1 - t0)
        vm_cpu, alert_cpu = (v1 - v0) * per_min, (a1 - a0) * per_min
        no_rules = (n1 - n0) * 60.0 / (u1 - u0)
        means = {g: (it1[g][0] - it0.get(g, (0.0, 0.0))[0])
                 / max(1.0, it1[g][1] - it0.get(g, (0.0, 0.0))[1]) for g in it1}
        kernel_groups = [v for k, v in means.items() if k.startswith("promstat.kernel.")]
        return {
            "backend": "victoriametrics+vmalert",
            "kernels": kernels,
            "agents": agents,
            "layout": layout,
            "rates": rates,
            "kernel_shards": kernel_shards,
            "interval_s": interval,
            "rule_interval_s": every,
            "seconds": seconds,
            "raw_series": series,
            "vm_cpu_s_per_min": round(vm_cpu, 2),
            "vmalert_cpu_s_per_min": round(alert_cpu, 2),
            "vm_cpu_s_per_min_without_rules": round(no_rules, 2),
            "rules_cpu_share_of_core": round(max(0.0, vm_cpu + alert_cpu - no_rules) / 60.0, 4),
            "group_eval_s": {k: round(v, 4) for k, v in means.items()},
            "kernel_eval_s": round(sum(kernel_groups), 4),
            "kernel_max_group_s": round(max(kernel_groups, default=0.0), 4),
            "kernel_median_group_s": round(statistics.median(kernel_groups), 4)
            if kernel_groups else 0.0,
        }
    except Exception as exc:  # reported, not fatal
        return {"backend": "victoriametrics+vmalert", "kernels": kernels,
                "error": f"{type(exc).__name__}: {exc}"}
    finally:
        if child is not None:
            child.terminate()
            with contextlib.suppress(Exception):
                child.wait(timeout=30)
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def _head_series(url: str) -> int | None:
    """Series in the head block: ``/api/v1/status/tsdb`` (a ``count`` over every series
    takes longer than a query timeout at 20,000 kernels)."""
    try:
        with urllib.request.urlopen(f"{url}/api/v1/status/tsdb", timeout=120) as resp:
            return int(json.load(resp)["data"]["headStats"]["numSeries"])
    except (OSError, ValueError, KeyError):
        return None


def _live_ids(url: str, n: int) -> list[str]:
    query = 'count by (kernel_id) (backendai_container_utilization{value_type="current"})'
    data = urllib.parse.urlencode({"query": query}).encode()
    with urllib.request.urlopen(f"{url}/api/v1/query", data, timeout=60) as resp:
        rows = json.load(resp)["data"]["result"]
    return sorted(r["metric"]["kernel_id"] for r in rows)[:n]
