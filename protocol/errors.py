"""Typed errors of the wire protocols. One base class: :class:`ProtocolError`."""


class ProtocolError(Exception):
    """The peer broke the protocol; the connection it came on should close."""


class MalformedFrame(ProtocolError):
    """A frame's bytes are not a msgpack map of the expected shape."""


class FrameTooLarge(ProtocolError):
    """A frame's declared length exceeds the receiver's limit."""
