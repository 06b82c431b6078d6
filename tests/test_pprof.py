"""The benchmark's pprof reader: exact shares on a hand-built profile, and a real Prometheus'
own CPU profile decoded while it evaluates queries."""

from __future__ import annotations

import gzip
import threading
import urllib.parse
import urllib.request

import pytest

from benchmarks import report
from benchmarks.pprof import cpu_breakdown, fetch_cpu_profile, parse_profile
from promstat.testing import lab


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, value: int | bytes) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _profile(stacks: list[tuple[list[str], int]], duration_ns: int) -> bytes:
    """profile.proto with one function and location per distinct name (id = index + 1)."""
    names = sorted({name for frames, _ in stacks for name in frames})
    strings = ["", *names]
    body = b"".join(_field(6, s.encode()) for s in strings)
    for i, _ in enumerate(names, start=1):
        body += _field(5, _field(1, i) + _field(2, i))  # function id i, name strings[i]
        body += _field(4, _field(1, i) + _field(4, _field(1, i)))  # location i -> function i
    for frames, ns in stacks:
        ids = b"".join(_varint(names.index(f) + 1) for f in frames)  # packed
        body += _field(2, _field(1, ids) + _field(2, _varint(1) + _varint(ns)))
    body += _field(10, duration_ns)
    return gzip.compress(body)


def test_shares_and_top_of_a_known_profile() -> None:
    rule = "github.com/prometheus/prometheus/rules.(*Group).Eval"
    sort_ = "github.com/prometheus/prometheus/tsdb.(*headIndexReader).SortedPostings"
    select = "github.com/prometheus/prometheus/storage.(*mergeGenericQuerier).Select.func2"
    gc = "runtime.gcBgMarkWorker"
    data = _profile(
        [
            (["labels.Compare", sort_, select], 3_000_000_000),
            (["promql.rangeEval", rule], 4_000_000_000),
            (["runtime.scanobject", gc], 2_000_000_000),
            (["textparse.Next", "scrape.(*scrapeLoop).run"], 1_000_000_000),
        ],
        duration_ns=20_000_000_000,
    )
    prof = parse_profile(data)
    assert prof.cpu_s == pytest.approx(10.0)
    assert prof.duration_s == pytest.approx(20.0)
    assert cpu_breakdown(prof) == {
        "cpu_s_per_s": 0.5,
        "rules_share": 0.7,  # the rule's own stack and the select goroutine it started
        "postings_sort_share": 0.3,
        "gc_share": 0.2,
        "scrape_share": 0.1,
    }
    assert prof.top(2) == [("promql.rangeEval", 0.4), ("labels.Compare", 0.3)]
    run = {"kernels": 5000, "seconds": 60.0, "interval_s": 15.0, "rates": "both",
           "kernel_shards": 1, "layout": "plain", "prometheus_cpu_s_per_min": 12.0,
           "prometheus_cpu_s_per_min_without_rules": 1.0, "rules_cpu_share_of_core": 0.18,
           "group_eval_s": {"promstat.kernel.live_stat": 2.0}, "kernel_share_of_core": 0.13,
           "kernel_max_group_s": 2.0, "profile": cpu_breakdown(prof)}  # fmt: skip
    doc = report.build(settings={"mode": "custom"}, fleet={}, pages={}, loads=[], rss=None,
                       decode=None, started="", seconds={}, rules_cost=[run])  # fmt: skip
    line = next(x for x in report.format_table(doc).splitlines() if "rules cost at 5000" in x)
    assert line.endswith(
        "; Prometheus CPU profile, rules and scrapes only: 50.0% of a core, of it rule "
        "evaluation 70%, head postings sort 30%, garbage collection 20%, scraping 10%"
    )


def test_a_truncated_profile_is_a_value_error() -> None:
    data = gzip.decompress(_profile([(["a", "b"], 5)], 1))
    with pytest.raises(ValueError, match="truncated"):
        parse_profile(data[:-3])


def test_a_real_prometheus_profile_shows_its_query_engine(
    prometheus_empty: lab.PrometheusProcess,
) -> None:
    """Prometheus' /debug/pprof/profile, taken while a thread keeps its engine busy, decodes
    into stacks of its own Go functions."""
    url = prometheus_empty.url
    stop = threading.Event()
    # A subquery of 3,600 steps per query: engine work with no data to load.
    query = urllib.parse.urlencode({"query": "count_over_time(vector(1)[1h:1s])"})

    def load() -> None:
        while not stop.is_set():
            with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=30) as resp:
                resp.read()

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        prof = fetch_cpu_profile(url, 2)
    finally:
        stop.set()
        worker.join(timeout=30)
    assert prof.duration_s == pytest.approx(2.0, abs=0.5)
    assert prof.cpu_s > 0
    assert prof.share(["promql.(*evaluator)"]) > 0, prof.top(10)
    breakdown = cpu_breakdown(prof)
    assert set(breakdown) == {"cpu_s_per_s", "rules_share", "postings_sort_share", "gc_share",
                              "scrape_share"}


@pytest.mark.slow
@pytest.mark.backendai
def test_a_small_rule_cost_run_reports_cpu_groups_profile_and_pages() -> None:
    """The rule-cost run end to end on a small live fleet at a 2 s interval: every part of its
    result is there (the profile phase and the page phase must not drop each other's)."""
    from benchmarks.matrix import measure_rules_cost

    got = measure_rules_cost(200, seconds=6.0, interval=2.0, page=50, rates="both",
                             layout="plain", log=lambda _: None)
    assert "error" not in got, got
    assert got["prometheus_cpu_s_per_min"] > 0
    assert {"promstat.kernel.live_stat", "promstat.agent.live_stat"} <= set(got["group_eval_s"])
    assert got["series"] > 200
    profile = got["profile"]
    assert "error" not in profile, profile
    assert profile["cpu_s_per_s"] > 0 and profile["top"]
    assert 0 <= profile["rules_share"] <= 1 and 0 <= profile["gc_share"] <= 1
    assert got["page"] == 50 and got["pages"]["promstat"] >= 1 and got["pages"]["upstream"] >= 1
