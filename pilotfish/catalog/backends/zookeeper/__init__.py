"""ZooKeeper backend: leases and instances as znodes, a watch-fed local cache, an elected reaper.

Modules: `nodes` (layout, settings, the URL), `bridge` (kazoo's threads to the event loop),
`cache` (the watch-fed cache), `reaper` (election, reaping, the freshness probe) and
`catalog` (the catalog operations).

Layout under the chroot (every node persistent; data is JSON):

    <chroot>/leases/<lease-id>                  {"ttl", "owner", "expires_at"}
    <chroot>/leases/<lease-id>/<instance-id>    empty marker: this instance rides on the lease
    <chroot>/instances/<instance-id>            Instance.to_dict()
    <chroot>/reaper/                            kazoo Lock recipe: the process that reaps

Instances live under `instances/<id>`, not `services/<service>/<id>`, because the catalog
is keyed by instance id: ZooKeeper itself then keeps ids unique (a create on a taken id
fails), moving an instance to another service is one `setData`, and deregister needs
only the id. The service is in the JSON.

ZooKeeper has no TTL on nodes, so expiry is explicit. A keepalive rewrites the lease's
`expires_at` (one versioned `setData`); every reader filters instances by their lease's
expiry on its own clock and wakes watchers exactly at expiry; one process, elected with
the Lock recipe, deletes lapsed leases together with their instances. Every write that
touches an instance is a multi-op that checks the lease node's version, and every lease
removal deletes the lease's marker children in the same multi, so nothing lands on a dead
lease: ZooKeeper refuses to delete a lease node that gained a marker meanwhile.

kazoo is threaded. Its answers are applied to the cache on the event loop, in the order
ZooKeeper answered them (one session answers in order), so the cache never goes backwards.

Connection loss: kazoo drops every watch when the connection drops, so after each reconnect
(same session or a new one after expiry) the catalog lists both directories again with
fresh watches and re-reads every node. Nothing pilotfish stores is ephemeral, so an expired
session loses no lease or instance; the reaper lock is ephemeral and is taken again (the
Lock recipe finds its own node by a uuid prefix when a create's answer was lost). A create
retried after a lost answer can meet its own node (NodeExists): a lease id is a fresh uuid,
so that lease is ours; an instance create falls back to reading the node and updating it.
Calls wait out a blip up to READ_GRACE (reads meanwhile come from the cache), then fail
fast with BackendUnavailable until the session is back and the cache re-read.

A frozen server keeps the connection open and stops answering: a `sync` through the
leader every PROBE_EVERY proves the cache current, expiry runs only while it does
(`Freshness`, docs/faults.md), and the session timeout (2 s) makes kazoo leave a frozen
server after 1.33 s; TTLs it cannot honour are refused (`min_ttl`).

URL: zk://host[:port][,host[:port]...][/chroot][?session_timeout=6&timeout=3]
(chroot defaults to /pilotfish; timeouts in seconds).
"""

from pilotfish.catalog.backends.zookeeper.catalog import ZooKeeperCatalog
from pilotfish.catalog.backends.zookeeper.nodes import (
    CONNECT_WAIT,
    DEFAULT_CHROOT,
    OP_TIMEOUT,
    READ_GRACE,
    SESSION_TIMEOUT,
    min_ttl,
    parse_zk_url,
)

__all__ = ["CONNECT_WAIT", "DEFAULT_CHROOT", "OP_TIMEOUT", "READ_GRACE", "SESSION_TIMEOUT",
           "ZooKeeperCatalog", "min_ttl", "parse_zk_url"]
