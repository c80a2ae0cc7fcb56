"""huselet.bytecode: which modules lack a valid .pyc, writing them, and that
``python -I -B`` (how zygotes and instances run) then loads them instead of
compiling. On a temp package, so the checkout's own ``__pycache__`` is left alone."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from huselet import bytecode


def make_package(root: Path) -> Path:
    pkg = root / "bcpkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "examples" / "hello").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text("VALUE = 1\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "leaf.py").write_text("def f():\n    return 2\n")
    # Function code shipped as an example: packed into images, never compiled here.
    (pkg / "examples" / "hello" / "main.py").write_text("def handler(e, c):\n    return {}\n")
    return pkg


def names(paths: list[Path], root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in paths]


def test_missing_then_written_then_stale_again_after_an_edit(tmp_path: Path) -> None:
    pkg = make_package(tmp_path)
    all_modules = ["__init__.py", "mod.py", "sub/__init__.py", "sub/leaf.py"]
    assert names(bytecode.stale_sources([pkg]), pkg) == all_modules

    assert bytecode.compile_sources(bytecode.stale_sources([pkg])) == []
    assert bytecode.stale_sources([pkg]) == []
    assert Path(importlib.util.cache_from_source(str(pkg / "mod.py"))).is_file()
    assert not (pkg / "examples" / "hello" / "__pycache__").exists()

    # An edit (another size, a later mtime) makes its .pyc stale, as import sees it.
    (pkg / "mod.py").write_text("VALUE = 22\n")
    os.utime(pkg / "mod.py", (2_000_000_000, 2_000_000_000))
    assert names(bytecode.stale_sources([pkg]), pkg) == ["mod.py"]


def test_a_pyc_of_another_interpreter_or_cut_short_is_not_valid(tmp_path: Path) -> None:
    pkg = make_package(tmp_path)
    bytecode.compile_sources(bytecode.sources([pkg]))
    cached = Path(importlib.util.cache_from_source(str(pkg / "mod.py")))
    data = cached.read_bytes()
    cached.write_bytes(b"\x00\x00\r\n" + data[4:])  # another magic number
    cached2 = Path(importlib.util.cache_from_source(str(pkg / "sub" / "leaf.py")))
    cached2.write_bytes(cached2.read_bytes()[:10])  # a truncated header
    assert names(bytecode.stale_sources([pkg]), pkg) == ["mod.py", "sub/leaf.py"]


def test_a_module_that_does_not_compile_is_reported_not_raised(tmp_path: Path) -> None:
    pkg = make_package(tmp_path)
    (pkg / "broken.py").write_text("def (:\n")
    assert bytecode.compile_sources(bytecode.sources([pkg])) == [pkg / "broken.py"]
    assert names(bytecode.stale_sources([pkg]), pkg) == ["broken.py"]


@pytest.mark.parametrize("dont_write", [False, True])
def test_the_start_check_writes_unless_told_not_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dont_write: bool
) -> None:
    # sys.dont_write_bytecode is what PYTHONDONTWRITEBYTECODE (or -B) sets.
    pkg = make_package(tmp_path)
    monkeypatch.setattr(sys, "dont_write_bytecode", dont_write)
    compiled, stale = bytecode.ensure_compiled([pkg])
    if dont_write:
        assert compiled == [] and len(stale) == 4
        assert not (pkg / "__pycache__").exists()
    else:
        assert len(compiled) == 4 and stale == []
        assert bytecode.stale_sources([pkg]) == []


def loaded_from(pkg: Path) -> str:
    """The file ``python -I -B`` took ``bcpkg.mod``'s code object from (``-v`` says)."""
    probe = f"import sys; sys.path.insert(0, {str(pkg.parent)!r}); import bcpkg.mod"
    out = subprocess.run(
        [sys.executable, "-I", "-B", "-v", "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    mod = str(pkg / "mod")
    (line,) = [
        x
        for x in out.stderr.splitlines()
        if x.startswith("# code object from")
        and (mod in x or str(pkg / "__pycache__" / "mod.") in x)
    ]
    # The pyc's path is quoted, the source's not (CPython 3.11).
    return line.removeprefix("# code object from ").strip("'")


def test_python_minus_B_loads_the_written_pyc_instead_of_compiling(tmp_path: Path) -> None:
    pkg = make_package(tmp_path)
    source = pkg / "mod.py"
    assert loaded_from(pkg) == str(source)  # compiled from source
    assert bytecode.stale_sources([pkg])  # and -B wrote nothing
    bytecode.compile_sources(bytecode.sources([pkg]))
    cached = importlib.util.cache_from_source(str(source))
    assert loaded_from(pkg) == cached


def test_the_module_entry_point_compiles_where_the_interpreter_imports_from() -> None:
    # What scripts/bootstrap.sh runs; here only asked what it would cover.
    dirs = bytecode.package_dirs()
    repo = Path(__file__).resolve().parents[1]
    assert [d.name for d in dirs] == ["huselet", "protocol", "cache"]
    assert all(d.parent == repo for d in dirs)
    assert repo / "huselet" / "sandbox" / "instance.py" in bytecode.sources(dirs)
