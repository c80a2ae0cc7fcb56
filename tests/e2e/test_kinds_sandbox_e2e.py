"""End to end: the web-app kinds, module names and distinct forks on the *isolated*
``fork`` runtime (namespaces, seccomp, cgroups, own uid), where the host allows it.

The isolated sandbox sees the interpreter's installation read-only, so the
venv's Flask and FastAPI (test extras) import there as they do for ``process``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from daemon_harness import Daemon, write_config
from runtime.sandbox_support import UID_BASE, cgroup_leftovers, host_problem
from test_kinds_e2e import DISTINCT, FASTAPI_APP, FLASK_APP, NAMES, call

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sandboxed() -> Iterator[Daemon]:
    problem = host_problem()
    if problem:
        pytest.skip(f"host cannot sandbox: {problem}")
    root = Path(tempfile.mkdtemp(prefix="hlks"))
    os.chmod(root, 0o755)  # the functions' uids read their packages
    web, names, distinct = root / "web", root / "names", root / "distinct"
    for d, files in (
        (web, {"flaskapp": FLASK_APP, "fastapp": FASTAPI_APP}),
        (names, NAMES),
        (distinct, {"main": DISTINCT}),
    ):
        d.mkdir()
        for module, source in files.items():
            (d / f"{module}.py").write_text(source)
    text = (
        f'[runtimes.fork]\ncgroup_parent = "huselet-test-{root.name}"\nuid_base = {UID_BASE}\n'
        f'[[functions]]\nname = "flask"\npackage = "{web}"\napp = "flaskapp:app"\n'
        'kind = "wsgi"\nruntime = "fork"\n'
        f'[[functions]]\nname = "fastapi"\npackage = "{web}"\napp = "fastapp:app"\n'
        'kind = "asgi"\nruntime = "fork"\n'
        f'[[functions]]\nname = "names"\npackage = "{names}"\nhandler = "main:handler"\n'
        'runtime = "fork"\n'
        f'[[functions]]\nname = "distinct"\npackage = "{distinct}"\nhandler = "main:handler"\n'
        'runtime = "fork"\ninstance_mode = "single"\nmax_instances = 4\nmax_queue = 200\n'
    )
    with Daemon(write_config(root, text)) as d:
        yield d
    assert cgroup_leftovers(root) == []
    shutil.rmtree(root, ignore_errors=True)


def test_flask_and_fastapi_in_isolated_forks(sandboxed: Daemon) -> None:
    resp = call(sandboxed, "GET", "flask/users/3?q=z")
    assert resp.status_code == 200, resp.text
    assert resp.json()["url"] == "/v1/invoke/flask/users/3"
    resp = call(sandboxed, "GET", "fastapi/items/4")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"item_id": 4, "q": None, "started": ["up"]}
    resp = call(sandboxed, "POST", "fastapi/items", json={"name": "x", "price": 2})
    assert (resp.status_code, resp.headers["x-total"]) == (201, "4.0")


def test_module_names_in_isolated_forks(sandboxed: Daemon) -> None:
    resp = call(sandboxed, "POST", "names", json={})
    assert resp.json() == ["function protocol", "function cache", "function msgpack"]


def test_isolated_fork_instances_are_distinct(sandboxed: Daemon) -> None:
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: call(sandboxed, "POST", "distinct", json={}), range(100)))
    bad = [r.text for r in replies if r.status_code != 200]
    assert not bad, bad
    seen = [r.json() for r in replies]
    assert len({s["zygote"] for s in seen}) == 1
    # Each instance has its own PID namespace, so pids repeat; the values must not.
    for key in ("uuid", "random", "token"):
        assert len({s[key] for s in seen}) == 100, key
