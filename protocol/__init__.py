"""Sans-IO wire protocols of huselet.

Nothing in this package does I/O or imports trio: bytes go in through
``receive_data``, events come out of ``next_event``, and time is passed in by
the caller. The daemon, the worker SDK inside sandboxes, the reference
scheduler and the tests all share one implementation.

- :mod:`protocol.frames` — length-prefixed msgpack frames with a size limit.
- :mod:`protocol.link` — messages between the daemon and a function instance.
- :mod:`protocol.delta` — the delta-event state protocol between a node and the
  central scheduler (spec: ``protocol/PROTOCOL.md``).
"""

from protocol.errors import FrameTooLarge, MalformedFrame, ProtocolError
from protocol.frames import DEFAULT_MAX_FRAME, FrameDecoder, encode_frame

__all__ = [
    "DEFAULT_MAX_FRAME",
    "FrameDecoder",
    "FrameTooLarge",
    "MalformedFrame",
    "ProtocolError",
    "encode_frame",
]
