"""The Sidecar panel: the Docker connection, the lease, and every running container with
what became of it: registered as which instances, or skipped and why."""

from __future__ import annotations

from pilotfish.ui.balancer_panel import log_lines
from pilotfish.ui.html import ago, badge, count, esc, table
from pilotfish.ui.mesh_panel import mesh_panel
from pilotfish.ui.reports import ContainerReport, SidecarReport

MAX_CONTAINERS = 500


def sidecar_panel(report: SidecarReport) -> str:
    """Docker and lease facts, then the containers."""
    docker = badge("passing", "up") if report["fresh"] else badge(
        "critical", "connected, not answering" if report["connected"] else "down")
    lease = (f'<code>{esc(report["lease"])}</code>, renewed {ago(report["lease_age"])} ago '
             f'(TTL {report["ttl"]} s)') if report["lease"] else "none yet"
    sync = badge("passing", "in sync") if report["in_sync"] else badge("warning", "converging")
    facts = (f'<dl class="facts"><dt>Docker</dt><dd id="sidecar-docker">{docker} '
             f'<code>{esc(report["docker"], 200)}</code>, engine '
             f'<code>{esc(report["engine"] or "unknown", 80)}</code>; answered '
             f'{ago(report["last_seen_age"])} ago; {report["events"]} events, '
             f'{report["reconnects"]} reconnects</dd>'
             f'<dt>Lease</dt><dd id="sidecar-lease">{lease}</dd>'
             f'<dt>Catalog</dt><dd>{sync} {count(report["registered"], "instance")} held; '
             f'{count(report["registry_errors"], "failed call")}, '
             f'{count(report["reregistrations"], "lease")} replaced</dd></dl>')
    rows = [_container(c) for c in report["containers"][:MAX_CONTAINERS]]
    return (f'<h2>Sidecar</h2>{facts}<h3>Containers ({len(report["containers"])})</h3>'
            + table(("Container", "Registered", "Not registered (why)"), rows, "containers",
                    "no running containers")
            + (mesh_panel(report["mesh"]) if report["mesh"] is not None else "")
            + f"<h3>Recent errors</h3>{log_lines(report['errors'])}")


def _container(container: ContainerReport) -> str:
    registered = "<br>".join(f"<code>{esc(line)}</code>" for line in container["registered"])
    skipped = "<br>".join(f'{badge("warning", reason)} {esc(detail)}'
                          for reason, detail in container["skipped"])
    return (f'<tr data-container="{esc(container["name"], 128)}"><td><b>'
            f'{esc(container["name"], 128)}</b><br><code>{esc(container["id"][:12], 12)}'
            f"</code></td><td>{registered or '—'}</td><td>{skipped or '—'}</td></tr>")
