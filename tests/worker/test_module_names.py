"""A function's modules named like the worker's own resolve to the function's code.

Directory packages (no image) on the real ``process`` and ``fork`` runtimes
(in-process node stack, real workers and zygote); the image case runs against
the real daemon in tests/e2e/test_kinds_e2e.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import running_stack

SHADOWING = {
    "protocol": "WHO = 'function protocol'\n",
    "cache": "WHO = 'function cache'\n",
    "msgpack": "WHO = 'function msgpack'\n",
    # A standard-library name the worker has already imported.
    "json": "WHO = 'function json'\n",
    "main": (
        "import protocol, cache, msgpack, json\n"
        "from protocol import WHO as P\n"
        "def handler(event, context):\n"
        "    return [P, cache.WHO, msgpack.WHO, json.WHO]\n"
    ),
}


@pytest.mark.parametrize("runtime", ["process", "fork"])
async def test_function_modules_shadow_the_workers(short_tmp: Path, runtime: str) -> None:
    pkg = short_tmp / "pkgs" / "names"
    pkg.mkdir(parents=True)
    for module, source in SHADOWING.items():
        (pkg / f"{module}.py").write_text(source)
    functions = [
        {"name": "names", "package": str(pkg), "handler": "main:handler", "runtime": runtime}
    ]
    runtimes = {"fork": {"isolation": False, "cgroups": False}}
    async with running_stack(short_tmp, functions, runtimes) as stack:
        for _ in range(2):  # and the worker keeps serving with the function's json around
            result = await stack.dispatcher.invoke("names", b"{}", "json")
            assert json.loads(result.body) == [
                "function protocol",
                "function cache",
                "function msgpack",
                "function json",
            ]
