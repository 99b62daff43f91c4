"""Service names and instance ids the sidecar derives for a container."""

from __future__ import annotations

import re

from pilotfish.catalog.model import InvalidField, service_name

_NOT_LABEL = re.compile(r"[^a-z0-9-]+")
_SEPARATORS = re.compile(r"[_.]+")
MAX_LABEL = 63
MAX_SHOWN = 80  # characters of a refused name quoted back in a log line


def dns_label(text: str) -> str | None:
    """`text` made a DNS label (lower case, other characters as '-', at most 63), or None."""
    label = _NOT_LABEL.sub("-", text.lower()).strip("-")
    label = label[:MAX_LABEL].rstrip("-")
    return label or None


def explicit_service_name(name: str) -> str:
    """A SERVICE_NAME as a DNS label: lower case, each run of `_` and `.` as one `-`, none at
    either end (Consul and Registrator take `my_app`; DNS needs `my-app`). What is still not a
    label after that (spaces, other characters, over 63) raises InvalidField.

    An image name holds only those separators, so `my_thing` the image and `my_thing` the
    setting both give `my-thing`.
    """
    try:
        return service_name(_SEPARATORS.sub("-", name).strip("-"))
    except InvalidField:
        shown = name if len(name) <= MAX_SHOWN else name[:MAX_SHOWN] + "..."
        raise InvalidField("service", (
            f"{shown!r} is not a DNS label even with '_' and '.' as '-': 1-63 characters of "
            "a-z, 0-9 and '-'")) from None


def image_base_name(image: str) -> str | None:
    """The name part of an image reference, as Registrator takes it: `registry:5000/team/web:1.2`
    and `web@sha256:...` give `web`; a bare image id (`sha256:...`) has no name."""
    if image.startswith("sha256:") or not image:
        return None
    reference = image.split("@", 1)[0]
    base = reference.rsplit("/", 1)[-1]
    return base.split(":", 1)[0] or None


def default_service_name(image: str) -> str | None:
    """The default service name of a container: its image's base name as a DNS label."""
    base = image_base_name(image)
    return dns_label(base) if base else None


def grouped_name(name: str, port: int) -> str:
    """`<name>-<port>`, as Registrator names each port of a container with several; the name is
    shortened if needed to stay a DNS label."""
    suffix = f"-{port}"
    return name[:MAX_LABEL - len(suffix)].rstrip("-") + suffix


def container_name(name: str) -> str:
    """A container's name without Docker's leading '/'."""
    return name[1:] if name.startswith("/") else name


def instance_id(sidecar: str, container: str, port: int, protocol: str) -> str:
    """`<sidecar>:<container-name>:<port>[:udp]`: stable across restarts of the sidecar and of
    the container, so a re-registration replaces rather than duplicates."""
    suffix = ":udp" if protocol == "udp" else ""
    return f"{sidecar}:{container_name(container)}:{port}{suffix}"
