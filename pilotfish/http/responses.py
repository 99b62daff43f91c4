"""Whole HTTP answers: through a raw ASGI `send`, or as a Starlette Response, JSON compact."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.responses import Response

Send = Callable[[dict[str, Any]], Awaitable[None]]


def encode_json(data: Any) -> bytes:
    """JSON as every pilotfish answer writes it: compact, ASCII."""
    return json.dumps(data, separators=(",", ":")).encode()


def json_response(data: Any, status: int = 200,
                  headers: Mapping[str, str] | None = None) -> Response:
    """A compact JSON response without a serialization pass through pydantic."""
    return Response(encode_json(data), status_code=status, media_type="application/json",
                    headers=dict(headers) if headers else None)


async def respond(send: Send, status: int, body: bytes,
                  content_type: str = "application/json",
                  headers: Mapping[str, str] | None = None) -> None:
    """Send a whole response through a raw ASGI `send`."""
    extra = [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type.encode()),
                            (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})
