"""Certificate issuance for the service mesh: POST /v1/mesh/certificates signs a CSR for one
service, to a token that may write that service; GET /v1/mesh/ca shows the CA to trust.

Issuing needs an ACL: on an open API anyone could take any service's identity, so an API
without tokens refuses to issue (403), and says why.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from pilotfish.catalog.model import SERVICE_PATTERN, service_name
from pilotfish.http.acl import AccessPolicy, Denied
from pilotfish.http.responses import json_response
from pilotfish.mesh.ca import MAX_CSR, MIN_CERT_TTL, CertificateAuthority, cert_ttl
from pilotfish.registry.access import AccessChecks
from pilotfish.registry.bodies import Whole, parse_body


class CertificateBody(BaseModel):
    """POST /v1/mesh/certificates: the service, a CSR made on the requester's host, a ttl."""

    model_config = ConfigDict(extra="forbid")
    service: StrictStr = Field(pattern=f"^{SERVICE_PATTERN}$")
    csr: Annotated[StrictStr, Field(max_length=MAX_CSR, description="PEM; only its key is used")]
    ttl: Whole | None = Field(default=None, ge=MIN_CERT_TTL,
                              description="seconds (default and cap: --mesh-max-cert-ttl)")


class CertificateOut(BaseModel):
    """A signed certificate, the CA that verifies it, and when it ends."""

    service: str
    spiffe_id: str
    certificate: str
    ca: str
    serial: str
    expires_at: float


class CaOut(BaseModel):
    """GET /v1/mesh/ca."""

    trust_domain: str
    roots: list[str]


class CertificateHandlers:
    """Signs CSRs with the mesh CA for callers allowed to write the service."""

    def __init__(self, authority: CertificateAuthority, checks: AccessChecks,
                 access: AccessPolicy, max_ttl: int, max_body: int) -> None:
        self.authority = authority
        self.checks = checks
        self.access = access
        self.max_ttl = max_ttl
        self.max_body = max_body

    async def issue(self, request: Request) -> Response:
        if not self.access.enabled:
            raise Denied(403, "certificate issuance needs an ACL (--acl or --token-file): on "
                              "an open API anyone could take any service's identity")
        body = await parse_body(request, CertificateBody, self.max_body)
        service = service_name(body.service)
        self.checks.require_write(request, service)
        ttl = cert_ttl(self.max_ttl if body.ttl is None else body.ttl, self.max_ttl)
        issued = self.authority.issue(body.csr, service, ttl)
        return json_response(issued.to_dict(), 201)

    async def roots(self) -> Response:
        return json_response({"trust_domain": self.authority.trust_domain,
                              "roots": [self.authority.pem]})
