"""Recording-rule generation: a :class:`~promstat.profile.RuleProfile` -> Prometheus rule files.

Rules are built as typed values (:class:`RecordingRule`, :class:`RuleGroup`,
:class:`RuleFile`) whose expressions come from :mod:`promstat.expressions` (the same PromQL
definitions the planner's raw fallback uses), then emitted as YAML with the generated-file
header (:mod:`promstat.generate._common`). Two files::

    promstat-kernel.rules.yml   group promstat.profile
        promstat:<container metric>:rule_profile{interval, window, ..., kernel_shards}
                                group promstat.kernel.live_stat (or one per shard)
        kernel_metric:<container metric>:live_stat{kernel_id, container_metric_name, stat}
    promstat-agent.rules.yml    group promstat.agent.live_stat
        agent_device_metric:<device metric>:live_stat{agent_id, device_id, device_metric_name, stat}
        agent_metric:<device metric>:live_stat{agent_id, device_metric_name, stat}

The profile rule (``vector(1)``, labelled :meth:`RuleProfile.to_labels`) tells a reader how the
rules were rendered; it finds the rule in ``/api/v1/rules``. Rules of one group run
sequentially at the same timestamp, so each group lists the base stats (``current``,
``capacity``, ``rate``) before what reads their recorded series (``max``/``avg`` over the
recorded ``current``, node sums over the recorded device series). A stat may be recorded by
several rules, one per metric kind, each for its own metric names
(:meth:`~promstat.expressions.LiveStatExpressions.kernel_rules`). The group ``interval`` is
the scrape interval; ``collect_interval`` (how often agents measure) sizes the ``rate()``
window used for agents without a rate series. No ``pct`` series is recorded: pages compute
``pct`` from ``current`` and ``capacity``. With ``kernel_shards=N`` the kernel group is split
into N groups by the first hex digit of ``kernel_id`` (:func:`kernel_shard_matchers`), which
Prometheus evaluates concurrently; :func:`recommended_kernel_shards` picks N from the fleet.

The promtool unit tests of these files are :mod:`promstat.generate.rule_tests`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Generic, Protocol, TypeVar

import yaml

from promstat.conventions import SeriesNames
from promstat.errors import ConfigError, QueryBuildError, RuleError
from promstat.expressions import LiveStatExpressions
from promstat.generate._common import (
    AGENT_RULES_FILE,
    KERNEL_RULES_FILE,
    dump_yaml,
    promtool,
    render_generated,
    rules_command,
    run_promtool,
    write_files,
)
from promstat.generate.rule_tests import render_rule_tests, rule_tests_apply
from promstat.profile import RuleProfile

__all__ = [
    "AGENT_RULES_FILE",
    "KERNEL_RULES_FILE",
    "KERNEL_SHARDS",
    "PROFILE_GROUP",
    "RecordingRule",
    "RuleFile",
    "RuleGroup",
    "build_rule_files",
    "check_rules",
    "kernel_shard_matchers",
    "recommended_kernel_shards",
    "render_rules",
    "write_rules",
]

#: The group holding the profile rule (first in the kernel file).
PROFILE_GROUP: Final = "promstat.profile"


# -------------------------------------------------------------------------------------------
# Typed rules


@dataclass(frozen=True, slots=True)
class RecordingRule:
    """One ``record:`` rule."""

    record: str
    expr: str
    labels: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the rule-file mapping (``record``, ``expr``, optional ``labels``)."""
        out: dict[str, Any] = {"record": self.record, "expr": self.expr}
        if self.labels:
            out["labels"] = dict(self.labels)
        return out


class _Rule(Protocol):
    """What a group holds: a rule that renders its own rule-file mapping."""

    def to_dict(self) -> dict[str, Any]:
        """Return the rule-file mapping."""
        ...


_R = TypeVar("_R", bound=_Rule)


@dataclass(frozen=True, slots=True)
class RuleGroup(Generic[_R]):
    """A rule group: its rules run sequentially, every ``interval``.

    Recording rules here, alerting rules in :mod:`promstat.generate.alerts` .
    """

    name: str
    interval: str
    rules: tuple[_R, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return the rule-file mapping of the group."""
        return {
            "name": self.name,
            "interval": self.interval,
            "rules": [r.to_dict() for r in self.rules],
        }


@dataclass(frozen=True, slots=True)
class RuleFile:
    """One generated rule file."""

    filename: str
    groups: tuple[RuleGroup[RecordingRule], ...]

    def to_dict(self) -> dict[str, Any]:
        """Return the rule-file document (``groups: [...]``)."""
        return {"groups": [g.to_dict() for g in self.groups]}


def _expressions(profile: RuleProfile) -> LiveStatExpressions:
    # RuleProfile validated the durations already; say which operation an error belongs to.
    try:
        return profile.expressions
    except ConfigError as exc:  # pragma: no cover - RuleProfile() raised it first
        raise ConfigError(f"cannot generate rules: {exc}") from exc


_HEX: Final = "0123456789abcdef"
#: Shard counts the kernel group can be split into (each takes whole first hex digits).
KERNEL_SHARDS: Final = (1, 2, 4, 8, 16)
#: Kernels per kernel-rule shard that :func:`recommended_kernel_shards` aims at.
KERNELS_PER_SHARD: Final = 2500


def recommended_kernel_shards(kernels: int) -> int:
    """The kernel-group shard count for a fleet of about ``kernels`` live kernels.

    Sharding does not make the rules cheaper (the same series are read, in more groups): it
    bounds the slowest group's evaluation time, which must stay well inside the interval,
    because Prometheus evaluates groups concurrently and a group's rules one after another.
    One group up to 5,000 kernels; above, one shard per :data:`KERNELS_PER_SHARD` kernels,
    rounded up to a count :func:`kernel_shard_matchers` can split into (at most 16).

    Raises:
        ConfigError: ``kernels`` is negative.
    """
    if kernels < 0:
        raise ConfigError(f"kernels must be >= 0, not {kernels!r}")
    if kernels <= 2 * KERNELS_PER_SHARD:
        return 1
    wanted = -(-kernels // KERNELS_PER_SHARD)
    return next((n for n in KERNEL_SHARDS if n >= wanted), KERNEL_SHARDS[-1])


def kernel_shard_matchers(names: SeriesNames, shards: int) -> list[str]:
    """``kernel_id`` matchers splitting kernels into ``shards`` disjoint, covering groups.

    Kernel ids are random UUIDs, so their first hex digit is a stable, uniform hash: shard
    ``i`` takes ``16 / shards`` digits; the last one also takes every id that does not start
    with a lowercase hex digit (and the empty id), so no kernel is left out.

    Raises:
        ConfigError: ``shards`` is not one of :data:`KERNEL_SHARDS`.
    """
    if shards not in KERNEL_SHARDS:
        raise ConfigError(f"kernel_shards must be one of {list(KERNEL_SHARDS)}, not {shards!r}")
    if shards == 1:
        return [""]
    size = len(_HEX) // shards
    out = []
    for i in range(shards):
        digits = _HEX[i * size : (i + 1) * size]
        regex = f"[{digits}].*"
        if i == shards - 1:
            regex += "|[^0-9a-f].*|"
        out.append(f'{names.kernel_label}=~"{regex}"')
    return out


def build_rule_files(profile: RuleProfile | None = None) -> tuple[RuleFile, ...]:
    """Build the kernel and agent rule files as typed values.

    Args:
        profile: how to render (:class:`~promstat.profile.RuleProfile`; the defaults when
            ``None``). ``kernel_shards`` splits the kernel group into that many groups by
            the first hex digit of ``kernel_id`` (:func:`kernel_shard_matchers`): the
            recorded series are the same. With ``rates="exporter"`` the kernel groups record
            ``max``/``avg`` only, from the raw series: readers take
            ``current``/``capacity``/``rate`` from the exporter's series
            (:attr:`~promstat.expressions.LiveStatExpressions.records_kernel_values`).

    Returns:
        ``(kernel file, agent file)``; the kernel file starts with the profile group.

    Raises:
        ConfigError: ``kernel_shards`` is not one of :data:`KERNEL_SHARDS`.
    """
    profile = profile if profile is not None else RuleProfile()
    names, interval = profile.names, profile.expressions.interval
    ex = _expressions(profile)
    stat = names.stat_label

    def rule(record: str, s: str, expr: str | None) -> list[RecordingRule]:
        return [] if expr is None else [RecordingRule(record, expr, {stat: s})]

    # One cheap series whose labels are the profile: the reader finds it in /api/v1/rules.
    profile_group: RuleGroup[RecordingRule] = RuleGroup(
        PROFILE_GROUP,
        interval,
        (RecordingRule(names.profile_info, "vector(1)", profile.to_labels()),),
    )
    kernel_groups: list[RuleGroup[RecordingRule]] = [profile_group]
    shards = profile.kernel_shards
    for i, matchers in enumerate(kernel_shard_matchers(names, shards)):
        # rates=exporter: current/capacity/rate are the exporter's own series; readers take
        # them raw and only the window stats are recorded (RateSource).
        kernel = [
            RecordingRule(names.kernel_live_stat, expr, {stat: s})
            for s, expr in ex.kernel_rules(matchers=matchers)
        ]
        name = "promstat.kernel.live_stat"
        if shards > 1:
            name += f".shard{i}of{shards}"
        kernel_groups.append(RuleGroup(name, interval, tuple(kernel)))

    agent: list[RecordingRule] = []
    for s in ("current", "capacity", "rate"):
        agent += rule(names.device_live_stat, s, ex.device(s))
    for s in ("max", "avg"):
        agent += rule(names.device_live_stat, s, _window_or_none(ex, s))
    for s in ("current", "capacity", "rate", "max", "avg"):
        agent += rule(names.agent_live_stat, s, ex.node(s))

    return (
        RuleFile(KERNEL_RULES_FILE, tuple(kernel_groups)),
        RuleFile(
            AGENT_RULES_FILE,
            (RuleGroup("promstat.agent.live_stat", interval, tuple(agent)),),
        ),
    )


def _window_or_none(ex: LiveStatExpressions, stat: str) -> str | None:
    # A window stat that no catalog metric publishes (custom catalog) gets no rule.
    try:
        return ex.device_recorded_window(stat)
    except QueryBuildError:
        return None


# -------------------------------------------------------------------------------------------
# Rendering


def render_rules(
    profile: RuleProfile | None = None, *, catalog_file: str | None = None
) -> dict[str, str]:
    """Render the rule files.

    Args:
        profile: as :func:`build_rule_files`.
        catalog_file: the catalog file name to record in the header's command line.

    Returns:
        ``{filename: YAML text}``.

    Raises:
        ConfigError: as :func:`build_rule_files`.
    """
    profile = profile if profile is not None else RuleProfile()
    files = build_rule_files(profile)
    command = rules_command(profile, catalog_file)
    return {
        f.filename: render_generated("rules.yml.j2", command=command, body=dump_yaml(f.to_dict()))
        for f in files
    }


def write_rules(
    output_dir: str | Path,
    profile: RuleProfile | None = None,
    *,
    catalog_file: str | None = None,
) -> list[Path]:
    """Write the rule files, and their promtool unit tests under ``tests/`` when they apply.

    Unit tests are written when :func:`~promstat.generate.rule_tests.rule_tests_apply`
    (default durations, ``rates="both"``, and the scenario's metrics keep their built-in
    catalog specs); otherwise only the rules are written.

    Returns:
        The written paths, sorted.

    Raises:
        ConfigError: as :func:`build_rule_files`.
        RuleError: a file could not be written.
    """
    profile = profile if profile is not None else RuleProfile()
    files = render_rules(profile, catalog_file=catalog_file)
    if rule_tests_apply(profile):
        files.update(render_rule_tests(profile))
    return write_files(output_dir, files, "rule files")


# -------------------------------------------------------------------------------------------
# promtool


def check_rules(directory: str | Path) -> list[str]:
    """Run ``promtool check rules --lint=all --lint-fatal`` and ``promtool test rules``.

    Files in which two rules record the same name and labels (sharded kernel groups; a stat
    split by metric kind) are checked without the duplicate-rules lint.

    Args:
        directory: a directory holding ``*.rules.yml`` (and optionally ``tests/*.test.yml``).

    Returns:
        The files checked or tested.

    Raises:
        BinaryNotFoundError: promtool is missing.
        RuleError: no rule files, or promtool failed (its output is in the message).
    """
    root = Path(directory)
    rule_files = sorted(str(p) for p in root.glob("*.rules.yml"))
    if not rule_files:
        raise RuleError(f"no *.rules.yml files in {str(root)!r}")
    binary = promtool()
    # Sharded kernel groups, and a stat split into one rule per metric kind, record the same
    # series names and labels on purpose (each for its own, disjoint series), which
    # promtool's only lint, duplicate-rules, cannot tell from a mistake.
    twice = [f for f in rule_files if _records_twice(Path(f))]
    lintable = [f for f in rule_files if f not in twice]
    done: list[str] = []
    if lintable:
        done += run_promtool(binary, ["check", "rules", "--lint=all", "--lint-fatal"], lintable)
    if twice:
        done += run_promtool(binary, ["check", "rules", "--lint=none"], twice)
    test_files = sorted(str(p) for p in (root / "tests").glob("*.test.yml"))
    if test_files:
        done += run_promtool(binary, ["test", "rules"], test_files)
    return done


def _records_twice(path: Path) -> bool:
    """Whether two rules of ``path`` record the same name with the same labels."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return False  # promtool reports what is wrong with the file
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for group in doc.get("groups") or ():
        for rule in group.get("rules") or ():
            if "record" not in rule:
                continue
            key = (str(rule["record"]), tuple(sorted((rule.get("labels") or {}).items())))
            if key in seen:
                return True
            seen.add(key)
    return False
