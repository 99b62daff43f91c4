"""The sidecar's view of the Docker engine: aiodocker, with just the calls it needs.

The URL is `--docker`, else DOCKER_HOST, else the default socket, as the docker CLI picks it
(aiodocker does the same when given no URL). `events()` returns only once the engine has
accepted the subscription, so a listing made afterwards misses no event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiodocker
import aiohttp

from pilotfish.catalog.model import MAX_CHECK_OUTPUT

log = logging.getLogger(__name__)

EVENT_FILTERS = json.dumps({"type": ["container", "network"]})
CALL_TIMEOUT = 10.0
SCRIPT_OUTPUT = MAX_CHECK_OUTPUT  # bytes of a check script's output kept


class DockerUnavailable(Exception):
    """The engine did not answer (down, restarting, or the socket is wrong)."""


class DockerSource:
    """One aiodocker client: engine id, ping, running containers, inspect, the event stream."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url
        self._client: aiodocker.Docker | None = None

    @property
    def client(self) -> aiodocker.Docker:
        """The aiodocker client (made on first use, inside the running loop)."""
        if self._client is None:
            self._client = aiodocker.Docker(
                url=self.url, timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT))
        return self._client

    @property
    def where(self) -> str:
        """The engine's address, for log lines."""
        return self.url or os.environ.get("DOCKER_HOST") or "the default socket"

    async def close(self) -> None:
        """Close the client's connections."""
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _call(self, what: str, call: Any) -> Any:
        try:
            return await call
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                raise
            raise DockerUnavailable(f"docker {what}: {exc.status} {exc.message}") from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise DockerUnavailable(f"docker {what}: {exc or type(exc).__name__}") from exc

    async def engine_id(self) -> str:
        """The engine's ID (`docker info`), stable across daemon restarts."""
        info: Mapping[str, Any] = await self._call("info", self.client.system.info())
        return str(info.get("ID") or info.get("Name") or "unknown")

    async def ping(self) -> None:
        """Ask the engine something small; raises DockerUnavailable if it does not answer."""
        await self._call("version", self.client.version())

    async def running(self) -> list[str]:
        """Ids of the running (and paused) containers."""
        containers = await self._call("ps", self.client.containers.list())
        return [container.id for container in containers]

    async def inspect(self, container_id: str) -> dict[str, Any] | None:
        """`docker inspect` of one container; None if it no longer exists."""
        try:
            details: dict[str, Any] = await self._call(
                "inspect", self.client.containers.container(container_id).show())
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return None
            raise
        return details

    async def run_script(self, container_id: str, command: str,
                         timeout: float) -> tuple[int, str]:
        """`docker exec <container> sh -c <command>`: its exit code and output (at most
        SCRIPT_OUTPUT bytes kept); raises TimeoutError past `timeout`, OSError when the engine
        or the container cannot run it."""
        async with asyncio.timeout(timeout):
            try:
                execution = await self.client.containers.container(container_id).exec(
                    ["sh", "-c", command], stdout=True, stderr=True)
                output = bytearray()
                async with execution.start(detach=False) as stream:
                    while (message := await stream.read_out()) is not None:
                        if len(output) < SCRIPT_OUTPUT:
                            output += message.data[:SCRIPT_OUTPUT - len(output)]
                info = await execution.inspect()
            except aiodocker.DockerError as exc:
                raise OSError(f"docker exec: {exc.status} {exc.message}") from exc
            except aiohttp.ClientError as exc:
                raise OSError(f"docker exec: {exc or type(exc).__name__}") from exc
        code = info.get("ExitCode")
        return (code if isinstance(code, int) else 255), output.decode("utf-8", "replace")

    @asynccontextmanager
    async def events(self) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """Subscribe to container and network events; enters once the engine has accepted the
        subscription, and yields the stream (which ends when the connection does)."""
        try:
            # aiodocker's public events API gives no sign of when the subscription is live;
            # its request helper does (headers received), so use that.
            query = self.client._query(
                "events", params={"filters": EVENT_FILTERS}, timeout=None)
            async with query as response:
                yield _lines(response)
        except (aiohttp.ClientError, OSError) as exc:
            raise DockerUnavailable(f"docker events: {exc or type(exc).__name__}") from exc
        except aiodocker.DockerError as exc:
            raise DockerUnavailable(f"docker events: {exc.status} {exc.message}") from exc


async def _lines(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    while True:
        try:
            line = await response.content.readline()
        except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError):
            return
        if not line:
            return
        try:
            event = json.loads(line)
        except ValueError:
            log.warning("docker events: not JSON: %r", line[:200])
            continue
        if isinstance(event, dict):
            yield event
