"""The UI's static files, served from the package (no CDN): read once, gzipped once, with an
ETag and a version hash for their URLs. Swagger UI's files come from the fastapi-offline
package (docs/ui.md says why that one)."""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
from dataclasses import dataclass
from importlib.resources.abc import Traversable

TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".svg": "image/svg+xml", ".png": "image/png"}
OWN = ("ui.css", "ui.js", "docs.js", "favicon.svg")
SWAGGER = ("swagger-ui.css", "swagger-ui-bundle.js")


@dataclass(frozen=True, slots=True)
class Asset:
    """One static file, ready to send."""

    body: bytes
    gzipped: bytes | None  # None where compressing does not pay (images)
    content_type: str
    etag: str  # quoted, as the header carries it


def _load(path: Traversable) -> Asset:
    body = path.read_bytes()
    suffix = "." + path.name.rpartition(".")[2]
    content_type = TYPES.get(suffix, "application/octet-stream")
    gzipped = gzip.compress(body, 9, mtime=0) if suffix in (".css", ".js", ".svg") else None
    return Asset(body, gzipped, content_type, '"' + hashlib.sha256(body).hexdigest()[:16] + '"')


class Assets:
    """Every static file the UI serves, by the name in its URL (/ui/static/NAME)."""

    def __init__(self) -> None:
        self._files: dict[str, Asset] = {}
        own = importlib.resources.files("pilotfish.ui") / "static"
        for name in OWN:
            self._files[name] = _load(own / name)
        swagger = importlib.resources.files("fastapi_offline") / "static"
        for name in SWAGGER:
            self._files[f"swagger/{name}"] = _load(swagger / name)

    def get(self, name: str) -> Asset | None:
        """The file of that name, if the UI has one."""
        return self._files.get(name)

    def url(self, name: str) -> str:
        """The file's URL with its version, so browsers may cache it for long."""
        return f"/ui/static/{name}?v={self._files[name].etag.strip(chr(34))}"


_shared: Assets | None = None


def assets() -> Assets:
    """The process's one set of assets (loaded on first use)."""
    global _shared
    if _shared is None:
        _shared = Assets()
    return _shared
