"""The zygote's fork loop: between two clones, as little work and as few pages as possible.

Every page the zygote writes between two clones is a page it shared with the
instance it cloned last: the zygote takes a copy and the old page stays with
that instance alone — charged to it in full (PSS), although the instance never
wrote it. The generic loop (a :class:`~protocol.frames.FrameDecoder` per
packet, a 256 KiB receive buffer from the heap, ``msgpack.packb`` building a
packer and a dict per reply, ``openat`` of its home group's ``cgroup.procs``
files on every way home) left ~580 KB private in a child paused right after
its clone. So the loop here is one flat function over objects built once:

- packets land in a buffer the instances do not inherit (``MADV_DONTFORK``):
  the kernel's writes there copy no page an instance shares;
- replies are packed with :mod:`struct` into a second such buffer, from
  prebuilt msgpack pieces (``forked`` is the reply of every start);
- the home group's ``cgroup.procs`` files are opened once, with the zygote's
  own credentials, when the daemon sends their directories (``home``, right
  after ``ready``, so init code never held them; :func:`open_procs`): going
  home is one ``write`` per hierarchy;
- names are bound to locals once, so the loop looks up no attribute, and
  allocates only what a request carries (its array, the descriptor list);
- a ``fork`` request is a msgpack *array* (:func:`fork_request`), not a map:
  unpacking a map makes a dict and a key string per field, on pages the
  zygote shares with the instance it cloned last. Rare messages (``home``,
  ``stop``) stay maps with a ``t``.

A request that is not what the protocol says is refused with a typed
``fork_failed`` (its ``error`` says why), never a crash: each
``SOCK_SEQPACKET`` packet is one whole frame, so one bad packet does not
desynchronise the next.
"""

from __future__ import annotations

import array
import ctypes
import errno
import gc
import mmap
import os
import select
import socket
import struct
import sys
from collections.abc import Callable
from typing import Any

import msgpack

from huselet.sandbox.linux import Cloner

MAX_PACKET = 256 * 1024
MAX_FDS = 64  # link + output + one O_PATH handle per cgroup v1 hierarchy, with room
EXIT_FATAL = 3

_LEN = struct.Struct(">I")
# {"t": "forked", "seq": <uint64>, "pid": <uint64>}: fixed-width integers, so
# one struct packs the whole frame (length prefix included) in one call.
_FORKED_HEAD = b"\x83" + msgpack.packb("t") + msgpack.packb("forked") + msgpack.packb("seq")
_FORKED_MID = msgpack.packb("pid")
_FORKED_BODY = len(_FORKED_HEAD) + 9 + len(_FORKED_MID) + 9
FORKED = struct.Struct(f">I{len(_FORKED_HEAD)}sBQ{len(_FORKED_MID)}sBQ")
_UINT64 = 0xCF  # msgpack's uint 64 marker
_REPLY_PAGE = 4096
_PROCS = b"cgroup.procs"  # bytes: no file-system encoding of the name per open


# A fork request: [seq, instance id, token, env (a map, may be empty), place].
FORK_FIELDS = 5


def fork_request(seq: int, instance_id: str, token: str, env: dict[str, str], place: int) -> bytes:
    """The frame of one ``fork`` request (the daemon's side; see :func:`serve`)."""
    body: bytes = msgpack.packb([seq, instance_id, token, env, place], use_bin_type=True)
    if len(body) > MAX_PACKET - _LEN.size:
        raise ValueError(f"a fork request of {len(body)} bytes exceeds {MAX_PACKET}")
    return _LEN.pack(len(body)) + body


def _dontfork_buffer(size: int) -> mmap.mmap:
    """Anonymous memory the children do not inherit: writing it copies no shared page."""
    buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        buffer.madvise(mmap.MADV_DONTFORK)
    except (AttributeError, OSError):
        pass  # only an optimisation: without it the pages are shared and copied
    return buffer


def open_procs(dir_fds: list[int]) -> list[int]:
    """``cgroup.procs`` of each directory handle, opened for writing with our own credentials.

    The caller closes both lists. Opened after the zygote dropped its
    privileges, so a handle can do nothing its uid could not (the daemon
    chowned these files to it); instances never get them (they close every
    descriptor but their link and output first).
    """
    procs: list[int] = []
    try:
        for dir_fd in dir_fds:
            procs.append(os.open(_PROCS, os.O_WRONLY | os.O_CLOEXEC, dir_fd=dir_fd))
    except BaseException:
        close_all(procs)
        raise
    return procs


def close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def failure(seq: Any, error: str, code: int | None = None) -> bytes:
    """A ``fork_failed`` frame (the rare path: built when needed)."""
    reply: dict[str, Any] = {"t": "fork_failed", "seq": seq if type(seq) is int else None}
    reply["error"] = error
    if code is not None:
        reply["errno"] = code  # tells the daemon a host limit (EAGAIN, ENOMEM) from a fault
    body: bytes = msgpack.packb(reply, use_bin_type=True)
    return _LEN.pack(len(body)) + body


def serve(
    ctl: socket.socket,
    clone: Cloner,
    child: Callable[[list[Any], list[int]], Any],
) -> int:
    """Answer ``fork`` requests on ``ctl`` until ``stop`` or EOF; returns the exit code.

    ``child(request, fds)`` runs in each clone and never returns (``request``:
    the array of :func:`fork_request`). A ``home``
    message (once, when the zygote places itself) carries the O_PATH handles
    of the zygote's own group's directories; a ``fork`` request with
    ``place`` = n carries, after the link and output, those of the instance
    group's n directories; the zygote enters that group for the clone — the child is
    born there, charged there — and stays while it answers and reads the
    next request (the pages it copies then are shared with that child and
    charged to it), going home once no request is waiting.
    """
    recv_into = ctl.recvmsg_into
    send = ctl.send
    buffer = _dontfork_buffer(MAX_PACKET)
    into = (memoryview(buffer),)
    view = into[0]
    ancillary = socket.CMSG_SPACE(MAX_FDS * 4)
    truncated = int(socket.MSG_TRUNC | socket.MSG_CTRUNC)  # an int: no enum code per packet
    sol_socket, scm_rights = socket.SOL_SOCKET, socket.SCM_RIGHTS
    new_fds = array.array
    replies = _dontfork_buffer(_REPLY_PAGE)
    forked = memoryview(replies)[: FORKED.size]
    pack_forked = FORKED.pack_into
    head, mid, body_len = _FORKED_HEAD, _FORKED_MID, _FORKED_BODY
    unpackb = msgpack.unpackb
    unpack_len = _LEN.unpack_from
    poll = select.poll()
    poll.register(ctl, select.POLLIN)
    waiting = poll.poll
    write = os.write
    close = os.close
    freeze = gc.freeze
    # The clone, inlined: no Cloner.__call__ frame and attribute lookups per start.
    before, syscall, args, after_child, after_parent = clone.parts()
    get_errno = ctypes.get_errno
    zero = b"0"
    fork_fields = FORK_FIELDS
    home: list[int] = []  # its own group's cgroup.procs, write-only
    away = False  # in an instance's group, not home
    while True:
        if away and not waiting(0):
            # Nothing queued: home now (a burst goes group to group, one move per start).
            try:
                for fd in home:
                    write(fd, zero)
            except OSError as exc:
                # Stuck in an instance's group, which is emptied when that instance
                # ends: exit now and let the daemon build a new zygote.
                print(f"huselet zygote: cannot return to its own cgroup: {exc}", file=sys.stderr)
                return EXIT_FATAL
            away = False
        n, anc, flags, _ = recv_into(into, ancillary)
        fds: list[int] = []
        for level, what, data in anc:
            if level == sol_socket and what == scm_rights:
                got = new_fds("i")
                got.frombytes(data[: len(data) - len(data) % 4])
                fds += got
        if not n:
            close_all(fds)
            return 0  # the daemon closed the control socket
        msg: Any = None
        if not flags & truncated and n > 4 and unpack_len(view)[0] == n - 4:
            try:
                msg = unpackb(view[4:n], raw=False)
            except (ValueError, TypeError):  # msgpack's errors are ValueErrors
                msg = None
        if type(msg) is not list:
            if type(msg) is not dict:
                close_all(fds)
                send(failure(None, f"malformed control packet of {n} bytes (flags {flags:#x})"))
                continue
            kind = msg.get("t")
            if kind == "home" and not home:
                try:
                    home = open_procs(fds)
                except OSError as exc:
                    # Placed requests are refused (typed, below); the daemon sees why.
                    print(f"huselet zygote: cannot open its own cgroup: {exc}", file=sys.stderr)
            close_all(fds)
            if kind == "stop":
                return 0
            if kind == "fork":  # the old map form: refused, never half-understood
                send(failure(msg.get("seq"), "malformed fork request: not an array"))
            continue  # unknown requests are ignored: a newer daemon may send more
        if len(msg) != fork_fields:
            close_all(fds)
            seq = msg[0] if msg else None
            send(failure(seq, f"malformed fork request: {len(msg)} fields, not {fork_fields}"))
            continue
        seq = msg[0]
        place = msg[4]
        if type(seq) is not int or type(place) is not int or seq < 0 or place < 0:
            close_all(fds)
            send(failure(seq, "malformed fork request: seq and place must be integers >= 0"))
            continue
        if len(fds) != 2 + place or (place and len(home) != place):
            close_all(fds)
            why = f"{len(fds)} descriptors for place={place}, {len(home)} home groups"
            send(failure(seq, f"malformed fork request: {why}"))
            continue
        if place:
            procs: list[int] = []
            away = True  # even half-moved: the way home must run
            try:
                procs = open_procs(fds[2:])
                for fd in procs:
                    write(fd, zero)
            except OSError as exc:
                close_all(fds[:2])  # the handles: below, once
                send(failure(seq, f"cannot enter the instance's cgroup: {exc}", exc.errno))
                continue
            finally:
                close_all(procs)
                close_all(fds[2:])  # no cgroup handle reaches the child
            del fds[2:]
        # Whatever this loop allocated since the last fork joins the frozen
        # heap, and the collector's young count restarts at zero: else the
        # child's first allocation after gc.enable() runs a collection over
        # those objects and copies every page they sit on.
        freeze()
        before()
        pid = syscall(*args)
        if pid == 0:
            after_child()
            # The child closes every descriptor but its link and output (the
            # home cgroup.procs among them) before any function code runs.
            child(msg, fds)
        if pid < 0:
            code = get_errno() or errno.EIO
            after_parent()
            close_all(fds)
            send(failure(seq, str(OSError(code, f"clone: {os.strerror(code)}")), code))
            continue
        after_parent()
        close(fds[0])
        close(fds[1])
        pack_forked(replies, 0, body_len, head, _UINT64, seq, mid, _UINT64, pid)
        send(forked)
