"""promstat: Backend.AI live statistics served from Prometheus.

The names most callers need are re-exported here; everything else lives in its module
(one module per concept, see the README's architecture section)::

    from promstat import ClientConfig, LiveStats

    # No interval to give: LiveStats reads how the rules were rendered from Prometheus.
    async with LiveStats("http://prometheus:9090", client=ClientConfig(timeout=10)) as stats:
        payloads = await stats.load_kernels(kernel_ids)
"""

from __future__ import annotations

from promstat.api import PrometheusAPI
from promstat.catalog import DEFAULT_CATALOG, Catalog
from promstat.client import ClientConfig, PrometheusClient, RetryPolicy
from promstat.conventions import SeriesNames
from promstat.errors import (
    APIError,
    ClosedError,
    ConfigError,
    PageDeadlineError,
    PromstatError,
    QueryTooLargeError,
    RequestTimeoutError,
    ResponseDecodeError,
    TransportError,
)
from promstat.final import FinalConfig
from promstat.history import History, HistoryResult
from promstat.loader import CacheConfig
from promstat.payload import FrozenDict, thaw
from promstat.planner import PlannerConfig
from promstat.profile import RuleProfile
from promstat.refresh import RefreshConfig
from promstat.selfmetrics import PromstatMetrics
from promstat.service import LiveStats
from promstat.stat_client import PromstatStatClient
from promstat.utilization import Utilization

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_CATALOG",
    "APIError",
    "CacheConfig",
    "Catalog",
    "ClientConfig",
    "ClosedError",
    "ConfigError",
    "FinalConfig",
    "FrozenDict",
    "History",
    "HistoryResult",
    "LiveStats",
    "PageDeadlineError",
    "PlannerConfig",
    "PrometheusAPI",
    "PrometheusClient",
    "PromstatError",
    "PromstatMetrics",
    "PromstatStatClient",
    "QueryTooLargeError",
    "RefreshConfig",
    "RequestTimeoutError",
    "ResponseDecodeError",
    "RetryPolicy",
    "RuleProfile",
    "SeriesNames",
    "TransportError",
    "Utilization",
    "__version__",
    "thaw",
]
