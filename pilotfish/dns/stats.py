"""DNS counters cheap enough for the hot path, rendered as Prometheus samples at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from pilotfish.metrics import Metrics, Sample

QUERIES = "pilotfish_dns_queries_total"
TRUNCATED = "pilotfish_dns_truncated_total"
DROPPED = "pilotfish_dns_dropped_total"
FORWARDED = "pilotfish_dns_forwarded_total"
TCP_QUERIES = "pilotfish_dns_tcp_queries_total"
RECORDS = "pilotfish_dns_names"
STALE = "pilotfish_dns_view_stale"
RATE_LIMITED = "pilotfish_dns_rate_limited_total"

DESCRIPTIONS = {
    QUERIES: ("counter", "DNS responses by query type and rcode."),
    TRUNCATED: ("counter", "UDP responses truncated (TC) so the client retries over TCP."),
    DROPPED: ("counter", "Packets dropped unanswered (unreadable, or responses)."),
    FORWARDED: ("counter", "Out-of-zone queries relayed to an upstream, by outcome."),
    TCP_QUERIES: ("counter", "Queries received over TCP."),
    RECORDS: ("gauge", "Pre-encoded (name, type) answers in the zone."),
    STALE: ("gauge", "1 while the DNS view cannot reach the catalog (serving the last view)."),
    RATE_LIMITED: ("counter", "UDP responses over --dns-rrl, sent empty with TC instead."),
}


class DnsStats:
    """Counters indexed by small integers: a response bumps `counts[answer.stat]`."""

    def __init__(self) -> None:
        self.keys: list[tuple[str, str]] = []
        self._index: dict[tuple[str, str], int] = {}
        self.counts: list[int] = []
        self.truncated = 0
        self.dropped = 0
        self.tcp = 0
        self.forwarded: dict[str, int] = {}
        self.names = 0
        self.stale = False
        self.rate_limited: Callable[[], int] = lambda: 0

    def slot(self, qtype: str, rcode: str) -> int:
        """The counter index for (query type, rcode), allocated on first use."""
        key = (qtype, rcode)
        index = self._index.get(key)
        if index is None:
            index = self._index[key] = len(self.keys)
            self.keys.append(key)
            self.counts.append(0)
        return index

    def count(self, qtype: str, rcode: str) -> None:
        """Count one response outside the pre-encoded path."""
        self.counts[self.slot(qtype, rcode)] += 1

    def queries(self, qtype: str, rcode: str) -> int:
        """Responses so far for (type, rcode); tests and health read this."""
        index = self._index.get((qtype, rcode))
        return 0 if index is None else self.counts[index]

    def describe(self, metrics: Metrics,
                 collector: Callable[[], Iterable[Sample]] | None = None) -> None:
        """Declare the DNS series on a Metrics registry and feed it at every scrape."""
        for name, (kind, text) in DESCRIPTIONS.items():
            metrics.describe(name, kind, text)
        metrics.collect(collector or self.samples)

    def samples(self) -> Iterable[Sample]:
        """Current values, as (name, labels, value)."""
        for (qtype, rcode), value in zip(self.keys, self.counts, strict=True):
            if value:
                yield QUERIES, (("qtype", qtype), ("rcode", rcode)), float(value)
        for outcome, value in sorted(self.forwarded.items()):
            yield FORWARDED, (("outcome", outcome),), float(value)
        yield TRUNCATED, (), float(self.truncated)
        yield DROPPED, (), float(self.dropped)
        yield TCP_QUERIES, (), float(self.tcp)
        yield RECORDS, (), float(self.names)
        yield STALE, (), 1.0 if self.stale else 0.0
        yield RATE_LIMITED, (), float(self.rate_limited())
