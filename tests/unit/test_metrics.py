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


def test_per_instance_series_are_left_out_for_callers_who_may_not_read_the_catalog() -> None:
    metrics = Metrics()
    metrics.describe("pilotfish_pool_size", "gauge", "Instances per route.")
    metrics.describe("pilotfish_up", "gauge", "Per instance.", per_instance=True)
    metrics.set("pilotfish_pool_size", 2, route="r")
    metrics.set("pilotfish_up", 1, instance="10.0.0.7:80", route="r")
    # undeclared as such, but labelled with an instance id: left out all the same
    metrics.collect(lambda: [("pilotfish_pool_size", (("id", "w1"), ("route", "r")), 1.0)])

    full = metrics.render()
    assert "10.0.0.7:80" in full and 'id="w1"' in full
    aggregate = metrics.render(include_instances=False)
    families = {f.name: f for f in text_string_to_metric_families(aggregate)}
    assert "pilotfish_up" not in families and "10.0.0.7" not in aggregate and "w1" not in aggregate
    assert [s.labels for s in families["pilotfish_pool_size"].samples] == [{"route": "r"}]
    assert "process_open_fds" in families
