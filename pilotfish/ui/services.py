"""The Services panels: every service with its instances counted by health, and one
service's page (instances, leases, checks, DNS names)."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from urllib.parse import quote

from pilotfish.catalog.interface import Snapshot
from pilotfish.catalog.model import Check, Health, Instance, Lease
from pilotfish.ui.html import ago, badge, count, esc, table

MAX_ROWS = 500  # services listed, or instances on a service page; the search narrows them
MAX_TAGS_SHOWN = 12
HEALTH: tuple[Health, ...] = ("passing", "warning", "critical")
_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def matches(query: str, name: str, tags: Sequence[str]) -> bool:
    """Whether a service (its name or any tag) contains the search text."""
    return not query or query in name or any(query in tag.lower() for tag in tags)


def services_panel(snapshot: Snapshot, query: str = "") -> str:
    """The table of services: name, instances by health, tags; at most MAX_ROWS rows."""
    query = query.strip().lower()
    rows: list[str] = []
    shown = total = 0
    now = time.time()
    for name, instances in snapshot.by_service().items():
        total += 1
        tags = sorted({tag for i in instances for tag in i.tags})
        if not matches(query, name, tags):
            continue
        shown += 1
        if shown > MAX_ROWS:
            continue
        states = [i.overall_health(now) for i in instances]
        counts = {state: states.count(state) for state in HEALTH}
        health = " ".join(badge(state, f"{counts[state]} {state}") for state in HEALTH
                          if counts[state])
        tag_text = " ".join(f"<code>{esc(t, 64)}</code>" for t in tags[:MAX_TAGS_SHOWN])
        if len(tags) > MAX_TAGS_SHOWN:
            tag_text += f" +{len(tags) - MAX_TAGS_SHOWN}"
        search = esc(" ".join([name, *tags]).lower(), 2000)
        rows.append(f'<tr data-search="{search}"><td><a href="/ui/services/{quote(name)}">'
                    f'{esc(name)}</a></td><td class="num">{len(instances)}</td>'
                    f"<td>{health}</td><td>{tag_text}</td></tr>")
    summary = (f"{count(total, 'service')}, {count(len(snapshot), 'instance')}, catalog index "
               f"{snapshot.index}")
    if query:
        summary += f"; {shown} match “{esc(query, 80)}”"
    more = ""
    if shown > MAX_ROWS:
        more = (f'<p class="more">{shown - MAX_ROWS} more not listed: narrow the search.</p>')
    empty = "no service matches" if query else "no services registered"
    return (f'<h2>Services</h2><p class="summary" id="services-summary">{summary}</p>'
            + table(("Service", "Instances", "Health", "Tags"), rows, "services", empty)
            + more)


def dns_names(service: str, tags: Sequence[str], domain: str) -> list[tuple[str, str]]:
    """The names DNS answers for this service: (what, name)."""
    names = [("A / AAAA", f"{service}.service.{domain}"),
             ("SRV", f"_{service}._tcp.service.{domain}")]
    for tag in tags:
        label = tag.lower()
        if _DNS_LABEL.fullmatch(label) and label not in ("tcp", "udp"):
            names.append((f"tag {tag}", f"{label}.{service}.service.{domain}"))
            names.append((f"SRV, tag {tag}", f"_{service}._{label}.service.{domain}"))
    return names


def service_panel(snapshot: Snapshot, name: str, leases: Mapping[str, Lease | None],
                  domain: str) -> str:
    """One service: its DNS names ready to copy and a row per instance."""
    instances = snapshot.service(name)
    title = f'<h2><a href="/ui/">Services</a> / {esc(name)}</h2>'
    if not instances:
        return (title + f'<p class="empty" id="service-gone">No live instance of '
                f"{esc(name)} (catalog index {snapshot.index}).</p>")
    tags = sorted({tag for i in instances for tag in i.tags})
    names = "".join(f'<li><span class="what">{esc(what)}</span> <code class="copy">'
                    f"{esc(dns, 400)}</code></li>" for what, dns in dns_names(
                        instances[0].service, tags[:MAX_TAGS_SHOWN], domain))
    now = time.time()
    rows = [_instance_row(i, leases.get(i.lease), i.lease in leases, now)
            for i in instances[:MAX_ROWS]]
    more = ""
    if len(instances) > MAX_ROWS:
        more = f'<p class="more">{len(instances) - MAX_ROWS} more instances not listed.</p>'
    return (title + f'<p class="summary">{count(len(instances), "instance")}, catalog index '
            f'{snapshot.index}</p><h3>DNS names</h3><ul class="dns">{names}</ul>'
            "<h3>Instances</h3>"
            + table(("Instance", "Address", "Health", "Weight", "Tags", "Meta", "Lease",
                     "TTL left", "Registrar", "Checks"), rows, "instances") + more)


def _instance_row(instance: Instance, lease: Lease | None, read: bool, now: float) -> str:
    overall = instance.overall_health(now)  # the worst of the container's state and checks
    address = (f"[{instance.address}]:{instance.port}" if ":" in instance.address
               else f"{instance.address}:{instance.port}")
    tags = " ".join(f"<code>{esc(t, 64)}</code>" for t in instance.tags)
    meta = "<br>".join(f"<code>{esc(k, 64)}</code>={esc(v)}"
                       for k, v in sorted(instance.meta.items()))
    if lease is not None:
        ttl_left = ago(lease.expires_at - now) + f" of {lease.ttl} s"
        owner = esc(lease.owner or "—")
    else:
        ttl_left = owner = "lapsed" if read else "—"
    return (f'<tr data-id="{esc(instance.id, 200)}"><td><code>{esc(instance.id)}</code></td>'
            f'<td class="nowrap"><code>{esc(address)}</code></td><td>{badge(overall)}'
            f'</td><td class="num">{instance.weight}</td><td>{tags}</td><td>{meta}</td>'
            f'<td><code title="{esc(instance.lease)}">{esc(instance.lease, 12)}</code></td>'
            f'<td class="nowrap">{ttl_left}</td><td>{owner}</td>'
            f"<td>{checks_table(instance.checks, now)}</td></tr>")


def checks_table(checks: Sequence[Check], now: float) -> str:
    """An instance's health checks: name, kind, status (an overdue ttl check is critical),
    when it last changed, output."""
    if not checks:
        return "—"
    rows = []
    for check in checks:
        when = ago(now - check.changed) + " ago" if check.changed else ""
        title = f' title="{esc(check.target, 400)}"' if check.target else ""
        rows.append(f'<tr data-check="{esc(check.id, 200)}"><td{title}>{esc(check.name, 80)}'
                    f"</td><td>{esc(check.kind, 20)}</td><td>{badge(check.status_at(now))}</td>"
                    f'<td class="nowrap">{when}</td>'
                    f'<td class="output">{esc(check.output, 1000)}</td></tr>')
    return table(("Check", "Kind", "Status", "Changed", "Output"), rows, "checks")
