"""Benchmark harness: legacy Valkey vs per-kernel vs upstream vs promstat on one real fleet.

Usage::

    python -m benchmarks.run            # full size: 5,000 kernels / 50 agents, pages 50,1000,5000
    python -m benchmarks.run --ci       # CI size: 1,000 kernels / 10 agents, pages 50,1000
    python -m benchmarks.run --kernels 2000 --agents 20 --pages 50,500 --reps 5 --out /tmp/b

Phases:

1. build the fleet (:mod:`benchmarks.fleet`): real Prometheus with raw + recorded series,
   real redis-server with the legacy payloads, all pinned at one evaluation time;
2. page latency: for every page size and repetition, every contender loads the *same* page,
   contenders interleaved round-robin (the starting contender rotates per repetition) so
   machine noise hits all of them alike;
3. load: N concurrent clients load overlapping 100-kernel pages through one shared
   ``LiveStats`` (per-request DataLoader over the cross-request single-flight cache) for a
   bounded time, once per client count;
4. peak RSS of each contender in its own process (largest page);
5. the decode micro-benchmark (``benchmarks/bench_decode.py``) if it is present.

It prints a table and writes ``<name>.json`` and ``<name>.png`` into ``--out``. There are no
timing thresholds: it exits 0 unless the harness itself fails (a contender that returns errors
or misses kernels is reported, not fatal).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from promstat.client import PrometheusClient
from promstat.errors import ConfigError
from promstat.generate.rules import recommended_kernel_shards
from promstat.loader import CacheConfig
from promstat.payload import untrack_payloads
from promstat.planner import PlannerConfig
from promstat.promql import parse_duration
from promstat.selfmetrics import PromstatMetrics
from promstat.service import LiveStats

from . import report
from .contenders import (
    CONTENDERS,
    Contender,
    PageResult,
    PinnedClient,
    make_contender,
    promstat_breakdown,
)
from .fleet import Fleet, FleetSpec, build_fleet
from .matrix import LAYOUTS, backend_matrix, measure_rules_cost, measure_rules_cost_vm
from .polling import measure_cold_path, polling_matrix

__all__ = ["Settings", "main", "parse_args", "run"]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


@dataclass(slots=True)
class Settings:
    """Everything a run is parameterised by (recorded in the report)."""

    mode: str = "full"
    kernels: int = 5000
    agents: int = 50
    seed: int = 20251231
    pages: tuple[int, ...] = (50, 1000, 5000)
    reps: int = 7
    contenders: tuple[str, ...] = CONTENDERS
    per_kernel_cap: int | None = 1000
    load_seconds: float = 10.0
    load_clients: tuple[int, ...] = (10, 50)
    load_page: int = 100
    load_hot: int = 1000
    rss: bool = True
    decode_series: int = 30_000
    decode_repeats: int = 5
    settle: bool = True
    cold_reps: int = 7
    poll_clients: tuple[int, ...] = (10, 50)
    poll_seconds: float = 10.0
    backends: bool = True
    # "KERNELS[:RATES[:SHARDS[:LAYOUT[:EVERY]]]]": the rules as `promstat rules render --rates
    # --kernel-shards --interval EVERY`, SHARDS by default recommended_kernel_shards(KERNELS)
    # (8 at 20,000: one per 2,500 kernels), LAYOUT the agents (plain: raw counters only, every
    # Backend.AI agent today; exporter: promstat's exporter; mixed: half each), by default
    # plain for --rates both and exporter for --rates exporter; EVERY by default the scrape
    # interval (15s; 30s: the agents' measurement interval).
    rules_cost: tuple[str, ...] = (
        "5000", "5000:both:1:mixed", "5000:exporter", "5000:both:1:plain:30s",
        "20000", "20000:both:8:mixed", "20000:exporter", "20000:both:8:plain:30s",
    )
    rules_cost_seconds: float = 60.0
    png: bool = True
    out: Path = DEFAULT_OUT
    name: str = "full"
    #: Call promstat.payload.untrack_payloads(True) first, as the docs advise a manager to.
    untrack_payloads: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part.replace("_", "")) for part in text.split(",") if part.strip())


def rule_run(spec: str) -> tuple[int, str, int, str, float | None]:
    """``KERNELS[:RATES[:SHARDS[:LAYOUT[:EVERY]]]]`` -> ``(kernels, rates, shards, layout,
    every)``.

    Defaults: ``both``; :func:`~promstat.generate.rules.recommended_kernel_shards` of the
    fleet; ``plain`` agents for ``both``, ``exporter`` agents for ``exporter``; ``every`` (the
    rules' evaluation interval, ``promstat rules render --interval``, in seconds) ``None``:
    the scrape interval.

    Raises:
        ValueError: the spec does not have that form.
    """
    kernels, *rest = spec.split(":")
    if len(rest) > 4 or not kernels.isdigit() or (len(rest) >= 2 and not rest[1].isdigit()):
        raise ValueError(f"{spec!r}: use KERNELS[:RATES[:SHARDS[:LAYOUT[:EVERY]]]]")
    if rest and rest[0] not in ("both", "exporter"):
        raise ValueError(f"{spec!r}: RATES is both or exporter")
    if len(rest) >= 3 and rest[2] not in LAYOUTS:
        raise ValueError(f"{spec!r}: LAYOUT is one of {', '.join(LAYOUTS)}")
    every: float | None = None
    if len(rest) == 4:
        try:
            every = parse_duration(rest[3])
        except ConfigError:
            every = 0.0
        if not every > 0:
            raise ValueError(f"{spec!r}: EVERY is a duration such as 30s")
    rates = rest[0] if rest else "both"
    shards = int(rest[1]) if len(rest) > 1 else recommended_kernel_shards(int(kernels))
    layout = rest[2] if len(rest) > 2 else ("plain" if rates == "both" else "exporter")
    return int(kernels), rates, shards, layout, every


def _rule_runs(text: str) -> tuple[str, ...]:
    runs = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        try:
            kernels, *_ = rule_run(item)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if kernels > 0:
            runs.append(item)
    return tuple(runs)


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """Parse the command line into :class:`Settings` (``--ci`` picks the CI defaults)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    p.add_argument("--ci", action="store_true", help="small and fast (CI): 1,000 kernels")
    p.add_argument("--kernels", type=int)
    p.add_argument("--agents", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--pages", type=_ints, help="comma-separated page sizes")
    p.add_argument("--reps", type=int, help="repetitions per page size")
    p.add_argument("--contenders", help=f"comma-separated subset of {','.join(CONTENDERS)}")
    p.add_argument("--per-kernel-cap", type=int, help="max ids per page for per_kernel (0: none)")
    p.add_argument("--load-seconds", type=float, help="duration of each load run")
    p.add_argument("--load-clients", type=_ints, help="client counts of the load runs")
    p.add_argument("--no-rss", action="store_true", help="skip the per-contender RSS processes")
    p.add_argument("--no-png", action="store_true", help="skip the chart")
    p.add_argument("--no-settle", action="store_true", help="don't wait for TSDB compaction")
    p.add_argument("--decode-series", type=int, help="series in the decode micro-benchmark")
    p.add_argument("--poll-clients", type=_ints, help="client counts of the polling runs")
    p.add_argument("--poll-seconds", type=float, help="duration of each polling run")
    p.add_argument("--no-backends", action="store_true",
                   help="skip the VictoriaMetrics + vmalert cold page")
    p.add_argument("--rules-cost", type=_rule_runs,
                   help="live rule-cost runs, comma-separated "
                        "KERNELS[:RATES[:SHARDS[:LAYOUT[:EVERY]]]] (0: none; LAYOUT plain, "
                        "exporter or mixed; EVERY the rules' interval, default the scrape "
                        "interval; full: 5000, 5000:both:1:mixed, 5000:exporter, "
                        "5000:both:1:plain:30s and the same at 20000)")
    p.add_argument("--gc-tracked", action="store_true",
                   help="leave cached payloads on the GC's list (promstat's default; the "
                        "benchmark otherwise opts in to untrack_payloads(), as a manager should)")
    p.add_argument("--out", type=Path, help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument("--name", help="output file stem (default: full, ci or custom)")
    a = p.parse_args(argv)
    s = Settings()
    if a.ci:
        s = Settings(
            mode="ci", kernels=1000, agents=10, pages=(50, 1000), reps=3, per_kernel_cap=200,
            load_seconds=5.0, load_hot=500, decode_series=5000, decode_repeats=3, name="ci",
            cold_reps=3, poll_clients=(10,), poll_seconds=5.0, backends=False, rules_cost=(),
        )  # fmt: skip
    custom = False
    for attr in ("kernels", "agents", "seed", "pages", "reps", "load_seconds", "load_clients"):
        value = getattr(a, attr)
        if value is not None:
            setattr(s, attr, value)
            custom = custom or attr not in ("seed",)
    if a.per_kernel_cap is not None:
        s.per_kernel_cap = a.per_kernel_cap or None
    if a.contenders:
        names = tuple(n.strip() for n in a.contenders.split(",") if n.strip())
        unknown = [n for n in names if n not in CONTENDERS]
        if unknown:
            p.error(f"unknown contender(s) {unknown}; choose from {', '.join(CONTENDERS)}")
        s.contenders = names
    if a.decode_series is not None:
        s.decode_series = a.decode_series
    if a.poll_clients is not None:
        s.poll_clients = a.poll_clients
    if a.poll_seconds is not None:
        s.poll_seconds = a.poll_seconds
    if a.no_backends:
        s.backends = False
    if a.rules_cost is not None:
        s.rules_cost = a.rules_cost
    s.untrack_payloads = not a.gc_tracked
    s.rss = not a.no_rss
    s.png = not a.no_png
    s.settle = not a.no_settle
    if custom and not a.ci:
        s.mode, s.name = "custom", "custom"
    if a.name:
        s.name = a.name
    if a.out is not None:
        s.out = a.out
    if s.kernels < 1 or s.agents < 1 or s.reps < 1 or not s.pages:
        p.error("kernels, agents, reps must be >= 1 and at least one page size is needed")
    return s


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -------------------------------------------------------------------------------------------
# Phase 2: page latency, contenders interleaved


async def measure_pages(fleet: Fleet, settings: Settings) -> dict[int, dict[str, list[PageResult]]]:
    """Every contender loads the same page per (size, repetition), round-robin."""
    contenders: list[Contender] = [
        make_contender(
            name,
            prom_url=fleet.prometheus.url,
            redis_url=fleet.redis.url,
            at=fleet.at,
            per_kernel_cap=settings.per_kernel_cap,
        )
        for name in settings.contenders
    ]
    results: dict[int, dict[str, list[PageResult]]] = {}
    try:
        for c in contenders:
            await c.start()
        warm = fleet.page(50, 99)
        for c in contenders:  # untimed warm-up: connections, decoders, layouts
            await c.prepare(warm)
            await c.load(warm)
        for size in settings.pages:
            per: dict[str, list[PageResult]] = {c.name: [] for c in contenders}
            results[size] = per
            t0 = time.perf_counter()
            for rep in range(settings.reps):
                page = fleet.page(size, rep)
                k = rep % len(contenders)
                for c in contenders[k:] + contenders[:k]:
                    await c.prepare(page)
                    gc.collect()
                    per[c.name].append(await c.load(page))
            _log(
                f"pages: {len(fleet.page(size))}-kernel page x {settings.reps} reps done in "
                f"{time.perf_counter() - t0:.1f}s"
            )
    finally:
        for c in contenders:
            with contextlib.suppress(Exception):
                await c.close()
    return results


# -------------------------------------------------------------------------------------------
# Phase 3: load


#: Scrape interval (= shared cache TTL) assumed by the load runs, in seconds.
LOAD_INTERVAL = 2.0


async def run_load(
    fleet: Fleet, *, clients: int, seconds: float, page_size: int, hot: int, seed: int
) -> dict[str, Any]:
    """``clients`` concurrent clients load overlapping pages through one shared LiveStats.

    Pages are ``page_size`` consecutive ids starting at a random multiple of ``page_size // 2``
    inside the first ``hot`` kernels (the sessions users are looking at), so neighbouring
    pages overlap by half. Each request uses its own DataLoader, as a GraphQL request does.

    Returns:
        pages, throughput, latency percentiles, Prometheus queries in total and per interval,
        cache hits and misses.
    """
    metrics = PromstatMetrics()
    client = PrometheusClient(fleet.prometheus.url, observer=metrics)
    config = PlannerConfig(use_recorded=True, detect_ttl=1e9)
    # The shared cache lives one scrape interval. A short interval (2 s) makes a load run of
    # a few seconds span several intervals, so "queries per interval" is an average over
    # many refreshes rather than the first one only.
    ttl = LOAD_INTERVAL
    stats = LiveStats(
        PinnedClient(client, fleet.at), planner=config, cache=CacheConfig(ttl=ttl), metrics=metrics
    )
    ids = fleet.kernel_ids[: max(page_size, min(hot, len(fleet.kernel_ids)))]
    half = max(1, page_size // 2)
    offsets = list(range(0, max(1, len(ids) - page_size + 1), half))
    latencies: list[float] = []
    errors = 0
    missing = 0
    try:
        await stats.learn_profile()  # the rules read, once: outside the timings
        await stats.planner.detect("kernel")
        before = metrics.snapshot()
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + seconds

        async def one_client(index: int) -> None:
            nonlocal errors, missing
            rng = random.Random(f"promstat-bench-load:{seed}:{clients}:{index}")
            while loop.time() < deadline:
                offset = rng.choice(offsets)
                page = ids[offset : offset + page_size]
                loader = stats.kernel_loader()
                t0 = time.perf_counter()
                values = await asyncio.gather(
                    *(loader.load(k) for k in page), return_exceptions=True
                )
                latencies.append(time.perf_counter() - t0)
                errors += sum(1 for v in values if isinstance(v, BaseException))
                missing += sum(1 for v in values if v is None)

        await asyncio.gather(*(one_client(i) for i in range(clients)))
        elapsed = loop.time() - started
        after = metrics.snapshot()
    finally:
        await stats.aclose()  # stops refresh-ahead before its client closes
        await client.close()
    queries = after.queries - before.queries
    intervals = max(1.0, elapsed / ttl)
    lat = sorted(latencies)
    return {
        "clients": clients,
        "seconds": round(elapsed, 3),
        "page_size": page_size,
        "hot_kernels": len(ids),
        "distinct_pages": len(offsets),
        "pages": len(lat),
        "pages_per_s": round(len(lat) / elapsed, 2) if elapsed > 0 else 0.0,
        "p50_ms": round(report.percentile(lat, 50) * 1000, 3) if lat else None,
        "p95_ms": round(report.percentile(lat, 95) * 1000, 3) if lat else None,
        "max_ms": round(lat[-1] * 1000, 3) if lat else None,
        "queries": queries,
        "interval_s": ttl,
        "intervals": round(intervals, 3),
        "queries_per_interval": round(queries / intervals, 2),
        "response_bytes": after.response_bytes - before.response_bytes,
        "cache_hits": after.cache_hits - before.cache_hits,
        "cache_misses": after.cache_misses - before.cache_misses,
        "errors": errors,
        "missing": missing,
    }


# -------------------------------------------------------------------------------------------
# Phase 4: peak RSS per contender, each in its own process


def measure_rss(fleet: Fleet, settings: Settings, page: int) -> dict[str, Any]:
    """Run each contender once on a ``page``-kernel page in a fresh interpreter."""
    out: dict[str, Any] = {}
    ids = fleet.page(page)
    with tempfile.NamedTemporaryFile("w", suffix=".ids", delete=False) as fh:
        fh.write("\n".join(ids))
        ids_path = fh.name
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    try:
        for name in settings.contenders:
            argv = [
                sys.executable, "-m", "benchmarks.contenders", "rss", name,
                "--prom", fleet.prometheus.url, "--redis", fleet.redis.url,
                "--at", repr(fleet.at), "--ids", ids_path, "--reps", "1",
            ]  # fmt: skip
            if settings.per_kernel_cap:
                argv += ["--per-kernel-cap", str(settings.per_kernel_cap)]
            try:
                done = subprocess.run(
                    argv,
                    cwd=ROOT,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=600,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                out[name] = {"error": "timed out"}
                continue
            if done.returncode != 0:
                out[name] = {"error": done.stderr.strip()[-500:]}
                continue
            out[name] = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        with contextlib.suppress(OSError):
            os.unlink(ids_path)
    return out


# -------------------------------------------------------------------------------------------
# Phase 5: decode micro-benchmark (optional module)


def decode_benchmark(settings: Settings) -> dict[str, Any] | None:
    """``benchmarks.bench_decode.run(n_series, repeats)`` when that module exists."""
    try:
        module = importlib.import_module("benchmarks.bench_decode")
    except ImportError:
        return None
    try:
        result = module.run(settings.decode_series, settings.decode_repeats)
    except Exception as exc:  # its failure is reported, not fatal to the harness
        return {"error": f"{type(exc).__name__}: {exc}"}
    return dict(result) if isinstance(result, dict) else {"result": result}


# -------------------------------------------------------------------------------------------
# Orchestration


def run(settings: Settings) -> dict[str, Any]:
    """Run every phase and write the outputs; return the report document."""
    wall0 = time.perf_counter()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    # Process-wide: restored at the end, so an in-process run (the smoke test) leaves no trace.
    previous = untrack_payloads(settings.untrack_payloads)
    _log(f"payloads untracked from the GC: {settings.untrack_payloads}")
    try:
        return _run(settings, wall0, started)
    finally:
        untrack_payloads(previous)


def _run(settings: Settings, wall0: float, started: str) -> dict[str, Any]:
    spec = FleetSpec(kernels=settings.kernels, agents=settings.agents, seed=settings.seed)
    _log(f"building fleet: {spec.kernels} kernels on {spec.agents} agents (seed {spec.seed})")
    with build_fleet(spec, settle=settings.settle, log=_log) as fleet:
        setup_s = time.perf_counter() - wall0
        pages = sorted({min(p, len(fleet.kernel_ids)) for p in settings.pages})
        settings.pages = tuple(pages)
        page_results = asyncio.run(measure_pages(fleet, settings))
        loads = []
        for clients in settings.load_clients:
            _log(f"load: {clients} clients for {settings.load_seconds:g}s")
            loads.append(
                asyncio.run(
                    run_load(
                        fleet,
                        clients=clients,
                        seconds=settings.load_seconds,
                        page_size=min(settings.load_page, len(fleet.kernel_ids)),
                        hot=settings.load_hot,
                        seed=settings.seed,
                    )
                )
            )
        cold_sizes: list[int] = [p for p in (1000, 5000) if p in pages] or [pages[-1]]
        _log(f"cold path vs bare HTTP: pages {cold_sizes}")
        cold_path = asyncio.run(measure_cold_path(fleet, cold_sizes, reps=settings.cold_reps))
        polling = asyncio.run(
            polling_matrix(
                fleet, clients=settings.poll_clients, seconds=settings.poll_seconds,
                interval=LOAD_INTERVAL, seed=settings.seed, log=_log,
            )
        ) if settings.poll_clients else []
        backends = None
        if settings.backends:
            _log("backend matrix: VictoriaMetrics + vmalert, cold 1,000-kernel page")
            backends = backend_matrix(fleet, settings, page_results)
        target = 1000 if 1000 in pages else pages[-1]
        _log(f"breakdown: promstat recorded plan, {target}-kernel page")
        breakdown = asyncio.run(
            promstat_breakdown(fleet.prometheus.url, fleet.at, fleet.page(target), reps=3)
        )
        rss = None
        if settings.rss:
            _log(f"rss: each contender on a {pages[-1]}-kernel page in its own process")
            rss = measure_rss(fleet, settings, pages[-1])
        fleet_info = fleet.info
    rules_cost = []
    paged: set[tuple[int, str, float | None]] = set()
    for run_spec in settings.rules_cost:
        kernels, rates, shards, layout, every = rule_run(run_spec)
        _log(f"rules cost: live fleet of {kernels} kernels ({layout} agents), rules --rates "
             f"{rates} --kernel-shards {shards}"
             + (f" --interval {every:g}s" if every else "")
             + f", {settings.rules_cost_seconds:g}s")
        # Page traffic once per fleet size and rates mode: the page's plan follows the mode
        # (--rates exporter pages read the raw series), sharding does not change it.
        rules_cost.append(
            measure_rules_cost(kernels, seconds=settings.rules_cost_seconds, log=_log,
                               rates=rates, kernel_shards=shards, layout=layout,
                               every=every, pages=(kernels, rates, every) not in paged)
        )
        paged.add((kernels, rates, every))
        if settings.backends:
            # The same rules and fleet on VictoriaMetrics + vmalert, reported beside.
            rules_cost.append(
                measure_rules_cost_vm(kernels, seconds=settings.rules_cost_seconds, log=_log,
                                      rates=rates, kernel_shards=shards, layout=layout,
                                      every=every)
            )
    decode = decode_benchmark(settings)
    doc = report.build(
        settings={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
        fleet=fleet_info,
        pages=page_results,
        loads=loads,
        rss=rss,
        decode=decode,
        breakdown=breakdown,
        cold_path=cold_path,
        polling=polling,
        backends=backends,
        rules_cost=rules_cost,
        started=started,
        seconds={"setup": round(setup_s, 1), "total": round(time.perf_counter() - wall0, 1)},
    )
    settings.out.mkdir(parents=True, exist_ok=True)
    json_path = settings.out / f"{settings.name}.json"
    json_path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    doc_paths = {"json": str(json_path)}
    if settings.png:
        png_path = settings.out / f"{settings.name}.png"
        report.write_png(doc, png_path)
        doc_paths["png"] = str(png_path)
    print(report.format_table(doc))
    for kind, path in doc_paths.items():
        print(f"wrote {kind}: {path}")
    doc["outputs"] = doc_paths
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks.run``."""
    settings = parse_args(argv)
    run(settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
