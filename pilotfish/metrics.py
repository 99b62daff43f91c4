"""The metrics registry every component's /metrics shares, exposed with prometheus_client.

Components count into plain dicts (cheap on the DNS and LB hot paths) or register
collectors read at scrape time; prometheus_client renders the reference text format and
adds the process's own series (CPU, memory, open file descriptors).

Series that name catalog instances (ids, addresses) are what an ACL with
`default_read = false` hides: they are declared `per_instance` and left out of
`render(include_instances=False)`, the answer for callers who may not read the catalog.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import Metric

Labels = tuple[tuple[str, str], ...]
Sample = tuple[str, Labels, float]

INSTANCE_LABELS = frozenset({"instance", "id", "address"})
"""Label names that identify a catalog instance: a series carrying one is per-instance even
where its declaration forgot to say so."""


def _labels(labels: dict[str, str]) -> Labels:
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


class Metrics:
    """Counters and gauges with labels, plus collectors read at scrape time."""

    def __init__(self) -> None:
        self._kinds: dict[str, tuple[str, str]] = {}
        self._per_instance: set[str] = set()
        self._values: dict[str, dict[Labels, float]] = {}
        self._collectors: list[Callable[[], Iterable[Sample]]] = []
        self._before_scrape: list[Callable[[], Awaitable[None]]] = []
        self._registries: dict[bool, CollectorRegistry] = {}
        for include_instances in (True, False):
            registry = self._registries[include_instances] = CollectorRegistry()
            registry.register(_Families(self, include_instances))
            ProcessCollector(registry=registry)

    def describe(self, name: str, kind: str, help_text: str, per_instance: bool = False) -> None:
        """Declare a metric ("counter", named …_total, or "gauge") with its help text;
        `per_instance`: its labels name catalog instances (shown only to catalog readers)."""
        self._kinds[name] = (kind, help_text)
        self._values.setdefault(name, {})
        if per_instance:
            self._per_instance.add(name)

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        """Add to a counter."""
        series = self._values[name]
        key = _labels(labels) if labels else ()
        series[key] = series.get(key, 0.0) + value

    def set(self, name: str, value: float, **labels: str) -> None:
        """Set a gauge."""
        self._values[name][_labels(labels) if labels else ()] = value

    def value(self, name: str, **labels: str) -> float:
        """Read one series (tests and health endpoints use this)."""
        return self._values.get(name, {}).get(_labels(labels), 0.0)

    def collect(self, collector: Callable[[], Iterable[Sample]]) -> None:
        """Register a function whose samples are read fresh at every scrape."""
        self._collectors.append(collector)

    def before_scrape(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Await `hook` before every scrape (the workers' counters are fetched then)."""
        self._before_scrape.append(hook)

    async def scrape(self, include_instances: bool = True) -> str:
        """`render`, after the before-scrape hooks: what a /metrics handler answers."""
        for hook in self._before_scrape:
            await hook()
        return self.render(include_instances)

    def families(self, include_instances: bool = True) -> Iterator[Metric]:
        """Every metric family as it stands now: the counted series and the collectors';
        without `include_instances`, none that names a catalog instance."""
        values: dict[str, dict[Labels, float]] = {n: dict(s) for n, s in self._values.items()}
        for collector in self._collectors:
            for name, labels, value in collector():
                values.setdefault(name, {})[labels] = value
        if not include_instances:
            values = {name: {labels: value for labels, value in series.items()
                             if not any(key in INSTANCE_LABELS for key, _ in labels)}
                      for name, series in values.items() if name not in self._per_instance}
        for name in sorted(values):
            kind, help_text = self._kinds.get(name, ("gauge", name))
            family = Metric(name.removesuffix("_total") if kind == "counter" else name,
                            help_text, kind)
            for labels, value in sorted(values[name].items()):
                family.add_sample(name, dict(labels), value)
            yield family

    def render(self, include_instances: bool = True) -> str:
        """The Prometheus text exposition format (version 0.0.4), with the process series;
        `include_instances=False` for a caller who may not read the catalog."""
        return generate_latest(self._registries[include_instances]).decode()


class _Families:
    """The collector prometheus_client scrapes: the families a Metrics holds."""

    def __init__(self, metrics: Metrics, include_instances: bool) -> None:
        self._metrics = metrics
        self._include_instances = include_instances

    def collect(self) -> Iterator[Metric]:
        """What prometheus_client calls at every scrape."""
        return self._metrics.families(self._include_instances)
