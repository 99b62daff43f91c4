"""What every ASGI middleware of pilotfish shares: it wraps one app, lets everything but HTTP
requests through untouched, and looks like the app it wraps to whoever asks for its attributes."""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send


class Middleware:
    """An ASGI app in front of `app`; subclasses say what it does to an HTTP request (`http`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)  # e.g. the FastAPI app's routes and OpenAPI document

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.http(scope, receive, send)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one HTTP request (passing it on to `app`, or answering it)."""
        await self.app(scope, receive, send)
