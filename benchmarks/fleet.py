"""The one benchmark fleet every contender reads: a real Prometheus and a real redis-server.

Built from one seed so runs are repeatable:

1. :mod:`promstat.testing.sim` describes ``agents x kernels_per_agent`` kernels (no churn) with the
   agent's full label set (``container_metric_name, agent_id, kernel_id, session_id, user_id,
   project_id, value_type``), capacities, GPU kernels on a share of the agents, and the
   per-device series of every agent.
2. ``history`` seconds of raw samples ending at the pinned evaluation time ``at`` are streamed
   to an OpenMetrics file and turned into TSDB blocks with
   ``promtool tsdb create-blocks-from openmetrics``.
3. The generated recording rules (:func:`~promstat.generate.rules.build_rule_files`) are evaluated
over
   the last ``window + 2 steps`` of that history with
   ``promtool tsdb create-blocks-from rules``: in stages, because a rule that reads another
   rule's output (``max``/``avg`` over the recorded ``current``, node sums over recorded
   devices) needs that output already in the server it queries. After each stage the new
   blocks move into the data directory and Prometheus restarts.
4. The same kernels' legacy payloads (rendered with :func:`promstat.renderer.render_kernel`
   from the same model numbers at ``at``) are stored in redis-server as msgpack
   (``use_bin_type=True``) under bare kernel-id keys, as Backend.AI agents wrote them to Valkey.

Everything is measured at the one pinned time ``at`` (a fixed instant, not "now"), so the data
never ages out of the lookback window while a long run is going.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import platform
import random
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack
import redis
import yaml

from promstat.catalog import DEFAULT_CATALOG, Kind
from promstat.conventions import SeriesNames
from promstat.errors import LabError
from promstat.generate.rules import RecordingRule, build_rule_files
from promstat.profile import RuleProfile
from promstat.renderer import render_kernel
from promstat.testing import lab
from promstat.testing.sim import FleetConfig, SimulatedFleet, write_fleet_openmetrics

__all__ = [
    "PINNED_AT",
    "Fleet",
    "FleetSpec",
    "build_fleet",
    "legacy_values",
    "machine_info",
    "rule_stages",
]

#: The evaluation time of every measurement: 2025-12-31T23:00:00Z. Not on a 2-hour TSDB block
#: boundary, so the backfilled history lands in one block.
PINNED_AT = 1_767_222_000

Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class FleetSpec:
    """Shape of the benchmark fleet.

    Attributes:
        kernels: live kernels (rounded up to a multiple of ``agents``).
        agents: agents; kernels are spread evenly.
        seed: seed of every id and value.
        gpu_agent_ratio: share of agents (and so of kernels) with GPUs.
        history: seconds of raw history before ``at``.
        step: scrape interval and rule evaluation interval, seconds.
        window: ``stats.max``/``stats.avg`` window, seconds (also the ``irate`` lookback).
        at: pinned evaluation time (Unix seconds).
    """

    kernels: int = 5000
    agents: int = 50
    seed: int = 20251231
    gpu_agent_ratio: float = 0.3
    history: int = 720
    step: int = 15
    window: int = 300
    at: int = PINNED_AT

    @property
    def kernels_per_agent(self) -> int:
        """Kernel slots per agent."""
        return -(-self.kernels // self.agents)

    @property
    def start(self) -> int:
        """First raw sample time."""
        return self.at - self.history

    @property
    def rules_start(self) -> int:
        """First rule evaluation: enough for one full window of recorded values before ``at``."""
        return self.at - self.window - 2 * self.step

    def sim_config(self) -> FleetConfig:
        """The :class:`~promstat.testing.sim.FleetConfig` (no churn: all kernels live)."""
        return FleetConfig(
            agents=self.agents,
            kernels_per_agent=self.kernels_per_agent,
            gpu_agent_ratio=self.gpu_agent_ratio,
            seed=self.seed,
            churn=None,
            epoch=self.start,
            gauge_period=float(self.step),
        )


@dataclass
class Fleet:
    """A built fleet with its running servers. Use as a context manager or call :meth:`close`.

    Attributes:
        spec: what was built.
        prometheus: the Prometheus holding raw and recorded series.
        redis: the redis-server holding the legacy payloads.
        kernel_ids: every live kernel, in a seeded random order (pages are slices of it).
        gpu_kernels: how many of them have GPUs.
        info: description for the report (counts, versions, machine, setup timings).
        workdir: scratch directory (removed on close unless it was given by the caller).
    """

    spec: FleetSpec
    prometheus: lab.PrometheusProcess
    redis: lab.ManagedProcess
    kernel_ids: list[str]
    gpu_kernels: int
    info: dict[str, Any] = field(default_factory=dict)
    workdir: Path | None = None
    _owns_workdir: bool = False

    @property
    def at(self) -> float:
        """The pinned evaluation time."""
        return float(self.spec.at)

    def page(self, size: int, rep: int = 0) -> list[str]:
        """A page of ``size`` kernel ids; consecutive reps take consecutive (wrapping) slices."""
        ids = self.kernel_ids
        size = min(size, len(ids))
        offset = (rep * size) % len(ids)
        out = ids[offset : offset + size]
        if len(out) < size:
            out += ids[: size - len(out)]
        return out

    def close(self) -> None:
        """Stop both servers and remove the scratch directory."""
        with contextlib.suppress(Exception):
            self.prometheus.stop()
        with contextlib.suppress(Exception):
            self.redis.stop()
        if self._owns_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# -------------------------------------------------------------------------------------------
# Machine and server descriptions


def machine_info() -> dict[str, Any]:
    """CPU count and model, RAM, OS and Python of this machine."""
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram_gib: float | None = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = round(int(line.split()[1]) / (1 << 20), 1)
                break
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "nproc": affinity or os.cpu_count(),
        "cpu_model": model,
        "ram_gib": ram_gib,
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def _http_json(url: str, *, data: bytes | None = None, timeout: float = 60.0) -> Any:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if data is not None:
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def _scalar(prom_url: str, expr: str, at: float) -> int:
    body = urllib.parse.urlencode({"query": expr, "time": repr(float(at))}).encode()
    result = _http_json(f"{prom_url}/api/v1/query", data=body)["data"]["result"]
    return int(float(result[0]["value"][1])) if result else 0


def _prometheus_version(prom_url: str) -> str:
    with contextlib.suppress(Exception):
        return str(_http_json(f"{prom_url}/api/v1/status/buildinfo")["data"]["version"])
    return "unknown"


# -------------------------------------------------------------------------------------------
# Recording rules in dependency stages

_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?")


def rule_stages(rules: Sequence[RecordingRule], stat_label: str = "stat") -> list[list[int]]:
    """Split rules (in group order) into stages whose inputs all come from earlier stages.

    A rule depends on an earlier rule when its expression selects that rule's record name and,
    if the selector fixes ``stat="..."``, the earlier rule writes that ``stat`` label.

    Args:
        rules: the rules of one group, in order.
        stat_label: the label that tells recorded stats apart.

    Returns:
        Stages of rule indexes, in evaluation order.
    """
    records = {r.record for r in rules}
    stat_re = re.compile(rf'\b{re.escape(stat_label)}\s*=\s*"([^"]*)"')
    stage: list[int] = []
    for i, rule in enumerate(rules):
        level = 0
        for match in _SELECTOR.finditer(rule.expr):
            name, braces = match.group(1), match.group(2) or ""
            if name not in records:
                continue
            fixed = stat_re.search(braces)
            for j in range(i):
                other = rules[j]
                if other.record != name:
                    continue
                if fixed and other.labels.get(stat_label) not in (None, fixed.group(1)):
                    continue
                level = max(level, stage[j] + 1)
        stage.append(level)
    out: list[list[int]] = [[] for _ in range(max(stage, default=-1) + 1)]
    for i, level in enumerate(stage):
        out[level].append(i)
    return out


def _staged_rule_files(spec: FleetSpec, names: SeriesNames, workdir: Path) -> list[Path]:
    """Write one rule file per dependency stage (every group split the same way)."""
    interval = f"{spec.step}s"
    files = build_rule_files(
        RuleProfile.parse(
            names=names, interval=interval, window=f"{spec.window}s", lookback=f"{spec.window}s"
        )
    )
    staged: dict[int, list[dict[str, Any]]] = {}
    for rule_file in files:
        for group in rule_file.groups:
            for level, indexes in enumerate(rule_stages(group.rules, names.stat_label)):
                staged.setdefault(level, []).append(
                    {
                        "name": f"{group.name}.stage{level}",
                        "interval": group.interval,
                        "rules": [group.rules[i].to_dict() for i in indexes],
                    }
                )
    paths = []
    for level in sorted(staged):
        path = workdir / f"rules-stage{level}.yml"
        path.write_text(yaml.safe_dump({"groups": staged[level]}, sort_keys=False, width=1 << 20))
        paths.append(path)
    return paths


def _backfill_rules(prom: lab.PrometheusProcess, rules: Path, spec: FleetSpec, out: Path) -> None:
    promtool = lab.require_binary("promtool")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    argv = [
        promtool, "tsdb", "create-blocks-from", "rules",
        f"--start={spec.rules_start}", f"--end={spec.at}",
        f"--url={prom.url}", f"--output-dir={out}", f"--eval-interval={spec.step}s",
        "--quiet", str(rules),
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=1800)
    if result.returncode != 0:
        raise LabError(
            f"promtool rules backfill of {rules.name} failed:\n"
            + (result.stdout + result.stderr)[-4000:]
        )


def _blocks(tsdb: Path) -> list[tuple[int, int]]:
    """``(minTime, maxTime)`` of every persisted block in a TSDB directory."""
    out = []
    for block in tsdb.iterdir():
        with contextlib.suppress(OSError, ValueError, KeyError):
            meta = json.loads((block / "meta.json").read_text())
            out.append((int(meta["minTime"]), int(meta["maxTime"])))
    return out


def _overlapping(blocks: Sequence[tuple[int, int]]) -> bool:
    spans = sorted(blocks)
    return any(b[0] < a[1] for a, b in itertools.pairwise(spans))


def _await_compaction(tsdb: Path, *, timeout: float, log: Log) -> float:
    """Wait until Prometheus has merged the overlapping backfilled blocks; return seconds.

    Prometheus merges overlapping blocks (vertical compaction) on its first compaction cycle,
    one minute after start. Measuring before that would time queries over a dozen blocks, and
    the compaction itself would land in the middle of a run.
    """
    t0 = time.perf_counter()
    while _overlapping(_blocks(tsdb)):
        if time.perf_counter() - t0 > timeout:
            log(f"fleet: blocks still overlap after {timeout:.0f}s; measuring anyway")
            break
        time.sleep(1.0)
    return time.perf_counter() - t0


def _start_prometheus(data_dir: Path, openmetrics: Path | None = None) -> lab.PrometheusProcess:
    # No scrape targets and no rules: the data is historical and the rules are backfilled.
    # evaluation_interval stays at Prometheus' default 1m, the resolution of upstream's `[5m:]`
    # subqueries in Backend.AI's halfstack config (promstat's raw plan sets its own step).
    return lab.start_prometheus(
        openmetrics=openmetrics, data_dir=data_dir, evaluation_interval="1m", startup_timeout=180
    )


def _move_blocks(src: Path, tsdb: Path) -> int:
    moved = 0
    for block in sorted(src.iterdir()):
        if block.is_dir() and (block / "meta.json").exists():
            shutil.move(str(block), str(tsdb / block.name))
            moved += 1
    return moved


# -------------------------------------------------------------------------------------------
# Legacy payloads


def legacy_values(
    sim: SimulatedFleet, kernel_id: str, at: float, window: float, step: float
) -> dict[str, dict[str, str]]:
    """The raw stat values a kernel's legacy payload is rendered from, per metric.

    Same meaning as promstat's recorded series: gauges and accumulating counters show the
    latest value, rate counters the per-second rate; ``max``/``avg`` over the window of those
    values; ``rate`` of accumulating counters.

    Returns:
        metric -> ``{"current", "capacity"?, "max"?, "avg"?, "rate"?}`` as value strings.
    """
    kernel = sim.kernel(kernel_id)
    n = int(window // step)
    times = [at - i * step for i in range(n + 1)]
    out: dict[str, dict[str, str]] = {}
    for metric in kernel.metrics:
        spec = DEFAULT_CATALOG.lookup(metric)
        cur, cap = sim.sample(kernel_id, metric, at)
        entry: dict[str, str] = {}
        if spec.kind is Kind.RATE_COUNTER:
            value = sim.expected_rate(kernel_id, metric)
            entry["current"] = repr(value)
            for stat in ("max", "avg"):
                if stat in spec.stats:
                    entry[stat] = repr(value)
        else:
            entry["current"] = repr(cur)
            wanted = [s for s in ("max", "avg") if s in spec.stats]
            if wanted:
                series = [sim.sample(kernel_id, metric, t)[0] for t in times]
                if "max" in wanted:
                    entry["max"] = repr(max(series))
                if "avg" in wanted:
                    entry["avg"] = repr(sum(series) / len(series))
            if spec.kind is Kind.ACCUMULATING_COUNTER and "rate" in spec.stats:
                entry["rate"] = repr(sim.expected_rate(kernel_id, metric))
        if cap is not None:
            entry["capacity"] = repr(cap)
        out[metric] = entry
    return out


def _fill_redis(url: str, payloads: Mapping[str, bytes], *, chunk: int = 1000) -> int:
    """MSET the payloads under their bare kernel-id keys; return the key count."""
    client = redis.Redis.from_url(url)
    try:
        items = list(payloads.items())
        for i in range(0, len(items), chunk):
            client.mset(dict(items[i : i + chunk]))
        return int(client.dbsize())
    finally:
        client.close()


# -------------------------------------------------------------------------------------------
# Building


def build_fleet(
    spec: FleetSpec = FleetSpec(),
    *,
    workdir: Path | None = None,
    settle: bool = True,
    log: Log = print,
) -> Fleet:
    """Build the fleet and start Prometheus and redis-server with its data.

    Args:
        spec: fleet shape, seed and pinned time.
        workdir: scratch directory (default: a temporary one, removed on close).
        settle: wait (about a minute) until Prometheus has compacted the backfilled blocks
            into one, as a long-running server holds them; ``False`` for smoke tests.
        log: progress messages.

    Returns:
        The running :class:`Fleet` (close it, or use it as a context manager).

    Raises:
        LabError: a server or promtool failed.
        BinaryNotFoundError: prometheus, promtool or redis-server is missing.
    """
    owned = workdir is None
    base = Path(
        tempfile.mkdtemp(prefix="promstat-bench-", dir=os.environ.get("PROMSTAT_LAB_DIR"))
        if workdir is None
        else workdir
    )
    base.mkdir(parents=True, exist_ok=True)
    names = SeriesNames()
    timings: dict[str, float] = {}
    prom: lab.PrometheusProcess | None = None
    red: lab.ManagedProcess | None = None
    try:
        config = spec.sim_config()
        t0 = time.perf_counter()
        om = write_fleet_openmetrics(config, base / "fleet.om.txt", spec.start, spec.at, spec.step)
        om_bytes = om.stat().st_size
        timings["openmetrics_s"] = time.perf_counter() - t0
        log(f"fleet: wrote {om_bytes / 1e6:.0f} MB OpenMetrics in {timings['openmetrics_s']:.1f}s")

        prom_dir = base / "prometheus"
        t0 = time.perf_counter()
        prom = _start_prometheus(prom_dir, openmetrics=om)
        timings["backfill_raw_s"] = time.perf_counter() - t0
        om.unlink()
        log(f"fleet: raw history backfilled in {timings['backfill_raw_s']:.1f}s")

        t0 = time.perf_counter()
        stages = _staged_rule_files(spec, names, base)
        for i, rules in enumerate(stages):
            out = base / f"rule-blocks-{i}"
            _backfill_rules(prom, rules, spec, out)
            prom.stop()
            moved = _move_blocks(out, prom_dir / "tsdb")
            shutil.rmtree(out, ignore_errors=True)
            prom = _start_prometheus(prom_dir)
            log(f"fleet: rule stage {i} ({rules.name}): {moved} block(s)")
        timings["backfill_rules_s"] = time.perf_counter() - t0
        log(
            f"fleet: recording rules backfilled in {timings['backfill_rules_s']:.1f}s "
            f"({len(stages)} stages)"
        )

        # Legacy payloads from the same model numbers.
        t0 = time.perf_counter()
        sim = SimulatedFleet(config, clock=lambda: float(spec.at))
        live = sim.kernel_ids(float(spec.at))
        ids = list(live)
        random.Random(f"promstat-bench:{spec.seed}:pages").shuffle(ids)
        gpu = sum(1 for k in ids if sim.kernel(k).gpus)
        packed: dict[str, bytes] = {}
        for kid in ids:
            payload = render_kernel(legacy_values(sim, kid, spec.at, spec.window, spec.step))
            packed[kid] = msgpack.packb(payload, use_bin_type=True)
        red = lab.start_redis()
        keys = _fill_redis(red.url, packed)
        timings["legacy_s"] = time.perf_counter() - t0
        log(f"fleet: {keys} legacy payloads in redis in {timings['legacy_s']:.1f}s")

        if settle:
            log("fleet: waiting for Prometheus to compact the backfilled blocks (~1 min)")
            timings["compaction_wait_s"] = _await_compaction(
                prom_dir / "tsdb", timeout=180.0, log=log
            )
        at = float(spec.at)
        raw_container = _scalar(prom.url, f"count({names.container_metric})", at)
        raw_device = _scalar(prom.url, f"count({names.device_metric})", at)
        recorded_kernel = _scalar(
            prom.url, f'count({{__name__=~"{names.kernel_live_stat}|{names.kernel_pct}"}})', at
        )
        recorded_agent = _scalar(
            prom.url,
            f'count({{__name__=~"{names.device_live_stat}|{names.agent_live_stat}"}})',
            at,
        )
        recorded_current = _scalar(
            prom.url,
            f'count(count by ({names.kernel_label}) ({names.kernel_live_stat}{{stat="current"}}))',
            at,
        )
        if recorded_current != len(ids):
            raise LabError(
                f"recorded series cover {recorded_current} of {len(ids)} kernels at {at}; "
                "the rules backfill did not produce the expected data"
            )
        sizes = [len(v) for v in packed.values()]
        info = {
            "spec": asdict(spec),
            "at_iso": datetime.fromtimestamp(at, UTC).isoformat(),
            "kernels": len(ids),
            "gpu_kernels": gpu,
            "agents": spec.agents,
            "series": {
                "raw_container": raw_container,
                "raw_device": raw_device,
                "raw_total": raw_container + raw_device,
                "recorded_kernel": recorded_kernel,
                "recorded_agent": recorded_agent,
                "recorded_total": recorded_kernel + recorded_agent,
            },
            "samples_per_raw_series": spec.history // spec.step + 1,
            "openmetrics_bytes": om_bytes,
            "rule_stages": len(stages),
            "tsdb_blocks": len(_blocks(prom_dir / "tsdb")),
            "blocks_compacted": not _overlapping(_blocks(prom_dir / "tsdb")),
            "legacy": {
                "keys": keys,
                "payload_bytes_mean": round(sum(sizes) / len(sizes), 1) if sizes else 0,
                "payload_bytes_total": sum(sizes),
            },
            "prometheus_version": _prometheus_version(prom.url),
            "prometheus_evaluation_interval": "1m (default resolution of upstream's [5m:])",
            "redis_version": _redis_version(red.url),
            "machine": machine_info(),
            "setup_seconds": {k: round(v, 2) for k, v in timings.items()},
        }
        return Fleet(spec, prom, red, ids, gpu, info, base, owned)
    except BaseException:
        for proc in (prom, red):
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.stop()
        if owned:
            shutil.rmtree(base, ignore_errors=True)
        raise


def _redis_version(url: str) -> str:
    with contextlib.suppress(Exception):
        client = redis.Redis.from_url(url)
        try:
            return str(client.info("server").get("redis_version", ""))
        finally:
            client.close()
    return ""


def iter_pages(fleet: Fleet, size: int, reps: int) -> Iterator[list[str]]:
    """The pages of one size, one per repetition."""
    for rep in range(reps):
        yield fleet.page(size, rep)
