"""Prometheus in the lab: start, restart, and backfill OpenMetrics text into its TSDB."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from promstat.errors import LabError
from promstat.testing.lab.process import (
    ManagedProcess,
    http_ok,
    http_request,
    require_binary,
    start_with_retries,
)

__all__ = [
    "PrometheusProcess",
    "backfill_openmetrics",
    "instant_query",
    "restart_prometheus",
    "start_prometheus",
]



def backfill_openmetrics(text: str | Path, data_dir: Path, *, timeout: float = 600.0) -> None:
    """Write OpenMetrics samples as TSDB blocks into ``data_dir`` (before Prometheus starts).

    Runs ``promtool tsdb create-blocks-from openmetrics INPUT data_dir``. OpenMetrics
    timestamps are in **seconds**, samples of a series must be in time order, and the text must
    end with ``# EOF``.

    Args:
        text: the OpenMetrics exposition, or a :class:`~pathlib.Path` to a file holding it.
        data_dir: the TSDB directory (``--storage.tsdb.path``); created if missing.
        timeout: seconds promtool may take.

    Raises:
        BinaryNotFoundError: promtool is not installed.
        LabError: promtool failed; the message carries its output.
    """
    promtool = require_binary("promtool")
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if isinstance(text, Path):
            input_path = text
        else:
            if not text.rstrip().endswith("# EOF"):
                raise LabError("OpenMetrics text for backfill must end with '# EOF'")
            tmp = stack.enter_context(
                tempfile.NamedTemporaryFile(
                    "w", suffix=".om.txt", dir=data_dir.parent, encoding="utf-8", delete=True
                )
            )
            tmp.write(text if text.endswith("\n") else text + "\n")
            tmp.flush()
            input_path = Path(tmp.name)
        try:
            result = subprocess.run(
                [
                    promtool,
                    "tsdb",
                    "create-blocks-from",
                    "openmetrics",
                    str(input_path),
                    str(data_dir),
                ],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"promtool backfill did not finish within {timeout:g}s") from exc
    if result.returncode != 0:
        out = (result.stdout + result.stderr).decode("utf-8", "replace")[-4000:]
        raise LabError(f"promtool tsdb create-blocks-from openmetrics failed:\n{out}")


def _prometheus_config(
    *,
    scrape_targets: Sequence[str],
    scrape_interval: str,
    evaluation_interval: str | None,
    rule_files: Sequence[Path],
) -> str:
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": scrape_interval,
            "evaluation_interval": evaluation_interval or scrape_interval,
        },
        "rule_files": [str(Path(p).resolve()) for p in rule_files],
        "scrape_configs": [
            {
                "job_name": "promstat",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": list(scrape_targets)}],
            }
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


class PrometheusProcess(ManagedProcess):
    """A managed Prometheus started with ``--web.enable-lifecycle``.

    Attributes:
        config_path: the ``prometheus.yml`` it reads.
        tsdb_path: its ``--storage.tsdb.path``.
        scrape_targets, scrape_interval, evaluation_interval, rule_files: the current config.
    """

    config_path: Path
    tsdb_path: Path
    scrape_targets: tuple[str, ...]
    scrape_interval: str
    evaluation_interval: str | None
    rule_files: tuple[Path, ...]

    def write_config(self) -> None:
        """Write ``prometheus.yml`` from the current attributes (does not reload)."""
        text = _prometheus_config(
            scrape_targets=self.scrape_targets,
            scrape_interval=self.scrape_interval,
            evaluation_interval=self.evaluation_interval,
            rule_files=self.rule_files,
        )
        # Write-then-rename so a concurrent reload never reads a half-written file.
        tmp = self.config_path.with_suffix(".yml.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(self.config_path)

    def reload(self) -> None:
        """Make Prometheus re-read its config and rule files (``POST /-/reload``).

        Prometheus answers after the reload is done, so new rules are loaded on return.

        Raises:
            LabError: the server rejected the configuration (the message carries its error).
        """
        try:
            status, body = http_request("POST", f"{self.url}/-/reload", data=b"", timeout=60.0)
        except OSError as exc:
            raise LabError(f"{self.name}: reload request failed: {exc}") from exc
        if status != 200:
            text = body.decode("utf-8", "replace").strip()
            raise LabError(f"{self.name}: reload failed (HTTP {status}): {text}")

    def configure(
        self,
        *,
        scrape_targets: Sequence[str] | None = None,
        rule_files: Sequence[Path] | None = None,
        scrape_interval: str | None = None,
        evaluation_interval: str | None = None,
        reload: bool = True,
    ) -> None:
        """Replace parts of the configuration, rewrite ``prometheus.yml`` and reload.

        Arguments left as ``None`` keep their current value.

        Raises:
            LabError: the reload failed.
        """
        if scrape_targets is not None:
            self.scrape_targets = tuple(scrape_targets)
        if rule_files is not None:
            self.rule_files = tuple(Path(p).resolve() for p in rule_files)
        if scrape_interval is not None:
            self.scrape_interval = scrape_interval
        if evaluation_interval is not None:
            self.evaluation_interval = evaluation_interval
        self.write_config()
        if reload:
            self.reload()

    def query(self, expr: str, *, at: float | None = None) -> list[dict[str, Any]]:
        """Run an instant query and return ``data.result`` (a small helper for tests).

        Raises:
            LabError: the query failed.
        """
        return instant_query(self, expr, at=at)


def instant_query(
    proc: ManagedProcess, expr: str, *, at: float | None, extra: Sequence[tuple[str, str]] = ()
) -> list[dict[str, Any]]:
    params = [("query", expr), *extra]
    if at is not None:
        params.append(("time", repr(float(at))))
    status, body = http_request(
        "POST",
        f"{proc.url}/api/v1/query",
        data=urllib.parse.urlencode(params).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=30.0,
    )
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if status != 200 or not isinstance(payload, dict) or payload.get("status") != "success":
        text = body[:500].decode("utf-8", "replace")
        raise LabError(f"{proc.name}: query {expr!r} failed (HTTP {status}): {text}")
    result: list[dict[str, Any]] = payload["data"]["result"]
    return result


def start_prometheus(
    *,
    scrape_targets: Sequence[str] = (),
    scrape_interval: str = "15s",
    evaluation_interval: str | None = None,
    rule_files: Sequence[Path] = (),
    openmetrics: str | Path | None = None,
    extra_flags: Sequence[str] = (),
    data_dir: Path | None = None,
    startup_timeout: float = 60.0,
) -> PrometheusProcess:
    """Start Prometheus on a free loopback port and wait until ``/-/ready`` answers.

    Args:
        scrape_targets: ``host:port`` strings scraped at ``/metrics`` by the job ``promstat``.
        scrape_interval: global scrape interval.
        evaluation_interval: rule evaluation interval (defaults to ``scrape_interval``).
        rule_files: rule files to load.
        openmetrics: OpenMetrics text (or a file path) backfilled into the TSDB before start.
        extra_flags: more command-line flags, appended last (so they can override ours).
        data_dir: use this directory (kept on stop) instead of a temporary one.
        startup_timeout: seconds to wait for readiness.

    Returns:
        The running :class:`PrometheusProcess`; stop it or use it as a context manager.

    Raises:
        BinaryNotFoundError: prometheus or promtool is missing.
        LabError: the backfill failed, or the server exited or was not ready in time.
    """
    binary = require_binary("prometheus")
    if openmetrics is not None:
        require_binary("promtool")
    targets = tuple(scrape_targets)
    rules = tuple(Path(p).resolve() for p in rule_files)

    def prepare(dir_: Path) -> None:
        if openmetrics is not None:
            backfill_openmetrics(openmetrics, dir_ / "tsdb")
        (dir_ / "prometheus.yml").write_text(
            _prometheus_config(
                scrape_targets=targets,
                scrape_interval=scrape_interval,
                evaluation_interval=evaluation_interval,
                rule_files=rules,
            ),
            encoding="utf-8",
        )

    def spawn(port: int, dir_: Path) -> PrometheusProcess:
        tsdb = dir_ / "tsdb"
        config_path = dir_ / "prometheus.yml"
        argv = [
            binary,
            f"--config.file={config_path}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.tsdb.path={tsdb}",
            # Backfilled data lies in the past; the default 15d retention would delete it.
            "--storage.tsdb.retention.time=100y",
            "--web.enable-lifecycle",
            *extra_flags,
        ]
        proc = PrometheusProcess(
            name="prometheus", argv=argv, port=port, data_dir=dir_, owns_data_dir=False
        )
        proc.config_path = config_path
        proc.tsdb_path = tsdb
        proc.scrape_targets = targets
        proc.scrape_interval = scrape_interval
        proc.evaluation_interval = evaluation_interval
        proc.rule_files = rules
        return proc

    def ready(proc: PrometheusProcess) -> None:
        proc.wait_ready(
            lambda: http_ok(f"{proc.url}/-/ready"), timeout=startup_timeout, what="ready"
        )

    return start_with_retries("prometheus", data_dir, prepare, spawn, ready)


def restart_prometheus(
    old: PrometheusProcess, *, startup_timeout: float = 60.0
) -> PrometheusProcess:
    """Start Prometheus again on the same port, data directory and command line.

    Stops ``old`` first when it still runs (keeping its data directory), the way an operator's
    restart or a crash-and-respawn does; what was stored (backfilled blocks, the WAL) is
    served again. A temporary data directory stays owned: the new process removes it on
    :meth:`~ManagedProcess.stop`.

    Args:
        old: the server to restart (running or stopped with ``keep_data_dir=True``).
        startup_timeout: seconds to wait for ``/-/ready``.

    Returns:
        The new :class:`PrometheusProcess` (``old`` stays stopped).

    Raises:
        LabError: the data directory is gone, or the server did not become ready (for
            example because another process took the port in the meantime).
    """
    owned = old._owns_data_dir
    old.stop(keep_data_dir=True)
    if not old.data_dir.is_dir():
        raise LabError(f"{old.name}: cannot restart, {old.data_dir} was removed")
    proc = PrometheusProcess(
        name=old.name, argv=old.argv, port=old.port, data_dir=old.data_dir, owns_data_dir=False
    )
    for attr in ("config_path", "tsdb_path", "scrape_targets", "scrape_interval",
                 "evaluation_interval", "rule_files"):  # fmt: skip
        setattr(proc, attr, getattr(old, attr))
    try:
        proc.wait_ready(
            lambda: http_ok(f"{proc.url}/-/ready"), timeout=startup_timeout, what="ready again"
        )
    except BaseException:
        if owned:  # nobody else will remove it now
            shutil.rmtree(old.data_dir, ignore_errors=True)
        raise
    # Only a restarted server takes over the removal of a temporary directory.
    proc._owns_data_dir = owned
    old._owns_data_dir = False
    return proc


# --------------------------------------------------------------------------------------------
# VictoriaMetrics
