"""The routes API on the LB's HTTP port: GET/PUT/DELETE /v1/routes/{listen}.

Whoever can change a route decides where its traffic goes: with `--lb-acl` or
`--lb-token-file`, changes need an `admin` token and reads follow the ACL's `read` rules
(the registry API's tokens and answers, pilotfish.acl).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

from pilotfish.acl import ADMIN, AccessPolicy, Denied, forbidden, presented_token
from pilotfish.config import ConfigError
from pilotfish.http import respond
from pilotfish.lb.balancer import LoadBalancer
from pilotfish.lb.routes import route_from_json

PREFIX = "/v1/routes"
MAX_BODY = 64 * 1024


def _error(message: str, code: str, field: str | None = None) -> bytes:
    body: dict[str, Any] = {"error": message, "code": code}
    if field is not None:
        body["field"] = field
    return json.dumps(body).encode()


async def _body(receive: Any) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _deny(send: Any, exc: Denied) -> None:
    """401 with `WWW-Authenticate: Bearer`, or 403 naming the token and the missing scope."""
    await respond(send, exc.status, json.dumps(exc.body()).encode(),
                  headers=[(b"www-authenticate", exc.challenge().encode())])


class RoutesApp:
    """ASGI app for the routes of one LoadBalancer (behind StatusApp, beside /metrics)."""

    def __init__(self, balancer: LoadBalancer, access: AccessPolicy | None = None) -> None:
        self.balancer = balancer
        self.access = access

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        try:
            self._authorize(scope, write=method not in ("GET", "HEAD"))
        except Denied as exc:
            await _deny(send, exc)
            return
        if path in (PREFIX, PREFIX + "/"):
            if method != "GET":
                await respond(send, 405, _error("use GET", "invalid"))
                return
            routes = [route.to_dict() for route in self.balancer.routes()]
            await respond(send, 200, json.dumps({"routes": routes}).encode())
            return
        if not path.startswith(PREFIX + "/"):
            await respond(send, 404, _error("not found", "not_found"))
            return
        key = unquote(path[len(PREFIX) + 1:])
        if method == "GET":
            listener = self.balancer.listeners.get(key)
            if listener is None:
                await respond(send, 404, _error(f"no route on {key}", "not_found", "listen"))
                return
            await respond(send, 200, json.dumps(listener.route.to_dict()).encode())
        elif method == "PUT":
            await self._put(key, receive, send)
        elif method == "DELETE":
            if await self.balancer.delete_route(key):
                await respond(send, 204, b"")
            else:
                await respond(send, 404, _error(f"no route on {key}", "not_found", "listen"))
        else:
            await respond(send, 405, _error("use GET, PUT or DELETE", "invalid"))

    def _authorize(self, scope: dict[str, Any], write: bool) -> None:
        """Raise Denied unless the request's token may do this (always, without an ACL)."""
        if self.access is None or not self.access.enabled:
            return
        token = self.access.authenticate(presented_token(scope), write)
        if write and token is not None and not token.admin:
            raise forbidden(token, ADMIN, "route changes")

    async def _put(self, key: str, receive: Any, send: Any) -> None:
        raw = await _body(receive)
        if raw is None:
            await respond(send, 413, _error("body too large", "invalid", "body"))
            return
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            await respond(send, 400, _error("body is not JSON", "invalid", "body"))
            return
        try:
            route = route_from_json(key, body)
        except ConfigError as exc:
            field = str(exc).partition(":")[0]
            await respond(send, 400, _error(str(exc), "invalid", field))
            return
        if route.key != key:
            await respond(send, 400, _error(f"listen: write it as {route.key}", "invalid",
                                            "listen"))
            return
        try:
            created = await self.balancer.put_route(route)
        except OSError as exc:
            await respond(send, 409, _error(f"listen: cannot bind {key}: {exc.strerror}",
                                            "invalid", "listen"))
            return
        await respond(send, 201 if created else 200, json.dumps(route.to_dict()).encode())
