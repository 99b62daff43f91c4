"""The one error shape of every pilotfish HTTP surface, and the one set of codes it uses.

Every JSON error answer (the registry API, the LB's routes API, a listener's own refusals in
pilotfish.http.protocol and .accept, /metrics + /health's 404, the last-resort 500) is

    {"error": message, "code": code, "field": field}    (field only where one is at fault)

and a 401/403 adds `token` (the name of the token refused) and `scope` (the scope it lacks).
The Consul-compatible API answers as Consul does instead, in plain text
(pilotfish.registry.consul.errors): its clients parse Consul's answers, not ours.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import Response

from pilotfish.http.responses import Send, encode_json, json_response, respond

CODES: Mapping[str, tuple[int, ...]] = {
    "invalid": (400, 422),  # a field is malformed or missing: `field` names it
    "https_required": (400,),  # plain HTTP sent to a TLS listener
    "unauthorized": (401,),  # no token where one is needed, or an unknown one
    "forbidden": (403,),  # the token lacks a scope, or the lease is another token's
    "not_found": (404,),  # no such path, instance or route
    "unknown_lease": (404,),  # the lease is unknown or has lapsed
    "method_not_allowed": (405,),  # `Allow` lists the methods the path takes
    "timeout": (408,),  # the request did not arrive in time
    "conflict": (409,),  # the LB cannot bind a route's address; a config entry moved on
    "too_large": (413, 431),  # the body, or the request head, is over its limit
    "internal": (500,),  # a failure no handler expected (logged in one line)
    "unavailable": (503,),  # the catalog backend does not answer, or the listener is full
}
"""Every error code, and the HTTP statuses it is answered with."""


def _check(code: str) -> None:
    if code not in CODES:
        raise ValueError(f"{code!r} is not an error code (pilotfish.http.errors.CODES)")


class ApiError(Exception):
    """An error answered in the one shape; any handler may raise it."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        _check(code)
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, str]:
        """The answer's JSON object."""
        return shape(self.code, self.message, self.field)

    def encoded(self) -> bytes:
        """The answer's body, encoded."""
        return encode_json(self.body())

    def response(self) -> Response:
        """The answer as a Starlette response."""
        return json_response(self.body(), self.status, self.headers)

    async def send(self, send: Send) -> None:
        """Send the answer through a raw ASGI `send`."""
        await respond(send, self.status, self.encoded(), headers=self.headers)


def shape(code: str, message: str, field: str | None = None) -> dict[str, str]:
    """The one shape: {"error": message, "code": code, "field": field (when one is at fault)}."""
    _check(code)
    body = {"error": message, "code": code}
    if field:
        body["field"] = field
    return body


def error_body(code: str, message: str, field: str | None = None) -> bytes:
    """The encoded body of an error answered outside any handler (a listener's refusal)."""
    return encode_json(shape(code, message, field))


def body_too_large(limit: int) -> ApiError:
    """413 for a request body over `limit` bytes; the connection closes, unread."""
    return ApiError(413, "too_large", f"body: over the limit of {limit} bytes", "body",
                    {"Connection": "close"})
