"""A fork instance's first steps, prepared in its zygote (huselet/sandbox/instance.py).

Real zygotes and instances (fork runtime, full isolation): what init code did
to signals is undone in every instance; a private /tmp still shows the kept
paths under /tmp (the package itself, a kept directory and a kept file), built
from steps the zygote prepared. And the steps themselves, checked as data.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import trio
from support import fork_stack

from huselet.sandbox import linux, rootfs
from huselet.sandbox.confine import InstanceConfinement, SandboxError, SandboxPlan
from huselet.testing.conformance import invoke_json

SIGNALS = """
import signal
# Init code that changes a disposition and blocks a signal, in the zygote.
signal.signal(signal.SIGUSR1, lambda *_: None)
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR2])

def handler(event, ctx):
    return {
        "usr1": signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL,
        "blocked": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
        "term_caught": callable(signal.getsignal(signal.SIGTERM)),
    }
"""


async def test_an_instance_undoes_what_init_code_did_to_signals(short_tmp: Path) -> None:
    async with fork_stack(short_tmp, "s", SIGNALS) as stack:
        with trio.fail_after(60):
            seen = await invoke_json(stack, "s", {})
    # PID 1 of its namespace: a SIGTERM handler, or terminate() would do nothing.
    assert seen == {"usr1": True, "blocked": [], "term_caught": True}


KEPT = """
import os
def handler(event, ctx):
    with open("/tmp/" + event["scratch"], "w") as f:
        f.write("mine")
    with open(event["file"]) as f:
        kept_file = f.read()
    return {
        "package": os.path.isfile(os.path.join(os.path.dirname(__file__), "main.py")),
        "file": kept_file,
        "dir": sorted(os.listdir(event["dir"])),
    }
"""


async def test_a_private_tmp_shows_the_kept_paths_under_tmp(short_tmp: Path) -> None:
    assert str(short_tmp).startswith("/tmp/")  # the package and the kept paths live under /tmp
    deep = short_tmp / "kept" / "a" / "b"
    deep.mkdir(parents=True)
    (deep / "inside.txt").write_text("in")
    note = short_tmp / "kept" / "note.txt"
    note.write_text("note")
    scratch = f"huselet-private-{os.getpid()}-{short_tmp.name}"
    event = {"file": str(note), "dir": str(deep), "scratch": scratch}
    async with fork_stack(short_tmp, "k", KEPT, ro_paths=[str(deep), str(note)]) as stack:
        with trio.fail_after(60):
            seen = await invoke_json(stack, "k", event)
    assert seen == {"package": True, "file": "note", "dir": ["inside.txt"]}
    assert not Path("/tmp", scratch).exists()  # written to the instance's own /tmp


def test_private_tmp_steps_make_each_directory_once(tmp_path: Path) -> None:
    kept_dir = tmp_path / "x" / "y"
    kept_dir.mkdir(parents=True)
    kept_file = tmp_path / "x" / "f.txt"
    kept_file.write_text("")
    steps = rootfs.private_tmp_steps(8, [str(kept_dir), str(kept_file)])
    names = [what for what, _, _ in steps]
    assert names[0] == "tmp" and names[-1] == "tmp"  # the scratch tmpfs first, moved last
    scratch = rootfs.SCRATCH + str(tmp_path)[len(rootfs.TMP) :]
    made = [args[0] for _, call, args in steps if call is rootfs._ensure_dir]
    assert made == sorted(set(made), key=made.index)  # no directory twice
    assert os.fsencode(scratch + "/x/y") in made
    assert made.index(os.fsencode(scratch + "/x")) < made.index(os.fsencode(scratch + "/x/y"))
    touched = [args[0] for _, call, args in steps if call is rootfs._touch]
    assert touched == [os.fsencode(scratch + "/x/f.txt")]
    assert sum(name.startswith("tmp: /tmp") for name in names) == 2  # one bind per kept path


def test_without_kept_paths_a_private_tmp_is_one_mount() -> None:
    assert [what for what, _, _ in rootfs.private_tmp_steps(8, [])] == ["tmp"]


FILTERS = """
def _filters():
    with open("/proc/self/status") as f:
        return int(next(l for l in f if l.startswith("Seccomp_filters:")).split()[1])

IN_ZYGOTE = _filters()  # init code runs in the zygote, under its own filter

def handler(event, ctx):
    return {"zygote": IN_ZYGOTE, "instance": _filters()}
"""


async def test_an_instance_stacks_its_own_seccomp_filter_on_the_zygotes(short_tmp: Path) -> None:
    # Mount and namespace creation, which the zygote's filter must allow for
    # the clone, are refused by the instance's own filter. Without capabilities
    # the escape probes (conformance suite) see EPERM either way: count it.
    async with fork_stack(short_tmp, "f", FILTERS) as stack:
        with trio.fail_after(60):
            seen = await invoke_json(stack, "f", {})
    assert seen["zygote"] >= 1 and seen["instance"] == seen["zygote"] + 1, seen


def test_a_failing_libc_step_fails_typed_naming_the_step_unless_it_is_optional() -> None:
    # The steps run as ctypes calls checked by their result (no wrapper
    # raising): a negative one must still fail the instance, naming the step
    # and the errno. In a forked child: the steps set rlimits of the caller.
    plan = SandboxPlan(function="f", package="/", handler="main:handler", isolate=False)
    confinement = InstanceConfinement(plan, [])
    bogus = linux.prepared_prctl(0x7FFF)  # no such prctl option: EINVAL
    for what, optional in (("tolerated step", True), ("bogus step", False)):
        confinement.steps += ((what, bogus.fn, bogus.args, optional, bogus.what),)
        confinement.calls += ((bogus.fn, bogus.args),)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            confinement.apply()
            os.write(write_end, b"no error")
        except SandboxError as exc:
            os.write(write_end, str(exc).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        said = pipe.read().decode()
    os.waitpid(pid, 0)
    assert said == f"bogus step: [Errno {errno.EINVAL}] prctl(32767): Invalid argument", said
