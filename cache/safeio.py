"""Open files the daemon does not own without trusting them to stay put.

A file in a publish directory, a ``functions[].image`` path or an origin
directory can be a FIFO (``open`` would wait for a writer forever), a device
(reads never end), a symlink out of the tree, or a regular file someone
truncates while we read it. Mapping such a file is how a daemon dies of
SIGBUS, so the rule is: files we do not own are opened with
:func:`open_regular` and read with :func:`pread_exact` (a short read is an
error, not a fault); only private copies in the store are ever mapped.

Light on purpose (``os``, ``stat``, ``errno``): :mod:`cache.reader` imports it
in every function instance.
"""

from __future__ import annotations

import errno
import os
import stat

from cache.errors import CorruptImage, NotRegularFile

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISLNK, "a symlink"),
)


def describe_mode(mode: int) -> str:
    """What kind of file ``mode`` is, for messages: "a FIFO", "a regular file"…"""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "a special file"


def open_regular(path: str | os.PathLike[str], *, follow_symlinks: bool = True) -> int:
    """A read-only descriptor of the regular file at ``path``; NotRegularFile otherwise.

    Never blocks on a FIFO (``O_NONBLOCK``, harmless for regular files); with
    ``follow_symlinks=False`` a symlink as the last component is refused.
    Other ``OSError`` (missing, permission) propagate as they are.
    """
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_symlinks:
            raise NotRegularFile(f"{os.fspath(path)} is a symlink; refusing to follow it") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotRegularFile(f"{os.fspath(path)} is {describe_mode(mode)}, not a regular file")
    return fd


def pread_exact(fd: int, size: int, offset: int, what: str) -> bytes:
    """Exactly ``size`` bytes at ``offset``; a shorter read means the file shrank under us."""
    chunks = []
    got = 0
    while got < size:
        chunk = os.pread(fd, min(size - got, 1 << 24), offset + got)
        if not chunk:
            raise CorruptImage(
                f"{what}: file ended at {offset + got} bytes while {offset + size} were "
                "expected (truncated or changed while being read)"
            )
        chunks.append(chunk)
        got += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
