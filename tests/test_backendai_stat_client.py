"""The drop-in against the installed Backend.AI 26.9.6: every stat-client call the manager makes.

The manager's source is scanned (``ast`` over ``site-packages/ai/backend/manager/**``) for the
names it keeps a ``ValkeyStatClient`` under (parameters and attributes annotated with it:
``valkey_stat``, ``valkey_stat_client``, ``_valkey_stat``, ``ValkeyClients.stat``, ...) and for
every method used on them. Each must be on :class:`PromstatStatClient` with the real method's
signature (``inspect.signature`` sees through the resilience decorator): served from promstat
(the live-statistics reads) or forwarded explicitly to the wrapped client. A later release that
calls a new method fails here, so someone decides whether it is live statistics.
"""

from __future__ import annotations

import ast
import inspect
import os
import pathlib
import re
import subprocess
import sys
import typing
import uuid
from collections.abc import AsyncIterator, Collection
from decimal import Decimal
from typing import Any

import msgpack
import pytest
from _support.bai_manager import manager_root, real_valkey_stat, valkey_stat_class

from promstat.errors import ConfigError
from promstat.service import LiveStats
from promstat.stat_client import PromstatStatClient
from promstat.stat_delegate import DELEGATED_METHODS

pytestmark = pytest.mark.backendai

#: The reads promstat answers itself.
SERVED = frozenset(
    {
        "get_kernel_statistics",
        "get_session_statistics_batch",
        "get_user_kernel_statistics_batch",
        "get_agent_statistics_batch",
    }
)


def _holders(trees: list[ast.Module]) -> tuple[set[str], set[str]]:
    """Names annotated ``ValkeyStatClient``: (parameters, attributes/fields)."""
    params: set[str] = set()
    attrs: set[str] = set()

    def is_stat(annotation: ast.expr | None) -> bool:
        return annotation is not None and "ValkeyStatClient" in ast.unparse(annotation)

    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.arg) and is_stat(node.annotation):
                params.add(node.arg)
            elif isinstance(node, ast.AnnAssign) and is_stat(node.annotation):
                target = node.target
                if isinstance(target, ast.Attribute):
                    attrs.add(target.attr)
                elif isinstance(target, ast.Name):
                    # a class field (dataclass, ``_valkey_stat: ValkeyStatClient``) or a local
                    attrs.add(target.id)
                    params.add(target.id)
    return params, attrs


def scan_manager(root: pathlib.Path) -> dict[str, set[str]]:
    """Method name -> files of the manager that use it on a stat-client holder.

    Holders: ``name.method`` for a parameter/local annotated ``ValkeyStatClient``;
    ``x.name.method`` for an attribute/field annotated so (only that form for fields:
    ``ValkeyClients.stat``, while a bare ``stat`` elsewhere is an unrelated local);
    ``x["key"].method`` for a mapping key a holder is stored under (``app["_valkey_stat"]``);
    and ``alias.method`` for an unannotated local assigned from any of these. Files are parsed
    only when their text mentions a holder (parsing all of the manager takes half a minute);
    that text filter is looser than the ``ast`` match.
    """
    sources = {p: p.read_text() for p in sorted(root.rglob("*.py"))}
    annotated = [ast.parse(t, str(p)) for p, t in sources.items() if "ValkeyStatClient" in t]
    params, attrs = _holders(annotated)
    params -= {"stat"}  # ValkeyClients.stat is a field; bare `stat` locals are other things
    assert {"valkey_stat", "valkey_stat_client", "_valkey_stat", "stat"} <= params | attrs
    words = sorted((params | attrs) - {"stat"})
    mention = re.compile("|".join([*(rf"\b{re.escape(n)}\b" for n in words), r"\.stat\s*\."]))
    trees = {
        path: ast.parse(text, str(path)) for path, text in sources.items() if mention.search(text)
    }
    keys: set[str] = set()

    def holds(node: ast.expr, aliases: Collection[str] = ()) -> bool:
        if isinstance(node, ast.Name):
            return node.id in params or node.id in aliases
        if isinstance(node, ast.Attribute):
            return node.attr in attrs
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            return node.slice.value in keys
        return False

    for tree in trees.values():  # mapping keys a holder is stored under
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and holds(node.value):
                for target in node.targets:
                    if isinstance(target, ast.Subscript) and isinstance(target.slice, ast.Constant):
                        keys.add(str(target.slice.value))
    assert "_valkey_stat" in keys  # server.py: root_app["_valkey_stat"] = ...valkey.stat
    used: dict[str, set[str]] = {}
    for path, tree in trees.items():
        aliases = {
            target.id
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign) and holds(node.value)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and holds(node.value, aliases):
                used.setdefault(node.attr, set()).add(str(path.relative_to(root)))
    return used


@pytest.fixture(scope="module")
def manager_calls() -> dict[str, set[str]]:
    return scan_manager(manager_root())


def test_the_scan_finds_the_known_callers(manager_calls: dict[str, set[str]]) -> None:
    # Sanity of the scan itself: the seams issue 20 names, found where they are.
    assert "api/gql_legacy/agent.py" in manager_calls["get_agent_statistics_batch"]
    assert "api/gql_legacy/agent.py" in manager_calls["get_gpu_allocation_map"]
    assert "api/gql_legacy/keypair.py" in manager_calls["get_keypair_query_count"]
    assert "idle.py" in manager_calls["get_kernel_statistics"]
    assert "clients/valkey_client/statistics.py" in manager_calls["get_session_statistics_batch"]
    assert (
        "clients/valkey_client/statistics.py" in manager_calls["get_inference_app_statistics_batch"]
    )
    assert {
        "models/resource_usage.py",
        "repositories/user/repository.py",
        "repositories/project/db_source/db_source.py",
    } <= manager_calls["get_user_kernel_statistics_batch"]
    assert "cli/__main__.py" in manager_calls["execute_command"]  # ValkeyClients.stat.<m>
    assert len(manager_calls) >= 30


def test_every_method_the_manager_calls_is_served_or_delegated(
    manager_calls: dict[str, set[str]],
) -> None:
    real = valkey_stat_class()
    missing = {
        name: sorted(where)
        for name, where in manager_calls.items()
        if name not in SERVED | DELEGATED_METHODS
    }
    assert not missing, (
        f"new stat-client calls in the manager, neither served nor delegated: {missing}"
    )
    # Everything the manager calls exists on the real client (the scan found methods, not noise).
    assert all(callable(getattr(real, name, None)) for name in manager_calls)
    # Served and delegated never overlap: a read is either promstat's or Valkey's.
    assert not SERVED & DELEGATED_METHODS
    # `ping` is called by the common ValkeyHealthChecker on the same object, not by the manager.
    assert "ping" in DELEGATED_METHODS


def _from_backendai(annotation: Any) -> bool:
    """Whether an annotation names a type defined in ``ai.backend`` (not a promstat dep)."""
    if getattr(annotation, "__module__", "").startswith("ai.backend"):
        return True
    return any(_from_backendai(arg) for arg in typing.get_args(annotation))


def _signature_mismatches(name: str) -> list[str]:
    real = inspect.signature(getattr(valkey_stat_class(), name))
    ours = inspect.signature(getattr(PromstatStatClient, name), eval_str=True)
    out: list[str] = []
    if [(p.name, p.kind, p.default) for p in real.parameters.values()] != [
        (p.name, p.kind, p.default) for p in ours.parameters.values()
    ]:
        out.append(f"{name}: parameters {real} != {ours}")
    pairs = [(real.return_annotation, ours.return_annotation, "return")] + [
        (p.annotation, ours.parameters[p.name].annotation, p.name)
        for p in real.parameters.values()
        if p.name in ours.parameters and p.name != "self"
    ]
    for theirs, mine, what in pairs:
        # ai.backend types (AccessKey, TotalResourceData) are Any here: promstat cannot import
        # them; every other annotation must be the same type.
        expected = Any if _from_backendai(theirs) else theirs
        if name not in SERVED and expected is not theirs and mine == Any:
            continue
        if typing.get_origin(theirs) is list and _from_backendai(theirs) and mine == list[Any]:
            continue
        if mine != expected:
            out.append(f"{name}: {what} annotated {mine!r}, upstream {theirs!r}")
    return out


@pytest.mark.parametrize("name", sorted(SERVED | DELEGATED_METHODS))
def test_signatures_match_the_real_client(name: str) -> None:
    assert not _signature_mismatches(name)


def test_the_resilience_decorator_is_seen_through() -> None:
    # If upstream's decorator stopped preserving __wrapped__, every comparison above would
    # compare against (*args, **kwargs) and prove nothing.
    method = valkey_stat_class().get_user_kernel_statistics_batch
    assert hasattr(method, "__wrapped__")
    assert list(inspect.signature(method).parameters) == ["self", "kernel_ids"]


class Recorder:
    """A fallback that checks each forwarded call binds to the real method as it was made."""

    def __init__(self) -> None:
        self.real = valkey_stat_class()
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        signature = inspect.signature(getattr(self.real, name))

        async def method(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(None, *args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            del arguments["self"]
            self.calls.append((name, arguments))
            return ("result of", name)

        return method


def _arguments(name: str) -> dict[str, Any]:
    """Distinct values for every parameter of the real method (by name)."""
    params = list(inspect.signature(getattr(valkey_stat_class(), name)).parameters.values())
    return {p.name: f"<{p.name}>" for p in params[1:]}


@pytest.fixture
async def unreachable_stats() -> AsyncIterator[LiveStats]:
    # Delegated calls never touch Prometheus: a LiveStats whose server does not exist.
    async with LiveStats("http://127.0.0.1:9") as stats:
        yield stats


@pytest.mark.parametrize("name", sorted(DELEGATED_METHODS - {"close"}))
async def test_delegated_calls_reach_the_wrapped_client_unchanged(
    name: str, unreachable_stats: LiveStats
) -> None:
    recorder = Recorder()
    client = PromstatStatClient(unreachable_stats, fallback=recorder)  # type: ignore[arg-type]
    arguments = _arguments(name)
    returns = inspect.signature(getattr(valkey_stat_class(), name)).return_annotation
    expected = None if returns is None else ("result of", name)
    # Called as upstream's callers call it: positionally, then by keyword.
    assert await getattr(client, name)(*arguments.values()) == expected
    assert await getattr(client, name)(**arguments) == expected
    assert recorder.calls == [(name, arguments)] * 2
    with pytest.raises(ConfigError, match=f"{name}.*fallback="):
        await getattr(PromstatStatClient(unreachable_stats), name)(*arguments.values())


async def test_other_methods_are_forwarded_and_close_keeps_live_stats_open(
    unreachable_stats: LiveStats,
) -> None:
    recorder = Recorder()
    client = PromstatStatClient(unreachable_stats, fallback=recorder)  # type: ignore[arg-type]
    # An agent-side write the manager never calls: forwarded by __getattr__.
    assert await client.set_multiple_keys({"k": b"v"}) == ("result of", "set_multiple_keys")
    with pytest.raises(AttributeError):
        _ = client._get_multiple_keys  # private names are never forwarded
    await client.close()
    assert recorder.calls[-1] == ("close", {})
    assert not unreachable_stats.closed  # the shared LiveStats belongs to the manager
    await PromstatStatClient(unreachable_stats).close()  # nothing wrapped: nothing to close


@pytest.mark.slow
async def test_delegated_reads_return_the_real_clients_answers(
    redis_server: Any, unreachable_stats: LiveStats
) -> None:
    """Over redis-server: the values and the ``None``/0 conventions are the real client's."""
    agent, endpoint, access_key = f"i-{uuid.uuid4()}", str(uuid.uuid4()), uuid.uuid4().hex
    async with real_valkey_stat(redis_server.url) as valkey:
        client = PromstatStatClient(unreachable_stats, fallback=valkey)
        # missing: the real conventions (None, 0, [None]) come through
        assert await client.get_gpu_allocation_map(agent) is None
        assert await client.get_agent_container_counts_batch([agent]) == [0]
        assert await client.get_keypair_query_count(access_key) == 0
        assert await client.get_keypair_last_used_time(access_key) is None
        assert await client.get_inference_app_statistics_batch([endpoint]) == [None]
        assert await client.get_agent_container_counts_batch([]) == []
        # present: written the way the manager, agent and app proxy write them
        await client.set_gpu_allocation_map(agent, {"GPU-0": "0.5"})
        await valkey.set_agent_container_count(agent, 3)
        await client.increment_keypair_query_count(access_key)
        app = {"requests": {"current": "7", "capacity": None}}
        await valkey.set(f"inference.{endpoint}.app", msgpack.packb(app))
        assert await client.get_gpu_allocation_map(agent) == {"GPU-0": Decimal("0.5")}
        assert await client.get_agent_container_counts_batch([agent]) == [3]
        assert await client.get_keypair_query_count(access_key) == 1
        last_used = await client.get_keypair_last_used_time(access_key)
        assert isinstance(last_used, float)
        assert await client.get_inference_app_statistics_batch([endpoint]) == [app]
        await client.ping()


PROTOCOL_CHECK = """
from ai.backend.common.clients.valkey_client.valkey_stat.client import ValkeyStatClient
from ai.backend.manager.clients.prometheus.client import PrometheusClient

from promstat.integrations.backendai import UpstreamPrometheusClient
from promstat.stat_delegate import ValkeyStatFallback


def fallback(client: ValkeyStatClient) -> ValkeyStatFallback:
    return client


def upstream(client: PrometheusClient) -> UpstreamPrometheusClient:
    return client


def control(client: ValkeyStatClient) -> int:
    return client  # must be reported: proves mypy sees the real class
"""


@pytest.mark.slow
def test_the_real_classes_satisfy_the_protocols(tmp_path: pathlib.Path) -> None:
    """mypy: the manager's ValkeyStatClient is a valid ``fallback=`` and its PrometheusClient a
    valid upstream, so the one-line swap type-checks in the manager's code too."""
    source = tmp_path / "protocols.py"
    source.write_text(PROTOCOL_CHECK)
    # A config of its own, as in a manager's tree: the repository's pyproject reads ai.* as
    # Any (promstat's own type check must not depend on Backend.AI being installed).
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\nwarn_return_any = True\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(config),
            "--follow-imports=silent",
            "--ignore-missing-imports",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--no-error-summary",
            str(source),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).parents[1])},
    )
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1 and '"ValkeyStatClient", expected "int"' in errors[0], proc.stdout
