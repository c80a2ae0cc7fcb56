"""Cold starts per runtime, side by side: latency, burst start rate, idle memory.

    .venv/bin/python bench/bench_coldstart.py                 # everything (~2 min)
    .venv/bin/python bench/bench_coldstart.py --quick         # fewer starts
    .venv/bin/python bench/bench_coldstart.py --runtimes fork,process --starts 300

For each runtime (``process`` = exec of a fresh worker, the baseline;
``fork-bare`` = zygote fork without isolation; ``fork`` = zygote fork with
full isolation; ``bwrap``; ``oci`` when runc is installed) it wires the
in-process node stack (runtime → link server → scheduler, as the daemon does)
and measures:

1. **cold start**: time from ``invoke()`` to the reply for a function with no
   instance, ``--starts`` times in a row (each instance is retired — idle
   timeout 1 ms — and gone before the next request); p50/p90/p99;
2. **burst**: ``--burst`` requests at once to a function whose handler holds
   for a moment, so every request needs its own instance: instances ready
   per second from the first request to the last instance ready;
3. **idle memory**: those instances, idle, as PSS (``/proc/<pid>/smaps_rollup``
   over each instance's processes) per instance — plus the zygote's RSS.

4. **FastAPI app** (``--fastapi-starts``, its own table): cold starts of a
   real FastAPI app (``kind = "asgi"``) answering ``GET /items/{id}``, for
   ``--fastapi-runtimes`` (default ``process,fork-bare``: both see the venv's
   site-packages, where FastAPI is a test extra), p50/p99 side by side.
5. **numpy from a packed image** (``--numpy-starts``, 0 to skip): a function
   whose package has a ``requirements.txt`` with numpy, packed by the daemon's
   own packer (pip into the image) and served from the image through the
   package cache, cold starts on ``process`` vs ``fork``, p50/p99 side by side,
   next to the same answer from a tiny image (no numpy): ``--numpy-rounds``
   interleaved rounds (numpy, tiny, numpy, tiny ...), medians and each
   round's p50. Every start is a true cold start (no pre-forked instance).
   The wheel cache persists in ``$TMPDIR/huselet-bench-wheels`` (the first run
   downloads numpy).

Numbers are printed, not asserted. Needs root for the sandboxing runtimes.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from procstats import descendants, pss_kb, rss_kb

from huselet.config import parse_config
from huselet.dispatch.dispatcher import Dispatcher
from huselet.dispatch.links import LinkServer
from huselet.dispatch.reasons import StopReason
from huselet.runtime.base import Runtime
from huselet.runtime.bwrap import BwrapRuntime
from huselet.runtime.fork import ForkRuntime
from huselet.runtime.process import ProcessRuntime

NOOP = "def handler(event, ctx):\n    return 'ok'\n"
HOLD = "import time\n\ndef handler(event, ctx):\n    time.sleep(event['hold_s'])\n    return 'ok'\n"


def make_runtime(name: str, node: Any) -> Runtime:
    cg = {"cgroup_parent": f"huselet-bench-{name}"}
    if name == "process":
        return ProcessRuntime({}, node=node)
    if name == "fork-bare":
        return ForkRuntime({"isolation": False, "cgroups": False}, node=node)
    if name == "fork":
        return ForkRuntime(cg, node=node)
    if name == "bwrap":
        return BwrapRuntime(cg, node=node)
    if name == "oci":
        from huselet.runtime.oci import OciRuntime

        return OciRuntime(cg, node=node)
    raise SystemExit(f"unknown runtime {name!r}")


@asynccontextmanager
async def stack(
    root: Path, runtime_name: str, functions: list[dict[str, Any]]
) -> AsyncIterator[Any]:
    """The daemon's wiring, in process: runtime, link server, scheduler."""
    raw: dict[str, Any] = {"node": {"state_dir": str(root / "state"), "run_dir": str(root / "run")}}
    raw["functions"] = [{**f, "runtime": runtime_name} for f in functions]
    config = parse_config(raw, base_dir=root, known_runtimes=frozenset({runtime_name}))
    config.node.run_dir.mkdir(parents=True, exist_ok=True)
    runtime = make_runtime(runtime_name, config.node)
    runtime.expect(list(config.functions))
    scheduler: Dispatcher | None = None

    def claim(function: str, instance_id: str, token: str) -> Any:
        assert scheduler is not None
        return scheduler.claim_link(function, instance_id, token)

    links = LinkServer(config.node.run_dir, claim, max_frame=1 << 20)
    scheduler = Dispatcher(config, {runtime_name: runtime}, links.socket_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.run)
        await nursery.start(links.run, [f["name"] for f in functions])
        await nursery.start(scheduler.run)
        try:
            yield scheduler, runtime
        finally:
            with trio.move_on_after(30):
                await scheduler.stop_instances(timeout_s=30)
            nursery.cancel_scope.cancel()


def package(root: Path, name: str, source: str) -> str:
    pkg = root / "pkgs" / name
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "main.py").write_text(source)
    # Readable by the functions' unprivileged uids (tempfile makes 0700 dirs).
    for d in (root, root / "pkgs", pkg):
        os.chmod(d, 0o755)
    return str(pkg)


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


async def cold_starts(root: Path, runtime_name: str, n: int) -> dict[str, float]:
    fn: dict[str, Any] = {
        "name": "cold",
        "package": package(root, "cold", NOOP),
        "handler": "main:handler",
    }
    fn |= {"idle_timeout_ms": 1, "max_instances": 4, "start_timeout_ms": 30_000}
    async with stack(root, runtime_name, [fn]) as (scheduler, _):
        pool = scheduler.pools["cold"]
        await scheduler.invoke("cold", b"{}", "json")  # zygote built, caches warm
        latencies = []
        for _ in range(n):
            with trio.fail_after(30):
                while pool.instances:  # the previous instance is gone: this one is cold
                    await trio.sleep(0.0002)
            t0 = time.perf_counter()
            await scheduler.invoke("cold", b"{}", "json")
            latencies.append((time.perf_counter() - t0) * 1000)
    return {
        "p50": statistics.median(latencies),
        "p90": percentile(latencies, 90),
        "p99": percentile(latencies, 99),
    }


FASTAPI_APP = """
from fastapi import FastAPI

app = FastAPI()

@app.get("/items/{item_id}")
async def read_item(item_id: int):
    return {"item_id": item_id}
"""


async def fastapi_cold_starts(root: Path, runtime_name: str, n: int) -> dict[str, float]:
    """Cold starts of a FastAPI app: invoke -> reply with no instance, ``n`` times."""
    from protocol.link import HttpRequest

    pkg = package(root, "api", FASTAPI_APP)
    fn: dict[str, Any] = {"name": "api", "package": pkg, "app": "main:app", "kind": "asgi"}
    fn |= {"idle_timeout_ms": 1, "max_instances": 4, "start_timeout_ms": 60_000}
    http = HttpRequest("GET", "/items/7", "", (("host", "bench"),), "127.0.0.1")
    async with stack(root, runtime_name, [fn]) as (scheduler, _):
        pool = scheduler.pools["api"]
        first = await scheduler.invoke("api", b"", "bytes", http=http)  # zygote built
        assert first.body == b'{"item_id":7}', first
        latencies = []
        for _ in range(n):
            with trio.fail_after(60):
                while pool.instances:
                    await trio.sleep(0.0002)
            t0 = time.perf_counter()
            await scheduler.invoke("api", b"", "bytes", http=http)
            latencies.append((time.perf_counter() - t0) * 1000)
    return {"p50": statistics.median(latencies), "p99": percentile(latencies, 99)}


async def fastapi_section(runtimes: str, n: int) -> None:
    if n <= 0:
        return
    rows = []
    for name in runtimes.split(","):
        why = available(name)
        if why:
            print(f"fastapi on {name}: skipped ({why})")
            continue
        root = Path(tempfile.mkdtemp(prefix="hlb"))
        try:
            print(f"fastapi on {name}: {n} cold starts ...", flush=True)
            rows.append((name, await fastapi_cold_starts(root, name, n)))
        except Exception as exc:
            print(f"fastapi on {name}: failed: {type(exc).__name__}: {exc}")
        finally:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\nFastAPI app cold start ({n} starts each; invoke -> reply, GET /items/7)")
    print(f"{'runtime':<10} {'p50':>9} {'p99':>9}")
    for name, cold in rows:
        print(f"{name:<10} {cold['p50']:7.2f}ms {cold['p99']:7.2f}ms")


async def burst(root: Path, runtime_name: str, n: int, hold_s: float) -> dict[str, float]:
    fn: dict[str, Any] = {
        "name": "burst",
        "package": package(root, "burst", HOLD),
        "handler": "main:handler",
    }
    fn |= {"idle_timeout_ms": 600_000, "max_instances": n, "start_timeout_ms": 60_000}
    fn |= {"timeout_ms": 120_000, "memory_mb": 128}
    async with stack(root, runtime_name, [fn]) as (scheduler, runtime):
        pool = scheduler.pools["burst"]
        warm = b'{"hold_s": 0}'
        await scheduler.invoke("burst", warm, "json")
        with trio.fail_after(30):
            while pool.instances:  # start the burst from zero instances
                for record in list(pool.instances.values()):
                    record.stop(StopReason.REAPED, "bench reset")
                await trio.sleep(0.01)
        event = f'{{"hold_s": {hold_s}}}'.encode()
        t0 = trio.current_time()
        last_ready = t0
        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(scheduler.invoke, "burst", event, "json")
            with trio.fail_after(120):
                while True:
                    ready = [r.ready_at for r in pool.instances.values() if r.ready_at]
                    if len(ready) >= n:
                        last_ready = max(ready)
                        break
                    await trio.sleep(0.002)
        await trio.sleep(0.5)  # idle now: handlers returned, instances wait on their link
        records = list(pool.instances.values())
        pss = [sum(pss_kb(p) for p in descendants(r.handle.pid)) for r in records if r.handle]
        zygote_kb = 0
        if isinstance(runtime, ForkRuntime):
            zygotes = [s.process.pid for s in runtime._slots.values() if s.process]
            zygote_kb = sum(rss_kb(pid) for pid in zygotes if pid)
    return {
        "starts_per_s": n / max(1e-9, last_ready - t0),
        "instances": len(pss),
        "pss_mb": statistics.mean(pss) / 1024 if pss else float("nan"),
        "zygote_mb": zygote_kb / 1024,
    }


def available(name: str) -> str | None:
    """Why this runtime cannot run here, or None."""
    if name in ("fork", "bwrap", "oci") and os.geteuid() != 0:
        return "needs root"
    if name == "bwrap" and not shutil.which("bwrap"):
        return "bwrap not installed"
    if name == "oci" and not shutil.which("runc"):
        return "runc not installed"
    return None


# -- numpy from a packed image (requirements.txt) ------------------------------------------

NUMPY_REQUIREMENTS = "numpy==2.1.3\n"
NUMPY_HANDLER = (
    "import numpy as np\n\n"
    "def handler(event, ctx):\n"
    "    return float(np.linalg.inv(np.eye(3) * 2.0).trace())\n"
)
WHEELS = Path(tempfile.gettempdir()) / "huselet-bench-wheels"


def numpy_image(root: Path) -> Path:
    """Pack the numpy function as the daemon does (pip into the image): the image file."""
    from huselet.code.dependencies import DependencyOptions
    from huselet.code.packing import build_image

    src = Path(package(root, "np", NUMPY_HANDLER))
    (src / "requirements.txt").write_text(NUMPY_REQUIREMENTS)
    cache_dir = root / "packer"
    cache_dir.mkdir(parents=True, exist_ok=True)
    WHEELS.mkdir(exist_ok=True)
    (cache_dir / "wheels").symlink_to(WHEELS)
    info = build_image(src, root, DependencyOptions(cache_dir=cache_dir))
    os.chmod(info.path, 0o644)
    return info.path


async def numpy_cold_starts(root: Path, runtime_name: str, n: int, image: Path) -> dict[str, Any]:
    """Cold starts of the numpy function, its image served by the package cache."""
    from huselet.code.codecache import CodeCache

    state = root / "state"
    raw: dict[str, Any] = {"node": {"state_dir": str(state), "run_dir": str(root / "run")}}
    raw["functions"] = [
        {
            "name": "np",
            "image": str(image),
            "handler": "main:handler",
            "runtime": runtime_name,
            "memory_mb": 1024,
            "idle_timeout_ms": 1,
            "max_instances": 4,
            "start_timeout_ms": 60_000,
            "env": {"OPENBLAS_NUM_THREADS": "1"},
        }
    ]
    config = parse_config(raw, base_dir=root, known_runtimes=frozenset({runtime_name}))
    config.node.run_dir.mkdir(parents=True, exist_ok=True)
    for d in (root, state):
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o755)
    runtime = make_runtime(runtime_name, config.node)
    runtime.expect(list(config.functions))
    cache = CodeCache(config)
    scheduler: Dispatcher | None = None

    def claim(function: str, instance_id: str, token: str) -> Any:
        assert scheduler is not None
        return scheduler.claim_link(function, instance_id, token)

    links = LinkServer(config.node.run_dir, claim, max_frame=1 << 20)
    scheduler = Dispatcher(config, {runtime_name: runtime}, links.socket_path, code=cache.packages)
    latencies = []
    async with trio.open_nursery() as nursery:
        await nursery.start(cache.run)
        await nursery.start(runtime.run)
        await nursery.start(links.run, ["np"])
        await nursery.start(scheduler.run)
        try:
            pool = scheduler.pools["np"]
            first = time.perf_counter()
            await scheduler.invoke("np", b"{}", "json")  # installed, extracted, zygote built
            first_ms = (time.perf_counter() - first) * 1000
            for _ in range(n):
                with trio.fail_after(60):
                    while pool.instances:
                        await trio.sleep(0.0002)
                t0 = time.perf_counter()
                result = await scheduler.invoke("np", b"{}", "json")
                latencies.append((time.perf_counter() - t0) * 1000)
            assert result.body == b"1.5", result.body
        finally:
            with trio.move_on_after(30):
                await scheduler.stop_instances(timeout_s=30)
            nursery.cancel_scope.cancel()
    return {
        "first": first_ms,
        "p50": statistics.median(latencies),
        "p99": percentile(latencies, 99),
    }


TINY_HANDLER = "def handler(event, ctx):\n    return 1.5\n"


def tiny_image(root: Path) -> Path:
    """The same answer without numpy, packed the same way: the baseline row."""
    from huselet.code.dependencies import DependencyOptions
    from huselet.code.packing import build_image

    src = Path(package(root, "tiny", TINY_HANDLER))
    info = build_image(src, root, DependencyOptions(cache_dir=root / "packer"))
    os.chmod(info.path, 0o644)
    return info.path


async def numpy_section(runtimes: list[str], n: int, rounds: int) -> None:
    """numpy vs a tiny function (both packed images), per runtime, rounds interleaved."""
    root = Path(tempfile.mkdtemp(prefix="hln"))
    os.chmod(root, 0o755)
    try:
        t0 = time.perf_counter()
        images = {"numpy": numpy_image(root), "tiny": tiny_image(root)}
        pack_s = time.perf_counter() - t0
        size_mb = images["numpy"].stat().st_size / 2**20
        print(f"numpy image: {size_mb:.1f} MB, packed in {pack_s:.1f}s")
        usable = []
        for name in runtimes:
            why = available(name)
            if why:
                print(f"numpy on {name}: skipped ({why})")
            else:
                usable.append(name)
        results: dict[tuple[str, str], list[dict[str, Any]]] = {}
        print(f"load average before: {os.getloadavg()[0]:.1f}")
        for rnd in range(rounds):  # numpy, tiny, numpy, tiny ... per runtime, per round
            for name in usable:
                for label, image in images.items():
                    print(f"round {rnd + 1}: {label} on {name}: {n} cold starts ...", flush=True)
                    where = root / f"{name[0]}{label[0]}{rnd}"  # short: socket paths
                    try:
                        r = await numpy_cold_starts(where, name, n, image)
                    except Exception as exc:
                        print(f"{label} on {name}: failed: {type(exc).__name__}: {exc}")
                        continue
                    results.setdefault((label, name), []).append(r)
        print(f"load average after: {os.getloadavg()[0]:.1f}")
        head = ("function", "runtime", "first", "cold p50", "(rounds)", "p99")
        print("\n{:<8} {:<8} {:>8} {:>9} {:<22} {:>8}".format(*head))
        for (label, name), rs in results.items():
            p50s = sorted(r["p50"] for r in rs)
            spread = "/".join(f"{v:.1f}" for v in p50s)
            first = statistics.median(r["first"] for r in rs)
            p99 = statistics.median(r["p99"] for r in rs)
            print(
                f"{label:<8} {name:<8} {first:6.0f}ms {statistics.median(p50s):7.2f}ms "
                f"({spread:<20}) {p99:6.2f}ms"
            )
        print(
            "first = install + native extraction + (fork) zygote build + start; then cold starts,"
            " true cold (no pre-forked instance); medians of the rounds"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def main() -> None:
    # Instance churn logs a line per stop; the numbers are what matters here.
    logging.getLogger("huselet").setLevel(logging.ERROR)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runtimes", default="process,fork-bare,fork,bwrap,oci")
    ap.add_argument("--starts", type=int, default=200, help="sequential cold starts per runtime")
    ap.add_argument("--burst-fork", type=int, default=500, help="burst size for fork runtimes")
    ap.add_argument("--burst", type=int, default=50, help="burst size for the others")
    ap.add_argument("--quick", action="store_true", help="50 starts, bursts of 100/20")
    ap.add_argument(
        "--numpy-starts", type=int, default=50, help="numpy-from-image cold starts (0: skip)"
    )
    ap.add_argument("--numpy-runtimes", default="process,fork")
    ap.add_argument("--numpy-rounds", type=int, default=3, help="interleaved numpy/tiny rounds")
    ap.add_argument("--fastapi-runtimes", default="process,fork-bare")
    ap.add_argument("--fastapi-starts", type=int, default=50, help="0: skip the FastAPI app")
    args = ap.parse_args()
    if args.quick:
        args.starts, args.burst_fork, args.burst = 50, 100, 20
    rows = []
    for name in filter(None, args.runtimes.split(",")):  # --runtimes "": only the app table
        why = available(name)
        if why:
            print(f"{name}: skipped ({why})")
            continue
        root = Path(tempfile.mkdtemp(prefix="hlb"))
        try:
            n_burst = args.burst_fork if name.startswith("fork") else args.burst
            print(f"{name}: {args.starts} cold starts ...", flush=True)
            cold = await cold_starts(root / "c", name, args.starts)
            print(f"{name}: burst of {n_burst} ...", flush=True)
            hold = 2.0 if name.startswith("fork") else 5.0
            b = await burst(root / "b", name, n_burst, hold)
            rows.append((name, cold, b, n_burst))
        except Exception as exc:  # a broken runtime must not hide the others' numbers
            print(f"{name}: failed: {type(exc).__name__}: {exc}")
        finally:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print(
        f"{'runtime':<10} {'cold p50':>9} {'p90':>8} {'p99':>8} {'starts/s':>9} "
        f"{'burst':>6} {'PSS/inst':>9} {'zyg RSS':>8}"
    )
    for name, cold, b, _ in rows:
        print(
            f"{name:<10} {cold['p50']:8.2f}ms {cold['p90']:7.2f}ms {cold['p99']:7.2f}ms "
            f"{b['starts_per_s']:9.0f} {b['instances']:>6} {b['pss_mb']:7.2f}MB "
            f"{b['zygote_mb']:6.1f}MB"
        )
    print(f"\n{os.cpu_count()} CPUs, {os.uname().release}; cold = invoke→reply with no instance.")
    await fastapi_section(args.fastapi_runtimes, min(args.fastapi_starts, args.starts))
    if args.numpy_starts:
        print()
        await numpy_section(args.numpy_runtimes.split(","), args.numpy_starts, args.numpy_rounds)


if __name__ == "__main__":
    trio.run(main)
