"""The startup recovery sweep on real leftovers: files, sockets, staging dirs,
processes carrying (or not) the daemon's markers, and cgroups."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio

from huselet.admin.errors import AdminSocketInUse
from huselet.config import Config, parse_config
from huselet.health.recovery import RecoverySweep, SweepResult
from huselet.health.supervisor import HealthState, HealthSupervisor
from huselet.runtime.cgrouppool import CgroupPool
from huselet.runtime.cgroups import CgroupHost
from huselet.runtime.identity import sandbox_subtree


def make_config(root: Path) -> Config:
    config = parse_config(
        {"node": {"id": "t", "state_dir": str(root / "state"), "run_dir": str(root / "run")}},
        base_dir=root,
    )
    config.node.state_dir.mkdir(parents=True, exist_ok=True)
    (config.node.run_dir / "fn").mkdir(parents=True, exist_ok=True)
    return config


def stale_socket(path: Path) -> None:
    """A socket file nobody listens on: what a SIGKILLed daemon leaves."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()


def spawn_sleep(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["sleep", "60"], env={"PATH": "/usr/bin:/bin", **env}, start_new_session=True
    )


def exited(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> bool:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


async def test_a_clean_start_reports_nothing(short_tmp: Path) -> None:
    sweep = RecoverySweep(make_config(short_tmp))
    result = await sweep.sweep()
    assert sum(result.found.values()) == 0
    assert result.state is HealthState.OK
    assert result.detail() == "previous run left nothing"


async def test_stale_sockets_temp_files_and_staging_dirs_are_removed(short_tmp: Path) -> None:
    config = make_config(short_tmp)
    run, state = config.node.run_dir, config.node.state_dir
    stale_socket(run / "fn" / "gone.sock")  # a function no longer configured
    stale_socket(run / "fn" / "kept.sock")  # a configured one: stale all the same
    stale_socket(run / "admin.sock")
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(run / "fn" / "live.sock"))
    live.listen()
    (run / "fn" / "notes.txt").write_text("not a socket: not ours to judge")
    (state / "fleet-functions.tmp").write_text("{")
    (state / "fleet-functions.json").write_text("{}")
    (state / "cache" / "packed").mkdir(parents=True)
    (state / "cache" / "extract").mkdir(parents=True)
    (state / "cache" / "packed" / "index.json.4242.tmp").write_text("{")
    (state / "cache" / "packed" / ".pack-4242-abcdef.tmp").write_bytes(b"x" * 10)
    (state / "cache" / "packed" / "ab").mkdir()  # a directory: kept
    (state / "cache" / "extract" / "00ff-mod.so.4242.beef.tmp").write_bytes(b"\x7fELF")
    (state / "cache" / "extract" / "00ff-mod.so").write_bytes(b"\x7fELF")
    (run / "sandbox" / "fork" / "z-f-1" / "tmp").mkdir(parents=True)
    (run / "sandbox" / "fork" / "z-g-2").mkdir(parents=True)
    try:
        result = await RecoverySweep(config).sweep()
        assert (run / "fn" / "live.sock").exists()  # someone listens: never removed
    finally:
        live.close()
    assert sorted(os.listdir(run / "fn")) == ["live.sock", "notes.txt"]
    assert not (run / "admin.sock").exists()
    assert sorted(os.listdir(state)) == ["cache", "fleet-functions.json"]
    assert sorted(os.listdir(state / "cache" / "packed")) == ["ab"]
    assert os.listdir(state / "cache" / "extract") == ["00ff-mod.so"]
    assert os.listdir(run / "sandbox" / "fork") == []
    assert result.found == {"sockets": 3, "temp_files": 4, "staging_dirs": 2}
    assert result.cleaned == result.found and not result.failed
    assert result.detail() == "previous run left 3 sockets, 4 temp files, 2 staging dirs: cleaned"


async def test_a_staging_dir_with_content_is_left_and_reported(short_tmp: Path) -> None:
    config = make_config(short_tmp)
    odd = config.node.run_dir / "sandbox" / "fork" / "z-f-1"
    odd.mkdir(parents=True)
    (odd / "file").write_text("someone's data")
    result = await RecoverySweep(config).sweep()
    assert (odd / "file").exists()
    assert result.state is HealthState.DEGRADED
    assert result.detail() == "previous run left 1 staging dir: 1 staging dir could not be cleaned"


async def test_a_live_daemon_on_the_admin_socket_is_refused(short_tmp: Path) -> None:
    config = make_config(short_tmp)
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(config.admin.socket))
    live.listen()
    marked = spawn_sleep(
        {"HUSELET_FUNCTION": "f", "HUSELET_LINK": str(config.node.run_dir / "fn" / "f.sock")}
    )
    try:
        with pytest.raises(AdminSocketInUse):
            await RecoverySweep(config).sweep()
        # The live daemon's processes are not leftovers: untouched.
        assert marked.poll() is None
    finally:
        live.close()
        marked.kill()
        marked.wait()


async def test_only_processes_with_our_markers_are_killed(short_tmp: Path) -> None:
    config = make_config(short_tmp)
    run, state = config.node.run_dir, config.node.state_dir
    other = short_tmp / "other-node"
    worker = spawn_sleep({"HUSELET_FUNCTION": "f", "HUSELET_LINK": str(run / "fn" / "f.sock")})
    zygote = spawn_sleep(
        {"HUSELET_FUNCTION": "g", "HUSELET_IMAGE": str(state / "cache" / "images" / "a.hlimg")}
    )
    spared = [
        spawn_sleep({}),
        # Another node's worker (its run_dir is not ours).
        spawn_sleep({"HUSELET_FUNCTION": "f", "HUSELET_LINK": str(other / "fn" / "f.sock")}),
        # Our path, but not a process any runtime of ours starts.
        spawn_sleep({"HUSELET_LINK": str(run / "fn" / "f.sock")}),
        # A prefix of our run_dir is not our run_dir.
        spawn_sleep({"HUSELET_FUNCTION": "f", "HUSELET_LINK": f"{run}x/fn/f.sock"}),
    ]
    try:
        sweep = RecoverySweep(config)
        assert sorted(sweep.find_processes()) == sorted([worker.pid, zygote.pid])
        with trio.fail_after(10):
            result = await sweep.sweep()
        assert exited(worker) and worker.returncode == -signal.SIGKILL
        assert exited(zygote) and zygote.returncode == -signal.SIGKILL
        assert all(p.poll() is None for p in spared)
        assert result.found == {"processes": 2} and result.cleaned == {"processes": 2}
        assert result.detail() == "previous run left 2 processes: cleaned"
    finally:
        for proc in [worker, zygote, *spared]:
            proc.kill()
            proc.wait()


async def test_the_process_group_of_a_leftover_dies_with_it(short_tmp: Path) -> None:
    config = make_config(short_tmp)
    marker = {"HUSELET_FUNCTION": "f", "HUSELET_LINK": str(config.node.run_dir / "fn" / "f.sock")}
    # The worker's own child scrubbed its environment: only the group ties it to us.
    leader = subprocess.Popen(
        ["sh", "-c", "env -i sleep 60 & echo $!; wait"],
        env={"PATH": "/usr/bin:/bin", **marker},
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert leader.stdout is not None
    child = int(leader.stdout.readline())
    try:
        with trio.fail_after(10):
            await RecoverySweep(config).sweep()
        assert exited(leader)
        with trio.fail_after(60):  # init reaps when it gets to it (slowly on a loaded host)
            while Path(f"/proc/{child}").exists():  # re-parented to init, which reaps it
                await trio.sleep(0.01)
    finally:
        leader.kill()
        leader.wait()
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


async def test_the_report_is_a_health_loop(short_tmp: Path) -> None:
    config = make_config(short_tmp)
    stale_socket(config.node.run_dir / "fn" / "gone.sock")
    sweep = RecoverySweep(config)
    supervisor = HealthSupervisor([])
    supervisor.add(sweep)
    await sweep.sweep()
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
    (loop,) = supervisor.describe()["loops"]
    assert loop["loop"] == "recovery" and loop["state"] == "ok"
    assert loop["detail"] == "previous run left 1 socket: cleaned"
    assert loop["last_action"] == "cleaned 1 socket left by a previous run"
    assert loop["counters"]["sockets"] == 1 and loop["counters"]["failed"] == 0


def test_detail_names_what_could_not_be_cleaned() -> None:
    result = SweepResult()
    result.found.update(processes=3, sockets=2)
    result.cleaned.update(processes=2, sockets=2)
    result.failed.update(processes=1)
    assert result.state is HealthState.DEGRADED
    assert (
        result.detail()
        == "previous run left 3 processes, 2 sockets: 1 process could not be cleaned"
    )


async def test_leftover_cgroups_of_a_sandbox_runtime_are_killed_and_removed(
    short_tmp: Path,
) -> None:
    host = CgroupHost.detect()
    if os.geteuid() != 0 or host is None or host.missing():
        pytest.skip("needs root and the memory, pids and cpu cgroup controllers")
    config = make_config(short_tmp)
    parent = f"huselet-test-{short_tmp.name}"
    # What a SIGKILLed daemon leaves: a pool of groups, one with a process in it.
    subtree = sandbox_subtree(host, parent, config.node, "fork")  # this daemon's own
    pool = CgroupPool(host, subtree, target_free=3, pids_max=64, cpu_cores=None)
    await pool.setup()
    zygote_group = pool.named("z-f-1", memory_bytes=64 << 20, pids_max=16)
    inside = spawn_sleep({})
    zygote_group.join(inside.pid)
    fork = SimpleNamespace(isolation=SimpleNamespace(cgroups=True, cgroup_parent=parent))
    try:
        with trio.fail_after(10):
            result = await RecoverySweep(config, {"fork": fork}).sweep()
        assert exited(inside) and inside.returncode == -signal.SIGKILL
        assert not any((root / subtree).exists() for root in host.roots.values())
        assert result.found == {"cgroups": 4, "processes": 1}
        assert result.cleaned == result.found and not result.failed
    finally:
        inside.kill()
        inside.wait()
        await pool.close()
        for root in host.roots.values():
            try:
                (root / parent).rmdir()
            except OSError:
                pass
