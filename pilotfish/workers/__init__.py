"""Worker processes: the DNS server and the LB engines on every core (issue 25).

How a component runs in a worker
--------------------------------
The parent process keeps the catalog, the ONE CatalogView, the HTTP ports, /metrics and the
status UI. With `--workers N > 1` a component that serves traffic (DNS, the LB) does not
serve in the parent: it hands the `Supervisor` (`supervisor.py`) a `WorkerSpec`
(`part.py`) and the supervisor starts N fresh interpreters (`python -m
pilotfish.workers.main`, never a fork of a process running a loop and threads), each on its
own event loop (uvloop), each talking to the parent over one socketpair (`channel.py`).

In every worker, `main.py` imports the spec's `factory` ("package.module:function") and
calls it with the spec's `config` (a picklable value, computed afresh by the parent at each
(re)start, so a restarted worker gets today's routes) and a `WorkerContext`:

- `context.view`: a `ReplicaView` (`replica.py`): the parent's view shipped as diffs keyed by
  instance id (`diff.py`, `shipping.py`), with CatalogView's reader interface (snapshot,
  stale, stale_since, changed_at, ready, subscribe): give it to DnsServer or the LB as is.
- `context.index`, `context.count`: which worker this is, of how many.
- `context.report(kind, body)`: tell the parent something (an LB passive ejection): the
  spec's `on_report(worker, kind, body)` runs in the parent.

The factory returns a `WorkerPart`: `start()` (bind the listening ports with SO_REUSEPORT,
UDP and TCP, so the kernel spreads clients over the workers), `stop()` (drain gracefully),
`samples()` (its counters: the parent sums them into its one /metrics at scrape time:
series named `*_total` are summed, gauges take the largest) and `message(kind, body)` (what
the parent sends it with `Supervisor.tell` / `Supervisor.call`, and "sighup").

The supervisor restarts a worker that dies (with backoff), forwards SIGHUP as a message
after the parent has reloaded its own files, and on stop asks every worker to drain within
the grace before it terminates stragglers. A worker whose parent is gone (pipe EOF) exits.
"""
