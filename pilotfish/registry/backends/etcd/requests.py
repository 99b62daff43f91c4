"""The requests the etcd catalog sends, each a function of (member, timeout) that
`EtcdCalls._call` runs on one member after another; bind the arguments with partial."""

from __future__ import annotations

from typing import Any

from aetcd import rpc

from pilotfish.registry.backends.etcd.members import _Member, _WatchEnded


async def grant(ttl: int, member: _Member, timeout: float) -> Any:
    """A new etcd lease of ttl seconds (etcd picks the id)."""
    return await (await member.leases()).LeaseGrant(
        rpc.LeaseGrantRequest(TTL=ttl, ID=0), timeout=timeout)


async def keep_alive(number: int, member: _Member, timeout: float) -> Any:
    """One renewal on a keepalive stream: the first answer, then the stream is closed."""
    stub = await member.leases()
    call = stub.LeaseKeepAlive(iter([rpc.LeaseKeepAliveRequest(ID=number)]), timeout=timeout)
    try:
        async for reply in call:
            return reply
    finally:
        call.cancel()
    raise _WatchEnded("keepalive stream closed without an answer")


async def time_to_live(number: int, member: _Member, timeout: float) -> Any:
    """What remains of a lease (TTL <= 0: gone)."""
    return await (await member.leases()).LeaseTimeToLive(
        rpc.LeaseTimeToLiveRequest(ID=number), timeout=timeout)


async def revoke(number: int, member: _Member, timeout: float) -> Any:
    """End a lease and delete every key on it."""
    return await (await member.leases()).LeaseRevoke(
        rpc.LeaseRevokeRequest(ID=number), timeout=timeout)


async def get(key: bytes, member: _Member, timeout: float) -> Any:
    """One key."""
    return await (await member.kv()).Range(rpc.RangeRequest(key=key), timeout=timeout)


async def put(request: Any, member: _Member, timeout: float) -> Any:
    """One PutRequest."""
    return await (await member.kv()).Put(request, timeout=timeout)


async def txn(request: Any, member: _Member, timeout: float) -> Any:
    """One TxnRequest: compare, then the success or the failure ops."""
    return await (await member.kv()).Txn(request, timeout=timeout)
