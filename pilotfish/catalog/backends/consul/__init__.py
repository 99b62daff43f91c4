"""The Consul backend: instances are ordinary Consul agent services, leases live in Consul KV.

Layout in Consul (``consul://host:8500[?token=…&deregister_after=60]``):

- each instance is an agent service registration: Name = service, ID = instance id,
  Address, Port, Tags, Meta (the user's meta plus ``pilotfish-lease`` and, when not
  passing, ``pilotfish-health``), Weights (Passing = weight, so Consul DNS hands out the
  same SRV weights), and one TTL check ``pilotfish:<instance id>`` whose TTL is the
  lease's TTL, with DeregisterCriticalServiceAfter so Consul itself removes what a dead
  registrar left behind. They show up in ``consul catalog services``, the UI and DNS;
- each lease is a KV record ``pilotfish/leases/<lease id>`` holding its ttl, owner and
  wall-clock expiry. A keepalive is a check-and-set on that record (so a revoked or
  lapsed lease is never brought back) followed by a pass of each of the lease's TTL
  checks on this agent.

Reads never go to Consul per call: blocking queries (``index``/``wait``) on
``/v1/kv/pilotfish/leases/?recurse``, ``/v1/catalog/services`` and one
``/v1/health/service/<name>`` per service keep a local cache, and snapshots are built
from it, dropping every instance whose lease record is missing or past its expiry (a
timer wakes watchers at that moment, whatever Consul's own timers do). An instance
whose Consul checks include a critical one is reported with health "critical".

Client: py-consul's asyncio client (``consul.aio``, aiohttp underneath), one session
for writes and one for long polls so writes never queue behind blocking queries.
Agent semantics apply: a lease's instances must be registered and kept alive through
the same agent (the one this URL names), as with any Consul agent registration.

Modules: `agent` (settings, service and health shapes), `client` (calls to the agent),
`watch` (blocking queries feeding the cache), `reaper` (tidying lapsed leases) and
`catalog` (the catalog operations).
"""

from pilotfish.catalog.backends.consul.catalog import ConsulCatalog

__all__ = ["ConsulCatalog"]
