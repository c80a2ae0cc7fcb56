"""pack_directory: deterministic output, normalised metadata, safe refusals, atomic writes."""

from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path

import pytest
from cache_testkit import SAMPLE_TREE, make_tree, run_python

from cache import format as fmt
from cache.builder import ImageInfo, pack_directory
from cache.errors import BuildError
from cache.reader import ImageReader
from cache.validate import path_problem


def test_packing_twice_gives_identical_bytes(tmp_path: Path, sample_tree: Path) -> None:
    first = pack_directory(sample_tree, tmp_path / "one.hlimg")
    second = pack_directory(sample_tree, tmp_path / "two.hlimg")
    assert first.digest == second.digest
    assert first.path.read_bytes() == second.path.read_bytes()


def test_mtimes_permissions_and_creation_order_do_not_change_the_digest(
    tmp_path: Path, sample_tree: Path
) -> None:
    before = pack_directory(sample_tree, tmp_path / "before.hlimg")
    # The same content created in reverse order, with other times and modes.
    other = tmp_path / "other"
    for rel in reversed(list(SAMPLE_TREE)):
        make_tree(other, {rel: SAMPLE_TREE[rel]})
    (other / "bin/run.sh").chmod(0o705)  # still "executable" → 0o755
    (other / "pkg/data.txt").chmod(0o604)  # not executable → 0o644
    for path in other.rglob("*"):
        os.utime(path, (1_000_000, 2_000_000))
    after = pack_directory(other, tmp_path / "after.hlimg")
    assert after.digest == before.digest


def test_another_process_packs_the_same_digest(tmp_path: Path, sample_tree: Path) -> None:
    here = pack_directory(sample_tree, tmp_path / "here.hlimg")
    code = (
        "import sys; from pathlib import Path; from cache.builder import pack_directory; "
        "print(pack_directory(Path(sys.argv[1]), Path(sys.argv[2])).digest)"
    )
    result = run_python(code, str(sample_tree), str(tmp_path / "there.hlimg"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == here.digest


# Constants whose bytecode marshal used to write differently depending on what
# else the packing process held: a one-character string ("{" is a shared
# singleton, interned or not by whoever used it first), a non-identifier string,
# and names other code also references.
PROCESS_SENSITIVE = {
    "mod.py": "A = '{'\nB = 'hello world'\nC = ('{', '}', 1 << 70)\n"
    "def handler(event, context):\n    return {'{': event, 'json': '}'}\n",
}
PROCESS_NOISE = (
    "import sys, json, typing; "
    "held = [sys.intern(s) for s in ('{', '}', 'hello world', 'handler', 'event')]; "
)


def test_the_digest_does_not_depend_on_the_packing_process(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", PROCESS_SENSITIVE)
    code = (
        "import sys; from pathlib import Path; from cache.builder import pack_directory; "
        "print(pack_directory(Path(sys.argv[1]), Path(sys.argv[2])).digest)"
    )
    digests = set()
    for i, prefix in enumerate(("", PROCESS_NOISE)):
        result = run_python(prefix + code, str(src), str(tmp_path / f"{i}.hlimg"))
        assert result.returncode == 0, result.stderr
        digests.add(result.stdout.strip())
    assert len(digests) == 1


def test_content_changes_change_the_digest(tmp_path: Path, sample_tree: Path) -> None:
    before = pack_directory(sample_tree, tmp_path / "a.hlimg")
    (sample_tree / "pkg/data.txt").write_text("hello from the imagE\n")
    after = pack_directory(sample_tree, tmp_path / "b.hlimg")
    assert after.digest != before.digest


def test_modes_are_normalised_and_bytecode_is_added(sample_image: ImageInfo) -> None:
    with ImageReader.open(sample_image.path) as reader:
        modes = {e.path: e.mode for e in reader.entries()}
        assert modes["bin/run.sh"] == 0o755
        assert modes["pkg/data.txt"] == 0o644
        assert modes["pkg"] == 0o755
        tag = sys.implementation.cache_tag
        for source in ("handler.py", "pkg/__init__.py", "pkg/sub/helper.py"):
            pyc = fmt.pyc_path_for(source, tag)
            assert pyc is not None and reader.is_file(pyc)
        assert reader.bytecode_usable
    files = sum(1 for rel in SAMPLE_TREE if not rel.endswith("/"))
    assert sample_image.files == files + 5  # one pyc per .py file


def test_bytecode_can_be_left_out(tmp_path: Path, sample_tree: Path) -> None:
    info = pack_directory(sample_tree, tmp_path / "x.hlimg", compile_bytecode=False)
    with ImageReader.open(info.path) as reader:
        assert not any("__pycache__" in e.path for e in reader.entries())
        assert not reader.bytecode_usable
        assert reader.header.pyc_magic == bytes(4)


def test_caches_vcs_dirs_and_foreign_pyc_are_skipped(tmp_path: Path) -> None:
    src = make_tree(
        tmp_path / "src",
        {
            "mod.py": "A = 1\n",
            "__pycache__/mod.cpython-311.pyc": b"junk",
            "stale.pyc": b"junk",
            ".git/config": "[core]\n",
            "pkg/__pycache__/x.pyc": b"junk",
            "pkg/empty/": b"",
        },
    )
    info = pack_directory(src, tmp_path / "x.hlimg")
    assert info.skipped == ()
    with ImageReader.open(info.path) as reader:
        paths = [e.path for e in reader.entries()]
    tag = sys.implementation.cache_tag
    assert paths == ["__pycache__", f"__pycache__/mod.{tag}.pyc", "mod.py", "pkg", "pkg/empty"]


def test_a_file_that_does_not_compile_is_stored_without_bytecode(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"bad.py": "def (:\n", "good.py": "x = 1\n"})
    info = pack_directory(src, tmp_path / "x.hlimg")
    with ImageReader.open(info.path) as reader:
        assert reader.is_file("bad.py")
        assert reader.lookup(f"__pycache__/bad.{sys.implementation.cache_tag}.pyc") is None
        assert reader.lookup(f"__pycache__/good.{sys.implementation.cache_tag}.pyc") is not None


def test_symlinks_inside_the_tree_are_stored_as_their_target(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"real/data.txt": "payload", "real/x.py": "X = 1\n"})
    (src / "alias.txt").symlink_to("real/data.txt")
    (src / "linked").symlink_to("real", target_is_directory=True)
    info = pack_directory(src, tmp_path / "x.hlimg")
    with ImageReader.open(info.path) as reader:
        assert bytes(reader.read("alias.txt")) == b"payload"
        assert reader.is_dir("linked")
        assert bytes(reader.read("linked/data.txt")) == b"payload"


def test_symlink_leaving_the_tree_is_refused(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a.py": ""})
    (tmp_path / "secret").write_text("no")
    (src / "escape").symlink_to(tmp_path / "secret")
    with pytest.raises(BuildError, match=r"symlink escape -> .*secret points outside the tree"):
        pack_directory(src, tmp_path / "x.hlimg")


def test_relative_symlink_climbing_out_is_refused(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"pkg/a.py": ""})
    (src / "pkg/up").symlink_to("../../")
    with pytest.raises(BuildError, match=r"symlink pkg/up -> \.\./\.\./ points outside the tree"):
        pack_directory(src, tmp_path / "x.hlimg")


def test_dangling_symlink_and_symlink_loop_are_refused(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"pkg/a.py": ""})
    (src / "gone").symlink_to("missing.txt")
    with pytest.raises(BuildError, match=r"symlink gone -> missing\.txt is dangling"):
        pack_directory(src, tmp_path / "x.hlimg")
    (src / "gone").unlink()
    (src / "pkg/loop").symlink_to("..")
    with pytest.raises(BuildError, match="symlink loop: pkg/loop"):
        pack_directory(src, tmp_path / "x.hlimg")


def test_non_utf8_names_are_refused(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"ok.py": ""})
    bad = os.path.join(os.fsencode(src), b"caf\xe9.py")
    with open(bad, "wb"):
        pass
    with pytest.raises(BuildError, match=r"path is not valid UTF-8: caf\\xe9.py"):
        pack_directory(src, tmp_path / "x.hlimg")


def test_path_rules() -> None:
    assert path_problem("a/b.py") is None
    assert path_problem("") == "is empty"
    assert path_problem("/etc") == "is absolute"
    assert path_problem("a/../b") == "has a '..' component"
    assert path_problem("a//b") == "has an empty component"
    assert path_problem("a\0b") == "contains NUL"
    assert path_problem("x" * 256) == "has a component longer than 255 bytes"
    assert path_problem("/".join(["d" * 200] * 21)) == "is longer than 4096 bytes"


def test_failed_pack_leaves_nothing_behind(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a.py": ""})
    (src / "escape").symlink_to("/etc/hostname")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(BuildError):
        pack_directory(src, out)
    assert list(out.iterdir()) == []


def test_output_replaces_an_existing_file_and_leaves_no_temp(
    tmp_path: Path, sample_tree: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = out / "fixed-name.hlimg"
    target.write_bytes(b"old")
    info = pack_directory(sample_tree, target)
    assert info.path == target
    assert target.read_bytes()[:8] == fmt.MAGIC
    assert [p.name for p in out.iterdir()] == ["fixed-name.hlimg"]


def test_source_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="is not a directory"):
        pack_directory(tmp_path / "missing", tmp_path / "x.hlimg")


def test_empty_tree_packs_to_a_valid_image(tmp_path: Path) -> None:
    src = tmp_path / "empty"
    src.mkdir()
    info = pack_directory(src, tmp_path)
    with ImageReader.open(info.path) as reader:
        assert len(reader) == 0
        assert reader.listdir("") == []
    shutil.rmtree(src)


# --- the tree is outside input (issue 11, finding 5) -------------------------------------


def test_fifos_sockets_and_devices_are_refused_with_a_clear_error(tmp_path: Path) -> None:
    import socket

    src = make_tree(tmp_path / "src", {"mod.py": "A = 1\n"})
    os.mkfifo(src / "pipe")
    with pytest.raises(BuildError, match="pipe is a FIFO: images hold only regular files"):
        pack_directory(src, tmp_path / "x.hlimg")
    (src / "pipe").unlink()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(src / "sock"))
        with pytest.raises(BuildError, match="sock is a socket"):
            pack_directory(src, tmp_path / "x.hlimg")
    (src / "sock").unlink()
    if os.geteuid() == 0:
        os.mknod(src / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        with pytest.raises(BuildError, match="null is a character device"):
            pack_directory(src, tmp_path / "x.hlimg")


def test_a_file_others_cannot_read_is_refused_not_published_world_readable(
    tmp_path: Path,
) -> None:
    src = make_tree(tmp_path / "src", {"mod.py": "A = 1\n", "secret.key": "hunter2"})
    (src / "secret.key").chmod(0o600)
    with pytest.raises(BuildError, match=r"file secret.key has mode 0600: others cannot read"):
        pack_directory(src, tmp_path / "x.hlimg")
    (src / "secret.key").chmod(0o640)
    with pytest.raises(BuildError, match="chmod o\\+r it or keep it out of the tree"):
        pack_directory(src, tmp_path / "x.hlimg")
    (src / "secret.key").unlink()
    (src / "private").mkdir(mode=0o700)
    (src / "private").chmod(0o700)
    with pytest.raises(BuildError, match="directory private has mode 0700"):
        pack_directory(src, tmp_path / "x.hlimg")
    (src / "private").chmod(0o755)
    with ImageReader.open(pack_directory(src, tmp_path / "x.hlimg").path) as reader:
        assert reader.is_dir("private") and not reader.lookup("secret.key")


def test_a_symlink_swapped_in_after_the_scan_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race a publish drop can play: a file replaced by a symlink out of the tree."""
    outside = make_tree(tmp_path / "outside", {"shadow": "root:x:0:0"})
    src = make_tree(tmp_path / "src", {"mod.py": "A = 1\n", "data.txt": "payload"})
    from cache import builder

    real_scan = builder._scan

    def scan_then_swap(root: Path) -> tuple[list[object], list[str]]:
        found = real_scan(root)
        (src / "data.txt").unlink()
        (src / "data.txt").symlink_to(outside / "shadow")
        return found

    monkeypatch.setattr(builder, "_scan", scan_then_swap)
    with pytest.raises(BuildError, match=r"data\.txt turned into a symlink"):
        pack_directory(src, tmp_path / "x.hlimg")
