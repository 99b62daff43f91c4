"""The Mesh part of the sidecar page: the inbound port, the certificates this host holds (and
the services still waiting for one), and the intentions every inbound connection meets."""

from __future__ import annotations

from pilotfish.ui.html import ago, badge, count, esc, table
from pilotfish.ui.reports import CertificateReport, IntentionReport, MeshReport


def mesh_panel(report: MeshReport) -> str:
    """Inbound facts, then certificates, then the intentions in force."""
    refused = ", ".join(f"{esc(reason, 40)} {number}"
                        for reason, number in sorted(report["refused"].items())) or "none"
    facts = (f'<dl class="facts"><dt>Inbound</dt><dd id="mesh-inbound">'
             f'<code>{esc(report["inbound"], 80)}</code>: {report["accepted"]} accepted, '
             f'{report["carried"]} carried, refused: {refused}; '
             f'{count(report["tunnels"], "connection")} open</dd>'
             f'<dt>CA</dt><dd><code>{esc(report["issuer"], 200)}</code></dd></dl>')
    certificates = [_certificate(c) for c in report["certificates"]] + [
        f'<tr data-certificate="{esc(service, 128)}"><td>{esc(service)}</td>'
        f'<td>{badge("critical", "none yet")}</td><td>—</td><td>—</td></tr>'
        for service in report["waiting"]
        if all(c["service"] != service for c in report["certificates"])]
    if report["intentions_version"] < 0:
        policy = f'{badge("critical", "none read yet")} every connection is refused'
    else:
        policy = (f'version {report["intentions_version"]}; default '
                  f'{_action(report["default"])}')
    return ('<h3>Mesh</h3>' + facts
            + '<h4>Certificates</h4>'
            + table(("Service", "State", "Expires in", "Renewed in"), certificates,
                    "certificates", "no mesh service on this host")
            + f'<h4>Intentions</h4><p id="mesh-intentions">{policy}</p>'
            + table(("Source", "Destination", "Action", "Description"),
                    [_intention(i) for i in report["intentions"]], "intentions",
                    "no rules: the default decides"))


def _certificate(certificate: CertificateReport) -> str:
    valid = certificate["expires_in"] > 0
    state = badge("passing", "valid") if valid else badge("critical", "expired")
    return (f'<tr data-certificate="{esc(certificate["service"], 128)}">'
            f'<td>{esc(certificate["service"])}</td><td>{state}</td>'
            f'<td>{ago(certificate["expires_in"]) if valid else "—"}</td>'
            f'<td>{ago(certificate["renew_in"])}</td></tr>')


def _intention(rule: IntentionReport) -> str:
    return (f'<tr><td>{esc(rule["source"])}</td><td>{esc(rule["destination"])}</td>'
            f'<td>{_action(rule["action"])}</td><td>{esc(rule["description"])}</td></tr>')


def _action(action: str) -> str:
    return badge("passing" if action == "allow" else "critical", action)
