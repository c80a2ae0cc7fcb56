"""Typed errors of the delta-event state protocol.

One base, :class:`DeltaError`, and two families under it, because the caller
reacts to them differently:

- :class:`DeltaProtocolError` (a :class:`protocol.errors.ProtocolError`): the
  *peer* (or the link) broke the protocol. The IO layer closes that one
  connection, counts the error by class name, and reconnects/waits; the durable
  state on both ends stays valid, so the next handshake resumes or resyncs.
- :class:`DeltaUsageError` (a :class:`ValueError`): *local* code called the
  machine wrongly (unknown command id, oversized resource). Nothing was changed;
  it is a bug or a limit the caller must handle, never a reason to drop a link.
"""

from __future__ import annotations

from protocol.errors import MalformedFrame, ProtocolError


class DeltaError(Exception):
    """Base of every error the delta-event protocol machines raise."""


class DeltaProtocolError(DeltaError, ProtocolError):
    """The peer broke the delta protocol; close this connection only."""

    #: Short machine-readable reason, also sent in a ``bye`` frame when we can.
    code = "protocol_error"


class InvalidMessage(DeltaProtocolError, MalformedFrame):
    """A frame decoded as msgpack but a field is missing, mistyped or out of range."""

    code = "invalid_message"


class UnexpectedMessage(DeltaProtocolError):
    """A well-formed message arrived in a state where it is not allowed."""

    code = "unexpected_message"


class UnsupportedVersion(DeltaProtocolError):
    """The peer speaks a protocol major version we do not."""

    code = "unsupported_version"


class UnsupportedFeature(DeltaProtocolError):
    """The peer *requires* a feature bit we do not implement."""

    code = "unsupported_feature"


class StaleEpoch(DeltaProtocolError):
    """A scheduler epoch lower than one already seen (fencing)."""

    code = "stale_epoch"


class SequenceGap(DeltaProtocolError):
    """A sequenced frame (or a progress mark) skipped a sequence number.

    Frames are never guessed over: the link is dropped and the next handshake
    resumes from the last contiguous ack or falls back to a snapshot.
    """

    code = "sequence_gap"


class AckOutOfRange(DeltaProtocolError):
    """The peer acknowledged a sequence number we never sent."""

    code = "ack_out_of_range"


class ResumeMismatch(DeltaProtocolError):
    """The peer asked to resume a stream from a point that does not exist."""

    code = "resume_mismatch"


class LimitExceeded(DeltaProtocolError):
    """The peer pushed a bounded table past its bound (resources, commands, nodes)."""

    code = "limit_exceeded"


class SnapshotMismatch(DeltaProtocolError):
    """A completed snapshot does not match the count/digest its sender announced."""

    code = "snapshot_mismatch"


class DeltaUsageError(DeltaError, ValueError):
    """Local code used a protocol machine wrongly; the machine state is unchanged."""


class ResourceTooLarge(DeltaUsageError):
    """One resource body, command body or result exceeds ``MAX_ITEM_BYTES`` encoded."""


class TooManyResources(DeltaUsageError):
    """The node would report more resources than its configured bound."""


class UnknownCommand(DeltaUsageError):
    """``complete_command`` was called for a command that is not in progress."""


class CommandBacklogFull(DeltaUsageError):
    """The scheduler holds ``max_pending`` unanswered commands for that node already."""
