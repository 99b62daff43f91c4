"""`pilotfish ca init`: make the mesh's CA (a certificate and its key) in a folder."""

from __future__ import annotations

import argparse
from typing import Any

from pilotfish.catalog.model import InvalidField
from pilotfish.config import ConfigError, env
from pilotfish.mesh.ca import CA_DAYS, create_ca
from pilotfish.mesh.identity import DEFAULT_TRUST_DOMAIN


def add_parser(commands: Any) -> None:
    """The `ca` command and its `init` action."""
    parser = commands.add_parser("ca", help="the service mesh's certificate authority")
    actions = parser.add_subparsers(dest="ca_action", required=True)
    init = actions.add_parser("init", help="make a new CA (ca.crt, ca.key) in --dir")
    init.add_argument("--dir", required=True, dest="ca_dir",
                      help="folder for ca.crt and ca.key (made if absent; an existing CA "
                           "there is never overwritten)")
    init.add_argument("--trust-domain", default=env("trust_domain", DEFAULT_TRUST_DOMAIN),
                      help="the trust domain of every identity the CA signs "
                           f"(default {DEFAULT_TRUST_DOMAIN}) [PILOTFISH_TRUST_DOMAIN]")
    init.add_argument("--days", type=int, default=CA_DAYS,
                      help=f"how long the CA certificate is valid (default {CA_DAYS})")


def run(args: argparse.Namespace) -> int:
    """Make the CA; print where its certificate and key are."""
    if not 1 <= args.days <= 36_500:
        raise ConfigError("--days: must be from 1 to 36500")
    try:
        cert, key = create_ca(args.ca_dir, args.trust_domain, args.days)
    except InvalidField as exc:
        raise ConfigError(f"--trust-domain: {exc.message}") from None
    except OSError as exc:
        raise ConfigError(f"--dir {args.ca_dir}: {exc.strerror or exc}") from None
    print(f"CA for trust domain {args.trust_domain}:\n  certificate {cert}\n  key {key} "
          "(keep it on the registry API's host only)")
    return 0
