"""Registry URLs fit for logs and error messages: credentials replaced by ***."""

from __future__ import annotations

from urllib.parse import urlsplit

SECRET_PARAMS = frozenset({"token", "password", "acl_token", "auth"})


def redact_url(url: str) -> str:
    """The URL with any password in its user info and any ?token=/?password= shown as ***."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}{':***' if colon else ''}@{hosts}"
    query = "&".join(
        f"{pair.partition('=')[0]}=***" if pair.partition("=")[0] in SECRET_PARAMS else pair
        for pair in parts.query.split("&") if pair)
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # nothing secret; geturl() would turn `memory://` into `memory:`
    return parts._replace(netloc=netloc, query=query).geturl()
