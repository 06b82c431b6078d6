"""Test helper: backfilled raw samples plus the generated rules backfilled over them.

``promtool tsdb create-blocks-from rules`` evaluates rules against a running Prometheus and
writes blocks; rules that read other rules' output (window statistics, node sums) need that
output already in the server, so the rules go in two stages with a restart in between.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from promstat.conventions import SeriesNames
from promstat.generate.rules import build_rule_files
from promstat.profile import RuleProfile
from promstat.testing import lab

NAMES = SeriesNames()


def merge_openmetrics(texts: Iterable[str], extra: Iterable[str] = ()) -> str:
    """One OpenMetrics text from several (and extra sample lines), families contiguous."""
    lines: list[str] = []
    for text in texts:
        lines += [x for x in text.splitlines() if x[:1] != "#"]
    lines += extra
    out = []
    for family in (NAMES.container_metric, NAMES.device_metric):
        out.append(f"# TYPE {family} gauge")
        out += [x for x in lines if x.startswith(family + "{")]
    return "\n".join([*out, "# EOF"]) + "\n"


def _backfill_rules(
    prom: lab.PrometheusProcess, rules: Path, s: int, out: Path, start: int, end: int
) -> None:
    promtool = lab.require_binary("promtool")
    out.mkdir(parents=True, exist_ok=True)
    argv = [
        promtool, "tsdb", "create-blocks-from", "rules",
        f"--start={start}", f"--end={end}", f"--url={prom.url}",
        f"--output-dir={out}", f"--eval-interval={s}s", "--quiet", str(rules),
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


def _stage_files(c: int, s: int, workdir: Path, kernel_shards: int) -> list[Path]:
    """The kernel and agent rules (every ``s`` seconds) in two stages: base stats, then what
    reads them."""
    files = build_rule_files(
        RuleProfile.parse(interval=f"{s}s", collect_interval=f"{c}s", kernel_shards=kernel_shards)
    )
    stages: list[list[dict[str, Any]]] = [[], []]
    for rule_file in files:
        for group in rule_file.groups:
            for level in (0, 1):
                rules = [
                    r.to_dict()
                    for r in group.rules
                    if (r.labels.get("stat") in ("current", "capacity", "rate")
                        and r.record != NAMES.agent_live_stat) == (level == 0)
                ]  # fmt: skip
                stages[level].append({"name": group.name, "interval": f"{s}s", "rules": rules})
    paths = []
    for level, groups in enumerate(stages):
        path = workdir / f"stage{level}.yml"
        path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False, width=1 << 20))
        paths.append(path)
    return paths


def prometheus_with_rules(
    tmp_path: Path,
    c: int,
    s: int,
    om: str,
    start: int,
    end: int,
    *,
    kernel_shards: int = 1,
    every: int | None = None,
) -> lab.PrometheusProcess:
    """A Prometheus over ``om`` plus the generated rules (``interval=every``, by default ``s``;
    ``collect_interval=c``) evaluated every ``every`` seconds from ``start`` to ``end`` and
    written as blocks, in two dependency stages."""
    every = every or s
    data = tmp_path / "data"
    tsdb = data / "tsdb"  # where lab.start_prometheus keeps the TSDB of a data_dir
    lab.backfill_openmetrics(om, tsdb)
    for i, rules in enumerate(_stage_files(c, every, tmp_path, kernel_shards)):
        with lab.start_prometheus(data_dir=data) as prom:
            _backfill_rules(prom, rules, every, tmp_path / f"blocks{i}", start, end)
        for block in (tmp_path / f"blocks{i}").iterdir():
            shutil.move(str(block), tsdb / block.name)
    return lab.start_prometheus(data_dir=data)
