"""VictoriaMetrics and vmalert in the lab (OpenMetrics text imported, verified queryable)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from promstat.errors import LabError
from promstat.testing.lab.openmetrics import LABEL_RE, iter_openmetrics
from promstat.testing.lab.process import (
    ManagedProcess,
    http_ok,
    http_request,
    no_prepare,
    poll,
    require_binary,
    start_with_retries,
)
from promstat.testing.lab.prometheus import instant_query

__all__ = [
    "VictoriaMetricsProcess",
    "start_victoria_metrics",
    "start_vmalert",
]



class VictoriaMetricsProcess(ManagedProcess):
    """A managed single-node VictoriaMetrics.

    Attributes:
        storage_path: its ``-storageDataPath``.
    """

    storage_path: Path

    def import_openmetrics(
        self, text: str | Path, *, verify: bool = True, timeout: float = 60.0
    ) -> None:
        """Import OpenMetrics samples and make them immediately queryable.

        Converts to Prometheus text with millisecond timestamps, POSTs it in chunks to
        ``/api/v1/import/prometheus``, calls ``/internal/force_flush`` (otherwise fresh rows
        stay invisible to queries for up to a few seconds), then checks through
        ``/api/v1/series`` that a spread of the imported series is visible.

        Args:
            text: the OpenMetrics text, or a :class:`~pathlib.Path` to a file holding it.
            verify: check visibility before returning.
            timeout: seconds to wait for the data to become visible.

        Raises:
            LabError: the import was rejected or the data did not become visible.
        """
        chunk: list[str] = []
        size = 0
        series: dict[tuple[str, frozenset[tuple[str, str]]], str] = {}
        min_ts: float | None = None
        max_ts: float | None = None
        for name, labels, value, ts in iter_openmetrics(text):
            key = (name, frozenset(LABEL_RE.findall(labels)))
            if key not in series:
                series[key] = f"{{__name__={json.dumps(name)}{',' if labels else ''}{labels}}}"
            head = f"{name}{{{labels}}}" if labels else name
            if ts is None:
                line = f"{head} {value}\n"
            else:
                t = float(ts)
                min_ts = t if min_ts is None else min(min_ts, t)
                max_ts = t if max_ts is None else max(max_ts, t)
                line = f"{head} {value} {round(t * 1000)}\n"
            chunk.append(line)
            size += len(line)
            if size >= 4 << 20:
                self._post_import("".join(chunk))
                chunk, size = [], 0
        if chunk:
            self._post_import("".join(chunk))
        self.force_flush()
        if verify and series:
            self._verify_visible(list(series.values()), min_ts, max_ts, timeout=timeout)

    def _post_import(self, body: str) -> None:
        status, resp = http_request(
            "POST",
            f"{self.url}/api/v1/import/prometheus",
            data=body.encode("utf-8"),
            headers={"Content-Type": "text/plain"},
            timeout=120.0,
        )
        if status not in (200, 204):
            text = resp[:500].decode("utf-8", "replace")
            raise LabError(f"{self.name}: import failed (HTTP {status}): {text}")

    def force_flush(self) -> None:
        """Make recently ingested rows searchable (``GET /internal/force_flush``).

        Raises:
            LabError: the server refused.
        """
        status, resp = http_request("GET", f"{self.url}/internal/force_flush", timeout=60.0)
        if status != 200:
            text = resp[:500].decode("utf-8", "replace")
            raise LabError(f"{self.name}: force_flush failed (HTTP {status}): {text}")

    def _verify_visible(
        self, selectors: list[str], min_ts: float | None, max_ts: float | None, *, timeout: float
    ) -> None:
        # Check up to 16 series spread over the input (first and last included): the import is
        # ordered and force_flush is all-or-nothing, so these stand in for the whole batch.
        step = max(1, len(selectors) // 15)
        picked = sorted(set(selectors[::step]) | {selectors[-1]})
        now = time.time()
        start = (min_ts if min_ts is not None else now) - 60
        end = (max_ts if max_ts is not None else now) + 60
        params = [("match[]", s) for s in picked]
        params += [("start", f"{start:.3f}"), ("end", f"{end:.3f}")]

        def visible() -> bool:
            status, body = http_request(
                "GET", f"{self.url}/api/v1/series", params=params, timeout=30.0
            )
            return status == 200 and len(json.loads(body)["data"]) >= len(picked)

        if not poll(visible, timeout=timeout):
            raise LabError(
                f"{self.name}: imported series not visible within {timeout:g}s "
                f"(checked {len(picked)} series, e.g. {picked[0]})"
            )

    def query(
        self, expr: str, *, at: float | None = None, nocache: bool = True
    ) -> list[dict[str, Any]]:
        """Run an instant query and return ``data.result`` (a small helper for tests).

        ``nocache=1`` also stops VictoriaMetrics from shifting a near-"now" ``time`` back by
        ``-search.latencyOffset``.

        Raises:
            LabError: the query failed.
        """
        extra = [("nocache", "1")] if nocache else []
        return instant_query(self, expr, at=at, extra=extra)


def start_victoria_metrics(
    *,
    extra_flags: Sequence[str] = (),
    openmetrics: str | Path | None = None,
    disable_cache: bool = True,
    data_dir: Path | None = None,
    startup_timeout: float = 60.0,
    import_timeout: float = 60.0,
) -> VictoriaMetricsProcess:
    """Start single-node VictoriaMetrics on a free loopback port; wait until ``/health`` is OK.

    Args:
        extra_flags: more flags, appended last (e.g. ``-search.latencyOffset=1s`` so samples
            written "now" are visible to instant queries at "now" without ``nocache=1``).
        openmetrics: OpenMetrics text (or a file path) imported after start and verified
            queryable before this returns.
        disable_cache: pass ``-search.disableCache`` so a query run before an import never
            returns a cached, stale answer afterwards (VictoriaMetrics resets its rollup cache
            asynchronously). Benchmarks that want production behaviour pass ``False``.
        data_dir: use this directory (kept on stop) instead of a temporary one.
        startup_timeout: seconds to wait for ``/health``.
        import_timeout: seconds to wait for imported data to become visible.

    Returns:
        The running :class:`VictoriaMetricsProcess`.

    Raises:
        BinaryNotFoundError: victoria-metrics is missing.
        LabError: the server exited, was not ready in time, or the import failed.
    """
    binary = require_binary("victoria-metrics")

    def spawn(port: int, dir_: Path) -> VictoriaMetricsProcess:
        storage = dir_ / "storage"
        argv = [
            binary,
            f"-httpListenAddr=127.0.0.1:{port}",
            f"-storageDataPath={storage}",
            "-retentionPeriod=100y",
            *(["-search.disableCache"] if disable_cache else []),
            *extra_flags,
        ]
        proc = VictoriaMetricsProcess(
            name="victoria-metrics", argv=argv, port=port, data_dir=dir_, owns_data_dir=False
        )
        proc.storage_path = storage
        return proc

    def ready(proc: VictoriaMetricsProcess) -> None:
        proc.wait_ready(
            lambda: http_ok(f"{proc.url}/health", expect=b"OK"),
            timeout=startup_timeout,
            what="healthy",
        )

    proc = start_with_retries("victoria-metrics", data_dir, no_prepare, spawn, ready)
    if openmetrics is not None:
        try:
            proc.import_openmetrics(openmetrics, timeout=import_timeout)
        except LabError as exc:
            raise proc.fail(f"import failed: {exc}") from exc
        except BaseException:
            proc.stop()
            raise
    return proc


def start_vmalert(
    *,
    datasource_url: str,
    remote_write_url: str,
    rule_files: Sequence[Path],
    evaluation_interval: str = "15s",
    extra_flags: Sequence[str] = (),
    data_dir: Path | None = None,
    startup_timeout: float = 60.0,
) -> ManagedProcess:
    """Start vmalert evaluating ``rule_files`` against a datasource; wait until healthy.

    Recording-rule results are remote-written to ``remote_write_url`` and flushed every
    second (``-remoteWrite.flushInterval=1s``; override through ``extra_flags``).

    Args:
        datasource_url: Prometheus-API URL the rules query (e.g. a VictoriaMetrics ``url``).
        remote_write_url: where results go (VictoriaMetrics' base URL; vmalert appends
            ``/api/v1/write``).
        rule_files: rule files (Prometheus rule-file format).
        evaluation_interval: ``-evaluationInterval``.
        extra_flags: more flags, appended last.
        data_dir: use this directory (kept on stop) instead of a temporary one.
        startup_timeout: seconds to wait for ``/health``.

    Returns:
        The running :class:`ManagedProcess`.

    Raises:
        BinaryNotFoundError: vmalert is missing.
        LabError: vmalert exited (e.g. an invalid rule file) or was not ready in time.
    """
    binary = require_binary("vmalert")
    if not rule_files:
        raise LabError("vmalert needs at least one rule file")
    rules = [Path(p).resolve() for p in rule_files]

    def spawn(port: int, dir_: Path) -> ManagedProcess:
        argv = [
            binary,
            f"-httpListenAddr=127.0.0.1:{port}",
            f"-datasource.url={datasource_url}",
            f"-remoteWrite.url={remote_write_url}",
            *(f"-rule={p}" for p in rules),
            f"-evaluationInterval={evaluation_interval}",
            "-remoteWrite.flushInterval=1s",
            *extra_flags,
        ]
        return ManagedProcess(
            name="vmalert", argv=argv, port=port, data_dir=dir_, owns_data_dir=False
        )

    def ready(proc: ManagedProcess) -> None:
        proc.wait_ready(
            lambda: http_ok(f"{proc.url}/health", expect=b"OK"),
            timeout=startup_timeout,
            what="healthy",
        )

    return start_with_retries("vmalert", data_dir, no_prepare, spawn, ready)


# --------------------------------------------------------------------------------------------
# redis-server
