"""Daemon start-up, two trees side by side: import time, time to ready, memory once ready.

    .venv/bin/python bench/bench_daemonstart.py --rounds 5 \\
        --tree /work/ref/.venv/bin/python --tree .venv/bin/python

Each ``--tree`` is a venv's python (each tree needs its own venv: the zygote
runs ``python -I``, so PYTHONPATH would not reach it). Per round, for each
tree in turn (the order alternates from round to round, A B then B A):

* import: a fresh interpreter imports what ``huselet run`` imports before its
  event loop starts (the command line, the daemon, the runtime checks); the
  in-process time of that import and the number of modules loaded;
* ready: the real ``huselet run`` on the shipped default config (its
  ``hello`` fork function, isolated), with the gateway on port 0 and the
  state and run directories in a temp dir: seconds from spawn to its
  "huselet ready" log line, then the daemon's PSS and RSS (its own process,
  not its zygote) and its minor page faults so far; then SIGTERM.

Prints each round, then the median and spread per tree. Needs root (the
default config's fork runtime is isolated).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procstats import minflt, pss_kb, rss_kb

READY_TIMEOUT_S = 60.0
# Every child runs from here: `python -c` and `-m` put the working directory
# first on sys.path, so a run from inside one tree would import that tree's
# huselet whichever venv's python it is.
NEUTRAL_CWD = "/"

# What `huselet run` imports before trio.run (huselet/cmd/run.py, cmd_run).
IMPORT_PROBE = """
import sys, time
t = time.perf_counter()
import huselet.cli, huselet.cmd.run, huselet.daemon, huselet.runtime.validate, huselet.log
print(time.perf_counter() - t, len(sys.modules))
"""


def import_once(python: str) -> tuple[float, int]:
    out = subprocess.run(
        [python, "-c", IMPORT_PROBE],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=NEUTRAL_CWD,
    )
    seconds, modules = out.stdout.split()
    return float(seconds), int(modules)


def package_dir(python: str) -> Path:
    out = subprocess.run(
        [python, "-c", "import huselet; print(huselet.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=NEUTRAL_CWD,
    )
    return Path(out.stdout.strip()).parent


def default_config(tree: Path, root: Path) -> Path:
    """The shipped default.toml, with a free port and private directories."""
    text = (tree / "default.toml").read_text()
    text = text.replace('http = "127.0.0.1:8470"', 'http = "127.0.0.1:0"')
    text = text.replace('package = "examples/hello"', f'package = "{tree}/examples/hello"')
    text = text.replace(
        "[node]\n", f'[node]\nstate_dir = "{root}/state"\nrun_dir = "{root}/run"\n', 1
    )
    config = root / "huselet.toml"
    config.write_text(text)
    return config


def ready_once(python: str, tree: Path) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="hdstart-", dir="/tmp"))
    try:
        config = default_config(tree, root)
        ready = threading.Event()
        lines: list[str] = []
        start = time.perf_counter()
        proc = subprocess.Popen(
            [python, "-m", "huselet", "run", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=NEUTRAL_CWD,
        )
        ready_at: list[float] = []

        def read() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                lines.append(line)
                if '"huselet ready"' in line and not ready.is_set():
                    ready_at.append(time.perf_counter())
                    ready.set()
            ready.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            if not ready.wait(READY_TIMEOUT_S) or not ready_at:
                raise SystemExit("daemon did not become ready:\n" + "".join(lines[-20:]))
            # What start-up left resident, before any request.
            sample = {
                "ready_s": ready_at[0] - start,
                "pss_mb": pss_kb(proc.pid) / 1024,
                "rss_mb": rss_kb(proc.pid) / 1024,
                "minflt": float(minflt(proc.pid)),
            }
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            reader.join(10)
        return sample
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, help="a venv's python")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (the default config's fork runtime is isolated)")
    trees = [(python, package_dir(python)) for python in args.tree]
    samples: dict[str, list[dict[str, float]]] = {python: [] for python in args.tree}
    for rnd in range(args.rounds):
        order = trees if rnd % 2 == 0 else trees[::-1]
        for python, tree in order:
            import_s, modules = import_once(python)
            sample = ready_once(python, tree)
            sample |= {"import_ms": import_s * 1000, "modules": float(modules)}
            sample["ready_ms"] = sample.pop("ready_s") * 1000
            samples[python].append(sample)
            print(json.dumps({"round": rnd, "tree": python, **sample}), flush=True)
    print()
    for python, rows in samples.items():
        summary = {}
        for key in rows[0]:
            values = sorted(row[key] for row in rows)
            summary[key] = f"{statistics.median(values):.1f} [{values[0]:.1f}..{values[-1]:.1f}]"
        print(python, json.dumps(summary))


if __name__ == "__main__":
    main()
