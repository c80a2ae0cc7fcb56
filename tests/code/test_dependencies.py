"""requirements.txt → an installed tree in the image: real pip, offline (a local wheel index)."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest

from cache.importer import DEPS_DIR
from cache.reader import ImageReader
from huselet.code.dependencies import DependencyError, DependencyOptions, install_requirements
from huselet.code.packing import build_image


def make_wheel(directory: Path, name: str, version: str, body: str) -> Path:
    """A minimal pure-Python wheel, written by hand (no build backend, no network)."""
    directory.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": body,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The "network": a local find-links directory, given to pip by its environment."""
    links = tmp_path / "links"
    make_wheel(links, "toy", "1.0", "VALUE = 1\n")
    (links / "toy-3.0.tar.gz").write_bytes(b"not really an sdist")  # sdist only for 3.0
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    return links


def package(tmp_path: Path, index: Path, requirement: str, name: str = "pkg") -> Path:
    src = tmp_path / name
    src.mkdir(exist_ok=True)
    (src / "main.py").write_text("import toy\n\ndef handler(e, c):\n    return toy.VALUE\n")
    (src / "requirements.txt").write_text(f"{requirement}\n")
    return src


def options(tmp_path: Path, **kw: Any) -> DependencyOptions:
    return DependencyOptions(cache_dir=tmp_path / "cache", **kw)


def test_requirements_install_into_the_image_and_the_digest_is_stable(
    tmp_path: Path, index: Path
) -> None:
    src = package(tmp_path, index, "toy==1.0")
    reports: list[dict[str, Any]] = []
    first = build_image(src, tmp_path / "one.hlimg", options(tmp_path), reports.append)
    with ImageReader.open(first.path) as reader:
        assert reader.is_file(f"{DEPS_DIR}/toy/__init__.py")
        assert reader.is_file(f"{DEPS_DIR}/toy-1.0.dist-info/METADATA")
        assert not reader.is_dir(f"{DEPS_DIR}/toy/__pycache__") or all(
            name.endswith(".cpython-311.pyc") or "." in name
            for name in reader.listdir(f"{DEPS_DIR}/toy/__pycache__")
        )
    assert reports[-1]["phase"] == "packed" and reports[-1]["digest"] == first.digest
    assert any(r["phase"] == "installed" and r["installed_files"] > 0 for r in reports)
    # A fresh install from the wheel cache (deps cache gone) packs to the same digest.
    shutil.rmtree(tmp_path / "cache" / "deps")
    second = build_image(src, tmp_path / "two.hlimg", options(tmp_path))
    assert second.digest == first.digest


def test_an_unchanged_requirements_file_does_not_run_pip_again(tmp_path: Path, index: Path) -> None:
    src = package(tmp_path, index, "toy==1.0")
    tree = install_requirements(src, options(tmp_path))
    reports: list[dict[str, Any]] = []
    again = install_requirements(src, options(tmp_path), reports.append)
    assert again == tree and reports == []  # no pip, no progress


def test_after_the_first_install_it_works_offline(tmp_path: Path, index: Path) -> None:
    src = package(tmp_path, index, "toy==1.0")
    install_requirements(src, options(tmp_path))
    shutil.rmtree(index)  # the "network" is gone
    (src / "requirements.txt").write_text(
        (src / "requirements.txt").read_text() + "# edited\n"
    )  # a new key: pip runs again, from the wheel cache
    tree = install_requirements(src, options(tmp_path))
    assert tree is not None and (tree / "toy" / "__init__.py").is_file()


def test_a_missing_distribution_is_a_typed_error_with_pips_reason(
    tmp_path: Path, index: Path
) -> None:
    src = package(tmp_path, index, "toy==2.0")
    with pytest.raises(DependencyError) as err:
        install_requirements(src, options(tmp_path))
    assert "No matching distribution found for toy==2.0" in str(err.value)
    assert not list((tmp_path / "cache" / "deps").iterdir())  # no temp left behind


def test_sdists_are_refused_unless_allowed(tmp_path: Path, index: Path) -> None:
    src = package(tmp_path, index, "toy==3.0")
    with pytest.raises(DependencyError) as err:
        install_requirements(src, options(tmp_path))
    assert "toy==3.0" in str(err.value)
    # Allowed, pip tries to build it (and fails on this fake): it got that far.
    with pytest.raises(DependencyError) as err:
        install_requirements(src, options(tmp_path, allow_sdist=True))
    assert "No matching distribution" not in str(err.value)


def test_pip_past_its_deadline_is_killed(tmp_path: Path, index: Path) -> None:
    src = package(tmp_path, index, "toy==1.0")
    with pytest.raises(DependencyError) as err:
        install_requirements(src, options(tmp_path, timeout_s=0.05))
    assert "did not finish within 0.05 s" in str(err.value)


def test_a_tree_without_requirements_needs_no_pip(tmp_path: Path) -> None:
    src = tmp_path / "plain"
    src.mkdir()
    (src / "main.py").write_text("def handler(e, c):\n    return 1\n")
    assert install_requirements(src, options(tmp_path)) is None
    info = build_image(src, tmp_path / "plain.hlimg", options(tmp_path))
    with ImageReader.open(info.path) as reader:
        assert not reader.is_dir(DEPS_DIR)


def test_a_cancelled_pack_stops_pip_at_once(tmp_path: Path, index: Path) -> None:
    import threading

    src = package(tmp_path, index, "toy==1.0")
    cancel = threading.Event()
    cancel.set()  # cancelled before pip could finish (it needs well over 0.2 s)
    with pytest.raises(DependencyError) as err:
        install_requirements(src, options(tmp_path, timeout_s=300), cancel=cancel)
    assert "packing cancelled" in str(err.value)  # stopped, not run to its deadline
    assert not list((tmp_path / "cache" / "deps").iterdir())


def test_a_pack_cancelled_while_pip_waits_on_the_network_kills_pip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket
    import threading

    # An index that accepts connections and never answers: pip hangs in its fetch.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.getsockname()[1]}/simple")
        monkeypatch.setenv("PIP_RETRIES", "0")
        src = tmp_path / "pkg"
        src.mkdir()
        (src / "requirements.txt").write_text("huselet-test-no-such-dist==1.0\n")
        cancel = threading.Event()
        phases: list[str] = []

        def progress(report: dict[str, Any]) -> None:
            phases.append(report["phase"])
            cancel.set()  # pip has been running a while (progress comes every 2 s)

        with pytest.raises(DependencyError) as err:
            install_requirements(src, options(tmp_path, timeout_s=600), progress, cancel)
    assert "pip was stopped (fetch): packing cancelled" in str(err.value)
    assert phases == ["fetch"]


def test_a_strict_umask_still_packs_a_public_tree(tmp_path: Path, index: Path) -> None:
    # The unit runs with UMask=0027, so pip writes 0640 files; the packer refuses
    # files others cannot read (a user's private file), but this tree is ours.
    src = package(tmp_path, index, "toy==1.0")
    old = os.umask(0o027)
    try:
        result = build_image(src, tmp_path / "img.hlimg", options(tmp_path))
    finally:
        os.umask(old)
    with ImageReader.open(result.path) as reader:
        assert reader.is_file(f"{DEPS_DIR}/toy/__init__.py")
