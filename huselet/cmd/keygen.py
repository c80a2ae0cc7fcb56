"""``huselet keygen``: make an access key pair for a tenant."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from huselet.cmd.common import Exit, Subparsers


def add_parser(sub: Subparsers) -> None:
    """The ``keygen`` subcommand's arguments."""
    keygen = sub.add_parser("keygen", help="make an access key pair for a tenant")
    keygen.add_argument("--tenant", "-t", help="tenant name for the printed keys-file entry")
    keygen.add_argument("--output", "-o", help="also write the caller's key file (mode 0600)")
    keygen.set_defaults(func=cmd_keygen)


def cmd_keygen(args: argparse.Namespace) -> int:
    """A fresh key pair: the keys-file entry for the node, the key file for the caller."""
    from huselet.client.signing import generate_key

    key = generate_key()
    if args.output:
        path = Path(args.output)
        try:
            # O_EXCL: never overwrite a key; 0600 from creation, never readable by others.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            print(f"huselet keygen: cannot create {path}: {exc.strerror}", file=sys.stderr)
            return Exit.FAILURE
        with os.fdopen(fd, "w") as f:
            json.dump({"key_id": key.key_id, "secret": key.secret}, f)
            f.write("\n")
        print(f"# caller key file written to {path} (use: huselet invoke --key-file {path})")
    tenant = args.tenant or "TENANT"
    print(f'# add to the keys file, under the [[tenants]] entry with name = "{tenant}":')
    print("[[tenants.keys]]")
    print(f'id = "{key.key_id}"')
    print(f'secret = "{key.secret}"')
    return Exit.OK
