"""The sidecar's client of the registry API's CA: sends a CSR made here, gets a certificate."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

import httpx

from pilotfish.catalog.redact import redact_url

TIMEOUT = httpx.Timeout(5.0, connect=2.0)


class IssueFailed(Exception):
    """The CA did not sign: unreachable, or it refused (the message says why, never a token)."""

    def __init__(self, message: str, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused  # 4xx: retrying soon will not help


@dataclass(frozen=True, slots=True)
class Signed:
    """What the CA answered."""

    certificate: str
    ca: str
    expires_at: float


class IssuerClient:
    """POST /v1/mesh/certificates on one registry API, with this sidecar's token."""

    def __init__(self, base_url: str, token: str | None, verify: ssl.SSLContext | bool = True
                 ) -> None:
        self.where = redact_url(base_url)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers,
                                         timeout=TIMEOUT, verify=verify)

    async def issue(self, service: str, csr: str, ttl: int | None) -> Signed:
        """A certificate for `service` over the CSR's key (IssueFailed otherwise)."""
        body: dict[str, Any] = {"service": service, "csr": csr}
        if ttl is not None:
            body["ttl"] = ttl
        try:
            response = await self._client.post("/v1/mesh/certificates", json=body)
        except httpx.HTTPError as exc:
            raise IssueFailed(f"CA at {self.where} unreachable: {type(exc).__name__}: "
                              f"{str(exc)[:200]}") from exc
        if response.status_code != 201:
            try:
                message = str(response.json().get("error", ""))[:300]
            except ValueError:
                message = response.text[:200]
            raise IssueFailed(f"CA at {self.where} refused a certificate for {service!r}: "
                              f"{response.status_code} {message}",
                              refused=400 <= response.status_code < 500)
        answer = response.json()
        return Signed(str(answer["certificate"]), str(answer["ca"]),
                      float(answer["expires_at"]))

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()
