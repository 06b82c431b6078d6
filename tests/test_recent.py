"""Unit tests of :mod:`promstat.recent` (real servers: tests/test_backendai_terminated.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from promstat.errors import ConfigError, TransportError
from promstat.final import FinalStats
from promstat.planner import Planner, PlannerConfig
from promstat.recent import RecentlyTerminated

NOW = 1_700_000_000.0


class LastSeenClient:
    """Answers last-seen queries with fixed times; counts what it is asked."""

    def __init__(self, seen: dict[str, float], *, fail: bool = False) -> None:
        self.seen = seen
        self.fail = fail
        self.queries: list[str] = []

    async def query_vector(self, query: str, **kwargs: Any) -> Any:
        self.queries.append(query)
        if self.fail:
            raise TransportError("connection refused", url="http://prometheus:9090")
        series = [
            SimpleNamespace(metric=SimpleNamespace(id=k), value=(NOW, repr(t)))
            for k, t in self.seen.items()
            if f'"{k}"' in query or f"{k}|" in query or f"|{k}" in query
        ]
        return SimpleNamespace(series=series, warnings=[])


def recent(client: Any, **kwargs: Any) -> RecentlyTerminated:
    config = PlannerConfig()
    final = FinalStats(client, Planner(client, config), clock=lambda: NOW)
    return RecentlyTerminated(final, **kwargs)  # the final stats' clock


def test_bad_settings_are_config_errors() -> None:
    client = LastSeenClient({})
    for kwargs in ({"window": 0}, {"detention": -1}, {"step": 0}, {"max_entries": 0}):
        with pytest.raises(ConfigError):
            recent(client, **kwargs)


def test_the_query_looks_back_the_window_at_the_scrape_interval() -> None:
    (query,) = recent(LastSeenClient({}), window=86400).queries(["b", "a", "a"])
    assert query == (
        "max by (kernel_id) (max_over_time(timestamp(backendai_container_utilization"
        '{kernel_id=~"a|b",value_type="current"})[1d:15s]))'
    )


async def test_settled_times_are_cached_and_fresh_ones_asked_again() -> None:
    old, fresh = NOW - 3600, NOW - 30  # gone for an hour; last seen 30 s ago
    client = LastSeenClient({"old": old, "fresh": fresh})
    lookup = recent(client, max_entries=1)
    assert await lookup.last_seen(["old", "fresh", "never"]) == {"old": old, "fresh": fresh}
    assert len(client.queries) == 1
    # "old" is settled (cached); "fresh" may still move and "never" may yet start.
    assert await lookup.last_seen(["old"]) == {"old": old}
    assert len(client.queries) == 1
    await lookup.last_seen(["fresh", "never"])
    assert len(client.queries) == 2


async def test_a_failed_lookup_answers_its_ids_with_the_error() -> None:
    lookup = recent(LastSeenClient({}, fail=True))
    (value,) = await lookup.load(["k"])
    assert isinstance(value, TransportError)
    assert await recent(LastSeenClient({})).load(["k"]) == [None]
