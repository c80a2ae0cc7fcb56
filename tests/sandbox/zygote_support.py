"""A fork instance cloned by a zygote whose daemon is the test (see conftest's ``zygote``)."""

from __future__ import annotations

import os
import socket

from support import WAIT_S

from huselet.sandbox.forkloop import fork_request
from huselet.sandbox.zygote import receive
from protocol.frames import FrameDecoder


class Instance:
    """One cloned instance: the daemon's end of its link, its output, its pid."""

    def __init__(self, ctl: socket.socket, instance_id: str, seq: int = 1) -> None:
        self.link, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.link.settimeout(WAIT_S)
        out_r, out_w = os.pipe()
        request = fork_request(seq, instance_id, "tok", {}, 0)
        socket.send_fds(ctl, [request], [theirs.fileno(), out_w])
        theirs.close()
        os.close(out_w)
        self.output = os.fdopen(out_r, "rb")
        forked, _ = receive(ctl)
        assert forked == {"t": "forked", "seq": seq, "pid": forked["pid"]}, forked
        self.pid: int = forked["pid"]
        self.decoder = FrameDecoder()

    def receive(self) -> dict[str, object]:
        while (msg := self.decoder.next_frame()) is None:
            chunk = self.link.recv(65536)
            assert chunk, "the instance closed its link"
            self.decoder.receive_data(chunk)
        return msg

    def exit_code(self) -> int:
        """Its exit status (it is this process's child: CLONE_PARENT)."""
        self.link.close()
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status)
