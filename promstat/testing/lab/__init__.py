"""Managed local servers for tests, benchmarks and the demo.

Starts real Prometheus, VictoriaMetrics, vmalert and redis-server processes on free loopback
ports with temporary data directories, waits until they are ready, and stops them again. It is
deliberately synchronous (``subprocess.Popen`` + stdlib ``urllib``) so it works the same from
pytest fixtures, scripts and the CLI, with or without a running event loop.

Guarantees:

* Everything binds ``127.0.0.1`` only.
* Process output goes to a log file inside the data directory (never a pipe that can fill up
  and block the server); :meth:`ManagedProcess.log_tail` shows it in error messages.
* :meth:`ManagedProcess.stop` is idempotent: SIGTERM, then SIGKILL after a grace period, then
  the temporary data directory is removed. A failed or interrupted start (including
  ``KeyboardInterrupt``) stops the process before the exception propagates. An ``atexit``
  hook stops anything still running when the interpreter exits, and SIGTERM/SIGHUP (which
  skip ``atexit``) stop the servers before the interpreter dies of the signal, unless the
  application installed its own handlers for them. So no server is leaked.
* A server that cannot bind because another process took its port in the meantime is
  restarted on a new port.
* A missing executable raises :class:`~promstat.errors.BinaryNotFoundError`, whose message says
  which Debian package to install.

Deterministic data: :func:`backfill_openmetrics` turns OpenMetrics text (timestamps in seconds,
ending with ``# EOF``) into TSDB blocks with ``promtool tsdb create-blocks-from openmetrics``;
:func:`start_victoria_metrics` imports the same text through ``/api/v1/import/prometheus`` and
verifies that it is queryable before returning.

The package's modules: :mod:`~promstat.testing.lab.process` (the managed process, ports,
executables, cleanup), :mod:`~promstat.testing.lab.prometheus`,
:mod:`~promstat.testing.lab.victoria` (VictoriaMetrics, vmalert),
:mod:`~promstat.testing.lab.redis_server` and :mod:`~promstat.testing.lab.openmetrics` (the
text format conversion). Their public names are importable from here, the lab's entry point.
"""

from __future__ import annotations

from promstat.testing.lab.openmetrics import openmetrics_to_prometheus_text
from promstat.testing.lab.process import (
    BINARY_PACKAGES,
    STOP_GRACE_SECONDS,
    ManagedProcess,
    free_port,
    require_binary,
    running_processes,
    stop_all,
)
from promstat.testing.lab.prometheus import (
    PrometheusProcess,
    backfill_openmetrics,
    restart_prometheus,
    start_prometheus,
)
from promstat.testing.lab.redis_server import start_redis
from promstat.testing.lab.victoria import (
    VictoriaMetricsProcess,
    start_victoria_metrics,
    start_vmalert,
)

__all__ = [
    "BINARY_PACKAGES",
    "STOP_GRACE_SECONDS",
    "ManagedProcess",
    "PrometheusProcess",
    "VictoriaMetricsProcess",
    "backfill_openmetrics",
    "free_port",
    "openmetrics_to_prometheus_text",
    "require_binary",
    "restart_prometheus",
    "running_processes",
    "start_prometheus",
    "start_redis",
    "start_victoria_metrics",
    "start_vmalert",
    "stop_all",
]
