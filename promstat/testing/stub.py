"""A do-nothing :class:`~promstat.api.PrometheusAPI` for test doubles to build on.

A test double overrides the members its test exercises (usually ``query_vector``) and
inherits the rest: a 30 s ``timeout``, no rule groups, and range queries and an ``aclose``
that do nothing. So every double satisfies the one protocol the readers use, and none needs
``getattr`` probing::

    class Hung(StubAPI):
        async def query_vector(self, query, *, labels, time=None):
            await asyncio.Event().wait()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from promstat.api import MatrixResult, TimeArg, VectorResult
from promstat.wire import RuleGroup

__all__ = ["StubAPI"]


class StubAPI:
    """Answers every instant and range query with nothing, lists no rules.

    Attributes:
        timeout: the deadline it claims (seconds), as PrometheusClient's default.
        rule_groups: what :meth:`rules` answers.
        closed: how many times :meth:`aclose` was called.
    """

    # Class attributes, so a subclass with an __init__ of its own need not call this one's.
    timeout: float = 30.0
    rule_groups: Sequence[RuleGroup] = ()
    closed: int = 0

    async def query_vector(
        self, query: str, *, labels: type[Any], time: TimeArg | None = None
    ) -> VectorResult[Any]:
        """An empty vector."""
        return VectorResult([])

    async def query_range(
        self, query: str, *, start: TimeArg, end: TimeArg, step: float | str, labels: type[Any]
    ) -> MatrixResult[Any]:
        """An empty matrix."""
        return MatrixResult([])

    async def rules(self, type: Literal["record", "alert"] | None = None) -> list[RuleGroup]:
        """:attr:`rule_groups`."""
        return list(self.rule_groups)

    async def aclose(self) -> None:
        """Count the call."""
        self.closed += 1
