"""The shared metrics registry: our series in the reference text format, plus the process's."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from pilotfish.metrics import Metrics


def test_counters_gauges_and_collectors_render_as_prometheus_reads_them() -> None:
    metrics = Metrics()
    metrics.describe("pilotfish_things_total", "counter", "Things seen.")
    metrics.describe("pilotfish_level", "gauge", "A level.")
    metrics.inc("pilotfish_things_total", kind="a")
    metrics.inc("pilotfish_things_total", 2, kind="a")
    metrics.inc("pilotfish_things_total", 123_456_789_012, kind='quote " and\nnewline')
    metrics.set("pilotfish_level", 0.25)
    metrics.collect(lambda: [("pilotfish_level", (("route", "x"),), 7.0)])

    text = metrics.render()
    assert "# TYPE pilotfish_things_total counter" in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    things = {s.labels["kind"]: s.value for s in families["pilotfish_things"].samples}
    assert things == {"a": 3.0, 'quote " and\nnewline': 123_456_789_012.0}
    assert families["pilotfish_things"].type == "counter"
    level = {tuple(s.labels.items()): s.value for s in families["pilotfish_level"].samples}
    assert level == {(): 0.25, (("route", "x"),): 7.0}
    assert metrics.value("pilotfish_things_total", kind="a") == 3.0


def test_the_process_series_come_with_it() -> None:
    names = {f.name for f in text_string_to_metric_families(Metrics().render())}
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds"} <= names
