"""The Load balancer panel: routes, their pools with each backend's state, connections,
bytes, and the recent warnings and errors."""

from __future__ import annotations

from pilotfish.ui.html import badge, clock, esc, size, table
from pilotfish.ui.reports import BackendReport, LbReport, LogLine, RouteReport

MAX_BACKENDS = 200  # rows per route


def balancer_panel(report: LbReport) -> str:
    """Every route, then the recent errors."""
    routes = "".join(_route(route) for route in report["routes"]) or \
        '<p class="empty">no routes</p>'
    return (f'<h2>Load balancer</h2><p class="summary">{len(report["routes"])} routes, '
            f'{report["active"]} open connections</p>{routes}'
            f"<h3>Recent errors</h3>{log_lines(report['errors'])}")


def _route(route: RouteReport) -> str:
    target = route["service"] + (f" (tag {route['tag']})" if route["tag"] else "")
    refused = ", ".join(f"{esc(k, 32)} {v}" for k, v in sorted(route["refused"].items()) if v)
    panic = " " + badge("critical", "panic: using every instance") if route["panic"] else ""
    rows = [_backend(b) for b in route["backends"][:MAX_BACKENDS]]
    return (f'<section class="route" data-listen="{esc(route["listen"], 80)}"><h3>'
            f'<code>{esc(route["listen"], 80)}</code> → <a href="/ui/services/'
            f'{esc(route["service"], 63)}">{esc(target)}</a>{panic}</h3>'
            f'<p class="summary">{esc(route["balance"], 32)}; {route["active"]} open, '
            f'{route["accepted"]} accepted, {route["retries"]} retried'
            + (f"; refused: {refused}" if refused else "") + "</p>"
            + table(("Backend", "Instance", "State", "Weight", "Open", "Total", "Failed",
                     "Bytes in", "Bytes out"), rows, "backends", "no instances in the pool")
            + "</section>")


def _backend(backend: BackendReport) -> str:
    return (f'<tr data-backend="{esc(backend["name"], 80)}"><td><code>'
            f'{esc(backend["name"], 80)}</code></td><td><code>{esc(backend["id"])}</code></td>'
            f'<td>{badge(backend["state"])}</td><td class="num">{backend["weight"]}</td>'
            f'<td class="num">{backend["active"]}</td><td class="num">{backend["total"]}</td>'
            f'<td class="num">{backend["failed"]}</td><td class="num">'
            f'{size(backend["bytes_in"])}</td><td class="num">{size(backend["bytes_out"])}'
            "</td></tr>")


def log_lines(lines: list[LogLine]) -> str:
    """Recent warnings and errors, newest first."""
    rows = [f'<tr><td>{clock(line["at"])}</td><td>{badge(line["level"])}</td>'
            f'<td class="output">{esc(line["message"])}</td></tr>' for line in lines]
    return table(("When", "Level", "Message"), rows, "log", "none lately")
