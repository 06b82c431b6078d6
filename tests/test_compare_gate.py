"""``promstat compare`` gates every field on its own: one wrong field cannot be diluted.

Before, the threshold applied to all field comparisons together: with 200 kernels, 10 of them
with ``mem.current`` 1.5x off and ``net_tx`` missing on the legacy side, compare printed
``agreement: 99.82% ... OK`` and exited 0. Here a real dual-published fleet of 200 kernels
(Prometheus backfilled, redis replayed by the publisher) is copied into other redis databases
with exactly one field of one metric wrong for 5% of the kernels, or one metric missing on the
legacy side for 10 kernels; compare must fail naming that field (and only fields of that
metric), while the untouched fleet passes.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from _support.dual_fleet import DualFleet, dual_fleet, fleet_config
from redis.asyncio import from_url

from promstat.cli import main
from promstat.migration.compare import COMPARE_EXIT_DISAGREE, compare_payloads
from promstat.migration.report import failing_fields
from promstat.migration.tolerances import FieldKind, Tolerances

Tamper = Callable[[dict[str, Any]], None]


def _metric(current: str, capacity: str = "100") -> dict[str, Any]:
    return {"current": current, "capacity": capacity, "pct": "1", "unit_hint": "bytes"}


def test_one_wrong_field_fails_however_many_agree() -> None:
    """10 of 200 kernels with one wrong field: 99.8% overall, 95% for the field: it fails."""
    legacy = {f"k{i}": {"mem": _metric(str(i)), "cpu_used": _metric("5")} for i in range(200)}
    promstat = {f"k{i}": {"mem": _metric(str(i)), "cpu_used": _metric("5")} for i in range(200)}
    for i in range(10):
        promstat[f"k{i}"]["mem"]["current"] = str(i * 1.5 + 1)
    report = compare_payloads(legacy, promstat)
    assert report.agreement > 0.99  # what the old, diluted gate looked at
    assert [f.path for f in report.failing] == ["mem.current"]
    assert report.fields["mem", "current"].gated_agreement == pytest.approx(0.95)
    assert not report.ok
    assert failing_fields([report]) == ["kernel mem.current"]


def test_values_on_one_side_only_count_against_their_field() -> None:
    """A metric legacy lacks for 10 of 200 kernels fails its fields, not the others."""
    legacy = {f"k{i}": {"mem": _metric("1"), "net_tx": _metric("2")} for i in range(200)}
    promstat = {f"k{i}": {"mem": _metric("1"), "net_tx": _metric("2")} for i in range(200)}
    for i in range(10):
        del legacy[f"k{i}"]["net_tx"]
    report = compare_payloads(legacy, promstat)
    failing = [f.path for f in report.failing]
    assert "net_tx.current" in failing and all(p.startswith("net_tx.") for p in failing)
    stats = report.fields["net_tx", "current"]
    assert (stats.compared, stats.missing_legacy, stats.agreed) == (190, 10, 190)
    assert stats.gated_agreement == pytest.approx(0.95)


def test_thresholds_per_kind_and_field(tmp_path: Path) -> None:
    """A field's threshold comes from its override, else its kind, else the global one."""
    path = tmp_path / "tol.yml"
    path.write_text(
        "min_agreement: 0.5\nkinds:\n  gauge: {min_agreement: 0.97}\n"
        "fields:\n  mem.capacity: {min_agreement: 0.9}\n"
    )
    tol = Tolerances.from_file(path)
    legacy = {f"k{i}": {"mem": _metric(str(i), "100")} for i in range(100)}
    promstat = {f"k{i}": {"mem": _metric(str(i), "100")} for i in range(100)}
    for i in range(5):  # 95%: below the gauge kind's 97%, above mem.capacity's 90%
        promstat[f"k{i}"]["mem"]["current"] = "-1"
        promstat[f"k{i}"]["mem"]["capacity"] = "-1"
    report = compare_payloads(legacy, promstat, tolerances=tol)
    assert report.fields["mem", "current"].min_agreement == 0.97
    assert report.fields["mem", "capacity"].min_agreement == 0.9
    assert report.fields["mem", "unit_hint"].min_agreement == 0.5  # string: the global one
    assert [f.path for f in report.failing] == ["mem.current"]


def test_known_differences_never_gate() -> None:
    """A field of kind ``known`` disagreeing everywhere does not fail the gate."""
    legacy = {"k": {"cpu_used": _metric("5", "3")}}
    promstat = {"k": {"cpu_used": _metric("5", "9e18")}}
    report = compare_payloads(legacy, promstat)
    capacity = report.fields["cpu_used", "capacity"]
    assert capacity.kind is FieldKind.KNOWN and capacity.agreed == 0 and capacity.ok
    assert report.ok


# ---------------------------------------------------------------------------- a real fleet


@pytest.fixture(scope="module")
def fleet() -> Iterator[DualFleet]:
    """200 kernels on 10 agents, dual published."""
    with dual_fleet(fleet_config(10, 20)) as running:
        yield running


def _copy(fleet: DualFleet, db: int, tamper: Tamper | None, count: int) -> tuple[str, list[str]]:
    """Copy every kernel key into redis database ``db``, ``tamper``-ing the first ``count``."""
    ids = fleet.fleet.kernel_ids(fleet.at)
    assert len(ids) == 200

    async def run() -> None:
        src, dst = from_url(fleet.redis.url), from_url(f"{fleet.redis.url}/{db}")
        try:
            await dst.flushdb()
            for n, key in enumerate(ids):
                raw, ttl = await src.get(key), await src.pttl(key)
                assert raw is not None and ttl > 0, key
                if tamper is not None and n < count:
                    value = msgpack.unpackb(raw, raw=False, strict_map_key=False)
                    tamper(value)
                    raw = msgpack.packb(value)
                await dst.set(key, raw, px=ttl)  # the same TTL: compare reads key age from it
        finally:
            await src.aclose()
            await dst.aclose()

    asyncio.run(run())
    return f"{fleet.redis.url}/{db}", ids[:count]


def _compare(
    fleet: DualFleet, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, Any], str]:
    # The fleet holds no recording rules: say so (--plan raw) instead of being warned.
    args = ["--redis", redis_url, "--url", fleet.prometheus.url, "--time", str(fleet.at)]
    args += ["--plan", "raw"]
    code = main(["compare", *args, "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out)["reports"][0], captured.err


def _mem_current_off(value: dict[str, Any]) -> None:
    value["mem"]["current"] = f"{float(value['mem']['current']) * 1.5:.0f}"


def _drop_net_tx(value: dict[str, Any]) -> None:
    del value["net_tx"]


@pytest.mark.slow
def test_a_clean_fleet_passes(fleet: DualFleet, capsys: pytest.CaptureFixture[str]) -> None:
    """The untouched 200-kernel fleet: every field passes, exit 0, nothing on stderr."""
    url, _ = _copy(fleet, 1, None, 0)
    code, report, err = _compare(fleet, url, capsys)
    assert (code, report["ok"], report["failing"], err) == (0, True, [], "")
    assert report["ids"] == report["compared_ids"] == 200


@pytest.mark.slow
def test_one_field_of_one_metric_wrong_for_5_percent_fails(
    fleet: DualFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """``mem.current`` 1.5x off for 10 of 200 kernels fails the gate naming only that field."""
    url, tampered = _copy(fleet, 2, _mem_current_off, 10)
    code, report, err = _compare(fleet, url, capsys)
    assert code == COMPARE_EXIT_DISAGREE
    assert report["failing"] == ["mem.current"], report["failing"]
    assert report["agreement"] > report["min_agreement"]  # the old gate would have passed
    stats = {(f["metric"], f["field"]): f for f in report["fields"]}["mem", "current"]
    assert (stats["compared"], stats["agreed"]) == (200, 190)
    assert {e["id"] for e in stats["examples"]} <= set(tampered)
    assert "kernel mem.current" in err and err.count("\n") == 1


@pytest.mark.slow
def test_a_metric_missing_on_the_legacy_side_fails(
    fleet: DualFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """``net_tx`` missing on the legacy side for 10 kernels fails net_tx's fields."""
    url, _ = _copy(fleet, 3, _drop_net_tx, 10)
    code, report, err = _compare(fleet, url, capsys)
    assert code == COMPARE_EXIT_DISAGREE
    assert "net_tx.current" in report["failing"], report["failing"]
    assert all(path.startswith("net_tx.") for path in report["failing"]), report["failing"]
    stats = {(f["metric"], f["field"]): f for f in report["fields"]}["net_tx", "current"]
    assert (stats["missing_legacy"], stats["compared"]) == (10, 190)
    assert "kernel net_tx.current" in err


@pytest.mark.slow
def test_the_text_report_names_the_failing_field(
    fleet: DualFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """The text report says which field fails, with its share and threshold."""
    url, _ = _copy(fleet, 4, _mem_current_off, 10)
    args = ["--redis", url, "--url", fleet.prometheus.url, "--time", str(fleet.at), "--plan", "raw"]
    code = main(["compare", *args])
    out = capsys.readouterr().out
    assert code == COMPARE_EXIT_DISAGREE
    assert "fields: " in out and "FAIL mem.current (95.0% < 99.00%)" in out
    assert re.search(r"^mem\s+current\s+gauge\s+190\s+200\s+95\.0%\s+FAIL 95\.0%/99%", out, re.M)
