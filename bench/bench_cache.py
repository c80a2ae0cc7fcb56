"""Package cache: time to first reply by cache level, and import time by packaging.

    .venv/bin/python bench/bench_cache.py [--runs 5] [--large-mb 50]

Generates two function packages in a temp directory — *small* (~100 KB, a few
modules) and *large* (~50 MB, ~1000 modules in 40 packages, every one imported
by the handler) — packs them, then measures:

1. **Time to first reply** of a function whose instance is cold, by where its
   image is when the request arrives:
   - ``origin``: not on this node; fetched (zstd) from a real local HTTP server,
     verified, installed, mapped;
   - ``disk``: installed (e.g. prefetched) but not mapped — a fresh daemon;
   - ``memory``: mapped, no instance (the last one idled out; the image stays
     mapped within the memory budget).
   Each run is a real in-process node (process runtime, link server, scheduler,
   package cache) invoked through ``Dispatcher.invoke`` — the HTTP hop is
   left out (~1 ms, see bench_invoke.py). Median and min over ``--runs``.
2. **Import time** of the handler module in a fresh interpreter, side by side:
   from the mapped image (meta-path importer), from an unpacked directory
   with ``__pycache__`` compiled, and from a zip with bytecode (``zipimport``).
   Also the image's open + map + header/index check.

Numbers go to stdout only; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import compileall
import random
import shutil
import statistics
import string
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from cache_testkit import OriginServer  # noqa: E402
from cache_testkit import publish as write_zst  # noqa: E402

from cache.builder import ImageInfo, pack_directory  # noqa: E402
from cache.reader import ImageReader  # noqa: E402
from huselet.code.codecache import CodeCache  # noqa: E402
from huselet.config import parse_config  # noqa: E402
from huselet.dispatch.dispatcher import Dispatcher  # noqa: E402
from huselet.dispatch.links import LinkServer  # noqa: E402
from huselet.dispatch.reasons import StopReason  # noqa: E402
from huselet.runtime import create_runtimes  # noqa: E402

HANDLER = "def handler(event, context):\n    return {'modules': MODULES}\n"


# -- packages ------------------------------------------------------------------------------


def make_small(root: Path) -> Path:
    """~100 KB: a handler importing a little package of ten modules."""
    pkg = root / "small"
    (pkg / "lib").mkdir(parents=True)
    names = []
    for i in range(10):
        body = "".join(f"def f{j}(x):\n    return x + {j}\n\n" for j in range(40))
        (pkg / "lib" / f"m{i}.py").write_text(body + f"DATA = {('x' * 8000)!r}\n")
        names.append(f"m{i}")
    (pkg / "lib" / "__init__.py").write_text(f"from . import {', '.join(names)}\n")
    (pkg / "main.py").write_text(f"import lib\nMODULES = {len(names)}\n" + HANDLER)
    return pkg


def make_large(root: Path, target_mb: int) -> Path:
    """~``target_mb`` MB in 40 packages of 25 modules, all imported by the handler."""
    pkg = root / "large"
    packages, modules = 40, 25
    per_module = target_mb * (1 << 20) // (packages * modules)
    functions = "".join(f"def f{j}(x, y=0):\n    return x * {j} + y\n\n" for j in range(40))
    # Word salad, not one repeated byte: it compresses about as well as real
    # code does (~3-4x), so the zstd transfer is not flattered.
    rng = random.Random(42)
    vocabulary = [
        "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 12))) for _ in range(4000)
    ]
    for p in range(packages):
        d = pkg / f"pkg{p:02d}"
        d.mkdir(parents=True)
        names = [f"mod{m:02d}" for m in range(modules)]
        for name in names:
            words = []
            size = len(functions)
            while size < per_module:
                words.append(rng.choice(vocabulary))
                size += len(words[-1]) + 1
            (d / f"{name}.py").write_text(functions + f"DATA = {' '.join(words)!r}\n")
        (d / "__init__.py").write_text(f"from . import {', '.join(names)}\n")
    imports = "".join(f"import pkg{p:02d}\n" for p in range(packages))
    (pkg / "main.py").write_text(imports + f"MODULES = {packages * modules}\n" + HANDLER)
    return pkg


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# -- time to first reply ---------------------------------------------------------------------


@asynccontextmanager
async def node(root: Path, function: dict[str, Any]) -> AsyncIterator[Dispatcher]:
    raw = {
        "node": {"state_dir": str(root / "state"), "run_dir": str(root / "run")},
        "cache": {"scrub_interval_s": 0, "predict": False, "memory_budget_mb": 4096},
        "functions": [function],
    }
    config = parse_config(raw, base_dir=root)
    config.node.run_dir.mkdir(parents=True, exist_ok=True)
    runtimes = create_runtimes({"process"}, {}, node=config.node)
    scheduler: Dispatcher | None = None

    def claim(fn: str, instance_id: str, token: str) -> Any:
        assert scheduler is not None
        return scheduler.claim_link(fn, instance_id, token)

    links = LinkServer(config.node.run_dir, claim, max_frame=8 << 20)
    cache = CodeCache(config)
    scheduler = Dispatcher(config, runtimes, links.socket_path, code=cache.packages)
    async with trio.open_nursery() as nursery:
        await nursery.start(cache.run)
        for runtime in runtimes.values():
            await nursery.start(runtime.run)
        await nursery.start(links.run, [function["name"]])
        await nursery.start(scheduler.run)
        try:
            yield scheduler
        finally:
            with trio.move_on_after(10):
                await scheduler.stop_instances()
            nursery.cancel_scope.cancel()


async def timed_invoke(scheduler: Dispatcher) -> float:
    t0 = time.perf_counter()
    result = await scheduler.invoke("f", b"{}", "json")
    elapsed = time.perf_counter() - t0
    assert b"modules" in result.body, result.body
    return elapsed


async def idle_out(scheduler: Dispatcher) -> None:
    """Stop the function's instances the way an idle timeout does (the pool keeps serving)."""
    pool = scheduler.pools["f"]
    for record in list(pool.instances.values()):
        record.stop(StopReason.IDLE)
    with trio.fail_after(30):
        while pool.instances:
            await trio.sleep(0.005)
    assert scheduler.pools["f"].code is not None


async def first_replies(info: ImageInfo, server_url: str, runs: int) -> dict[str, list[float]]:
    function = {
        "name": "f",
        "digest": info.digest,
        "origin": server_url,
        "handler": "main:handler",
        "memory_mb": 2048,
        "timeout_ms": 60_000,
        "start_timeout_ms": 60_000,
    }
    out: dict[str, list[float]] = {"origin": [], "disk": [], "memory": []}
    for _ in range(runs):
        root = Path(tempfile.mkdtemp(prefix="hlb"))
        try:
            async with node(root, function) as scheduler:  # empty node: from the origin
                out["origin"].append(await timed_invoke(scheduler))
            async with node(root, function) as scheduler:  # restarted: on disk, not mapped
                out["disk"].append(await timed_invoke(scheduler))
                await idle_out(scheduler)  # its lease ends; the mapping stays
                out["memory"].append(await timed_invoke(scheduler))
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return out


# -- import time ------------------------------------------------------------------------------

IMPORT_SNIPPETS = {
    "image": """
        import sys, time
        from cache.reader import ImageReader
        from cache.importer import install_image_importer
        t0 = time.perf_counter()
        reader = ImageReader.open(sys.argv[1], verify=False)
        install_image_importer(reader)
        t1 = time.perf_counter()
        import main
        print(time.perf_counter() - t1, t1 - t0)
    """,
    "directory": """
        import sys, time
        sys.path.insert(0, sys.argv[1])
        t1 = time.perf_counter()
        import main
        print(time.perf_counter() - t1, 0.0)
    """,
    "zipimport": """
        import sys, time
        sys.path.insert(0, sys.argv[1])
        t1 = time.perf_counter()
        import main
        print(time.perf_counter() - t1, 0.0)
    """,
}


def make_zip(src: Path, target: Path) -> Path:
    """Bytecode only (no sources), as ``zipapp``/``PyZipFile`` ship it."""
    with zipfile.PyZipFile(str(target), "w", optimize=0) as z:
        for child in sorted(src.iterdir()):
            z.writepy(str(child))
    return target


def import_times(source: dict[str, Path], runs: int) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {k: [] for k in source}
    for _ in range(runs):
        for how, path in source.items():
            snippet = textwrap.dedent(IMPORT_SNIPPETS[how])
            proc = subprocess.run(
                [sys.executable, "-I", "-B", "-c", snippet, str(path)],
                capture_output=True,
                text=True,
                timeout=300,
                cwd="/",
                env={"PYTHONPATH": ""},
            )
            if proc.returncode != 0:
                raise SystemExit(f"{how} import failed:\n{proc.stderr}")
            imported, opened = (float(x) for x in proc.stdout.split())
            out[how].append((imported, opened))
    return out


def open_map_index_ms(image: Path, reps: int = 200) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        ImageReader.open(image, verify=False).close()
    return (time.perf_counter() - t0) / reps * 1000


# -- report ---------------------------------------------------------------------------------


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:8.1f} ms (min {min(values) * 1000:7.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="repetitions per measurement")
    parser.add_argument("--large-mb", type=int, default=50, help="size of the large package")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hlbench"))
    try:
        sources = {
            "small": make_small(work / "src"),
            "large": make_large(work / "src", args.large_mb),
        }
        built = work / "built"
        built.mkdir()
        infos: dict[str, ImageInfo] = {}
        print(f"python {sys.version.split()[0]}, {args.runs} runs; medians (and minimum)\n")
        for name, src in sources.items():
            t0 = time.perf_counter()
            infos[name] = pack_directory(src, built)
            pack_s = time.perf_counter() - t0
            write_zst(infos[name].path, work / "served")
            zst = (work / "served" / f"{infos[name].digest}.hlimg.zst").stat().st_size
            print(
                f"{name:5}: {tree_bytes(src) / 1e6:6.1f} MB source, {infos[name].files} files; "
                f"image {infos[name].size / 1e6:6.1f} MB (zstd {zst / 1e6:5.1f} MB), "
                f"packed in {pack_s * 1000:.0f} ms; open+map+index "
                f"{open_map_index_ms(infos[name].path):.3f} ms"
            )

        print("\nTime to first reply (cold instance, process runtime), by cache level:")
        print(f"{'':8}{'origin (HTTP+zstd)':>32}{'disk':>32}{'memory':>32}")
        with OriginServer(work / "served") as server:
            for name, info in infos.items():
                runs = args.runs if name == "small" else max(2, args.runs // 2)
                result = trio.run(first_replies, info, server.url, runs)
                print(f"{name:8}" + "".join(f"{ms(result[k]):>32}" for k in result))

        print("\nImport of the handler module in a fresh interpreter:")
        print(f"{'':8}{'image (mmap)':>32}{'directory (+pyc)':>32}{'zipimport (pyc)':>32}")
        for name, src in sources.items():
            unpacked = work / "unpacked" / name
            shutil.copytree(src, unpacked)
            compileall.compile_dir(unpacked, quiet=1)
            zipped = make_zip(src, work / f"{name}.zip")
            times = import_times(
                {"image": infos[name].path, "directory": unpacked, "zipimport": zipped},
                args.runs,
            )
            print(f"{name:8}" + "".join(f"{ms([t[0] for t in times[k]]):>32}" for k in times))
            opened = [t[1] for t in times["image"]]
            print(f"{'':8}(image open+map+index+install in the worker: {ms(opened).strip()})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
