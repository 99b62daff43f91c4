"""Service names and instance ids the sidecar derives for a container."""

from __future__ import annotations

import re

_NOT_LABEL = re.compile(r"[^a-z0-9-]+")
MAX_LABEL = 63


def dns_label(text: str) -> str | None:
    """`text` made a DNS label (lower case, other characters as '-', at most 63), or None."""
    label = _NOT_LABEL.sub("-", text.lower()).strip("-")
    label = label[:MAX_LABEL].rstrip("-")
    return label or None


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
