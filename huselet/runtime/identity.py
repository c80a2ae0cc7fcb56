"""Which cgroups belong to *this* daemon: one identity is a node id plus a run dir.

Two daemons on one host (own state and run dirs, as tests and staged
upgrades run them) must never touch each other's sandboxes: the start-up
sweep removes everything under this daemon's subtree, so the subtree has to
name the daemon, not just the runtime. Layout (relative to a hierarchy root):

- cgroup v1 (and hybrid hosts): ``<cgroup_parent>/<identity>/<runtime>`` in
  each controller hierarchy — a per-node subtree;
- cgroup v2 inside a unit with ``Delegate=yes`` (the daemon is not in the
  root group): ``<own group>/<cgroup_parent>/<identity>/<runtime>``, i.e.
  inside the subtree systemd delegated to the unit. The daemon itself moves
  into the leaf ``<own group>/huselet-daemon`` first, because v2 lets only a
  group *without* member processes hand controllers to its children;
- cgroup v2 with the daemon in the root group (a container, no systemd):
  ``<cgroup_parent>/<identity>/<runtime>`` below the root.

``<identity>`` is the node id (sanitised) and a hash of the resolved run dir,
so two daemons with the same node id but different run dirs differ as well.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from huselet.log import get_logger

log = get_logger("runtime.identity")

DAEMON_LEAF = "huselet-daemon"  # v2: the daemon's own leaf inside its delegated group
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def daemon_identity(node_id: str, run_dir: os.PathLike[str] | str) -> str:
    """A cgroup-safe name for one daemon: ``<node id>-<hash of run dir>``."""
    name = _UNSAFE.sub("_", node_id)[:64].strip(".") or "node"
    digest = hashlib.sha256(os.fsencode(os.path.abspath(run_dir))).hexdigest()[:12]
    return f"{name}-{digest}"


def own_v2_group(proc_cgroup: str = "/proc/self/cgroup") -> str:
    """The daemon's v2 group relative to the root ('' for the root group itself).

    If the daemon already moved into its leaf, the group *above* the leaf.
    """
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        hier, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hier == "0" and controllers == "":
            rel = path.strip("/")
            if rel == DAEMON_LEAF or rel.endswith("/" + DAEMON_LEAF):
                rel = rel[: -len(DAEMON_LEAF)].rstrip("/")
            return rel
    return ""


def sandbox_subtree(host: Any, parent: str, node: Any, runtime: str) -> str:
    """This daemon's subtree for ``runtime`` (relative to each hierarchy root).

    ``host`` is a :class:`~huselet.runtime.cgroups.CgroupHost` (or None: no
    cgroups, the v1 layout is returned for naming), ``node`` the node settings.
    """
    identity = daemon_identity(node.id, node.run_dir)
    rel = f"{parent.strip('/')}/{identity}/{runtime}".strip("/")
    if host is not None and host.version == 2:
        base = own_v2_group()
        if base:
            return f"{base}/{rel}"
    return rel


def enter_daemon_leaf(host: Any) -> None:
    """v2 in a delegated group: move the daemon into its leaf (idempotent).

    Raises OSError when the move is refused; the caller turns it into a
    configuration error naming the group.
    """
    if host is None or host.version != 2:
        return
    base = own_v2_group()
    if not base:
        return  # the root group: processes there do not block controllers
    root = host.roots["unified"]
    leaf = root / base / DAEMON_LEAF
    leaf.mkdir(exist_ok=True)
    current = Path("/proc/self/cgroup").read_text()
    if f"0::/{base}/{DAEMON_LEAF}" in current.splitlines():
        return
    fd = os.open(leaf / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, str(os.getpid()).encode())
    finally:
        os.close(fd)
    log.info("moved the daemon into its own leaf cgroup", group=f"/{base}/{DAEMON_LEAF}")
