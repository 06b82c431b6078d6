"""promstat: Backend.AI live statistics served from Prometheus.

The names most callers need are re-exported here; everything else lives in its module
(one module per concept, see the README's architecture section)::

    from promstat import LiveStats, PlannerConfig, PrometheusClient

    async with LiveStats("http://prometheus:9090", PlannerConfig(interval="30s")) as stats:
        payloads = await stats.load_kernels(kernel_ids)
"""

from __future__ import annotations

from .catalog import DEFAULT_CATALOG, Capacity, Catalog, Kind, MetricSpec, NodeCurrent
from .client import PrometheusClient, QueryObserver, RetryPolicy
from .compat import PromstatStatClient
from .conventions import SeriesNames
from .errors import (
    APIError,
    BadDataError,
    BatchSizeMismatchError,
    BinaryNotFoundError,
    CanceledError,
    ClosedError,
    ConfigError,
    EventLoopMismatchError,
    ExecutionError,
    InternalError,
    LabError,
    NotAcceptableError,
    NotFoundError,
    PageDeadlineError,
    PromstatError,
    QueryBuildError,
    QueryTimeoutError,
    QueryTooLargeError,
    RequestTimeoutError,
    ResponseDecodeError,
    ResponseTooLargeError,
    RuleError,
    TransportError,
    UnavailableError,
)
from .final import FinalStats
from .history import History, HistoryResult
from .live_stat import render_agent, render_kernel, to_json
from .loader import DataLoader, FetchResult, SharedLoader
from .metrics import PromstatMetrics
from .payload import FrozenDict, thaw
from .planner import BatchOutcome, Planner, PlannerConfig
from .refresh import RefreshConfig, Refresher
from .service import LiveStats
from .utilization import MemRule, Utilization
from .valkey_publisher import ValkeyPublisher

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_CATALOG",
    "APIError",
    "BadDataError",
    "BatchOutcome",
    "BatchSizeMismatchError",
    "BinaryNotFoundError",
    "CanceledError",
    "Capacity",
    "Catalog",
    "ClosedError",
    "ConfigError",
    "DataLoader",
    "EventLoopMismatchError",
    "ExecutionError",
    "FetchResult",
    "FinalStats",
    "FrozenDict",
    "History",
    "HistoryResult",
    "InternalError",
    "Kind",
    "LabError",
    "LiveStats",
    "MemRule",
    "MetricSpec",
    "NodeCurrent",
    "NotAcceptableError",
    "NotFoundError",
    "PageDeadlineError",
    "Planner",
    "PlannerConfig",
    "PrometheusClient",
    "PromstatError",
    "PromstatMetrics",
    "PromstatStatClient",
    "QueryBuildError",
    "QueryObserver",
    "QueryTimeoutError",
    "QueryTooLargeError",
    "RefreshConfig",
    "Refresher",
    "RequestTimeoutError",
    "ResponseDecodeError",
    "ResponseTooLargeError",
    "RetryPolicy",
    "RuleError",
    "SeriesNames",
    "SharedLoader",
    "TransportError",
    "UnavailableError",
    "Utilization",
    "ValkeyPublisher",
    "__version__",
    "render_agent",
    "render_kernel",
    "thaw",
    "to_json",
]
