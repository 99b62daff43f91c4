"""The mesh's flags: what they build, and each mistake named by its flag."""

from __future__ import annotations

from pathlib import Path

import pytest

from pilotfish.cli import build_parser
from pilotfish.config import ConfigError
from pilotfish.mesh.options import mesh_settings
from pilotfish.mesh.outbound import Upstream


def _args(tmp_path: Path, *flags: str, command: str = "sidecar") -> object:
    token = tmp_path / "token"
    token.write_text("host-secret\n")
    return build_parser().parse_args([command, "--token-file", str(token), *flags]
                                     if command == "sidecar" else [command, *flags])


def test_the_mesh_is_off_without_an_inbound_port_and_upstreams_need_one(tmp_path: Path) -> None:
    assert mesh_settings(_args(tmp_path), "10.0.0.2") is None  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--mesh-upstream needs --mesh-inbound"):
        mesh_settings(_args(tmp_path, "--mesh-upstream",  # type: ignore[arg-type]
                            "127.0.0.1:9000=db?as=web"), "10.0.0.2")


def test_an_inbound_port_with_its_issuer_and_upstreams(tmp_path: Path) -> None:
    settings = mesh_settings(_args(  # type: ignore[arg-type]
        tmp_path, "--registry", "http://10.0.0.1:8500", "--mesh-inbound", ":15001",
        "--mesh-upstream", "127.0.0.1:9000=db?as=web&balance=round_robin",
        "--mesh-cert-ttl", "600"), "10.0.0.2")
    assert settings is not None
    assert (settings.inbound.host, settings.inbound.port) == ("0.0.0.0", 15001)
    assert settings.issuer == "http://10.0.0.1:8500" and settings.token == "host-secret"
    assert settings.cert_ttl == 600 and settings.upstreams[0].balance == "round_robin"


def test_up_with_the_ca_asks_its_own_api(monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args(["up", "--api", "0.0.0.0:8500", "--mesh-ca-cert", "c",
                                      "--mesh-ca-key", "k", "--mesh-inbound", ":15001"])
    monkeypatch.setenv("PILOTFISH_TOKEN", "t")
    settings = mesh_settings(args, "10.0.0.2")
    assert settings is not None and settings.issuer == "http://127.0.0.1:8500"


@pytest.mark.parametrize(("value", "message"), [
    ("127.0.0.1:9000", "LISTEN=SERVICE"),
    ("127.0.0.1:9000=db", "as=SOURCE is required"),
    ("127.0.0.1:9000=db?as=web&color=red", "unknown option"),
    ("127.0.0.1:9000=db?as=web&balance=fastest", "balance must be"),
    ("127.0.0.1:9000=-db-?as=web", "service"),
    ("localhost:9000=db?as=web", "not an IP address"),
])
def test_a_bad_upstream_is_named(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match="--mesh-upstream") as refused:
        Upstream.parse(value)
    assert message in str(refused.value)


def test_no_issuer_or_no_token_is_a_clear_error(tmp_path: Path, monkeypatch:
                                                pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PILOTFISH_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="--mesh-issuer"):
        mesh_settings(_args(tmp_path, "--registry", "etcd://127.0.0.1:2379",  # type: ignore[arg-type]
                            "--mesh-inbound", ":15001"), "10.0.0.2")
    args = build_parser().parse_args(["sidecar", "--registry", "http://10.0.0.1:8500",
                                      "--mesh-inbound", ":15001"])
    with pytest.raises(ConfigError, match="needs a token"):
        mesh_settings(args, "10.0.0.2")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sidecar", "--mesh-cert-ttl", "2"])
