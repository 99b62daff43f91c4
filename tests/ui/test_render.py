"""The panels' rendering on its own: health checks (issue 22) in whatever shape they come, the
DNS names of a service, long lists cut with a note, DNS rates from counters."""

from __future__ import annotations

import time

from pilotfish.catalog.interface import Snapshot
from pilotfish.catalog.model import Check, Instance
from pilotfish.ui.board import DnsRates
from pilotfish.ui.services import MAX_ROWS, checks_table, dns_names, services_panel


def test_checks_render_with_status_change_time_and_escaped_output() -> None:
    now = time.time()
    checks = (Check(id="c1", name="http", kind="http", status="critical", output="<b>503</b>",
                    changed=now - 30),
              Check(id="c2", name="tcp", kind="tcp", status="passing", output="ok"),
              Check(id="c3", name="beat", kind="ttl", status="passing", expires_at=now - 1))
    html = checks_table(checks, now)
    assert html.count("<tr") == 4  # header and three checks
    assert html.count('<span class="badge critical">critical</span>') == 2  # c3 is overdue
    assert "&lt;b&gt;503&lt;/b&gt;" in html and "<b>503" not in html
    assert "30 s ago" in html
    assert checks_table((), now) == "—"


def test_a_service_counts_its_instances_by_their_overall_health() -> None:
    failing = Check(id="c", name="c", kind="tcp", status="critical")
    snapshot = Snapshot(3, [Instance(service="web", id="w1", address="127.0.0.1", port=80,
                                     lease="l"),
                            Instance(service="web", id="w2", address="127.0.0.1", port=81,
                                     lease="l", checks=(failing,))])
    html = services_panel(snapshot)
    assert "1 passing" in html and "1 critical" in html


def test_dns_names_include_tag_forms_that_are_dns_labels() -> None:
    names = dict((name, what) for what, name in dns_names("web", ["blue", "Not_A_Label"], "sd"))
    assert set(names) == {"web.service.sd", "_web._tcp.service.sd", "blue.web.service.sd",
                          "_web._blue.service.sd"}


def test_a_long_catalog_is_cut_and_the_search_narrows_it() -> None:
    instances = [Instance(service=f"svc-{n:04d}", id=f"i-{n}", address="127.0.0.1", port=80,
                          lease="l", tags=("even",) if n % 2 == 0 else ())
                 for n in range(MAX_ROWS + 50)]
    snapshot = Snapshot(7, instances)
    html = services_panel(snapshot)
    assert html.count("<tr data-search=") == MAX_ROWS
    assert "50 more not listed: narrow the search." in html
    narrowed = services_panel(snapshot, "svc-054")
    assert narrowed.count("<tr data-search=") == 10  # svc-0540 to svc-0549
    assert services_panel(snapshot, "EVEN").count("<tr data-search=") == 275  # by tag


def test_dns_rates_come_from_counter_differences() -> None:
    rates = DnsRates()
    assert rates.rates({"NOERROR": 100}, 10.0) is None  # one sample: no rate yet
    measured = rates.rates({"NOERROR": 300, "NXDOMAIN": 20}, 12.0)
    assert measured == {"NOERROR": 100.0, "NXDOMAIN": 10.0}
