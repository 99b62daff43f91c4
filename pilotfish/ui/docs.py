"""The registry API's OpenAPI page (/v1/docs), working offline: Swagger UI from the package,
started by our own script (no inline code, so the page keeps a strict CSP)."""

from __future__ import annotations

from pilotfish.ui.assets import assets

OPENAPI = "/v1/openapi.json"


def docs_page() -> str:
    """Swagger UI over /v1/openapi.json; `docs.js` adds the UI's token to its requests."""
    files = assets()
    return ('<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            "<title>pilotfish registry API</title>"
            f'<link rel="stylesheet" href="{files.url("swagger/swagger-ui.css")}">'
            f'<link rel="icon" href="{files.url("favicon.svg")}"></head>'
            f'<body><div id="swagger-ui" data-spec="{OPENAPI}"></div>'
            f'<script src="{files.url("swagger/swagger-ui-bundle.js")}"></script>'
            f'<script src="{files.url("docs.js")}"></script></body></html>')
