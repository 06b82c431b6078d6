"""redis-server in the lab: the stand-in for Valkey."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path

from promstat.testing.lab.process import (
    ManagedProcess,
    no_prepare,
    require_binary,
    start_with_retries,
)

__all__ = ["start_redis"]


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

    return start_with_retries("redis-server", data_dir, no_prepare, spawn, ready)
