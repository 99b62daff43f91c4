"""The health of pilotfish itself, on every page: the catalog view (current, or failing static
since when), DNS rates, and one line per other component of the process."""

from __future__ import annotations

import time

from pilotfish.ui.board import Board
from pilotfish.ui.html import ago, badge, clock, count, esc


def health_panel(board: Board) -> str:
    """Cards: catalog view, DNS, load balancer, sidecar (those this process runs)."""
    now = time.time()
    cards = [_view_card(board, now)]
    dns = board.dns()
    if dns is not None:
        rates = board.dns_rates.rates(dns["answers"], time.monotonic())
        if rates is None:
            rate_text = "measuring…"
        else:
            total = sum(rates.values())
            parts = ", ".join(f"{esc(rcode, 16)} {rate:.1f}/s"
                              for rcode, rate in sorted(rates.items()) if rate > 0)
            rate_text = f"<b>{total:.1f}</b> answers/s" + (f" ({parts})" if parts else "")
        state = badge("critical", "stale view") if dns["stale"] else badge("passing", "serving")
        cards.append(f'<div class="card" id="health-dns"><h3>DNS {state}</h3><p>{rate_text}'
                     f'</p><p>{sum(dns["answers"].values())} answered since start, '
                     f'{dns["names"]} names in <code>{esc(dns["domain"], 80)}</code> on '
                     f'<code>{esc(dns["listen"], 80)}</code></p></div>')
    lb = board.lb()
    if lb is not None:
        down = sum(1 for r in lb["routes"] for b in r["backends"] if b["state"] != "healthy")
        state = badge("warning", f"{down} not healthy") if down else badge("passing", "ok")
        cards.append(f'<div class="card" id="health-lb"><h3>Load balancer {state}</h3><p>'
                     f'{count(len(lb["routes"]), "route")}, '
                     f'{count(lb["active"], "open connection")}</p></div>')
    sidecar = board.sidecar()
    if sidecar is not None:
        docker = badge("passing", "Docker up") if sidecar["fresh"] else \
            badge("critical", "Docker down")
        sync = "in sync" if sidecar["in_sync"] else "converging"
        cards.append(f'<div class="card" id="health-sidecar"><h3>Sidecar {docker}</h3><p>'
                     f'{count(len(sidecar["containers"]), "container")}, '
                     f'{sidecar["registered"]} registered, {sync}; lease renewed '
                     f'{ago(sidecar["lease_age"])} ago</p></div>')
    return '<div class="cards">' + "".join(cards) + "</div>"


def _view_card(board: Board, now: float) -> str:
    view = board.view
    if view is None:
        return ('<div class="card" id="health-view"><h3>Catalog</h3><p>This process keeps no '
                "catalog view (a sidecar alone registers, it does not read).</p></div>")
    snapshot = view.snapshot
    changed = view.changed_at
    if view.stale:
        since = view.stale_since
        return (f'<div class="card stale" id="health-view"><h3>Catalog '
                f'{badge("critical", "stale")}</h3><p>Backend unreachable or silent since '
                f"{clock(since)} ({ago(now - since if since else None)}): serving the last "
                f"view, index {snapshot.index}, {count(len(snapshot), 'instance')}; nothing "
                "expires "
                "until it answers again.</p></div>")
    last = f"last change {ago(now - changed)} ago" if changed is not None else "no change yet"
    return (f'<div class="card" id="health-view"><h3>Catalog {badge("passing", "current")}'
            f"</h3><p>Backend reachable; index {snapshot.index}, "
            f"{count(len(snapshot), 'instance')}, "
            f"{last}.</p></div>")
