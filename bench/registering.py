"""Registering a benchmark's catalog through the REST API, shared by bench/dns.py and scale.py."""

from __future__ import annotations

import asyncio
import time

import httpx


async def register_all(api: str, rows: list[tuple[str, str, str, int]]) -> tuple[float, str]:
    """PUT every row on one lease, 32 in flight; returns (registrations/s, lease id)."""
    async with httpx.AsyncClient(base_url=api, timeout=60) as client:
        lease = (await client.post("/v1/leases", json={"ttl": 3600, "owner": "bench"})).json()
        semaphore = asyncio.Semaphore(32)

        async def one(service: str, instance_id: str, address: str, port: int) -> None:
            async with semaphore:
                response = await client.put(
                    f"/v1/services/{service}/instances/{instance_id}",
                    json={"address": address, "port": port, "lease": lease["id"]})
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one(*row) for row in rows))
        return len(rows) / (time.perf_counter() - started), str(lease["id"])
