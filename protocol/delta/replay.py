"""Bounded replay buffer of one direction's sequenced frames.

A sender keeps every sequenced frame it sent until the peer acknowledges it, so
that after a reconnect it can resume from the peer's ``ack + 1``. The buffer is
bounded by frame count *and* bytes; when full it drops the oldest frames, even
unacknowledged ones. That is safe: a resume that needs a dropped frame is
impossible, and the handshake then falls back to a snapshot (node → scheduler)
or a stream reset with command re-delivery (scheduler → node).

Frames are stored as the exact bytes sent, so a replay re-sends them verbatim
(their embedded acks are stale but acks only ever merge upwards).
"""

from __future__ import annotations

from collections import deque
from itertools import islice


class ReplayBuffer:
    """Sequenced frames ``[first_seq, next_seq)`` not yet known to be applied by the peer."""

    __slots__ = ("_bytes", "_frames", "_next_seq", "evicted", "max_bytes", "max_frames")

    def __init__(self, *, max_frames: int, max_bytes: int, next_seq: int = 1) -> None:
        if max_frames < 1 or max_bytes < 1 or next_seq < 1:
            raise ValueError("replay buffer bounds and next_seq must be positive")
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self._frames: deque[tuple[int, bytes]] = deque()
        self._bytes = 0
        self._next_seq = next_seq
        #: Unacknowledged frames dropped because the buffer was full (a metric).
        self.evicted = 0

    @property
    def next_seq(self) -> int:
        """The seq the next appended frame must carry."""
        return self._next_seq

    @property
    def last_seq(self) -> int:
        """Highest seq ever appended (0 if none)."""
        return self._next_seq - 1

    @property
    def first_seq(self) -> int:
        """Oldest retained seq; equals ``next_seq`` when nothing is retained."""
        return self._frames[0][0] if self._frames else self._next_seq

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._frames)

    def append(self, seq: int, frame: bytes) -> None:
        """Retain a frame just sent; ``seq`` must be ``next_seq``."""
        if seq != self._next_seq:
            raise ValueError(f"appending seq {seq}, expected {self._next_seq}")
        self._frames.append((seq, frame))
        self._bytes += len(frame)
        self._next_seq = seq + 1
        frames = self._frames
        while len(frames) > self.max_frames or (frames and self._bytes > self.max_bytes):
            _, old = frames.popleft()
            self._bytes -= len(old)
            self.evicted += 1

    def ack(self, upto: int) -> None:
        """The peer applied everything up to ``upto``; forget those frames."""
        frames = self._frames
        while frames and frames[0][0] <= upto:
            _, old = frames.popleft()
            self._bytes -= len(old)

    def can_resume_from(self, seq: int) -> bool:
        """True if every frame from ``seq`` on is still here (``next_seq`` means: none needed)."""
        return self.first_seq <= seq <= self._next_seq

    def frames_from(self, seq: int) -> list[bytes]:
        """The retained frames with seq ≥ ``seq``, in order."""
        if not self.can_resume_from(seq):
            held = f"{self.first_seq}..{self.last_seq}"
            raise ValueError(f"cannot replay from {seq}; retained {held}")
        return [frame for _, frame in islice(self._frames, seq - self.first_seq, None)]

    def clear(self) -> None:
        """Drop everything but keep the numbering (the stream continues at ``next_seq``)."""
        self._frames.clear()
        self._bytes = 0
