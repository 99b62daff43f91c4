"""Calls to the Consul agent, with timeouts and errors turned into BackendUnavailable."""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import Awaitable
from typing import Any

import aiohttp
import consul.aio
from consul.callback import CB
from consul.exceptions import (
    ACLDisabled,
    ACLPermissionDenied,
    BadRequest,
    ClientError,
    ConsulException,
)

from pilotfish.catalog.backends.consul.agent import (
    DEFAULT_DEREGISTER_AFTER,
    REQUEST_TIMEOUT,
    T,
    _Entry,
)
from pilotfish.catalog.backends.stored import CachedCatalog
from pilotfish.catalog.interface import BackendUnavailable


class ConsulClient(CachedCatalog):
    """The two agent clients (writes, blocking reads) and the call wrapper."""

    def __init__(self, host: str, port: int, scheme: str = "http", token: str | None = None,
                 deregister_after: int = DEFAULT_DEREGISTER_AFTER) -> None:
        super().__init__()
        self.address = f"{scheme}://{host}:{port}"
        self._token = token
        self._deregister_after = deregister_after
        self._writer = self._client(host, port, scheme, token)
        self._watcher = self._client(host, port, scheme, token, connections=100_000)
        self._node: str | None = None
        self._services: dict[str, dict[str, _Entry]] = {}
        self._service_tasks: dict[str, asyncio.Task[None]] = {}
        self._registered: dict[str, str] = {}  # instance id -> lease, written through us
        self._failing: set[str] = {"leases", "services"}  # watchers not yet in sync
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    @staticmethod
    def _client(host: str, port: int, scheme: str, token: str | None,
                connections: int = 100) -> consul.aio.Consul:
        with warnings.catch_warnings():
            # py-consul passes aiohttp connector arguments aiohttp has deprecated.
            warnings.simplefilter("ignore", DeprecationWarning)
            client = consul.aio.Consul(host=host, port=port, scheme=scheme,
                                       connections_limit=connections,
                                       verify=scheme == "https")
        client.token = token  # py-consul lets CONSUL_HTTP_TOKEN override; the URL wins here
        return client

    async def healthy(self) -> bool:
        try:
            leader = await self._call(self._writer.status.leader())
        except BackendUnavailable:
            return False
        return bool(leader) and not self._failing and self.freshness.age() <= 2.0

    @property
    def lease_count(self) -> int:
        """Live leases in the cache, for metrics."""
        now = time.time()
        return sum(1 for record in self._leases.values() if record.live(now))

    # -- calls -------------------------------------------------------------------

    async def _call(self, call: Awaitable[T], timeout: float = REQUEST_TIMEOUT) -> T:
        """Await one Consul request, turning every way of not getting an answer into
        BackendUnavailable within `timeout`."""
        try:
            async with asyncio.timeout(timeout):
                return await call
        except TimeoutError:
            raise BackendUnavailable(
                f"consul at {self.address} did not answer within {timeout:g}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise BackendUnavailable(f"consul at {self.address} unreachable: {exc}") from exc
        except (ACLPermissionDenied, ACLDisabled) as exc:
            raise BackendUnavailable(
                f"consul at {self.address} refused the request (check the token): {exc}"
            ) from exc
        except ConsulException as exc:
            if isinstance(exc, BadRequest | ClientError):
                raise
            raise BackendUnavailable(f"consul at {self.address} failed: {exc}") from exc

    def _get(self, path: str, params: list[tuple[str, str]] | None = None) -> Awaitable[Any]:
        """GET an agent endpoint py-consul wraps without the token header."""
        headers = self._writer.prepare_headers()
        return self._writer.http.get(  # type: ignore[no-any-return]
            CB.json(), path, params=params, headers=headers)

    async def _node_name(self) -> str:
        info = await self._call(self._get("/v1/agent/self"))
        return str(info["Config"]["NodeName"])
