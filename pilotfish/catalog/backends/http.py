"""A pilotfish registry API as the catalog, so DNS, LB and sidecars can point at an API.

Writes are one HTTP round trip each on a keep-alive connection. Reads come from a
local cache that a background task keeps current with the API's blocking read
(`GET /v1/catalog?index=N&wait=...`), so snapshot() never touches the network on
the hot path and watchers wake as soon as the API reports a change (including a
lease lapsing, which the API's own backend signals).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
import time
from collections.abc import Mapping
from typing import Any, NoReturn
from urllib.parse import parse_qs, quote, urlsplit

import httpx

from pilotfish.catalog.backends.credentials import ClientTls
from pilotfish.catalog.backends.stored import decode_instance
from pilotfish.catalog.entries import ConfigEntry, decode_entry
from pilotfish.catalog.interface import (
    BackendUnavailable,
    Catalog,
    CatalogError,
    EntryConflict,
    Snapshot,
    UnknownLease,
)
from pilotfish.catalog.model import Instance, InvalidField, Lease
from pilotfish.catalog.redact import redact_url
from pilotfish.config import ConfigError, read_token
from pilotfish.loop import cancel_and_wait

log = logging.getLogger(__name__)

WRITE_TIMEOUT = httpx.Timeout(6.0, connect=2.0)  # the API answers 503 after its own 5 s
# The API answers a blocking read at least every POLL_WAIT, so one that has not answered
# POLL_WAIT + 1.5 s after it was sent is a frozen or cut-off API: the catalog reports it
# (views turn stale) while it keeps the last view. Nothing expires here: the API does.
POLL_WAIT = 3.0
POLL_TIMEOUT = httpx.Timeout(POLL_WAIT + 1.5, connect=2.0)
FIRST_SYNC_TIMEOUT = 5.0
RETRY_MIN, RETRY_MAX = 0.1, 0.5  # reconnect backoff of the poll loop
# Each change costs a full catalog transfer; under bursts, batch changes into one read per
# BATCH_GAP (an isolated change still arrives at once: the next read is already parked).
BATCH_GAP = 0.05
REMEMBERED = 65_536  # cap on the per-process maps of our own leases and instances
TOKEN_ENV = "PILOTFISH_TOKEN"
# A lease of ours whose instances vanish less than this before its expiry was revoked
# elsewhere, not lapsed: the API drops them within a second after expiry.
LAPSE_SLACK = 0.5


class Unauthorized(CatalogError):
    """The API refused the token (401) or found a scope missing (403); says which, never it."""


def _remember(store: dict[str, Any], key: str, value: Any) -> None:
    store.pop(key, None)
    store[key] = value
    if len(store) > REMEMBERED:
        store.pop(next(iter(store)))


class HttpCatalog(Catalog):
    """Talks to a pilotfish registry API over HTTP; reads from a long-poll-fed local cache."""

    def __init__(self, base_url: str, token: str | None = None,
                 token_source: str = "the token given", ca_file: str | None = None,
                 client_cert: str | None = None, client_key: str | None = None) -> None:
        super().__init__()
        real_url = base_url.rstrip("/")
        self.base_url = redact_url(real_url)  # what messages and logs show
        self.token_source = token_source if token else None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        https = real_url.startswith("https:")
        self._tls_without_cert = https and not client_cert
        verify = client_tls(ca_file, client_cert, client_key) if https else True
        self._client = httpx.AsyncClient(base_url=real_url, headers=headers,
                                         timeout=WRITE_TIMEOUT, verify=verify)
        self._poll_client = httpx.AsyncClient(base_url=real_url, headers=headers,
                                              timeout=POLL_TIMEOUT, verify=verify)
        self._mine: dict[str, Instance] = {}  # instances registered here, for deregister
        self._held: dict[str, float] = {}  # our leases' expires_at, to count the ones that lapse
        self._snapshot: Snapshot | None = None
        self._raw: dict[str, tuple[Mapping[str, Any], Instance]] = {}
        self._index = 0  # local, never goes backwards even when a restarted API starts over
        self._remote_index: int | None = None
        self._up = False
        self._error: str | None = None
        self._settled = asyncio.Event()  # the first sync attempt finished, either way
        self._poller: asyncio.Task[None] | None = None

    @classmethod
    async def from_url(cls, url: str, token_file: str | None = None,
                       ca_file: str | None = None) -> HttpCatalog:
        """`http(s)://host:port[/path][?token=T]`.

        The token: `?token=`, else the --token-file, else PILOTFISH_TOKEN. For https://,
        `ca_file` (else PILOTFISH_CA_FILE, else the system's CAs) verifies the API, and
        PILOTFISH_CLIENT_CERT / PILOTFISH_CLIENT_KEY give a client certificate.
        """
        parts = urlsplit(url)
        shown = redact_url(url)
        if not parts.hostname:
            raise ValueError(f"registry URL {shown!r}: give the API as http://HOST:PORT")
        params = parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(params) - {"token"})
        if unknown:
            raise ValueError(f"registry URL {shown!r}: unknown parameter(s) "
                             f"{', '.join(unknown)} (known: token)")
        token, source = params.get("token", [""])[-1], "?token= in the registry URL"
        if not token and token_file:
            token, source = read_token(token_file) or "", f"--token-file {token_file}"
        if not token:
            token, source = os.environ.get(TOKEN_ENV, ""), TOKEN_ENV
        tls = ClientTls.from_env(ca_file)
        catalog = cls(f"{parts.scheme}://{parts.netloc}{parts.path}", token or None, source,
                      tls.ca_file, tls.client_cert, tls.client_key)
        await catalog.start()
        return catalog

    # leases

    async def _create_lease(self, ttl: int, owner: str) -> Lease:
        response = await self._request("POST", "/v1/leases", json={"ttl": ttl, "owner": owner})
        if response.status_code != 201:
            self._fail(response)
        return self._holding(_lease_from(response.json()))

    async def _keepalive(self, lease_id: str) -> Lease:
        response = await self._request("PUT", f"/v1/leases/{_seg(lease_id)}/keepalive")
        if response.status_code != 200:
            if response.status_code == 404:
                self._gone(lease_id)
            self._fail(response, lease_id)
        return self._holding(_lease_from(response.json()))

    async def _lease(self, lease_id: str) -> Lease | None:
        response = await self._request("GET", f"/v1/leases/{_seg(lease_id)}")
        if response.status_code == 404:
            self._gone(lease_id)
            return None
        if response.status_code != 200:
            self._fail(response, lease_id)
        return _lease_from(response.json())

    async def _revoke(self, lease_id: str) -> bool:
        response = await self._request("DELETE", f"/v1/leases/{_seg(lease_id)}")
        if response.status_code == 404:
            self._gone(lease_id)
            return False
        self._held.pop(lease_id, None)
        if response.status_code != 204:
            self._fail(response, lease_id)
        return True

    def _holding(self, lease: Lease) -> Lease:
        _remember(self._held, lease.id, lease.expires_at)
        return lease

    def _gone(self, lease_id: str) -> None:
        """A lease of ours is gone: count it as lapsed if its time had run out."""
        expires_at = self._held.pop(lease_id, None)
        if expires_at is not None and expires_at <= time.time() + LAPSE_SLACK:
            self.expirations += 1

    # instances

    async def _register(self, instance: Instance) -> bool:
        body = instance.to_dict()
        del body["service"], body["id"]
        response = await self._request("PUT", _instance_path(instance.service, instance.id),
                                       json=body)
        if response.status_code not in (200, 201):
            self._fail(response, instance.lease)
        _remember(self._mine, instance.id, instance)
        return response.status_code == 201

    async def _deregister(self, instance_id: str) -> Instance | None:
        known = self._mine.get(instance_id)
        if self._up and self._snapshot is not None:
            known = self._snapshot.get(instance_id) or known
        if known is None:
            known = await self._find_fresh(instance_id)
            if known is None:
                return None
        removed = await self._delete(known)
        if removed:
            return known
        # Our copy may be stale (the instance moved to another service): look once more.
        current = await self._find_fresh(instance_id)
        if current is not None and current.service != known.service and await self._delete(current):
            return current
        return None

    async def _delete(self, instance: Instance) -> bool:
        response = await self._request("DELETE", _instance_path(instance.service, instance.id))
        if response.status_code == 204:
            self._mine.pop(instance.id, None)
            return True
        if response.status_code == 404:
            self._mine.pop(instance.id, None)
            return False
        self._fail(response)

    # config entries: the API's /v1/config/{name}, which reads and writes its backend

    async def _config_entry(self, name: str) -> ConfigEntry:
        response = await self._request("GET", f"/v1/config/{_seg(name)}")
        if response.status_code != 200:
            self._fail(response)
        return _entry_from(name, response.json())

    async def _put_config_entry(self, name: str, data: bytes, version: int) -> ConfigEntry:
        body = {"value": json.loads(data), "version": version}
        response = await self._request("PUT", f"/v1/config/{_seg(name)}", json=body)
        if response.status_code == 409 and _code(response) == "conflict":
            raise EntryConflict(name, version)
        if response.status_code != 200:
            self._fail(response)
        return _entry_from(name, response.json())

    # reads

    async def snapshot(self) -> Snapshot:
        if self._up and self._snapshot is not None:
            return self._snapshot
        self._follow_from_first_read()
        if not self._settled.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), FIRST_SYNC_TIMEOUT)
        if self._up and self._snapshot is not None:
            return self._snapshot
        raise BackendUnavailable(
            self._error or f"registry API {self.base_url}: no catalog received yet")

    async def healthy(self) -> bool:
        try:
            response = await self._client.get("/v1/health")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def close(self) -> None:
        await cancel_and_wait(self._poller)
        self._poller = None
        await self._poll_client.aclose()
        await self._client.aclose()

    # the cache

    def _follow_from_first_read(self) -> None:
        """Start following the API on the first read: write-only users never download it."""
        if self._poller is None:
            self._poller = asyncio.create_task(self._follow(), name=f"http-catalog {self.base_url}")

    async def _follow(self) -> None:
        delay = RETRY_MIN
        while True:
            try:
                self._apply(await self._get_catalog(None))  # resync after every (re)connect
                delay = RETRY_MIN
                while True:
                    await asyncio.sleep(BATCH_GAP)
                    self._apply(await self._get_catalog(self._remote_index))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._down(exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def _get_catalog(self, index: int | None) -> dict[str, Any]:
        """One read of the whole catalog; with an index, a blocking read that waits for a change."""
        params = {} if index is None else {"index": str(index), "wait": f"{POLL_WAIT:g}s"}
        try:
            response = await self._poll_client.get(
                "/v1/catalog", params=params,
                timeout=WRITE_TIMEOUT if index is None else POLL_TIMEOUT)
        except httpx.HTTPError as exc:
            raise BackendUnavailable(self._transport_error(exc)) from exc
        if response.status_code != 200:
            self._fail(response)
        body: dict[str, Any] = response.json()
        return body

    async def _find_fresh(self, instance_id: str) -> Instance | None:
        """Look an instance up in a fresh read outside the cache (for the rare deregister)."""
        body = await self._get_catalog(None)
        for item in body["instances"]:
            if item["id"] == instance_id:
                return decode_instance(item)
        return None

    def _apply(self, body: Mapping[str, Any]) -> None:
        raw: dict[str, tuple[Mapping[str, Any], Instance]] = {}
        changed = False
        for item in body["instances"]:
            previous = self._raw.get(item["id"])
            if previous is not None and previous[0] == item:
                raw[item["id"]] = previous
            elif (instance := decode_instance(item)) is not None:
                raw[item["id"]] = (item, instance)
                changed = True
        changed = changed or raw.keys() != self._raw.keys() or self._snapshot is None
        if changed and self._held:
            alive = {item[1].lease for item in raw.values()}
            for lease_id in {item[1].lease for item in self._raw.values()} - alive:
                self._gone(lease_id)
        remote_index = int(body["index"])
        if changed:
            self._raw = raw
            # Follow the API's index while it moves forward; a restarted API starts over at 1.
            self._index = max(self._index + 1, remote_index)
            self._snapshot = Snapshot(self._index, {k: v[1] for k, v in raw.items()})
        self._remote_index = remote_index
        recovered = not self._up
        if recovered and self._error is not None:
            log.info("registry API %s reachable again", self.base_url)
        self._up, self._error = True, None
        self._settled.set()
        if changed or recovered:
            self.changes.notify()

    def _down(self, exc: Exception) -> None:
        if isinstance(exc, CatalogError):
            message = str(exc)
        else:  # an answer that is not a pilotfish catalog (a proxy's error page, a bug)
            message = f"registry API {self.base_url}: bad answer: {type(exc).__name__}: {exc}"
        if self._up or self._error is None:  # say so once per outage, not on every retry
            log.warning("%s", message)
        was_up = self._up
        self._up, self._error = False, message
        self._settled.set()
        if was_up:
            self.changes.notify()  # parked watchers wake and see BackendUnavailable

    # plumbing

    async def _request(self, method: str, path: str, json: Any = None) -> httpx.Response:
        try:
            return await self._client.request(method, path, json=json)
        except httpx.HTTPError as exc:
            raise BackendUnavailable(self._transport_error(exc)) from exc

    def _fail(self, response: httpx.Response, lease_id: str = "") -> NoReturn:
        """Raise the catalog error an API error response stands for."""
        body = _error_body(response)
        message, code, field = body.get("error", ""), body.get("code", ""), body.get("field")
        status = response.status_code
        if status in (400, 422):
            field = field or "body"
            raise InvalidField(field, message.removeprefix(f"{field}: "))
        if status == 404 and code == "unknown_lease":
            raise UnknownLease(lease_id)
        if status in (401, 403):
            raise Unauthorized(self._refusal(status, body, message))
        if status >= 500:
            raise BackendUnavailable(f"registry API {self.base_url}: {status} {message}".rstrip())
        raise CatalogError(f"registry API {self.base_url}: unexpected {status} {message}".rstrip())


    def _transport_error(self, exc: httpx.HTTPError) -> str:
        return _transport_error(self.base_url, exc, self._tls_without_cert)

    def _refusal(self, status: int, body: Mapping[str, Any], message: str) -> str:
        """Which token was refused and why, from the API's answer: names, never the secret."""
        where = f"registry API {self.base_url}"
        if status == 401 and self.token_source is None:
            return (f"{where}: {message or 'a token is needed'} (no token given: set "
                    f"{TOKEN_ENV}, --token-file or ?token= in the registry URL)")
        if status == 401:
            return f"{where} refused the token from {self.token_source}: {message or 'unknown'}"
        name, scope = body.get("token"), body.get("scope")
        if name and scope:  # the API's message names both: "token 'x' lacks scope 'y' (...)"
            return f"{where}: {message} [token from {self.token_source}]"
        return f"{where}: forbidden: {message}"


def client_tls(ca_file: str | None, cert: str | None, key: str | None) -> ssl.SSLContext:
    """The TLS context of a client of an https:// API: `ca_file` (or the system's) verifies it."""
    try:
        context = ssl.create_default_context(cafile=ca_file)
        if cert:
            context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        what = f"--ca-file {ca_file}" if ca_file else "the client certificate"
        raise ConfigError(f"{what}: {exc}") from exc
    return context


def _seg(value: str) -> str:
    return quote(value, safe="")


def _instance_path(service: str, instance_id: str) -> str:
    return f"/v1/services/{_seg(service)}/instances/{_seg(instance_id)}"


def _entry_from(name: str, body: Mapping[str, Any]) -> ConfigEntry:
    value, version = body.get("value"), int(body.get("version", 0))
    return decode_entry(name, json.dumps(value).encode(), version)


def _lease_from(body: Mapping[str, Any]) -> Lease:
    return Lease(id=body["id"], ttl=body["ttl"], owner=body.get("owner", ""),
                 expires_at=float(body.get("expires_at", 0.0)))


def _code(response: httpx.Response) -> str:
    return str(_error_body(response).get("code", ""))


def _error_body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"error": response.text[:200]}
    return body if isinstance(body, dict) else {}


def _transport_error(base_url: str, exc: httpx.HTTPError,
                     tls_without_cert: bool = False) -> str:
    text = f"registry API {base_url} unreachable: {type(exc).__name__}: {exc}".rstrip(": ")
    if "CERTIFICATE_VERIFY_FAILED" in text:
        text += " (TLS: the API's certificate is not signed by the CA of --ca-file / " \
                "PILOTFISH_CA_FILE, or its name does not match the URL's host)"
    elif tls_without_cert and isinstance(exc, (httpx.ReadError, httpx.RemoteProtocolError)):
        # a server requiring client certificates hangs up after the handshake, unexplained
        text += " (TLS: no client certificate was offered; if the API requires one " \
                "(--tls-client-ca), set PILOTFISH_CLIENT_CERT and PILOTFISH_CLIENT_KEY)"
    return text
