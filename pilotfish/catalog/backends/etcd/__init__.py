"""The etcd backend: pilotfish leases are etcd leases, instances are JSON keys on them.

Keys under the URL's prefix (default `pilotfish`):

    /<prefix>/leases/<lease>            {"ttl": n, "owner": s}     attached to the lease
    /<prefix>/services/<service>/<id>   the instance as JSON       attached to its lease
    /<prefix>/ids/<id>                  the instance's service     attached to its lease

The `ids/` key indexes instances by id, because the catalog is keyed by id while the
layout (readable with `etcdctl get --prefix /pilotfish/services/web`) is keyed by service:
register and deregister compare it in a transaction, so an instance re-registered under
another service moves atomically and deregister needs only the id. Lease ids are etcd's
int64 lease ids in hex, as etcdctl prints them.

Reads come from a local cache fed by one watch on the prefix, resumed from the last
revision seen (re-listed after compaction) on another member when one goes away.
`snapshot()` raises BackendUnavailable once the watch has been down for longer than a
short grace, so API reads answer 503 while DNS/LB views fail static. A member that is
frozen or slow keeps its stream open and simply stops talking, so the watch checks its
member every PROGRESS_EVERY (a progress request, and a linearizable read whose revision
the watch must reach) and moves on after STALL_AFTER without an answer; expiry runs only
while those checks prove the cache current (`Freshness`, docs/faults.md).

etcd keeps leases across a restart or a leader change (it extends each by its TTL), so a
lease whose keepalives failed for longer than its TTL during an outage would come back
to life. This catalog remembers the expiry of the leases it granted or renewed; when such
a lease ran out while etcd was unreachable, keepalive answers UnknownLease (the registrar
re-registers) and the lease is revoked once etcd is back.

Modules: `members` (settings, the URL, helpers), `secure` (a user's token on every call,
`etcds://` TLS, what to say when etcd refuses us), `calls` (fail-over calls and the key
layout), `outages` (outage and lapse bookkeeping), `watch` (the watch-fed cache) and
`catalog` (the catalog operations).
"""

from pilotfish.catalog.backends.etcd.catalog import EtcdCatalog
from pilotfish.catalog.backends.etcd.members import (
    CALL_TIMEOUT,
    DEADLINE,
    DEFAULT_PORT,
    STALE_GRACE,
    STALL_AFTER,
    keepalive_timeout,
    parse_url,
)

__all__ = ["CALL_TIMEOUT", "DEADLINE", "DEFAULT_PORT", "STALE_GRACE", "STALL_AFTER",
           "EtcdCatalog", "keepalive_timeout", "parse_url"]
