"""Functions with dependencies, through the real daemon and real wheels from PyPI.

A package directory with a ``requirements.txt`` of popular wheels with native
code (numpy, pydantic 2, Pillow, cryptography, orjson, msgpack, lxml) is
packed by the daemon — pip into the image — and served on the ``process`` and
``fork`` runtimes; every package must import *from the image* and do real
work. ``huselet pack`` of the same tree gives the same digest. A layer built
with ``huselet pack`` serves a function that has no dependencies of its own.

The wheel cache lives in pytest's cache directory, so only the first run
downloads (CI reaches PyPI); later runs install offline.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import HUSELET, Daemon, wait_until, write_config
from native_wheels import EXPECTED, HANDLER, REQUIREMENTS

pytestmark = pytest.mark.e2e

PACK_TIMEOUT_S = 900  # a cold wheel cache downloads ~35 MB
LAYER_REQUIREMENTS = "orjson==3.10.7\n"
LAYER_LIB = "import orjson\n\ndef encode(value):\n    return orjson.dumps(value).decode()\n"
LAYERED_MAIN = """
import layerlib, shadow

def handler(event, context):
    return {"encoded": layerlib.encode({"x": 1}), "shadow": shadow.WHO,
            "layer_file": layerlib.__file__}
"""


class Env:
    def __init__(self, root: Path, daemon: Daemon, layer_digest: str, cli_digest: str) -> None:
        self.root, self.daemon, self.layer_digest = root, daemon, layer_digest
        self.cli_digest = cli_digest  # `huselet pack` of the package, before the daemon ran


def pack_cli(directory: Path, out: Path, config: Path) -> dict[str, Any]:
    result = subprocess.run(
        [*HUSELET, "pack", str(directory), "-o", str(out), "--config", str(config), "--json"],
        capture_output=True,
        text=True,
        timeout=PACK_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def env(pytestconfig: pytest.Config) -> Iterator[Env]:
    root = Path(tempfile.mkdtemp(prefix="hld"))
    # pytest's cache keeps downloaded wheels between runs; without it (-p no:cacheprovider)
    # a fixed directory under the system temp dir does.
    cache = getattr(pytestconfig, "cache", None)
    if cache is not None:
        wheels = Path(cache.mkdir("huselet-wheels"))
    else:
        wheels = Path(tempfile.gettempdir()) / "huselet-test-wheels"
        wheels.mkdir(exist_ok=True)
    (root / "state" / "cache").mkdir(parents=True)
    (root / "state" / "cache" / "wheels").symlink_to(wheels)
    pkg = root / "pkg"
    pkg.mkdir()
    (pkg / "requirements.txt").write_text(REQUIREMENTS)
    (pkg / "main.py").write_text(HANDLER)
    layer_src = root / "layer"
    layer_src.mkdir()
    (layer_src / "requirements.txt").write_text(LAYER_REQUIREMENTS)
    (layer_src / "layerlib.py").write_text(LAYER_LIB)
    (layer_src / "shadow.py").write_text("WHO = 'layer'\n")
    layered = root / "layered"
    layered.mkdir()
    (layered / "main.py").write_text(LAYERED_MAIN)
    (layered / "shadow.py").write_text("WHO = 'function'\n")
    common = "memory_mb = 1024\nstart_timeout_ms = 60000\ntimeout_ms = 60000\n"
    node_only = write_config(root, "")
    layer = pack_cli(layer_src, root / "layer.hlimg", node_only)
    cli = pack_cli(pkg, root / "app.hlimg", node_only)
    # The same code as an image file, on an isolated fork zygote (image-only cwd).
    functions = (
        f'[[functions]]\nname = "imaged"\nimage = "{root}/app.hlimg"\n'
        f'handler = "main:handler"\nruntime = "fork"\n{common}\n'
    )
    for name, runtime in (("proc", "process"), ("forked", "fork")):
        functions += (
            f'[[functions]]\nname = "{name}"\npackage = "{pkg}"\nhandler = "main:handler"\n'
            f'runtime = "{runtime}"\n{common}\n'
        )
    functions += textwrap.dedent(
        f"""
        [[functions]]
        name = "layered"
        package = "{layered}"
        handler = "main:handler"
        runtime = "fork"
        layers = [{{ image = "{root}/layer.hlimg", digest = "{layer["digest"]}" }}]
        {common}
        """
    )
    config = write_config(root, functions)
    with Daemon(config) as daemon:
        packed = lambda: len(daemon.logs("package packed")) >= 2  # noqa: E731
        failed = lambda: daemon.logs("cannot pack package directory")  # noqa: E731
        assert wait_until(lambda: packed() or failed(), PACK_TIMEOUT_S, 0.5), daemon.lines[-20:]
        assert not failed(), failed()
        yield Env(root, daemon, layer["digest"], cli["digest"])
    shutil.rmtree(root, ignore_errors=True)


def packed_digest(env: Env, directory: Path) -> str:
    entries = [e for e in env.daemon.logs("package packed") if e["directory"] == str(directory)]
    return str(entries[-1]["digest"])


@pytest.mark.parametrize("function", ["proc", "forked", "imaged"])
def test_native_wheels_import_from_the_image_and_work(env: Env, function: str) -> None:
    reply = env.daemon.invoke(function, {})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    digest = env.cli_digest
    tree = env.root / "state" / "cache" / "extract" / digest / ".huselet-deps"
    for name, report in body.items():
        assert report["ok"], f"{name}: {report['error']}\n{report['trace']}"
        # All from the image, msgpack too: the worker's own copy yields to the function's.
        assert report["file"].startswith(f"{tree}/"), (name, report["file"])
    for name, expected in EXPECTED.items():
        assert body[name]["result"] == expected, name
    assert body["cryptography"]["result"]["fernet"] == "secret"


def test_huselet_pack_and_the_daemon_give_one_digest(env: Env) -> None:
    assert env.cli_digest == packed_digest(env, env.root / "pkg")


def test_a_layer_serves_dependencies_after_the_functions_own_code(env: Env) -> None:
    reply = env.daemon.invoke("layered", {})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["encoded"] == '{"x":1}'  # orjson from the layer's requirements
    assert body["shadow"] == "function"  # the function's own module beats the layer's
    layer_tree = env.root / "state" / "cache" / "extract" / env.layer_digest
    assert body["layer_file"] == f"{layer_tree}/layerlib.py"
    instances = json.loads(env.daemon.ctl("instances", "--json").stdout)
    layered = [i for i in instances if i["id"].startswith("layered-")]
    assert layered and all(i["layers"] == [env.layer_digest] for i in layered)
