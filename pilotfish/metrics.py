"""A tiny Prometheus text-format registry shared by every component's /metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterable

Labels = tuple[tuple[str, str], ...]
Sample = tuple[str, Labels, float]


def _labels(labels: dict[str, str]) -> Labels:
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    """Exact for counters (byte totals pass a million; %g would round them to 6 digits)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Metrics:
    """Counters and gauges with labels, plus collectors read at scrape time."""

    def __init__(self) -> None:
        self._kinds: dict[str, tuple[str, str]] = {}
        self._values: dict[str, dict[Labels, float]] = {}
        self._collectors: list[Callable[[], Iterable[Sample]]] = []

    def describe(self, name: str, kind: str, help_text: str) -> None:
        """Declare a metric ("counter" or "gauge") so it renders with HELP and TYPE."""
        self._kinds[name] = (kind, help_text)
        self._values.setdefault(name, {})

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

    def render(self) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        values: dict[str, dict[Labels, float]] = {n: dict(s) for n, s in self._values.items()}
        for collector in self._collectors:
            for name, labels, value in collector():
                values.setdefault(name, {})[labels] = value
        lines: list[str] = []
        for name in sorted(values):
            kind, help_text = self._kinds.get(name, ("gauge", name))
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in sorted(values[name].items()):
                rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                series = f"{name}{{{rendered}}}" if rendered else name
                lines.append(f"{series} {_number(value)}")
        return "\n".join(lines) + "\n"
