"""The start-up line names the registry URL as the user wrote it (issue 26: it said `memory:`)."""

from __future__ import annotations

import pytest

from pilotfish.catalog.redact import redact_url


@pytest.mark.parametrize("url", ["memory://", "zk://h:2181/chroot", "http://api:8500"])
def test_urls_without_secrets_are_shown_as_written(url: str) -> None:
    assert redact_url(url) == url


def test_secrets_are_still_hidden() -> None:
    assert redact_url("consul://c:8500?token=t&x=1") == "consul://c:8500?token=***&x=1"
