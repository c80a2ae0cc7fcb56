"""What a forked instance is spared: a second thread, warming up the code it runs
first, the threading module's after-fork work — and, all told, most of the
pages it would copy from its zygote (Private_Dirty of an idle instance).

Real zygotes and instances (fork runtime, full isolation) for the thread and
the copied pages; a
fresh interpreter for the rehearsal, whose effect — code objects quickened
before the fork, in the pages every instance shares — is read with ``dis``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio
from support import GATE_WAIT, eventually, fork_stack, running_stack, write_package

from huselet.testing.conformance import invoke_json
from huselet.testing.probes import require_sandbox_host, sandbox_settings

THREADS = """
import os, threading
def handler(event, ctx):
    return {"tasks": len(os.listdir("/proc/self/task")), "threads": threading.active_count()}
"""


@pytest.mark.parametrize("runtime", ["fork", "process"])
async def test_only_a_fork_instance_goes_without_the_link_watcher_thread(
    short_tmp: Path, runtime: str
) -> None:
    if runtime == "fork":
        require_sandbox_host()
    pkg = write_package(short_tmp, "f", THREADS)
    functions = [{"name": "f", "package": str(pkg), "handler": "main:handler", "runtime": runtime}]
    runtimes = {"fork": sandbox_settings(short_tmp)} if runtime == "fork" else None
    async with running_stack(short_tmp, functions, runtimes) as stack:
        with trio.fail_after(60):
            seen = await invoke_json(stack, "f", {})
    # fork: the daemon is its parent and kills it (and its death signal fires);
    # process (and bwrap/oci): the watcher still ends it when the link hangs up.
    want = 1 if runtime == "fork" else 2
    assert seen == {"tasks": want, "threads": want}


def in_fresh_interpreter(code: str) -> list[str]:
    """The words ``code`` prints, run by a new interpreter from the repository root."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    ).stdout.split()


REHEARSAL = textwrap.dedent(
    """
    import dis
    import opcode
    from huselet.sandbox.rehearse import rehearse
    from huselet.worker import sdk
    from protocol import link

    def specialised():
        code = [sdk.Link.send, sdk.Link.receive, link.Hello.encode, link.Welcome.decode]
        return sum(
            i.opname not in opcode.opmap  # a specialised form (3.11 has no baseopname)
            for f in code
            for i in dis.get_instructions(f, adaptive=True)
        )

    before = specialised()
    rehearse()
    print(before, specialised())
    """
)


def test_the_rehearsal_quickens_the_instances_first_steps_in_the_zygote() -> None:
    before, after = map(int, in_fresh_interpreter(REHEARSAL))
    assert before == 0  # a fresh interpreter: nothing ran yet
    assert after >= 8, (before, after)  # specialised here, not in each instance


# What a fork zygote imports before the function's own code.
ZYGOTE_IMPORTS = textwrap.dedent(
    """
    import sys
    import cache.importer, cache.reader
    import huselet.sandbox.zygote
    from huselet.worker import sdk
    sdk.preload(sdk.entry_kind())
    print("threading" in sys.modules)
    """
)


def test_a_zygote_of_a_small_function_never_imports_threading() -> None:
    # threading's after-fork hook dirties ~0.3 MB in every forked instance
    # (bench_density: PSS per idle instance 1,858 -> 1,558 KB without it).
    assert in_fresh_interpreter(ZYGOTE_IMPORTS) == ["False"]


RANDOM = (
    GATE_WAIT
    + """
import random
random.random()  # init code drew from the zygote's generator
def handler(event, ctx):
    wait_at_gate(event["gate"])  # held: two concurrent calls need two instances
    return {"instance": ctx.instance_id, "r": random.random()}
"""
)


async def test_instances_of_a_zygote_that_imported_random_draw_different_numbers(
    short_tmp: Path,
) -> None:
    # The zygote no longer reseeds explicitly: random's own at-fork hook must.
    require_sandbox_host()
    pkg = write_package(short_tmp, "r", RANDOM)
    spec = {"name": "r", "package": str(pkg), "handler": "main:handler", "runtime": "fork"}
    # The gate is a host file in a directory the sandbox keeps in view: root
    # cannot create one in a fork instance's own /tmp (its user namespace maps
    # no uid 0 there).
    gates = short_tmp / "gates"
    gates.mkdir()
    gate = gates / "open"
    settings = sandbox_settings(short_tmp, ro_paths=[str(gates)])
    async with running_stack(short_tmp, [spec], {"fork": settings}) as stack:
        seen: list[dict[str, object]] = []
        pool = stack.pool("r")

        async def call() -> None:
            seen.append(await invoke_json(stack, "r", {"gate": str(gate)}))

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call)
                nursery.start_soon(call)
                await eventually(
                    lambda: sorted(len(r.inflight) for r in pool.instances.values()) == [1, 1]
                )
                gate.touch()
    assert len({s["instance"] for s in seen}) == 2
    assert seen[0]["r"] != seen[1]["r"]


NOOP = """
def handler(event, ctx):
    return {}
"""
# Pages an idle fork instance of a no-op function has copied from its zygote
# after one request (Private_Dirty, this stack, CPython 3.11): 2,000 KB before
# its first steps were prepared in the zygote (huselet.sandbox.instance),
# 1,670 KB after; 1,776-1,780 KB before and 1,488-1,508 KB after its way to
# idle went flat on objects the zygote built (one instance, so every page its
# zygote writes after the clone counts here too).
MAX_PRIVATE_KB = 1_650


def private_dirty_kb(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return sum(int(line.split()[1]) for line in f if line.startswith("Private_Dirty:"))


async def test_an_idle_fork_instance_copies_little_of_its_zygote(short_tmp: Path) -> None:
    async with fork_stack(short_tmp, "n", NOOP) as stack:
        with trio.fail_after(60):
            await invoke_json(stack, "n", {})
        (record,) = stack.pool("n").instances.values()
        pid = record.handle.pid
        copied = private_dirty_kb(pid)
    assert 0 < copied <= MAX_PRIVATE_KB, copied
