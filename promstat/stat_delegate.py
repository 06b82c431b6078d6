"""Everything the manager asks its ``ValkeyStatClient`` that is not live statistics, delegated.

Backend.AI 26.9 hands *one* ``ValkeyStatClient`` object (``ValkeyClients.stat``) to every
component that reads or writes the statistics database: the legacy GraphQL context
(``ctx.valkey_stat``: GPU allocation maps, container counts, keypair query counters), the
deployment repository (inference-app statistics), resource-preset and scheduler caches, the
auth middleware, the health checker (``ping``) and shutdown (``close``). Replacing that object
with :class:`~promstat.stat_client.PromstatStatClient` must not take any of those away, so the
drop-in *wraps* the existing client: live statistics come from Prometheus, everything else is
forwarded to the wrapped client unchanged.

Why explicit methods and not only ``__getattr__``: each method below has the exact name,
parameters and defaults of ``ValkeyStatClient`` 26.9.6 (``tests/test_backendai_stat_client.py``
compares them with ``inspect.signature`` of the installed class and scans the installed manager
for every method called on a stat-client attribute), so type checkers see them and a later
release that calls a new method fails that test instead of silently reading Valkey. The
``__getattr__`` below is the safety net for what the manager does not call (agent-side writes
such as ``set_multiple_keys``, methods a later release adds): those are forwarded too, so the
swap never raises ``AttributeError`` in production. Types that live in ``ai.backend`` (not a
dependency of promstat) are ``Any`` here; everything else is typed as upstream.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Protocol

from promstat.errors import ConfigError

__all__ = ["DELEGATED_METHODS", "ValkeyStatDelegate", "ValkeyStatFallback"]


class ValkeyStatFallback(Protocol):
    """The methods of Backend.AI's ``ValkeyStatClient`` that the drop-in forwards."""

    async def close(self) -> None: ...
    async def ping(self) -> None: ...
    async def get_keypair_query_count(self, access_key: str) -> int: ...
    async def get_keypair_last_used_time(self, access_key: str) -> float | None: ...
    async def increment_keypair_query_count(self, access_key: str) -> None: ...
    async def get_gpu_allocation_map(self, agent_id: str) -> dict[str, Decimal] | None: ...
    async def set_gpu_allocation_map(self, agent_id: str, alloc_map: Mapping[str, Any]) -> None: ...
    async def get_kernel_commit_statuses(self, kernel_ids: list[str]) -> list[bytes | None]: ...
    async def get_abuse_report(self, kernel_id: str) -> str | None: ...
    async def get_agent_container_counts_batch(self, agent_ids: list[str]) -> list[int]: ...
    async def get_inference_app_statistics_batch(
        self, endpoint_ids: list[str]
    ) -> list[dict[str, Any] | None]: ...
    async def get_volume_usage(self, proxy_name: str, volume_name: str) -> bytes | None: ...
    async def get_computer_metadata(self) -> dict[str, bytes]: ...
    async def get_resource_preset_by_id(self, preset_id: str) -> bytes | None: ...
    async def get_resource_preset_by_name(self, name: str) -> bytes | None: ...
    async def get_resource_preset_list(self, scaling_group: str | None = None) -> bytes | None: ...
    async def get_resource_preset_check_data(
        self, access_key: str, group: str, domain: str, scaling_group: str | None = None
    ) -> bytes | None: ...
    async def set_resource_preset_by_id_and_name(
        self, preset_id: str, name: str, value: bytes, expire_sec: int = 60
    ) -> None: ...
    async def set_resource_preset_list(
        self, scaling_group: str | None, value: bytes, expire_sec: int = 60
    ) -> None: ...
    async def set_resource_preset_check_data(
        self,
        access_key: str,
        group: str,
        domain: str,
        scaling_group: str | None,
        value: bytes,
        expire_sec: int = 60,
    ) -> None: ...
    async def delete_resource_preset(
        self, preset_id: str | None = None, name: str | None = None
    ) -> int: ...
    async def invalidate_all_resource_presets(self) -> None: ...
    async def get_total_resource_slots(self) -> Any: ...
    async def set_total_resource_slots(self, total_slots: Any, ttl_seconds: int = 300) -> None: ...
    async def invalidate_kernel_related_cache(self, access_keys: list[Any]) -> None: ...
    async def set_manager_status(
        self, node_id: str, pid: int, status_data: bytes, lifetime: int
    ) -> None: ...
    async def scan_and_get_manager_status(self, pattern: str) -> list[bytes | None]: ...
    async def delete(self, keys: Sequence[str]) -> int: ...
    async def config_get(self, parameters: Sequence[str]) -> dict[bytes, bytes]: ...
    async def execute_command(self, args: Sequence[str]) -> Any: ...


class ValkeyStatDelegate:
    """Forwards the non-statistics methods of ``ValkeyStatClient`` to a wrapped client.

    Args:
        fallback: the manager's existing ``ValkeyStatClient`` (anything with its methods);
            ``None`` makes every forwarded method raise :class:`~promstat.errors.ConfigError`
            saying what to pass (for processes that read only live statistics).
    """

    def __init__(self, fallback: ValkeyStatFallback | None = None) -> None:
        self.fallback = fallback

    def _valkey(self, method: str) -> ValkeyStatFallback:
        if self.fallback is None:
            raise ConfigError(
                f"{type(self).__name__}.{method}() is not live statistics and is served by "
                "the wrapped ValkeyStatClient: construct it with fallback=<the manager's "
                "ValkeyStatClient>"
            )
        return self.fallback

    def __getattr__(self, name: str) -> Any:
        # Only reached for names not defined on the class: forward public ones (agent-side
        # writes, methods of a later release) so the swap never raises AttributeError.
        if name.startswith("_") or name == "fallback":
            raise AttributeError(name)
        return getattr(self._valkey(name), name)

    async def close(self) -> None:
        """Close the wrapped client (the shared ``LiveStats`` is closed by its owner)."""
        if self.fallback is not None:
            await self.fallback.close()

    async def ping(self) -> None:
        """Ping the wrapped client (the manager's Valkey health check)."""
        await self._valkey("ping").ping()

    async def get_keypair_query_count(self, access_key: str) -> int:
        """Delegated: the API query count of a keypair (0 when unknown)."""
        return await self._valkey("get_keypair_query_count").get_keypair_query_count(access_key)

    async def get_keypair_last_used_time(self, access_key: str) -> float | None:
        """Delegated: the last API call time of a keypair, or ``None``."""
        valkey = self._valkey("get_keypair_last_used_time")
        return await valkey.get_keypair_last_used_time(access_key)

    async def increment_keypair_query_count(self, access_key: str) -> None:
        """Delegated: count one API call of a keypair (auth middleware)."""
        valkey = self._valkey("increment_keypair_query_count")
        await valkey.increment_keypair_query_count(access_key)

    async def get_gpu_allocation_map(self, agent_id: str) -> dict[str, Decimal] | None:
        """Delegated: an agent's GPU allocation map, or ``None``."""
        return await self._valkey("get_gpu_allocation_map").get_gpu_allocation_map(agent_id)

    async def set_gpu_allocation_map(self, agent_id: str, alloc_map: Mapping[str, Any]) -> None:
        """Delegated: store an agent's GPU allocation map."""
        await self._valkey("set_gpu_allocation_map").set_gpu_allocation_map(agent_id, alloc_map)

    async def get_kernel_commit_statuses(self, kernel_ids: list[str]) -> list[bytes | None]:
        """Delegated: image-commit statuses of kernels."""
        valkey = self._valkey("get_kernel_commit_statuses")
        return await valkey.get_kernel_commit_statuses(kernel_ids)

    async def get_abuse_report(self, kernel_id: str) -> str | None:
        """Delegated: the abuse report of a kernel, or ``None``."""
        return await self._valkey("get_abuse_report").get_abuse_report(kernel_id)

    async def get_agent_container_counts_batch(self, agent_ids: list[str]) -> list[int]:
        """Delegated: container counts per agent (0 when unknown)."""
        valkey = self._valkey("get_agent_container_counts_batch")
        return await valkey.get_agent_container_counts_batch(agent_ids)

    async def get_inference_app_statistics_batch(
        self, endpoint_ids: list[str]
    ) -> list[dict[str, Any] | None]:
        """Delegated: inference-app statistics per endpoint (written by the app proxy)."""
        valkey = self._valkey("get_inference_app_statistics_batch")
        return await valkey.get_inference_app_statistics_batch(endpoint_ids)

    async def get_volume_usage(self, proxy_name: str, volume_name: str) -> bytes | None:
        """Delegated: cached volume usage."""
        return await self._valkey("get_volume_usage").get_volume_usage(proxy_name, volume_name)

    async def get_computer_metadata(self) -> dict[str, bytes]:
        """Delegated: the agents' compute-plugin metadata."""
        return await self._valkey("get_computer_metadata").get_computer_metadata()

    async def get_resource_preset_by_id(self, preset_id: str) -> bytes | None:
        """Delegated: a cached resource preset."""
        return await self._valkey("get_resource_preset_by_id").get_resource_preset_by_id(preset_id)

    async def get_resource_preset_by_name(self, name: str) -> bytes | None:
        """Delegated: a cached resource preset."""
        valkey = self._valkey("get_resource_preset_by_name")
        return await valkey.get_resource_preset_by_name(name)

    async def get_resource_preset_list(self, scaling_group: str | None = None) -> bytes | None:
        """Delegated: the cached resource preset list."""
        valkey = self._valkey("get_resource_preset_list")
        return await valkey.get_resource_preset_list(scaling_group)

    async def get_resource_preset_check_data(
        self, access_key: str, group: str, domain: str, scaling_group: str | None = None
    ) -> bytes | None:
        """Delegated: cached resource-preset check data."""
        valkey = self._valkey("get_resource_preset_check_data")
        return await valkey.get_resource_preset_check_data(access_key, group, domain, scaling_group)

    async def set_resource_preset_by_id_and_name(
        self, preset_id: str, name: str, value: bytes, expire_sec: int = 60
    ) -> None:
        """Delegated: cache a resource preset."""
        valkey = self._valkey("set_resource_preset_by_id_and_name")
        await valkey.set_resource_preset_by_id_and_name(preset_id, name, value, expire_sec)

    async def set_resource_preset_list(
        self, scaling_group: str | None, value: bytes, expire_sec: int = 60
    ) -> None:
        """Delegated: cache the resource preset list."""
        valkey = self._valkey("set_resource_preset_list")
        await valkey.set_resource_preset_list(scaling_group, value, expire_sec)

    async def set_resource_preset_check_data(
        self,
        access_key: str,
        group: str,
        domain: str,
        scaling_group: str | None,
        value: bytes,
        expire_sec: int = 60,
    ) -> None:
        """Delegated: cache resource-preset check data."""
        valkey = self._valkey("set_resource_preset_check_data")
        await valkey.set_resource_preset_check_data(
            access_key, group, domain, scaling_group, value, expire_sec
        )

    async def delete_resource_preset(
        self, preset_id: str | None = None, name: str | None = None
    ) -> int:
        """Delegated: drop a cached resource preset."""
        return await self._valkey("delete_resource_preset").delete_resource_preset(preset_id, name)

    async def invalidate_all_resource_presets(self) -> None:
        """Delegated: drop every cached resource preset."""
        await self._valkey("invalidate_all_resource_presets").invalidate_all_resource_presets()

    async def get_total_resource_slots(self) -> Any:
        """Delegated: the cached total resource slots (``TotalResourceData`` or ``None``)."""
        return await self._valkey("get_total_resource_slots").get_total_resource_slots()

    async def set_total_resource_slots(self, total_slots: Any, ttl_seconds: int = 300) -> None:
        """Delegated: cache the total resource slots."""
        valkey = self._valkey("set_total_resource_slots")
        await valkey.set_total_resource_slots(total_slots, ttl_seconds)

    async def invalidate_kernel_related_cache(self, access_keys: list[Any]) -> None:
        """Delegated: drop the caches a kernel change invalidates."""
        valkey = self._valkey("invalidate_kernel_related_cache")
        await valkey.invalidate_kernel_related_cache(access_keys)

    async def set_manager_status(
        self, node_id: str, pid: int, status_data: bytes, lifetime: int
    ) -> None:
        """Delegated: publish this manager process's status."""
        valkey = self._valkey("set_manager_status")
        await valkey.set_manager_status(node_id, pid, status_data, lifetime)

    async def scan_and_get_manager_status(self, pattern: str) -> list[bytes | None]:
        """Delegated: the statuses of the manager processes."""
        return await self._valkey("scan_and_get_manager_status").scan_and_get_manager_status(
            pattern
        )

    async def delete(self, keys: Sequence[str]) -> int:
        """Delegated: delete keys (the manager CLI's cleanup)."""
        return await self._valkey("delete").delete(keys)

    async def config_get(self, parameters: Sequence[str]) -> dict[bytes, bytes]:
        """Delegated: ``CONFIG GET`` (the manager CLI)."""
        return await self._valkey("config_get").config_get(parameters)

    async def execute_command(self, args: Sequence[str]) -> Any:
        """Delegated: a raw command (the manager CLI)."""
        return await self._valkey("execute_command").execute_command(args)


#: The methods forwarded explicitly (``close`` included: it closes the wrapped client).
DELEGATED_METHODS: frozenset[str] = frozenset(
    name
    for name, value in vars(ValkeyStatDelegate).items()
    if not name.startswith("_") and callable(value)
)
