"""Durable file-system updates: a rename is on disk only once its directory is.

``rename``/``replace`` changes a directory entry; until that directory is
fsynced a crash can bring back the old entry (or none), however carefully the
file itself was synced. Every place that commits a file by renaming it (the
image store, the builder, native trees, the scheduler's journal and epochs)
finishes with :func:`fsync_dir`; :func:`write_atomically` is the whole
small-file recipe (temporary file, fsync, replace, fsync of the directory).

Standard library only, like the rest of the low-level cache modules.
"""

from __future__ import annotations

import os


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the entries of directory ``path`` (renames, new files) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` with ``text`` so a crash leaves the old or the new file, never half.

    Blocking (fsyncs): async callers run it in a worker thread.
    """
    final = os.fspath(path)
    tmp = final + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fsync_dir(os.path.dirname(final) or ".")
