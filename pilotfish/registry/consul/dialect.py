"""How the Consul-compatible API speaks when it refuses: plain text with Consul's status codes.

Consul's clients (consul-template, Prometheus' consul_sd, the Go and Python libraries) parse
Consul's answers, so these paths keep Consul's error dialect instead of pilotfish's one JSON
error shape (pilotfish.http.errors): a 403 where Consul never answers 401, "ACL not found",
"Permission denied", "method PUT not allowed".
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import Response

from pilotfish.http.acl import Denied

CONSUL_PREFIXES = ("/v1/catalog/", "/v1/health/", "/v1/agent/", "/v1/status/")


class ConsulError(Exception):
    """An error answered as Consul does: a status code and a plain-text message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def is_consul_path(path: str) -> bool:
    """Whether a path is one of the Consul-compatible routes (answered in Consul's dialect)."""
    return path.startswith(CONSUL_PREFIXES)


def plain_text(status: int, message: str) -> Response:
    """An answer in Consul's dialect."""
    return Response(message, status_code=status, media_type="text/plain")


def consul_denied(exc: Denied) -> Response:
    """A refusal as Consul words it: 403 "ACL not found" for an unknown token, else
    "Permission denied" (Consul never answers 401), naming the token and scope, never a secret.
    """
    if exc.status == 401 and exc.message == "unknown token":
        return plain_text(403, "ACL not found")
    if exc.token is not None:
        return plain_text(403, f"Permission denied: token {exc.token!r} lacks scope "
                               f"{exc.scope!r}")
    return plain_text(403, f"Permission denied: {exc.message}")


def consul_method_not_allowed(method: str) -> Response:
    """405 as Consul words it (the caller adds `Allow`)."""
    return plain_text(405, f"method {method} not allowed")


ERROR_DOCS: dict[int | str, dict[str, Any]] = {
    status: {"description": description, "content": {"text/plain": {}}}
    for status, description in ((400, "a bad parameter, ?filter= or ?wait= (plain text)"),
                                (403, "ACL not found (an unknown token), or Permission denied (a "
                                      "token without scope read; no token where reads need "
                                      "one)"),
                                (500, "the backend did not answer (plain text, as Consul)"))
}
"""The OpenAPI description of the errors every Consul-compatible route may answer."""
