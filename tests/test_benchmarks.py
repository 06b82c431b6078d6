"""Smoke tests of the benchmark harness (structure and query counts; never timings)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import report
from benchmarks.contenders import CONTENDERS
from benchmarks.fleet import rule_stages
from benchmarks.run import Settings, parse_args, rule_run, run
from promstat.generate.rules import RecordingRule, build_rule_files

A = "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa"
B = "bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb"


@pytest.mark.backendai
def test_the_upstream_contender_is_the_installed_backendai_code() -> None:
    """`upstream` runs Backend.AI 26.9.6's own client, query builder and converter, not a
    port: the classes come from the installed manager, and its builder renders six queries."""
    import uuid

    from benchmarks.upstream import require_backendai

    bai = require_backendai()
    assert bai.PrometheusClient.__module__ == "ai.backend.manager.clients.prometheus.client"
    assert bai.LegacyLiveStatConverter.__module__ == (
        "ai.backend.manager.api.gql_legacy.stat_converter"
    )
    queries = bai.ContainerLiveStatQueryBuilder("5m").get_container_live_stat_queries(
        [uuid.UUID(A), uuid.UUID(B)]
    )
    fields = ("instant", "rate_current", "max", "rate_max", "avg", "rate_avg")
    assert all(hasattr(queries, name) for name in fields)


def test_rule_stages_put_readers_after_the_rules_they_read() -> None:
    """Window and pct rules land in a later stage than the base rules of the same group."""
    kernel_file, agent_file = build_rule_files()
    for rule_file in (kernel_file, agent_file):
        rules = rule_file.groups[0].rules
        stages = rule_stages(rules)
        level = {i: n for n, idx in enumerate(stages) for i in idx}
        assert sorted(level) == list(range(len(rules)))
        records = {r.record for r in rules}
        for i, rule in enumerate(rules):
            reads_recorded = any(record in rule.expr for record in records)
            assert (level[i] > 0) == reads_recorded, rule
    toy = (
        RecordingRule("a:x", "sum(x)", {"stat": "current"}),
        RecordingRule("a:x", 'max_over_time(a:x{stat="current"}[5m])', {"stat": "max"}),
        RecordingRule("b:x", 'sum(a:x{stat="max"})'),
    )
    assert rule_stages(toy) == [[0], [1], [2]]


def test_ci_flag_selects_the_small_configuration() -> None:
    """``--ci`` shrinks the fleet, pages, repetitions and load time."""
    s = parse_args(["--ci"])
    assert (s.mode, s.kernels, s.agents, s.pages) == ("ci", 1000, 10, (50, 1000))
    assert s.load_seconds == 5.0 and s.per_kernel_cap is not None
    custom = parse_args(["--kernels", "300", "--agents", "3", "--pages", "50,100"])
    assert custom.mode == "custom" and custom.pages == (50, 100)


def test_percentile_interpolates() -> None:
    """Percentiles interpolate linearly between sorted samples."""
    assert report.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert report.percentile([1.0, 2.0], 95) == pytest.approx(1.95)
    assert report.percentile([7.0], 95) == 7.0


@pytest.mark.slow
def test_harness_smoke_run(tmp_path: Path) -> None:
    """A tiny full run reports every contender with the query counts the design promises."""
    settings = Settings(
        mode="smoke",
        kernels=200,
        agents=4,
        pages=(50, 200),
        reps=1,
        per_kernel_cap=None,
        load_seconds=1.0,
        load_clients=(2, 4),
        load_hot=200,
        decode_series=500,
        decode_repeats=1,
        settle=False,
        cold_reps=1,
        poll_clients=(2,),
        # long enough for every client's warm-up page plus at least one counted poll
        poll_seconds=4.5,
        backends=False,
        rules_cost=(),
        out=tmp_path,
        name="smoke",
    )
    doc = run(settings)

    json_path, png_path = tmp_path / "smoke.json", tmp_path / "smoke.png"
    assert json_path.stat().st_size > 0 and png_path.stat().st_size > 0
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = json.loads(json_path.read_text())
    assert on_disk["pages"] == json.loads(json.dumps(doc["pages"]))

    fleet = on_disk["fleet"]
    assert fleet["kernels"] == 200 and fleet["agents"] == 4
    assert fleet["series"]["raw_total"] > 0 and fleet["series"]["recorded_total"] > 0
    assert {"nproc", "cpu_model", "ram_gib"} <= set(fleet["machine"])
    assert fleet["prometheus_version"] and fleet["spec"]["seed"] == settings.seed

    assert set(on_disk["pages"]) == {"50", "200"}
    for size_text, entries in on_disk["pages"].items():
        size = int(size_text)
        assert list(entries) == list(CONTENDERS)
        for name, e in entries.items():
            assert e["found_min"] == size, (name, size)
            assert e["errors_max"] == 0, (name, size)
            assert e["p50_ms"] >= 0 and e["p95_ms"] >= e["p50_ms"]
            assert e["x_legacy_p50"] is not None and e["x_upstream_p50"] is not None
        assert entries["legacy"]["queries_per_page"] == 0
        assert entries["promstat_warm"]["queries_per_page"] == 0
        assert entries["per_kernel"]["queries_per_page"] == size
        assert entries["upstream"]["queries_per_page"] == 6 * math.ceil(size / 128)
        assert entries["promstat_rec"]["queries_per_page"] <= 4
        assert entries["promstat_raw"]["queries_per_page"] >= 1
        assert entries["legacy"]["x_legacy_p50"] == 1.0
        assert entries["upstream"]["x_upstream_p50"] == 1.0

    targets = on_disk["targets"]
    assert targets["page"] == 1000 and "note" in targets  # no 1,000-kernel page here

    assert [x["clients"] for x in on_disk["load"]] == [2, 4]
    for x in on_disk["load"]:
        assert x["pages"] > 0 and x["errors"] == 0 and x["missing"] == 0
        assert x["queries"] >= 1 and x["queries_per_interval"] > 0

    assert set(on_disk["rss"]) == set(CONTENDERS)
    for v in on_disk["rss"].values():
        assert "error" not in v, v
        assert v["peak_kib"] > 0 and v["page"] == 200

    b = on_disk["breakdown"]
    assert b["page"] == 200 and b["queries"] >= 1 and b["series"] > 0
    for key in ("total_ms", "server_gzip_ms", "decode_ms", "group_ms", "render_ms", "other_ms"):
        assert b[key] >= 0

    assert on_disk["decode"] is not None
    assert "error" not in on_disk["decode"]

    # The design goals: the cold path against its own bare HTTP, polling against legacy.
    cold = on_disk["cold_path"]
    assert [(x["page"], x["compress"]) for x in cold] == [(200, False), (200, True)]
    for x in cold:
        assert x["queries"] >= 1 and x["http_p50_ms"] > 0 and x["promstat_p50_ms"] > 0
        assert x["loop_longest_ms"] > 0 and x["loop_longest_cpu_ms"] >= 0
        assert x["gc_ms_p50"] >= 0 and x["gc_longest_ms"] >= 0 and x["gc_full_collections"] >= 0
        assert x["response_bytes"] > 0 and x["client_cpu_ms_per_page"] >= 0
    polling = on_disk["polling"]
    assert [(x["contender"], x["clients"], x["period_s"]) for x in polling] == [
        ("legacy", 2, 1.0),
        ("upstream", 2, 1.0),
        ("promstat", 2, 1.0),
        ("legacy", 2, 2.0),
        ("upstream", 2, 2.0),
        ("promstat", 2, 2.0),
    ]
    for x in polling:
        assert x["warmup_pages"] == x["clients"], x  # each client's first page, apart
        # every client has a measured page, however long a page takes (26.9 under load)
        assert x["pages"] >= x["clients"] and x["errors"] == 0 and x["missing"] == 0, x
        assert x["p99_ms"] >= x["p95_ms"] >= x["p50_ms"] > 0
    assert all(x["queries"] == 0 for x in polling if x["contender"] == "legacy")
    assert any(x["queries"] > 0 for x in polling if x["contender"] == "promstat")
    # Backend.AI 26.9 has no cross-request cache: six queries per 128-id batch, every page.
    for x in polling:
        if x["contender"] == "upstream":
            assert x["queries"] == 6 * math.ceil(x["page_size"] / 128) * (
                x["pages"] + x["warmup_pages"]
            ), x
        assert x["prometheus_cpu_s_per_minute"] is None or x["prometheus_cpu_s_per_minute"] >= 0
    names = [g["goal"] for g in on_disk["goals"]]
    assert any(n.startswith("client time added / bare HTTP, 200 kernels") for n in names)
    assert any(n.startswith("polling p95 / legacy p95, 2 clients") for n in names)
    assert any(n.startswith("polling p95, Backend.AI 26.9 / promstat, 2 clients") for n in names)
    assert on_disk["backends"] is None and on_disk["rules_cost"] == []


def test_data_age_p95_reads_the_data_age_histogram() -> None:
    """The polling report's data-age p95 comes from PromstatMetrics.data_age; None when empty."""
    from benchmarks.polling import data_age_p95
    from promstat.selfmetrics import PromstatMetrics

    metrics = PromstatMetrics()
    assert data_age_p95(metrics) is None
    metrics.data_age.observe(0.5, 90)
    metrics.data_age.observe(50.0, 10)
    p95 = data_age_p95(metrics)
    # 95% of 100 observations lies inside the bucket holding the ten old values
    assert p95 is not None and 0.5 < p95 <= 60.0
    assert p95 == metrics.snapshot().data_age.quantile(0.95)  # type: ignore[union-attr]


def test_loop_watch_times_garbage_collections_while_active() -> None:
    """LoopWatch counts and times the collector's runs inside its block, and only there."""
    import gc

    from benchmarks.loopwatch import LoopWatch

    with LoopWatch() as watch:
        gc.collect()
    assert watch.gc_collections[2] >= 1
    assert watch.gc_seconds > 0 and watch.gc_longest > 0
    assert watch.summary()["gc_collections"] == watch.gc_collections
    counted = list(watch.gc_collections)
    gc.collect()  # after the block: not counted, and the callback is gone
    assert watch.gc_collections == counted
    assert all(getattr(cb, "__self__", None) is not watch for cb in gc.callbacks)


def test_process_cpu_seconds_of_this_process() -> None:
    """The CPU reader behind the Prometheus-cost figures sees this process' CPU time."""
    import os

    from benchmarks.polling import process_cpu_seconds

    first = process_cpu_seconds(os.getpid())
    assert first is not None and first >= 0
    sum(i * i for i in range(2_000_000))  # burn some CPU
    second = process_cpu_seconds(os.getpid())
    assert second is not None and second >= first


def test_goals_compare_polling_and_cold_path_with_their_bounds() -> None:
    """Goals pair each promstat polling run with legacy's and the cold path with 0.35x."""
    cold = [{"page": 1000, "compress": False, "added_ratio": 0.3, "loop_longest_cpu_ms": 25.0}]
    polling = [
        {"contender": "legacy", "clients": 10, "period_s": 1.0, "p95_ms": 20.0},
        {
            "contender": "promstat",
            "clients": 10,
            "period_s": 1.0,
            "p95_ms": 10.0,
            "data_age_p95_intervals": 3.0,
            "queries_per_interval": 4.0,
        },
        {
            "contender": "promstat",
            "clients": 50,
            "period_s": 1.0,
            "p95_ms": 10.0,
            "data_age_p95_intervals": None,
            "queries_per_interval": 6.0,
        },
    ]
    got = {g["goal"]: (g["value"], g["met"]) for g in report.goals({}, cold, polling)}
    assert got["client time added / bare HTTP, 1000 kernels, identity"] == (0.3, True)
    assert got["longest loop callback ms, 1000 kernels, identity (CPU ms)"] == (25.0, False)
    assert got["polling p95 / legacy p95, 10 clients every 1s"] == (0.5, True)
    assert got["data age p95 in intervals, 10 clients every 1s"] == (3.0, False)
    assert got["data age p95 in intervals, 50 clients every 1s"] == (None, None)
    assert got["queries/interval most/fewest clients, every 1s"] == (1.5, False)


def test_goals_rule_cost_share_of_a_core_and_flatness() -> None:
    """Rule CPU is scaled per 5,000 kernels (5% for --rates both, 2% for exporter); flatness
    compares the slowest kernel group with the same rules, agents and backend unsharded on the
    smallest fleet (within 10%)."""

    def run_(
        kernels: int, rates: str, shards: int, total: float, worst: float, **extra: object
    ) -> dict[str, object]:
        return {
            "kernels": kernels,
            "rates": rates,
            "kernel_shards": shards,
            "kernel_eval_s": total,
            "kernel_share_of_core": total / 15.0,
            "rules_cpu_share_of_core": total / 15.0,
            "kernel_max_group_s": worst,
            "kernel_median_group_s": worst,
            **extra,
        }

    runs = [
        run_(5000, "both", 1, 2.4, 2.4, layout="plain"),
        run_(5000, "exporter", 1, 0.6, 0.6, layout="exporter"),
        run_(20000, "exporter", 4, 2.4, 0.66, layout="exporter"),
        run_(5000, "both", 1, 0.6, 0.6, layout="plain", backend="vm"),
        run_(20000, "both", 8, 2.4, 0.62, layout="plain", backend="vm"),
        # the rules every 30 s over 15 s scrapes: labelled, and compared with their own kind
        run_(5000, "both", 1, 0.9, 1.2, layout="plain", interval_s=15.0, rule_interval_s=30.0),
        run_(20000, "both", 8, 3.0, 1.32, layout="plain", interval_s=15.0, rule_interval_s=30.0),
        {"kernels": 20000, "error": "RuntimeError: boom"},
    ]
    got = {g["goal"]: (g["value"], g["met"]) for g in report.goals({}, [], [], runs)}
    share = "rules CPU, share of a core per 5000 kernels"
    both = "plain agents, --rates both --kernel-shards"
    exporter = "exporter agents, --rates exporter --kernel-shards"
    assert got[f"{share}, 5000 kernels, {both} 1"] == (0.16, False)
    assert got[f"{share}, 5000 kernels, {exporter} 1"] == (0.04, False)
    assert got[f"{share}, 20000 kernels, {exporter} 4"] == (0.04, False)
    assert got[f"{share}, 5000 kernels, {both} 1, vm"] == (0.04, True)
    slowest = "slowest kernel group, 20000"
    flat = f"{slowest} (4 shards) / 5000 kernels, exporter agents, --rates exporter"
    assert got[flat] == (1.1, True)
    vm_flat = f"{slowest} (8 shards) / 5000 kernels, plain agents, --rates both, vm"
    assert got[vm_flat] == (1.03, True)
    assert got[f"{share}, 5000 kernels, {both} 1 --interval 30s"] == (0.06, False)
    slow_flat = f"{slowest} (8 shards) / 5000 kernels, plain agents, --rates both --interval 30s"
    assert got[slow_flat] == (1.1, True)
    assert len([g for g in got if g.startswith("slowest kernel group")]) == 3
    assert report.projected_share(runs[0]) == round(2.4 / 15.0 / 5000 * 50_000, 4)
    assert report.projected_share(runs[-1]) is None


def test_rule_cost_runs_parse() -> None:
    """--rules-cost takes KERNELS[:RATES[:SHARDS[:LAYOUT[:EVERY]]]]; 0 means none; bad items
    are errors; shards default to the recommended count, layouts to the rates mode's agents,
    the rules' interval to the scrape interval."""
    assert parse_args(["--rules-cost", "5000,20000:exporter:4"]).rules_cost == (
        "5000",
        "20000:exporter:4",
    )
    assert parse_args(["--rules-cost", "0"]).rules_cost == ()
    assert rule_run("5000") == (5000, "both", 1, "plain", None)
    assert rule_run("20000") == (20000, "both", 8, "plain", None)
    assert rule_run("20000:exporter") == (20000, "exporter", 8, "exporter", None)
    assert rule_run("5000:both:2:mixed") == (5000, "both", 2, "mixed", None)
    assert rule_run("5000:both:1:plain:30s") == (5000, "both", 1, "plain", 30.0)
    bad_runs = ("5000:fast", "x", "5000:both:two", "1:both:2:3", "1:both:2:mixed:x",
                "1:both:2:mixed:0s", "1:both:2:mixed:30s:x")  # fmt: skip
    for bad in bad_runs:
        with pytest.raises(SystemExit):
            parse_args(["--rules-cost", bad])


def test_report_says_what_was_measured_against_which_goal() -> None:
    """The printed report names each goal in words with its bound and whether it was met:
    no "MISSED", no issue numbers a reader of the CI log cannot look up."""
    cold = [{"page": 200, "compress": True, "added_ratio": 0.5, "loop_longest_cpu_ms": 3.0,
             "http_p50_ms": 1.0, "promstat_p50_ms": 1.5, "client_cpu_ms_per_page": 1.0,
             "prometheus_cpu_ms_per_page": 1.0, "prometheus_cpu_ms_bare_http": 1.0,
             "loop_longest_ms": 3.0}]  # fmt: skip
    doc = report.build(settings={"mode": "ci"}, fleet={}, pages={}, loads=[], rss=None,
                       decode=None, started="", seconds={}, cold_path=cold)  # fmt: skip
    text = report.format_table(doc)
    assert "MISSED" not in text and "issue" not in text.lower()
    lines = text.splitlines()
    added = next(x for x in lines if "client time added / bare HTTP, 200 kernels, gzip" in x)
    assert added.endswith("0.50  (goal: at most 0.35, not met)")
    loop = next(x for x in lines if x.lstrip().startswith("longest loop callback ms, 200"))
    assert loop.endswith("(goal: at most 20, met)")
    assert "design goals (measured in this run, reported, never asserted" in text
    assert report.verdict(None, ">= 5") == "goal: at least 5, not measured"
    for key in report.TARGETS:
        assert report.TARGET_WORDS[key]
