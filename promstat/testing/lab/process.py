"""A managed server process: start on a free loopback port, wait until ready, stop.

The base of every server the lab starts (:class:`ManagedProcess`), the registry that stops
whatever is still running at exit or on SIGTERM/SIGHUP, free ports, executables (a missing
one raises :class:`~promstat.errors.BinaryNotFoundError` naming its Debian package), data
directories, and a start retried on a new port when another process took the port.
"""

from __future__ import annotations

import atexit
import contextlib
import os
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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self, TypeVar

from promstat.errors import BinaryNotFoundError, LabError

__all__ = [
    "BINARY_PACKAGES",
    "STOP_GRACE_SECONDS",
    "ManagedProcess",
    "free_port",
    "http_ok",
    "http_request",
    "no_prepare",
    "poll",
    "require_binary",
    "running_processes",
    "start_with_retries",
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
                :func:`~promstat.testing.lab.prometheus.restart_prometheus`, which hands its
                removal to the new process).
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

        ok = poll(done, timeout=timeout)
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


def poll(check: Callable[[], bool], *, timeout: float) -> bool:
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


def http_request(
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


def http_ok(url: str, *, expect: bytes | None = None) -> bool:
    status, body = http_request("GET", url, timeout=2.0)
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


def no_prepare(dir_: Path) -> None:
    """Nothing to write before this server starts."""


def start_with_retries(
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
