"""Keeps a valid certificate for every service this host speaks as: asks the CA at start and
again when two thirds of a certificate's life have passed, with a new key each time (made
here; it never leaves this process). A failed request is retried, sooner while the current
certificate still has time, so a CA that is down for a while costs nothing."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable

from pilotfish.loop import cancel_and_wait
from pilotfish.mesh.identities import Identities
from pilotfish.mesh.issuer import IssueFailed, IssuerClient
from pilotfish.mesh.keys import csr_pem, new_key

log = logging.getLogger(__name__)

RENEW_AT = 2 / 3  # of a certificate's life
RETRY_MIN, RETRY_MAX = 0.5, 30.0


class CertificateKeeper:
    """One task per wanted service, each holding that service's certificate current."""

    def __init__(self, identities: Identities, issuer: IssuerClient,
                 ttl: int | None = None) -> None:
        self.identities = identities
        self.issuer = issuer
        self.ttl = ttl
        self.issued = 0
        self.failures = 0
        self.renew_at: dict[str, float] = {}  # wall clock, per service
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._ready: dict[str, asyncio.Event] = {}
        # Told when a service's certificate is installed, or found expired at a failed renewal.
        self.on_changed: Callable[[str], None] | None = None

    def want(self, services: set[str]) -> None:
        """Hold certificates for exactly these services."""
        for service in services - set(self._tasks):
            self._ready[service] = asyncio.Event()
            self._tasks[service] = asyncio.create_task(self._keep(service),
                                                       name=f"mesh-cert-{service}")
        for service in set(self._tasks) - services:
            self._tasks.pop(service).cancel()
            self._ready.pop(service, None)
            self.renew_at.pop(service, None)
            self.identities.forget(service)

    async def ready(self, service: str, timeout: float) -> bool:
        """Wait until `service` has a certificate (False on timeout)."""
        event = self._ready.get(service)
        if event is None:
            return False
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        """Stop renewing."""
        await cancel_and_wait(*self._tasks.values())
        self._tasks.clear()

    async def _keep(self, service: str) -> None:
        delay = RETRY_MIN
        while True:
            try:
                expires_at = await self._renew(service)
            except (IssueFailed, ssl.SSLError, ValueError, KeyError) as exc:
                self.failures += 1
                held = self.identities.held.get(service)
                left = held.expires_at - time.time() if held is not None else 0.0
                wait = RETRY_MAX if getattr(exc, "refused", False) else delay
                if left > 0:  # still valid: do not wait past a third of what is left
                    wait = min(wait, max(RETRY_MIN, left / 3))
                elif held is not None and self.on_changed is not None:
                    self.on_changed(service)  # expired: its instances are not served now
                log.warning("mesh: no new certificate for %s (%s); retrying in %.1fs",
                            service, str(exc)[:300], wait)
                await asyncio.sleep(wait)
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = RETRY_MIN
            now = time.time()
            renew = now + max(RETRY_MIN, (expires_at - now) * RENEW_AT)
            self.renew_at[service] = renew
            await asyncio.sleep(renew - now)

    async def _renew(self, service: str) -> float:
        key = new_key()
        signed = await self.issuer.issue(service, csr_pem(key, service, self.identities.domain),
                                         self.ttl)
        self.identities.install(service, signed.certificate, key, signed.ca, signed.expires_at)
        self.issued += 1
        ready = self._ready.get(service)
        if ready is not None:
            ready.set()
        if self.on_changed is not None:
            self.on_changed(service)
        log.info("mesh: certificate for %s installed, valid until %s", service,
                 time.strftime("%H:%M:%S", time.gmtime(signed.expires_at)))
        return signed.expires_at
