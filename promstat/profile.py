"""The rule profile: one description of how the recording rules were rendered.

The rules (``promstat rules render``) and the reader (:class:`~promstat.service.LiveStats`)
must agree on the evaluation interval, the ``max``/``avg`` window, the agents' measurement
interval, where counter rates come from, the series names and the catalog. pyrra builds its
rules and its queries from one objective; promstat does the same with one
:class:`RuleProfile`, which both take, so they cannot disagree::

    profile = RuleProfile(interval=30.0, rates="exporter")
    write_rules("rules/", profile)              # promstat.generate.rules
    LiveStats(url, profile=profile)             # the reader

Better still, the reader needs no profile at all: every rendered rule file carries one cheap
recording rule, :attr:`~promstat.conventions.SeriesNames.profile_info`, whose labels are this
profile (:meth:`RuleProfile.to_labels`). The reader finds it in ``/api/v1/rules`` and reads
with the profile the rules were rendered with (:meth:`RuleProfile.from_labels`); when the
rules are missing, or were rendered differently from the profile it was given, it says so once.

Every duration is in seconds (``float``), like every other duration in promstat's API;
:meth:`RuleProfile.parse` takes Prometheus duration strings (``"15s"``) for command lines and
config files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Final

from promstat.catalog import DEFAULT_CATALOG, Catalog
from promstat.conventions import SeriesNames
from promstat.errors import ConfigError
from promstat.expressions import LiveStatExpressions, RateSource
from promstat.promql import duration, parse_duration

__all__ = ["PROFILE_LABELS", "RuleProfile"]

#: Label names of the profile rule, in the order they are rendered.
PROFILE_LABELS: Final = (
    "interval",
    "window",
    "lookback",
    "collect_interval",
    "rates",
    "kernel_shards",
    "catalog_digest",
)

_DURATIONS: Final = ("interval", "window", "lookback", "collect_interval")


@dataclass(frozen=True, slots=True)
class RuleProfile:
    """How the recording rules are rendered, and so how they must be read.

    Attributes:
        names: metric and label names of the raw and recorded series.
        catalog: the metric catalog (kinds, unit hints, stats keys).
        interval: seconds between rule evaluations; use the scrape interval.
        window: seconds of the ``stats.max``/``stats.avg`` window (at least 4 x ``interval``).
        lookback: the instant-query lookback in seconds (Prometheus' default 300; at least
            2 x ``interval``).
        collect_interval: how often agents measure, in seconds (Backend.AI: 30); sizes the
            ``rate()`` window for agents that export raw counters only.
        rates: where counter rates come from (:class:`~promstat.expressions.RateSource` or its
            value): ``"both"`` (the agent's rate series where it has one, else ``rate()`` of
            its raw counter) or ``"exporter"`` (every agent runs promstat's exporter or
            Collector; the kernel rules record only the window statistics).
        kernel_shards: how many rule groups the kernel rules are split into, by ``kernel_id``
            (Prometheus evaluates groups concurrently). It changes nothing a reader sees.

    Raises:
        ConfigError: a duration is not positive, the window or lookback is too short for the
            interval, ``rates`` is unknown or ``kernel_shards`` is not allowed.
    """

    names: SeriesNames = field(default_factory=SeriesNames, repr=False)
    catalog: Catalog = field(default=DEFAULT_CATALOG, repr=False)
    interval: float = 15.0
    window: float = 300.0
    lookback: float = 300.0
    collect_interval: float = 30.0
    rates: RateSource = RateSource.BOTH
    kernel_shards: int = 1

    def __post_init__(self) -> None:
        # A plain string ("exporter", from a command line or a config file) is accepted too.
        object.__setattr__(self, "rates", RateSource.parse(self.rates))
        for name in _DURATIONS:
            value = getattr(self, name)
            if isinstance(value, str):
                raise ConfigError(
                    f"{name} is in seconds (a number), not {value!r}; "
                    f"RuleProfile.parse({name}={value!r}) takes duration strings"
                )
            # duration() refuses what Prometheus cannot spell (negative, sub-millisecond).
            duration(float(value))
            object.__setattr__(self, name, float(value))
        if not isinstance(self.kernel_shards, int) or self.kernel_shards < 1:
            raise ConfigError(
                f"kernel_shards must be a positive integer, not {self.kernel_shards!r}"
            )
        # LiveStatExpressions checks the relations between the durations (window >= 4 x
        # interval, lookback >= 2 x interval) and says which one to change.
        self.expressions  # noqa: B018 - validation only

    @classmethod
    def parse(cls, **values: Any) -> RuleProfile:
        """Build a profile from command-line or config-file values.

        Durations may be Prometheus duration strings (``"15s"``, ``"5m"``) or seconds;
        ``kernel_shards`` may be a string of digits.

        Raises:
            ConfigError: an unknown key or a bad value.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown profile setting(s) {unknown}; known: {sorted(known)}")
        out: dict[str, Any] = {}
        for key, value in values.items():
            if key in _DURATIONS and isinstance(value, str):
                out[key] = parse_duration(value)
            elif key == "kernel_shards" and isinstance(value, str):
                if not value.isdigit():
                    raise ConfigError(f"kernel_shards must be a positive integer, not {value!r}")
                out[key] = int(value)
            else:
                out[key] = value
        return cls(**out)

    @property
    def expressions(self) -> LiveStatExpressions:
        """The shared PromQL definitions for this profile (rules and raw plan alike)."""
        return LiveStatExpressions(
            names=self.names,
            catalog=self.catalog,
            lookback=duration(self.lookback),
            window=duration(self.window),
            interval=duration(self.interval),
            collect_interval=duration(self.collect_interval),
            rates=self.rates,
        )

    @property
    def catalog_digest(self) -> str:
        """A short digest of the catalog and the series names (they are too long for labels).

        Two profiles with the same digest read the same metrics from the same series.
        """
        text = repr((self.catalog, self.names))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def to_labels(self) -> dict[str, str]:
        """The labels of the profile rule (:data:`PROFILE_LABELS`, every value a string)."""
        return {
            "interval": duration(self.interval),
            "window": duration(self.window),
            "lookback": duration(self.lookback),
            "collect_interval": duration(self.collect_interval),
            "rates": self.rates.value,
            "kernel_shards": str(self.kernel_shards),
            "catalog_digest": self.catalog_digest,
        }

    def from_labels(self, labels: Mapping[str, str]) -> RuleProfile:
        """This profile with the settings a loaded profile rule carries.

        ``names`` and ``catalog`` cannot travel in labels: they stay this profile's (compare
        :attr:`catalog_digest` with :meth:`differences` to find out whether they match).

        Raises:
            ConfigError: a label is missing or does not parse.
        """
        missing = [k for k in PROFILE_LABELS if k != "catalog_digest" and k not in labels]
        if missing:
            raise ConfigError(f"the profile rule lacks the label(s) {missing}")
        return replace(
            self,
            interval=parse_duration(labels["interval"]),
            window=parse_duration(labels["window"]),
            lookback=parse_duration(labels["lookback"]),
            collect_interval=parse_duration(labels["collect_interval"]),
            rates=RateSource.parse(labels["rates"]),
            kernel_shards=int(labels["kernel_shards"]),
        )

    def differences(self, labels: Mapping[str, str]) -> dict[str, tuple[str, str | None]]:
        """What a loaded profile rule's labels say differently from this profile.

        Returns:
            ``{setting: (this profile's value, the loaded rules' value or None)}``, empty when
            they agree. ``kernel_shards`` is left out: it changes nothing a reader sees.
        """
        mine = self.to_labels()
        return {
            key: (mine[key], labels.get(key))
            for key in PROFILE_LABELS
            if key != "kernel_shards" and labels.get(key) != mine[key]
        }
