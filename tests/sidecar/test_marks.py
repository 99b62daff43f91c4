"""The marks that withdraw a container before Docker says it died, after a reconcile: an
unhealthy mark goes when Docker no longer reports the container unhealthy (its `healthy`
event was missed while the event stream was down); a stopping mark stays while it runs."""

from __future__ import annotations

from pilotfish.catalog.model import Instance
from pilotfish.sidecar.stopping import Marks

WEB = Instance("web", "h:web:80", "10.0.0.2", 80, "unset")


def inspected(status: str) -> dict[str, object]:
    return {"State": {"Running": True, "Health": {"Status": status}}}


async def test_a_reconcile_lifts_an_unhealthy_mark_docker_no_longer_reports() -> None:
    marks = Marks(lambda: None)
    marks.health("c1", "unhealthy")
    marks.health("c2", "unhealthy")
    assert marks.apply("c1", WEB).overall_health() == "critical"
    marks.keep({"c1": inspected("healthy"), "c2": inspected("unhealthy")})
    assert marks.apply("c1", WEB) == WEB
    assert marks.apply("c2", WEB).overall_health() == "critical"


async def test_a_reconcile_keeps_a_stopping_mark_and_drops_gone_containers() -> None:
    marks = Marks(lambda: None)
    marks.killed("c1", {"Config": {}}, {"signal": "15"})
    marks.killed("c2", {"Config": {}}, {"signal": "SIGTERM"})
    marks.keep({"c1": inspected("healthy")})
    assert marks.apply("c1", WEB).overall_health() == "critical"
    assert marks.apply("c2", WEB) == WEB
    marks.clear()
