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
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self, TypeVar

import yaml

from promstat.errors import BinaryNotFoundError, LabError

__all__ = [
    "BINARY_PACKAGES",
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

#: Debian package that provides each executable the lab starts.
BINARY_PACKAGES: Mapping[str, str] = {
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "victoria-metrics": "victoria-metrics",
    "vmalert": "victoria-metrics",
    "redis-server": "redis-server",
}

#: Seconds between SIGTERM and SIGKILL in :meth:`ManagedProcess.stop`.
STOP_GRACE_SECONDS = 5.0

# A lost race for a port shows up as one of these in the server's log; the start is retried
# on a new port instead of failing the test run.
_PORT_IN_USE_MARKERS = ("address already in use",)
_START_ATTEMPTS = 3

_P = TypeVar("_P", bound="ManagedProcess")

# Re-entrant: the signal safety net below may run stop_all() while the main thread is inside
# one of these critical sections.
_registry_lock = threading.RLock()
_registry: dict[int, ManagedProcess] = {}


def require_binary(name: str) -> str:
    """Return the absolute path of executable ``name``.

    Args:
        name: executable to look up on ``PATH`` (``prometheus``, ``promtool``, ...).

    Returns:
        The path ``shutil.which`` found.

    Raises:
        BinaryNotFoundError: the executable is missing; the message names the Debian package.
    """
    path = shutil.which(name)
    if path is None:
        raise BinaryNotFoundError(binary=name, package=BINARY_PACKAGES.get(name, name))
    return path


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The port is bound and released, so another process may take it before the caller does;
    the ``start_*`` functions retry on a new port when that happens.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def running_processes() -> list[ManagedProcess]:
    """Return the managed processes that have been started and not yet stopped."""
    with _registry_lock:
        return list(_registry.values())


def stop_all() -> None:
    """Stop every managed process that is still running (also registered with ``atexit``).

    All get SIGTERM first, so their shutdowns overlap instead of adding up.
    """
    procs = running_processes()
    for proc in procs:
        with contextlib.suppress(Exception):
            proc._send_sigterm()
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.stop()


atexit.register(stop_all)

# SIGTERM/SIGHUP end Python without running atexit hooks, which would orphan the servers
# (they run in their own sessions, so a process-group kill does not reach them either).
# While no one else has claimed these signals, stop the servers first and then die of the
# same signal, exactly as the default action would have.
_SAFETY_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_safety_net_installed = False


def _die_after_cleanup(signum: int, frame: object) -> None:
    stop_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_signal_safety_net() -> None:
    global _safety_net_installed
    if _safety_net_installed or threading.current_thread() is not threading.main_thread():
        return
    _safety_net_installed = True
    for sig in _SAFETY_SIGNALS:
        if signal.getsignal(sig) == signal.SIG_DFL:
            signal.signal(sig, _die_after_cleanup)


class ManagedProcess:
    """A server process with its own data directory and log file.

    Use it as a context manager or call :meth:`stop`; both are safe to repeat.

    Attributes:
        name: short name used in messages (``prometheus``, ``victoria-metrics``, ...).
        url: base URL without a trailing slash (``http://127.0.0.1:PORT``; ``redis://`` for
            redis-server).
        port: the TCP port the server listens on.
        data_dir: the directory holding the server's data, config and log file.
        log_path: the file that receives the server's stdout and stderr.
        argv: the command line the process was started with.
    """

    def __init__(
        self,
        *,
        name: str,
        argv: Sequence[str],
        port: int,
        data_dir: Path,
        owns_data_dir: bool,
        url: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Spawn ``argv`` with output redirected to ``data_dir/<name>.log``.

        Args:
            name: short name used in messages and for the log file.
            argv: the full command line.
            port: the port the server was told to listen on.
            data_dir: existing directory for data, config and the log file.
            owns_data_dir: remove ``data_dir`` on :meth:`stop` (it was created for this run).
            url: base URL; defaults to ``http://127.0.0.1:PORT``.
            env: extra environment variables for the child.

        Raises:
            LabError: the executable could not be started.
        """
        self.name = name
        self.argv = tuple(argv)
        self.port = port
        self.url = url if url is not None else f"http://127.0.0.1:{port}"
        self.data_dir = data_dir
        self.log_path = data_dir / f"{name}.log"
        self._owns_data_dir = owns_data_dir
        self._stopped = False
        self._stop_lock = threading.RLock()
        self._log: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        child_env = dict(os.environ)
        if env:
            child_env.update(env)
        try:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=data_dir,
                env=child_env,
                # Own process group: a Ctrl-C in the terminal reaches only Python, which then
                # stops the server in order instead of racing it.
                start_new_session=True,
            )
        except OSError as exc:
            self._log.close()
            self._stopped = True
            self._cleanup_dir()
            raise LabError(f"cannot start {name} ({self.argv[0]}): {exc}") from exc
        with _registry_lock:
            _registry[id(self)] = self
        _install_signal_safety_net()

    @property
    def pid(self) -> int:
        """Process id of the server."""
        return self._popen.pid

    @property
    def running(self) -> bool:
        """Whether the server process is still alive."""
        return not self._stopped and self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has ended, else ``None``."""
        return self._popen.poll()

    def log_tail(self, n: int = 50) -> str:
        """Return the last ``n`` lines of the server's log (``""`` when there is none)."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - 64 * 1024))
                data = fh.read()
        except OSError:
            return ""
        lines = data.decode("utf-8", "replace").splitlines()
        return "\n".join(lines[-n:])

    def stop(self, *, keep_data_dir: bool = False) -> None:
        """Stop the server and remove its temporary data directory; idempotent.

        Sends SIGTERM, waits up to :data:`STOP_GRACE_SECONDS`, then SIGKILL.

        Args:
            keep_data_dir: leave even a temporary data directory in place (for
                :func:`restart_prometheus`, which hands its removal to the new process).
        """
        with self._stop_lock:
            if self._stopped:
                return
            try:
                self._terminate()
            finally:
                # Marked only now: a signal handler re-entering stop() mid-way must still
                # finish the job rather than see "already stopped".
                self._stopped = True
                with _registry_lock:
                    _registry.pop(id(self), None)
                self._log.close()
                if not keep_data_dir:
                    self._cleanup_dir()

    def _send_sigterm(self) -> None:
        if self._popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._popen.send_signal(signal.SIGTERM)

    def _terminate(self) -> None:
        if self._popen.poll() is not None:
            return
        self._send_sigterm()
        try:
            self._popen.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self._popen.kill()
            self._popen.wait(timeout=STOP_GRACE_SECONDS)

    def _cleanup_dir(self) -> None:
        if self._owns_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def fail(self, message: str) -> LabError:
        """Stop the server and return a :class:`LabError` carrying ``message`` and the log tail.

        Called while the log file still exists, so the tail is captured before cleanup.
        """
        tail = self.log_tail()
        self.stop()
        detail = f"\n--- last lines of the {self.name} log ---\n{tail}" if tail else ""
        return LabError(f"{self.name}: {message}{detail}")

    def wait_ready(self, check: Callable[[], bool], *, timeout: float, what: str) -> None:
        """Poll ``check`` until it returns true, the process dies, or ``timeout`` passes.

        Args:
            check: returns true when the server is ready; exceptions count as "not yet".
            timeout: seconds before giving up.
            what: the condition, for the error message.

        Raises:
            LabError: the process exited or was not ready in time (it is stopped first).
        """
        died: list[int] = []

        def done() -> bool:
            code = self._popen.poll()
            if code is not None:
                died.append(code)
                return True
            return check()

        ok = _poll(done, timeout=timeout)
        if died:
            raise self.fail(f"exited with status {died[0]} before {what}")
        if not ok:
            raise self.fail(f"not {what} within {timeout:g}s")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.name} {self.url} pid={self._popen.pid} {state}>"


# --------------------------------------------------------------------------------------------
# Polling and HTTP helpers (stdlib only, loopback only)


def _poll(check: Callable[[], bool], *, timeout: float) -> bool:
    """Call ``check`` with growing pauses until it returns true (-> True) or ``timeout`` passes.

    Exceptions from ``check`` (connection refused while a server starts) count as "not yet".
    """
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        with contextlib.suppress(Exception):
            if check():
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.25)


def _http(
    method: str,
    url: str,
    *,
    data: bytes | None = None,
    params: Sequence[tuple[str, str]] = (),
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    """Send one request and return ``(status, body)``; HTTP errors are returned, not raised."""
    if params:
        url = f"{url}?{urllib.parse.urlencode(list(params))}"
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
        exc.close()
        return int(exc.code), body


def _http_ok(url: str, *, expect: bytes | None = None) -> bool:
    status, body = _http("GET", url, timeout=2.0)
    return status == 200 and (expect is None or expect in body)


# --------------------------------------------------------------------------------------------
# Data directories and spawning


def _make_data_dir(name: str, data_dir: Path | None) -> tuple[Path, bool]:
    """Return ``(dir, owned)``: the caller's directory, or a new temporary one we own."""
    if data_dir is not None:
        data_dir = Path(data_dir).resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        return data_dir, False
    # PROMSTAT_LAB_DIR lets a CI job keep lab data on a bigger or faster disk.
    base = os.environ.get("PROMSTAT_LAB_DIR")
    if base:
        Path(base).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"promstat-lab-{name}-", dir=base or None)), True


def _no_prepare(dir_: Path) -> None:
    """Nothing to write before this server starts."""


def _start_with_retries(
    name: str,
    data_dir: Path | None,
    prepare: Callable[[Path], None],
    spawn: Callable[[int, Path], _P],
    ready: Callable[[_P], None],
) -> _P:
    """Prepare a data dir, spawn on a free port and wait until ready.

    ``prepare(dir)`` runs once (config files, backfill); ``spawn(port, dir)`` creates the
    process, ``ready(proc)`` blocks until it serves. When another process grabbed the port in
    between, the start is retried on a new port in the same directory. On any failure or
    interruption (``KeyboardInterrupt`` included) the process is stopped and a temporary
    directory removed before the exception propagates.
    """
    dir_, owned = _make_data_dir(name, data_dir)
    try:
        prepare(dir_)
        for attempt in range(1, _START_ATTEMPTS + 1):
            proc = spawn(free_port(), dir_)
            try:
                ready(proc)
            except LabError as exc:
                proc.stop()
                port_lost = any(m in str(exc).lower() for m in _PORT_IN_USE_MARKERS)
                if port_lost and attempt < _START_ATTEMPTS:
                    continue
                raise
            except BaseException:
                proc.stop()
                raise
            # Only a started server takes over the temporary directory's removal.
            proc._owns_data_dir = owned
            return proc
        raise AssertionError("unreachable")  # pragma: no cover
    except BaseException:
        if owned:
            shutil.rmtree(dir_, ignore_errors=True)
        raise


# --------------------------------------------------------------------------------------------
# Prometheus


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
            status, body = _http("POST", f"{self.url}/-/reload", data=b"", timeout=60.0)
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
        return _instant_query(self, expr, at=at)


def _instant_query(
    proc: ManagedProcess, expr: str, *, at: float | None, extra: Sequence[tuple[str, str]] = ()
) -> list[dict[str, Any]]:
    params = [("query", expr), *extra]
    if at is not None:
        params.append(("time", repr(float(at))))
    status, body = _http(
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
            lambda: _http_ok(f"{proc.url}/-/ready"), timeout=startup_timeout, what="ready"
        )

    return _start_with_retries("prometheus", data_dir, prepare, spawn, ready)


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
            lambda: _http_ok(f"{proc.url}/-/ready"), timeout=startup_timeout, what="ready again"
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

_LABEL_RE = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"')


def _split_sample(line: str) -> tuple[str, str, str] | None:
    """Split an exposition sample line into ``(name, labels_text, rest)``; None if malformed."""
    brace = line.find("{")
    space = line.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        # Walk to the closing brace, skipping quoted label values (they may hold "}" or " ").
        i, in_quote = brace + 1, False
        while i < len(line):
            ch = line[i]
            if in_quote:
                if ch == "\\":
                    i += 1
                elif ch == '"':
                    in_quote = False
            elif ch == '"':
                in_quote = True
            elif ch == "}":
                return line[:brace], line[brace + 1 : i], line[i + 1 :]
            i += 1
        return None
    if space == -1:
        return None
    return line[:space], "", line[space:]


def _iter_openmetrics(
    text: str | Path,
) -> Iterator[tuple[str, str, str, str | None]]:
    """Yield ``(name, labels_text, value, timestamp_seconds)`` for each sample line."""
    if isinstance(text, Path):
        with open(text, encoding="utf-8") as fh:
            yield from _iter_openmetrics_lines(fh)
    else:
        yield from _iter_openmetrics_lines(text.splitlines())


def _iter_openmetrics_lines(lines: Iterable[str]) -> Iterator[tuple[str, str, str, str | None]]:
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = _split_sample(line)
        if parts is None:
            raise LabError(f"malformed OpenMetrics sample line: {line[:200]!r}")
        name, labels, rest = parts
        # Drop an exemplar ("value ts # {...} ...") before splitting value and timestamp.
        tokens = rest.split(" # ", 1)[0].split()
        if not tokens:
            raise LabError(f"OpenMetrics sample line without a value: {line[:200]!r}")
        yield name.strip(), labels, tokens[0], tokens[1] if len(tokens) > 1 else None


def openmetrics_to_prometheus_text(text: str | Path) -> Iterator[str]:
    """Convert OpenMetrics exposition to Prometheus text lines with millisecond timestamps.

    Comment lines (``# TYPE``, ``# HELP``, ``# UNIT``, ``# EOF``) and exemplars are dropped;
    the result is what VictoriaMetrics' ``/api/v1/import/prometheus`` accepts.

    Args:
        text: the OpenMetrics text, or a :class:`~pathlib.Path` to a file holding it.

    Returns:
        An iterator of lines, each ending with ``"\\n"``.

    Raises:
        LabError: a sample line is malformed.
    """
    for name, labels, value, ts in _iter_openmetrics(text):
        head = f"{name}{{{labels}}}" if labels else name
        if ts is None:
            yield f"{head} {value}\n"
        else:
            yield f"{head} {value} {round(float(ts) * 1000)}\n"


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
        for name, labels, value, ts in _iter_openmetrics(text):
            key = (name, frozenset(_LABEL_RE.findall(labels)))
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
        status, resp = _http(
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
        status, resp = _http("GET", f"{self.url}/internal/force_flush", timeout=60.0)
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
            status, body = _http("GET", f"{self.url}/api/v1/series", params=params, timeout=30.0)
            return status == 200 and len(json.loads(body)["data"]) >= len(picked)

        if not _poll(visible, timeout=timeout):
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
        return _instant_query(self, expr, at=at, extra=extra)


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
            lambda: _http_ok(f"{proc.url}/health", expect=b"OK"),
            timeout=startup_timeout,
            what="healthy",
        )

    proc = _start_with_retries("victoria-metrics", data_dir, _no_prepare, spawn, ready)
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
            lambda: _http_ok(f"{proc.url}/health", expect=b"OK"),
            timeout=startup_timeout,
            what="healthy",
        )

    return _start_with_retries("vmalert", data_dir, _no_prepare, spawn, ready)


# --------------------------------------------------------------------------------------------
# redis-server


def _redis_ping(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith(b"+PONG")


def start_redis(
    *,
    extra_flags: Sequence[str] = (),
    data_dir: Path | None = None,
    startup_timeout: float = 30.0,
) -> ManagedProcess:
    """Start redis-server without persistence on a free loopback port; wait until PING works.

    The returned process's ``url`` is ``redis://127.0.0.1:PORT`` (usable with
    ``redis.asyncio.from_url``).

    Args:
        extra_flags: more arguments, appended last (e.g. ``["--maxmemory", "1gb"]``).
        data_dir: use this directory (kept on stop) instead of a temporary one.
        startup_timeout: seconds to wait for ``+PONG``.

    Returns:
        The running :class:`ManagedProcess`.

    Raises:
        BinaryNotFoundError: redis-server is missing.
        LabError: the server exited or was not ready in time.
    """
    binary = require_binary("redis-server")

    def spawn(port: int, dir_: Path) -> ManagedProcess:
        argv = [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(dir_),
            *extra_flags,
        ]  # fmt: skip
        return ManagedProcess(
            name="redis-server",
            argv=argv,
            port=port,
            data_dir=dir_,
            owns_data_dir=False,
            url=f"redis://127.0.0.1:{port}",
        )

    def ready(proc: ManagedProcess) -> None:
        proc.wait_ready(
            lambda: _redis_ping(proc.port), timeout=startup_timeout, what="answering PING"
        )

    return _start_with_retries("redis-server", data_dir, _no_prepare, spawn, ready)
