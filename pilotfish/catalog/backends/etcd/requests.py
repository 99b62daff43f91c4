"""The requests the etcd catalog sends, each a function of (member, timeout) that
`EtcdCalls._call` runs on one member after another; bind the arguments with partial.
Each sends the member's token (if it has a user) as metadata, read after the stub: getting
the stub signs in first when needed."""

from __future__ import annotations

from typing import Any

from aetcd import rpc

from pilotfish.catalog.backends.etcd.members import _Member, _WatchEnded


async def grant(ttl: int, member: _Member, timeout: float) -> Any:
    """A new etcd lease of ttl seconds (etcd picks the id)."""
    stub = await member.leases()
    return await stub.LeaseGrant(rpc.LeaseGrantRequest(TTL=ttl, ID=0), timeout=timeout,
                                 metadata=member.metadata)


async def keep_alive(number: int, member: _Member, timeout: float) -> Any:
    """One renewal on a keepalive stream: the first answer, then the stream is closed."""
    stub = await member.leases()
    call = stub.LeaseKeepAlive(iter([rpc.LeaseKeepAliveRequest(ID=number)]), timeout=timeout,
                               metadata=member.metadata)
    try:
        async for reply in call:
            return reply
    finally:
        call.cancel()
    raise _WatchEnded("keepalive stream closed without an answer")


async def time_to_live(number: int, member: _Member, timeout: float) -> Any:
    """What remains of a lease (TTL <= 0: gone)."""
    stub = await member.leases()
    return await stub.LeaseTimeToLive(rpc.LeaseTimeToLiveRequest(ID=number), timeout=timeout,
                                      metadata=member.metadata)


async def revoke(number: int, member: _Member, timeout: float) -> Any:
    """End a lease and delete every key on it."""
    stub = await member.leases()
    return await stub.LeaseRevoke(rpc.LeaseRevokeRequest(ID=number), timeout=timeout,
                                  metadata=member.metadata)


async def get(key: bytes, member: _Member, timeout: float) -> Any:
    """One key."""
    stub = await member.kv()
    return await stub.Range(rpc.RangeRequest(key=key), timeout=timeout, metadata=member.metadata)


async def put(request: Any, member: _Member, timeout: float) -> Any:
    """One PutRequest."""
    stub = await member.kv()
    return await stub.Put(request, timeout=timeout, metadata=member.metadata)


async def txn(request: Any, member: _Member, timeout: float) -> Any:
    """One TxnRequest: compare, then the success or the failure ops."""
    stub = await member.kv()
    return await stub.Txn(request, timeout=timeout, metadata=member.metadata)
