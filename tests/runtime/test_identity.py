"""A daemon's cgroup identity: node id + run dir; v2 delegated group detection."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from huselet.runtime.cgroups import CgroupHost
from huselet.runtime.identity import daemon_identity, own_v2_group, sandbox_subtree


def test_identity_names_node_and_run_dir(tmp_path: Path) -> None:
    a = daemon_identity("node-a", tmp_path / "a")
    assert a.startswith("node-a-")
    assert a != daemon_identity("node-a", tmp_path / "b")  # same node id, other run dir
    assert a == daemon_identity("node-a", tmp_path / "x" / ".." / "a")
    odd = daemon_identity("../../etc/x y", tmp_path)
    assert "/" not in odd and " " not in odd and not odd.startswith(".")


def test_v1_subtree_is_per_node(tmp_path: Path) -> None:
    node = SimpleNamespace(id="n1", run_dir=tmp_path)
    host = CgroupHost(1, {"memory": Path("/sys/fs/cgroup/memory")})
    subtree = sandbox_subtree(host, "huselet", node, "fork")
    assert subtree == f"huselet/{daemon_identity('n1', tmp_path)}/fork"


def test_own_v2_group_inside_a_delegated_unit(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("0::/system.slice/huselet.service\n")
    assert own_v2_group(str(proc)) == "system.slice/huselet.service"
    # Once the daemon moved into its leaf, the delegated group is still the base.
    proc.write_text("0::/system.slice/huselet.service/huselet-daemon\n")
    assert own_v2_group(str(proc)) == "system.slice/huselet.service"
    # Hybrid host: v1 lines plus the (controller-less) unified one.
    proc.write_text("12:memory:/user.slice\n0::/\n")
    assert own_v2_group(str(proc)) == ""
