"""The routes API on the LB's HTTP port: GET/PUT/DELETE /v1/routes/{listen}.

Whoever can change a route decides where its traffic goes: with `--lb-acl` or
`--lb-token-file`, changes need an `admin` token and reads follow the ACL's `read` rules
(the registry API's tokens and answers, pilotfish.http.acl). Errors take the one shape of every
HTTP surface (pilotfish.http.errors): {"error", "code", "field"} with invalid, not_found,
too_large, method_not_allowed, conflict, unauthorized, forbidden, internal.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pilotfish.http.acl import ADMIN, AccessPolicy, forbidden, presented_token
from pilotfish.http.errors import ApiError, body_too_large
from pilotfish.http.responses import respond
from pilotfish.lb.balancer import LoadBalancer
from pilotfish.lb.routes import (
    MAX_SHOWN,
    InvalidRoute,
    parse_listen,
    route_from_json,
    shown,
)

log = logging.getLogger(__name__)

PREFIX = "/v1/routes"
MAX_BODY = 64 * 1024
READS = ("GET", "HEAD")
ALLOWED_ON_LIST = ("GET", "HEAD")
ALLOWED_ON_ROUTE = ("DELETE", "GET", "HEAD", "PUT")


async def _body(scope: dict[str, Any], receive: Any) -> bytes:
    """The request body, refused (413) once it passes MAX_BODY, before reading it all."""
    headers: dict[bytes, bytes] = dict(scope["headers"])
    declared = headers.get(b"content-length", b"")
    if declared.isdigit() and (len(declared) > 12 or int(declared) > MAX_BODY):
        raise body_too_large(MAX_BODY)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise body_too_large(MAX_BODY)
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for key, value in pairs:
        if key in body:
            raise InvalidRoute(key[:MAX_SHOWN], f"{shown(key)}: given twice")
        body[key] = value
    return body


def _json(raw: bytes) -> object:
    """The body as JSON; RecursionError (deep nesting) and every decoding error are a 400."""
    try:
        return json.loads(raw, object_pairs_hook=_no_repeats)
    except RecursionError:
        raise InvalidRoute("body", "body: nested too deeply to be a route") from None
    except ValueError as exc:  # also UnicodeDecodeError, and ints past the digit limit
        if isinstance(exc, InvalidRoute):
            raise
        raise InvalidRoute("body", f"body: not JSON ({str(exc)[:MAX_SHOWN]})") from None


class RoutesApp:
    """ASGI app for the routes of one LoadBalancer (behind StatusApp, beside /metrics)."""

    def __init__(self, balancer: LoadBalancer, access: AccessPolicy | None = None) -> None:
        self.balancer = balancer
        self.access = access

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        started = False

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self._handle(scope, receive, tracked)
        except ApiError as exc:  # Denied too: 401 and 403
            await exc.send(tracked)
        except InvalidRoute as exc:
            await ApiError(400, "invalid", str(exc), exc.field).send(tracked)
        except Exception as exc:  # a bug: one bounded line in the log, no traceback anywhere
            log.error("lb API: %s %s failed: %s", shown(scope.get("method")),
                      shown(scope.get("path")), shown(exc))
            if not started:
                await ApiError(500, "internal", "internal error").send(send)

    async def _handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        listing = path in (PREFIX, PREFIX + "/")
        if not listing and not path.startswith(PREFIX + "/"):
            self._authorize(scope, write=method not in READS)
            raise ApiError(404, "not_found", f"no such path: {shown(path)}")
        allowed = ALLOWED_ON_LIST if listing else ALLOWED_ON_ROUTE
        if method not in allowed:
            raise ApiError(405, "method_not_allowed",
                           f"{method[:32]} is not allowed here; use {', '.join(allowed)}",
                           headers={"Allow": ", ".join(allowed)})
        self._authorize(scope, write=method not in READS)
        if listing:
            routes = [route.to_dict() for route in self.balancer.routes()]
            await respond(send, 200, json.dumps({"routes": routes}).encode())
            return
        key = str(parse_listen(path[len(PREFIX) + 1:], canonical=True))
        if method == "PUT":
            await self._put(key, scope, receive, send)
        elif method == "DELETE":
            if not await self.balancer.delete_route(key):
                raise ApiError(404, "not_found", f"no route on {key}", "listen")
            await respond(send, 204, b"")
        else:
            gate = self.balancer.gates.get(key)
            if gate is None:
                raise ApiError(404, "not_found", f"no route on {key}", "listen")
            await respond(send, 200, json.dumps(gate.route.to_dict()).encode())

    def _authorize(self, scope: dict[str, Any], write: bool) -> None:
        """Raise Denied unless the request's token may do this (always, without an ACL)."""
        if self.access is None or not self.access.enabled:
            return
        token = self.access.authenticate(presented_token(scope), write)
        if write and token is not None and not token.admin:
            raise forbidden(token, ADMIN, "route changes")

    async def _put(self, key: str, scope: dict[str, Any], receive: Any, send: Any) -> None:
        route = route_from_json(key, _json(await _body(scope, receive)))
        try:
            created = await self.balancer.put_route(route)
        except OSError as exc:
            raise ApiError(409, "conflict", f"listen: cannot bind {key}: "
                                            f"{exc.strerror or shown(exc)}", "listen") from None
        headers = {"Location": f"{PREFIX}/{key}"} if created else {}
        await respond(send, 201 if created else 200, json.dumps(route.to_dict()).encode(),
                      headers=headers)
