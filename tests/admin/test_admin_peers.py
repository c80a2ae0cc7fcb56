"""Who may connect to the admin socket: peer uid checks, as unprivileged helper uids.

Real Unix sockets in a short temp directory (``sock_dir``/``sock_path`` in
conftest.py); the server and the clients run in subprocesses as helper uids
(uid_helper.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uid_helper
from adminkit import NOBODY

from huselet.admin.client import AdminClient

# --- who may connect ---------------------------------------------------------
#
# Neither end runs as root here: the server runs as one helper uid and the
# clients as another (or the same), each in a subprocess started with
# ``user=``/``group=`` — so the check is the one an unprivileged daemon makes,
# and root's own pass (uid 0 is always allowed) cannot hide a mistake.

SERVER_UID = 65533  # the daemon's helper uid: unprivileged, and not the test's

needs_uid_switch = pytest.mark.skipif(
    os.geteuid() != 0, reason="switching to helper uids needs root (CI runs as root)"
)


def _client_as(uid: int, path: Path) -> dict[str, Any]:
    child = uid_helper.Forked(uid, uid_helper.client, path)
    line = child.readline()
    assert child.wait() == 0, "the client child failed (its traceback is on stderr)"
    report: dict[str, Any] = json.loads(line)
    assert report["uid"] == uid
    return report


@contextmanager
def _server_as_helper_uid(sock_dir: Path, allowed: tuple[int, ...] = ()) -> Iterator[Path]:
    """An AdminServer running as SERVER_UID on ``sock_dir/admin.sock``."""
    os.chown(sock_dir, SERVER_UID, SERVER_UID)
    path = sock_dir / "admin.sock"
    child = uid_helper.Forked(SERVER_UID, uid_helper.serve, path, allowed)
    try:
        assert child.readline().split() == ["ready", str(SERVER_UID)], "no server (see stderr)"
        yield path
    finally:
        child.kill()


def _open_up_for_other_users(sock_dir: Path, sock_path: Path) -> None:
    # Loosen the file permissions on purpose: only SO_PEERCRED stands in the way now.
    os.chmod(sock_dir, 0o711)
    os.chmod(sock_path, 0o666)


@needs_uid_switch
def test_peer_of_another_uid_is_forbidden(sock_dir: Path) -> None:
    with _server_as_helper_uid(sock_dir) as path:
        _open_up_for_other_users(sock_dir, path)
        report = _client_as(NOBODY, path)
        assert report["raw"]["ok"] is False
        assert report["raw"]["error"]["code"] == "forbidden"
        # The client turns the daemon's refusal (not a file-permission error) into AdminForbidden.
        assert report["client"][0] == "AdminForbidden"
        assert "refused this user" in report["client"][1]
        # The daemon's own (unprivileged) uid gets through; so does root.
        assert _client_as(SERVER_UID, path)["client"] == ["ok", {"x": 1}]
        refused = AdminClient(path).call("refused")
        assert refused == {"uids": [NOBODY, NOBODY], "forbidden": 2}


@needs_uid_switch
def test_allowed_uid_may_connect(sock_dir: Path) -> None:
    with _server_as_helper_uid(sock_dir, allowed=(NOBODY,)) as path:
        _open_up_for_other_users(sock_dir, path)
        report = _client_as(NOBODY, path)
        assert report["raw"] == {"ok": True, "data": {"from": "child"}}
        assert report["client"] == ["ok", {"x": 1}]
        assert AdminClient(path).call("refused") == {"uids": [], "forbidden": 0}


@needs_uid_switch
def test_file_permissions_alone_keep_others_out(sock_dir: Path) -> None:
    # Without loosening anything, the 0700 directory / 0600 socket already refuse.
    with _server_as_helper_uid(sock_dir, allowed=(NOBODY,)) as path:
        report = _client_as(NOBODY, path)
        assert report["raw"] == "PermissionError"
        assert report["client"][0] == "AdminForbidden"
        assert "permission denied" in report["client"][1]
        # The kernel refused; the daemon never saw them.
        assert AdminClient(path).call("refused") == {"uids": [], "forbidden": 0}
