"""The meta-path importer, exercised in fresh interpreters (sys.modules stays clean)."""

from __future__ import annotations

import json
import marshal
import shutil
import struct
import subprocess
import sys
import sysconfig
import textwrap
from importlib.util import MAGIC_NUMBER, source_hash
from pathlib import Path

import pytest
from cache_testkit import REPO_ROOT, make_tree, run_python, write_spec_image

from cache.builder import ImageInfo, pack_directory
from cache.importer import ImageFinder, install_image_importer, uninstall_image_importer
from cache.reader import ImageReader

PRELUDE = """
import json, sys
from cache.reader import ImageReader
from cache.importer import install_image_importer, uninstall_image_importer
reader = ImageReader.open(sys.argv[1])
extract_root = sys.argv[2] if len(sys.argv) > 2 else None
finder = install_image_importer(reader, extract_root=extract_root)
out = {}
"""


def run_in_image(image: Path, body: str, *args: str, flags: tuple[str, ...] = ()) -> dict:
    code = PRELUDE + textwrap.dedent(body) + "\nprint(json.dumps(out))\n"
    result = run_python(code, str(image), *args, flags=flags)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_packages_submodules_and_relative_imports(sample_image: ImageInfo) -> None:
    out = run_in_image(
        sample_image.path,
        """
        import handler, pkg, pkg.sub.helper as helper
        out["result"] = handler.handle(21)
        out["file"] = helper.__file__
        out["pkg_path"] = list(pkg.__path__)
        out["package"] = helper.__package__
        out["is_pkg"] = [pkg.__spec__.submodule_search_locations is not None,
                         helper.__spec__.submodule_search_locations is not None]
        out["loader"] = type(helper.__loader__).__name__
        """,
    )
    root = str(sample_image.path)
    assert out["result"] == 42
    assert out["file"] == f"{root}/pkg/sub/helper.py"
    assert out["pkg_path"] == [f"{root}/pkg"]
    assert out["package"] == "pkg.sub"
    assert out["is_pkg"] == [True, False]
    assert out["loader"] == "ImageModuleLoader"


def test_tracebacks_and_inspect_see_the_source(tmp_path: Path) -> None:
    src = make_tree(
        tmp_path / "src",
        {"boom.py": "def explode():\n    raise RuntimeError('kaboom here')\n"},
    )
    info = pack_directory(src, tmp_path)
    out = run_in_image(
        info.path,
        """
        import traceback, inspect, boom
        try:
            boom.explode()
        except RuntimeError:
            out["tb"] = traceback.format_exc()
        out["source"] = inspect.getsource(boom.explode)
        """,
    )
    assert f'File "{info.path}/boom.py", line 2, in explode' in out["tb"]
    assert "raise RuntimeError('kaboom here')" in out["tb"]
    assert out["source"].startswith("def explode():")


def test_importlib_resources_and_pkgutil_data(sample_image: ImageInfo) -> None:
    out = run_in_image(
        sample_image.path,
        """
        import importlib.resources as resources, pkgutil
        files = resources.files("pkg")
        out["bytes"] = files.joinpath("data.txt").read_bytes().decode()
        out["text"] = (files / "data.txt").read_text()
        out["nested"] = len(files.joinpath("assets", "logo.bin").read_bytes())
        out["names"] = sorted(t.name for t in files.iterdir())
        out["is"] = [files.joinpath("assets").is_dir(), files.joinpath("data.txt").is_file(),
                     files.joinpath("missing").is_file()]
        with resources.as_file(files / "data.txt") as real:
            out["as_file"] = open(real).read()
        out["pkgutil"] = pkgutil.get_data("pkg", "assets/logo.bin")[:4].hex()
        with files.joinpath("data.txt").open("rb") as f:
            out["open_rb"] = f.read(5).decode()
        """,
    )
    assert out["bytes"] == out["text"] == out["as_file"] == "hello from the image\n"
    assert out["nested"] == 256 * 20
    assert out["names"] == ["__init__.py", "__pycache__", "assets", "data.txt", "sub"]
    assert out["is"] == [True, True, False]
    assert out["pkgutil"] == "00010203"
    assert out["open_rb"] == "hello"


def _poisoned_image(tmp_path: Path, pyc_magic: bytes) -> Path:
    """``mod.py`` says "source" but its stored pyc says "pyc": shows which one ran."""
    tag = sys.implementation.cache_tag
    pyc_source = b"VALUE = 'pyc'\n"
    pyc = (
        MAGIC_NUMBER
        + struct.pack("<I", 1)
        + source_hash(pyc_source)
        + marshal.dumps(compile(pyc_source, "mod.py", "exec"))
    )
    return write_spec_image(
        tmp_path,
        {"mod.py": b"VALUE = 'source'\n", f"__pycache__/mod.{tag}.pyc": pyc},
        pyc_magic=pyc_magic,
        cache_tag=tag,
        compat=1,
    )


def test_stored_bytecode_is_used_when_the_interpreter_matches(tmp_path: Path) -> None:
    image = _poisoned_image(tmp_path, MAGIC_NUMBER)
    out = run_in_image(image, "import mod; out['v'] = mod.VALUE; out['f'] = mod.__file__")
    assert out == {"v": "pyc", "f": f"{image}/mod.py"}


def test_foreign_pyc_magic_falls_back_to_the_source(tmp_path: Path) -> None:
    image = _poisoned_image(tmp_path, b"\x01\x02\r\n")
    assert run_in_image(image, "import mod; out['v'] = mod.VALUE") == {"v": "source"}


def test_optimised_interpreters_compile_from_source(tmp_path: Path) -> None:
    image = _poisoned_image(tmp_path, MAGIC_NUMBER)
    out = run_in_image(image, "import mod; out['v'] = mod.VALUE", flags=("-O",))
    assert out == {"v": "source"}


def test_builder_bytecode_runs_and_reports_virtual_code_filenames(
    sample_image: ImageInfo,
) -> None:
    out = run_in_image(
        sample_image.path,
        "import pkg.sub.helper as h; out['co'] = h.double.__code__.co_filename",
    )
    assert out["co"] == f"{sample_image.path}/pkg/sub/helper.py"


def test_namespace_packages_and_no_shadowing_of_real_packages(tmp_path: Path) -> None:
    src = make_tree(
        tmp_path / "src",
        {
            "nspkg/inner/mod.py": "X = 'ns'\n",
            "email/notes.txt": "a data directory named like a stdlib package",
        },
    )
    info = pack_directory(src, tmp_path)
    out = run_in_image(
        info.path,
        """
        import nspkg.inner.mod as m, email
        out["x"] = m.X
        out["ns_path"] = list(__import__("nspkg").__path__)
        out["email"] = email.__file__
        """,
    )
    assert out["x"] == "ns"
    assert out["ns_path"] == [f"{info.path}/nspkg"]
    assert out["email"].endswith("email/__init__.py") and ".hlimg" not in out["email"]


def test_misses_and_syntax_errors(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"pkg/__init__.py": "", "pkg/broken.py": "def (:\n"})
    info = pack_directory(src, tmp_path)
    out = run_in_image(
        info.path,
        """
        import pkg
        try:
            import pkg.missing
        except ModuleNotFoundError as exc:
            out["miss"] = str(exc)
        try:
            import pkg.broken
        except SyntaxError as exc:
            out["syntax"] = exc.filename
        out["entry_finder"] = type(sys.path_importer_cache.get(pkg.__path__[0])).__name__
        """,
    )
    assert out["miss"] == "No module named 'pkg.missing'"
    assert out["syntax"] == f"{info.path}/pkg/broken.py"
    # PathFinder's fallback went to our path hook, not to zipimport.
    assert out["entry_finder"] == "ImagePathEntryFinder"


def test_prefix_selects_the_import_root(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"site/app.py": "NAME = 'app'\n", "app.py": "NAME = 'x'\n"})
    info = pack_directory(src, tmp_path)
    result = run_python(
        "import sys; from cache.reader import ImageReader; "
        "from cache.importer import install_image_importer; "
        "install_image_importer(ImageReader.open(sys.argv[1]), prefix='site/'); "
        "import app; print(app.NAME, app.__file__)",
        str(info.path),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["app", f"{info.path}/site/app.py"]
    with ImageReader.open(info.path) as reader, pytest.raises(ImportError, match="prefix"):
        ImageFinder(reader, prefix="nowhere")


def test_uninstall_stops_serving(sample_image: ImageInfo) -> None:
    out = run_in_image(
        sample_image.path,
        """
        import pkg.sub.consts
        uninstall_image_importer(finder, remove_modules=True)
        out["left"] = sorted(m for m in sys.modules if m == "pkg" or m.startswith("pkg."))
        try:
            import pkg
            out["after"] = "imported"
        except ModuleNotFoundError:
            out["after"] = "gone"
        out["meta"] = finder in sys.meta_path
        """,
    )
    assert out == {"left": [], "after": "gone", "meta": False}


def test_the_importer_keeps_worker_start_up_light() -> None:
    code = (
        f"import sys; sys.path.insert(0, {str(REPO_ROOT)!r}); import cache.importer; "
        "print(sorted({'trio', 'typing', 'dataclasses', 'hashlib', 'zstandard', 'msgpack', "
        "'pathlib', 'importlib.util'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_in_process_install_and_uninstall_restore_sys_state(sample_image: ImageInfo) -> None:
    meta, hooks = list(sys.meta_path), list(sys.path_hooks)
    with ImageReader.open(sample_image.path) as reader:
        finder = install_image_importer(reader)
        assert sys.meta_path.index(finder) < len(sys.meta_path) - 1  # before PathFinder
        spec = finder.find_spec("pkg")
        assert spec is not None and spec.origin == f"{sample_image.path}/pkg/__init__.py"
        uninstall_image_importer(finder)
    assert sys.meta_path == meta and sys.path_hooks == hooks


# -- native extensions -----------------------------------------------------------------

TINY_C = r"""
#include <Python.h>
extern int the_answer(void);
static PyObject *answer(PyObject *self, PyObject *args) { return PyLong_FromLong(the_answer()); }
static PyMethodDef methods[] = {{"answer", answer, METH_NOARGS, NULL}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_tiny", NULL, -1, methods};
PyMODINIT_FUNC PyInit__tiny(void) { return PyModule_Create(&def); }
"""
LIB_C = "int the_answer(void) { return 42; }\n"
# The layout of every auditwheel-repaired wheel: the extension finds its
# vendored library through an RPATH relative to itself.
PKG_INIT = """
import ctypes, os
from ._tiny import answer
HERE = os.path.dirname(__file__)
LIB = ctypes.CDLL(os.path.join(HERE, os.pardir, "pkg.libs", "libanswer-1a2b3c.so.1"))
with open(os.path.join(HERE, "data.txt")) as f:
    DATA = f.read()
"""


def _cc(*args: str) -> None:
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler (gcc/cc) on PATH to build a test extension")
    subprocess.run([compiler, *args], check=True, capture_output=True, timeout=120)


@pytest.fixture
def extension_image(tmp_path: Path) -> ImageInfo:
    src = make_tree(
        tmp_path / "src",
        {"pkg/__init__.py": PKG_INIT, "pkg/data.txt": "data by path\n", "pkg.libs/": ""},
    )
    (tmp_path / "tiny.c").write_text(TINY_C)
    (tmp_path / "lib.c").write_text(LIB_C)
    lib = src / "pkg.libs" / "libanswer-1a2b3c.so.1"
    _cc("-shared", "-fPIC", "-O1", str(tmp_path / "lib.c"), "-o", str(lib))
    so = src / "pkg" / f"_tiny{sysconfig.get_config_var('EXT_SUFFIX')}"
    _cc(
        "-shared",
        "-fPIC",
        "-O1",
        f"-I{sysconfig.get_paths()['include']}",
        str(tmp_path / "tiny.c"),
        str(lib),
        "-Wl,-rpath,$ORIGIN/../pkg.libs",
        "-o",
        str(so),
    )
    out = tmp_path / "images"
    out.mkdir()
    return pack_directory(src, out)


EXTENSION_BODY = """
import os, pkg, pkg._tiny
out["answer"] = pkg.answer()
out["ctypes"] = pkg.LIB.the_answer()
out["data"] = pkg.DATA
out["file"] = pkg._tiny.__file__
out["init"] = pkg.__file__
out["inode"] = os.stat(pkg._tiny.__file__).st_ino
"""


def test_native_files_keep_their_layout_so_rpath_ctypes_and_data_paths_work(
    tmp_path: Path, extension_image: ImageInfo
) -> None:
    extract = tmp_path / "extracted"
    first = run_in_image(extension_image.path, EXTENSION_BODY, str(extract))
    assert first["answer"] == 42  # _tiny.so found libanswer through $ORIGIN/../pkg.libs
    assert first["ctypes"] == 42  # a ctypes load relative to __file__
    assert first["data"] == "data by path\n"  # a data file opened by path
    tree = extract / extension_image.digest
    assert first["file"] == str(tree / "pkg" / Path(first["file"]).name)
    assert first["init"] == str(tree / "pkg" / "__init__.py")  # virtual, next to the real files
    assert not (tree / "pkg" / "__init__.py").exists()  # source stays in the map
    assert [p.name for p in extract.iterdir()] == [extension_image.digest]  # no temp left
    second = run_in_image(extension_image.path, EXTENSION_BODY, str(extract))
    assert second["inode"] == first["inode"]  # extracted once, then shared


def test_a_damaged_tree_is_rebuilt_when_verified(
    tmp_path: Path, extension_image: ImageInfo
) -> None:
    from cache.native import ensure_native_tree

    extract = tmp_path / "extracted"
    first = run_in_image(extension_image.path, EXTENSION_BODY, str(extract))
    damaged = Path(first["file"])
    damaged.chmod(0o644)
    damaged.write_bytes(b"not an ELF file")
    with ImageReader.open(extension_image.path) as reader:
        assert ensure_native_tree(reader, str(extract)) == str(damaged.parents[1])  # trusted
        ensure_native_tree(reader, str(extract), verify_existing=True)
    assert damaged.read_bytes()[:4] == b"\x7fELF"
    second = run_in_image(extension_image.path, EXTENSION_BODY, str(extract))
    assert second["answer"] == 42


def test_distribution_metadata_in_an_image_is_found(tmp_path: Path) -> None:
    src = make_tree(
        tmp_path / "src",
        {
            "thing/__init__.py": "",
            "thing-1.2.3.dist-info/METADATA": (
                "Metadata-Version: 2.1\nName: thing\nVersion: 1.2.3\n"
            ),
        },
    )
    (tmp_path / "out").mkdir()
    image = pack_directory(src, tmp_path / "out")
    out = run_in_image(
        image.path,
        """
        import importlib.metadata as md
        out["version"] = md.version("thing")
        """,
        str(tmp_path / "extract"),
    )
    assert out["version"] == "1.2.3"


# Each case: files of a tree, and what ``import m`` must give. Checked against
# CPython's own FileFinder over the same tree on disk, so the image finder
# cannot drift from the interpreter's order.
PRECEDENCE_CASES = {
    "module beats namespace dir": {"m.py": "KIND = 'module'\n", "m/stub.pyi": ""},
    "package beats module": {"m.py": "KIND = 'module'\n", "m/__init__.py": "KIND = 'package'\n"},
    "namespace when alone": {"m/x.py": "KIND = 'portion'\n"},
}


@pytest.mark.parametrize("case", sorted(PRECEDENCE_CASES))
def test_lookup_order_is_cpythons_file_finder_order(tmp_path: Path, case: str) -> None:
    files = PRECEDENCE_CASES[case]
    src = make_tree(tmp_path / "src", files)
    (tmp_path / "out").mkdir()
    image = pack_directory(src, tmp_path / "out")
    body = """
        import m
        out["kind"] = getattr(m, "KIND", None)
        out["namespace"] = m.__spec__.origin in (None, "namespace")
        """
    from_image = run_in_image(image.path, body)
    code = "import json, sys\nsys.path.insert(0, sys.argv[1])\nout = {}\n"
    code += textwrap.dedent(body) + "\nprint(json.dumps(out))\n"
    result = run_python(code, str(src), flags=("-B",))
    assert result.returncode == 0, result.stderr
    assert from_image == json.loads(result.stdout.strip().splitlines()[-1])


def test_an_extension_module_beats_a_stub_directory_of_its_name(
    tmp_path: Path, extension_image: ImageInfo
) -> None:
    """pydantic-core ships ``_pydantic_core/`` (stubs only) next to ``_pydantic_core.*.so``."""
    with ImageReader.open(extension_image.path) as reader:
        files = {e.path: bytes(reader.read_entry(e)) for e in reader.entries() if e.is_file}
    files = {p: c for p, c in files.items() if "__pycache__" not in p}
    files["pkg/_tiny/__init__.pyi"] = b"def answer() -> int: ...\n"
    src = make_tree(tmp_path / "src2", files)
    for path in src.rglob("*.so*"):
        path.chmod(0o755)
    (tmp_path / "out2").mkdir()
    image = pack_directory(src, tmp_path / "out2")
    out = run_in_image(image.path, EXTENSION_BODY, str(tmp_path / "extract"))
    assert out["answer"] == 42


def test_extension_without_extract_root_is_a_clear_import_error(
    extension_image: ImageInfo,
) -> None:
    out = run_in_image(
        extension_image.path,
        """
        try:
            import pkg
        except ImportError as exc:
            out["error"] = str(exc)
        """,
    )
    assert out["error"].startswith("extension module pkg._tiny (pkg/_tiny.")
    assert "needs an extract_root" in out["error"]
