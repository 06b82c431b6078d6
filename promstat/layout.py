"""The rule layout loaded in Prometheus, and the one WARNING when the reader cannot use it.

:class:`~promstat.service.LiveStats` reads with the :class:`~promstat.profile.RuleProfile` the
recording rules were rendered with. It learns it from ``/api/v1/rules``:

* every rule file ``promstat rules render`` writes carries the profile rule
  (:attr:`~promstat.conventions.SeriesNames.profile_info`), whose labels are the profile
  (:meth:`~promstat.profile.RuleProfile.to_labels`): read it back with
  :meth:`~promstat.profile.RuleProfile.from_labels`;
* rules rendered before that rule existed are recognised by their record names (the recorded
  ``live_stat`` families); what they show is derived: the group interval, the ``max``/``avg``
  window (from the ``max_over_time`` range) and the ``rates`` layout (whether a kernel rule
  records ``stat="current"``). The rest stays the base profile's.

:class:`ProfileWatch` keeps a reader in step: it asks at the first load and again every
``ttl`` seconds, single-flight, never for longer than the load may wait; a failed call is not
kept (the reader keeps its profile and asks again after ``backoff``). It logs exactly one
WARNING per reader (logger ``promstat.layout``) when the profile it was given differs from the
loaded one, or when no promstat rules are loaded at all (told by the planner's detection,
which also sees rules evaluated elsewhere, e.g. by vmalert or a Thanos ruler), saying what
differs or is missing, what it costs and which profile it reads with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from promstat.api import PrometheusAPI
from promstat.errors import ConfigError, PromstatError
from promstat.expressions import RateSource
from promstat.profile import RuleProfile
from promstat.promql import duration, parse_duration
from promstat.wire import RuleGroup

__all__ = ["LoadedRules", "ProfileWatch", "read_rules"]

log = logging.getLogger(__name__)

# The range of the window statistics' max_over_time in a recorded `stat="max"` rule.
_WINDOW_RE: Final = re.compile(r"max_over_time\(.*\[([0-9]+(?:ms|[smhdwy]))\]\)")

#: What a setting that differs costs a reader, in the warning.
_COSTS: Final = {
    "interval": "the cache and refresh-ahead follow the reader's interval, not the rules' "
    "evaluations (values older or refreshed more often than needed)",
    "window": "ids the rules lack (the raw fallback) get stats.max/avg over another window "
    "than the recorded ones",
    "lookback": "the raw fallback and final stats look back another span than the rules",
    "collect_interval": "the raw fallback sizes rate() windows differently from the rules",
    "rates": "kernel pages read the other rates layout: with exporter rules and rates=both "
    "they take the raw plan; with both rules and rates=exporter plain agents show no rates",
    "catalog_digest": "the rules record another catalog or other series names: metrics or "
    "whole pages may be missing",
}


@dataclass(frozen=True, slots=True)
class LoadedRules:
    """What ``/api/v1/rules`` says about promstat's recording rules.

    Attributes:
        found: some group evaluates promstat's rules (the profile rule or a recorded
            ``live_stat`` family).
        profile: the profile they were rendered with (``None`` when not found): read from
            the profile rule, else the base profile with the :attr:`derived` settings.
        labels: the profile rule's labels, when there is one.
        derived: settings read from the rules themselves (no profile rule).
    """

    found: bool
    profile: RuleProfile | None = None
    labels: dict[str, str] | None = None
    derived: dict[str, str] = field(default_factory=dict)

    def differences(self, given: RuleProfile) -> dict[str, tuple[str, str | None]]:
        """``{setting: (given, loaded)}`` for what ``given`` says differently (empty: agree).

        With a profile rule every setting is compared; without one, the derived ones.
        """
        if self.labels is not None:
            return given.differences(self.labels)
        mine = given.to_labels()
        return {k: (mine[k], v) for k, v in self.derived.items() if mine[k] != v}


def read_rules(groups: Sequence[RuleGroup], base: RuleProfile) -> LoadedRules:
    """Find promstat's rules in ``groups`` and the profile they were rendered with.

    Args:
        groups: the answer of ``/api/v1/rules``.
        base: where names and catalog come from (they cannot travel in labels), and the
            settings the rules do not show.
    """
    n = base.names
    families = {n.kernel_live_stat, n.device_live_stat, n.agent_live_stat}
    found = False
    interval: float | None = None
    kernel_stats: set[str] = set()
    window: float | None = None
    for group in groups:
        for rule in group.rules:
            if rule.name == n.profile_info:
                labels = {k: v for k, v in rule.labels.items() if k != "__name__"}
                try:
                    return LoadedRules(True, base.from_labels(labels), labels)
                except ConfigError as exc:  # a foreign or damaged rule: derive instead
                    log.debug("ignoring the profile rule %s: %s", labels, exc)
            if rule.name not in families:
                continue
            found = True
            if interval is None and group.interval > 0:
                interval = group.interval
            if rule.name == n.kernel_live_stat:
                stat = rule.labels.get(n.stat_label, "")
                kernel_stats.add(stat)
                match = _WINDOW_RE.search(rule.query) if stat == "max" else None
                if match is not None:
                    with contextlib.suppress(ConfigError):
                        window = parse_duration(match.group(1))
    if not found:
        return LoadedRules(False)
    derived: dict[str, Any] = {}
    if interval is not None:
        derived["interval"] = interval
    if window is not None:
        derived["window"] = window
    if kernel_stats:
        derived["rates"] = RateSource.BOTH if "current" in kernel_stats else RateSource.EXPORTER
    profile = base
    for keys in (tuple(derived), ("interval", "rates"), ("rates",), ()):
        try:
            profile = replace(base, **{k: derived[k] for k in keys if k in derived})
        except ConfigError:  # e.g. a derived interval too long for the base window
            continue
        derived = {k: derived[k] for k in keys if k in derived}
        break
    shown = profile.to_labels()
    return LoadedRules(True, profile, None, {k: shown[k] for k in derived})


def describe(profile: RuleProfile) -> str:
    """A profile in one line for log messages (durations as Prometheus spells them)."""
    return (
        f"interval={duration(profile.interval)} window={duration(profile.window)} "
        f"lookback={duration(profile.lookback)} "
        f"collect_interval={duration(profile.collect_interval)} rates={profile.rates.value}"
    )


class ProfileWatch:
    """Keeps the profile one reader reads with in step with the loaded rules.

    Args:
        client: where ``/api/v1/rules`` is read.
        given: the profile the reader was given (``None``: read with the loaded one).
        apply: called with the profile to read with whenever it changes.
        raw_cost: ``(raw, recorded)`` queries of a 1,000-kernel page, for the warning.
        ttl: seconds a learned layout is trusted before it is read again.
        backoff: seconds after a failed read before the next one.
        timeout: seconds one read may take.
    """

    def __init__(
        self,
        client: PrometheusAPI,
        given: RuleProfile | None,
        *,
        apply: Callable[[RuleProfile], None],
        raw_cost: Callable[[], tuple[int, int]],
        ttl: float,
        backoff: float,
        timeout: float,
    ) -> None:
        self.client = client
        self.given = given
        #: the profile read with now
        self.profile = given or RuleProfile()
        #: what the last successful read found (``None`` before one)
        self.loaded: LoadedRules | None = None
        self.warned = False
        self._apply = apply
        self._raw_cost = raw_cost
        self._ttl = ttl
        self._backoff = backoff
        self._timeout = timeout
        self._learned_at: float | None = None
        self._failed_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def ensure(self, until: float) -> RuleProfile:
        """The profile to read with, after reading the rules if it is time to.

        Waits for the (shared) read until the loop time ``until`` at most; a read still
        running then goes on in the background. Never raises a read's failure.
        """
        now = time.monotonic()
        if self._closed or (self._learned_at is not None and now - self._learned_at < self._ttl):
            return self.profile
        if self._failed_at is not None and now - self._failed_at < self._backoff:
            return self.profile
        loop = asyncio.get_running_loop()
        task = self._task
        if task is None or task.done():
            task = self._task = loop.create_task(self._read(), name="promstat-rule-layout")
        remaining = until - loop.time()
        if remaining > 0:
            await asyncio.wait({task}, timeout=remaining)
        return self.profile

    async def _read(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                groups = await self.client.rules(type="record")
        except (PromstatError, TimeoutError) as exc:
            # The planner's own queries report the outage; this read just tries again later.
            self._failed_at = time.monotonic()
            log.debug("reading the rule layout failed: %r", exc)
            return
        self._failed_at = None
        self._learned_at = time.monotonic()
        loaded = self.loaded = read_rules(groups, self.given or RuleProfile())
        if self.given is None:
            self._use(loaded.profile or RuleProfile())
            return
        diffs = loaded.differences(self.given) if loaded.found else {}
        if diffs:
            self._warn_once(self._mismatch(diffs, loaded))

    def _use(self, profile: RuleProfile) -> None:
        if profile != self.profile:
            log.info("reading with the loaded rules' profile (%s)", describe(profile))
            self.profile = profile
            self._apply(profile)

    def note_detection(self, recorded: bool) -> None:
        """The planner detected (``True``) or not (``False``) recorded kernel series.

        Without them every page takes the raw plan: warned once, with its cost.
        """
        if recorded or self.warned or (self.loaded is not None and self.loaded.found):
            return  # listed rules that have not recorded yet: the next detection sees them
        raw, rec = self._raw_cost()
        listed = "/api/v1/rules lists none" if self.loaded is not None else "rules not read"
        which = "the profile it was given" if self.given is not None else "the default profile"
        self._warn_once(
            f"no promstat recording rules are loaded in Prometheus (no recorded kernel "
            f"series, {listed}): pages take the raw plan: {raw} queries per 1,000-kernel "
            f"page instead of {rec}, several times slower and costlier for Prometheus; load "
            f"the rules with `promstat rules render` (reading with {which}: "
            f"{describe(self.profile)})"
        )

    def _mismatch(self, diffs: dict[str, tuple[str, str | None]], loaded: LoadedRules) -> str:
        what = "; ".join(
            f"{key} {given} given, {got if got is not None else 'absent'} loaded"
            for key, (given, got) in diffs.items()
        )
        costs = "; ".join(_COSTS[key] for key in diffs if key in _COSTS)
        source = "their profile rule" if loaded.labels is not None else "the rules themselves"
        return (
            f"the recording rules loaded in Prometheus were rendered with another profile "
            f"than the one LiveStats was given (from {source}): {what}. Cost: {costs}. "
            f"Reading with the given profile ({describe(self.profile)}); pass profile=None "
            f"to read with the loaded one, or render the rules with this profile "
            f"(`promstat rules render`)"
        )

    def _warn_once(self, message: str) -> None:
        if not self.warned:
            self.warned = True
            log.warning("%s", message)

    async def aclose(self) -> None:
        """Cancel a read in flight; later calls read nothing. Idempotent."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})
