"""Give an image's native code a real directory: its non-Python files, extracted with their layout.

The dynamic loader cannot map a library out of an image, and it finds a
library's dependencies by *relative* paths: every auditwheel-repaired
manylinux wheel (numpy, Pillow, scipy, …) loads ``pkg/_ext.so`` with an RPATH
of ``$ORIGIN/../pkg.libs``, and many packages ``ctypes.CDLL`` a file next to
their ``__file__``. So an image's files that Python does not import from the
map — everything but ``*.py`` and bytecode — are extracted once into
``<extract_root>/<image digest>/`` *at the same relative paths*, and the image
importer roots its virtual paths there (see :mod:`cache.importer`), so
``os.path.dirname(__file__)`` of a module and the directory holding its
extension and data files are the same real directory.

One tree per image (content-addressed by the image digest), shared by every
instance and process: built in a private temp directory and renamed into
place, so a tree that exists is complete; losing a race to another extractor
just discards the loser's copy. Files are verified against the image index
while extracted; :func:`ensure_native_tree` with ``verify_existing=True`` (the
daemon, once per image) re-checks a tree it did not just write and rebuilds
a damaged one. Instances only check that it exists.

Standard library only (this runs in instances at start-up).
"""

from __future__ import annotations

import os

from cache.durable import fsync_dir
from cache.reader import Entry, ImageReader

# What stays in the map: modules the image importer serves straight from it.
_SERVED_FROM_MAP = (".py", ".pyc", ".pyo", ".pyi")
_CHUNK = 1 << 20


def extracted_entries(reader: ImageReader) -> list[Entry]:
    """The files of ``reader`` that go into its native tree (may be empty)."""
    return [
        e
        for e in reader.entries()
        if e.is_file
        and not e.path.endswith(_SERVED_FROM_MAP)
        and "/__pycache__/" not in f"/{e.path}"
    ]


def native_tree_path(extract_root: str, digest: str) -> str:
    return os.path.join(extract_root, digest)


def ensure_native_tree(
    reader: ImageReader, extract_root: str, *, verify_existing: bool = False
) -> str | None:
    """The image's native tree under ``extract_root``, extracted if missing; None if it has none.

    Raises ``OSError`` (e.g. a read-only ``extract_root``) and
    :class:`~cache.errors.DigestMismatch` for a damaged image.
    """
    destination = native_tree_path(extract_root, reader.digest)
    exists = os.path.isdir(destination)
    if exists and not verify_existing:
        return destination  # the common case: one stat, no walk over the index
    entries = extracted_entries(reader)
    if not entries:
        return None
    if exists:
        if _tree_intact(reader, entries, destination):
            return destination
        _remove_tree(destination, extract_root, reader.digest)
    os.makedirs(extract_root, mode=0o755, exist_ok=True)
    temp = os.path.join(
        extract_root, f".{reader.digest[:16]}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    )
    os.mkdir(temp, 0o755)
    try:
        for entry in entries:
            _extract_one(reader, entry, temp)
        fsync_dir(temp)
        try:
            os.rename(temp, destination)
        except OSError:
            if not os.path.isdir(destination):
                raise
            _rmtree(temp)  # another process finished first: its tree is as good
    except BaseException:
        _rmtree(temp)
        raise
    fsync_dir(extract_root)
    return destination


def remove_native_tree(extract_root: str, digest: str) -> None:
    """Drop an image's tree (the image left the store). Instances using it keep their mappings."""
    destination = native_tree_path(extract_root, digest)
    if os.path.isdir(destination):
        _remove_tree(destination, extract_root, digest)


def _extract_one(reader: ImageReader, entry: Entry, root: str) -> None:
    reader.verify_file(entry)  # hot opens skip the whole-image hash
    target = os.path.join(root, *entry.path.split("/"))
    os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
    # Read-only copies: nothing should edit a library that others have mapped.
    mode = 0o555 if entry.mode & 0o111 else 0o444
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        view = reader.read_entry(entry)
        written = 0
        while written < len(view):
            written += os.write(fd, view[written : written + _CHUNK])
        os.fsync(fd)
    finally:
        os.close(fd)


def _tree_intact(reader: ImageReader, entries: list[Entry], destination: str) -> bool:
    import hashlib  # lazily: only the daemon's first use of an image verifies

    for entry in entries:
        path = os.path.join(destination, *entry.path.split("/"))
        try:
            with open(path, "rb") as f:
                if hashlib.file_digest(f, "sha256").digest() != entry.digest:
                    return False
        except OSError:
            return False
    return True


def _remove_tree(destination: str, extract_root: str, digest: str) -> None:
    # Renamed aside first: a concurrent reader sees the old tree or none, never half of one.
    aside = os.path.join(extract_root, f".{digest[:16]}.{os.getpid()}.{os.urandom(4).hex()}.old")
    try:
        os.rename(destination, aside)
    except FileNotFoundError:
        return
    _rmtree(aside)


def _rmtree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
