"""The bytes a reader has received and not yet consumed (after h11's ``_receivebuffer.py``).

Every reader in protocol/ keeps its input here: one ``bytearray``, a read
position in it, the stream offset of its first byte (``base``), whether the
stream has ended, and the compaction that keeps memory bounded when a long
stream is fed in small pieces (consumed bytes are dropped once they are most of
the array, so each byte is moved O(1) times).

Readers parse ``data`` in place from ``pos`` (``struct.unpack_from``, strided
slices) and move ``pos`` with :meth:`ReceiveBuffer.consume`. A reader that
decodes ahead and may have to give bytes back (the fast path, when context is
set midway) takes a :meth:`~ReceiveBuffer.snapshot` and later
:meth:`~ReceiveBuffer.restore`\\ s it: the buffer keeps every byte after the
newest snapshot until it is restored or :meth:`~ReceiveBuffer.drop_snapshot` drops it.
"""

from __future__ import annotations

__all__ = ["COMPACT_AFTER", "ReceiveBuffer"]


def __dir__() -> list[str]:
    return list(__all__)


#: Consumed bytes are dropped only beyond this many (and when they are over half the array).
COMPACT_AFTER = 65536


class ReceiveBuffer:
    """Received bytes, the read position, the stream offset of ``data[0]``, end of stream."""

    __slots__ = ("_pin", "base", "data", "eof", "pos")

    def __init__(self) -> None:
        self.data = bytearray()
        #: Read position in :attr:`data`.
        self.pos = 0
        #: Stream offset of ``data[0]``.
        self.base = 0
        #: ``receive_data(b"")`` was called: no byte will follow.
        self.eof = False
        # Stream offset of the newest snapshot: bytes from there on are kept.
        self._pin: int | None = None

    @property
    def offset(self) -> int:
        """Stream offset of the next unread byte."""
        return self.base + self.pos

    @property
    def available(self) -> int:
        """Bytes received and not yet consumed."""
        return len(self.data) - self.pos

    @property
    def end(self) -> int:
        """Stream offset just past the last byte received."""
        return self.base + len(self.data)

    def receive(self, data: bytes, *, reading: bool = True, keep_from: int | None = None) -> None:
        """A reader's ``receive_data``: ``b""`` ends the stream, nothing may follow it.

        ``reading=False`` (the reader has stopped): the bytes are not kept; they stay
        unread, as they do in QEMU. ``keep_from``: see :meth:`feed`.
        """
        if not data:
            self.eof = True
            return
        if self.eof:
            raise ValueError("receive_data after EOF")
        if reading:
            self.feed(data, keep_from=keep_from)

    def feed(self, data: bytes, *, keep_from: int | None = None) -> None:
        """Append ``data``, first dropping consumed bytes if they are most of the array.

        ``keep_from``: a stream offset whose bytes must stay (the start of a frame being
        read, whose bytes its event or violation carries), consumed or not.
        """
        pos = self.pos
        if pos > COMPACT_AFTER and pos * 2 > len(self.data):
            if self._pin is not None:
                pos = min(pos, self._pin - self.base)
            if keep_from is not None:
                pos = min(pos, keep_from - self.base)
            if pos > 0:
                del self.data[:pos]
                self.base += pos
                self.pos -= pos
        self.data += data

    def consume(self, n: int) -> None:
        """Move the read position ``n`` bytes on."""
        self.pos += n

    def consume_all(self) -> None:
        """Consume everything received (a reader that stopped reading mid-frame)."""
        self.pos = len(self.data)

    def take(self, n: int) -> bytes:
        """The next ``n`` bytes, consumed (the caller has checked :attr:`available`)."""
        pos = self.pos
        self.pos = pos + n
        return bytes(self.data[pos : pos + n])

    def peek(self, n: int) -> bytes:
        """Up to ``n`` next bytes, not consumed."""
        return bytes(self.data[self.pos : self.pos + n])

    def span(self, offset: int, end: int) -> bytes:
        """The bytes at stream offsets ``[offset, end)`` still held (clipped to what is)."""
        lo = max(offset - self.base, 0)
        return bytes(self.data[lo : max(end - self.base, lo)])

    def skip_gap(self, length: int) -> None:
        """Drop everything unread, then ``length`` bytes that never arrived (a capture hole)."""
        self.base += len(self.data) + length
        self.data = bytearray()
        self.pos = 0
        self._pin = None

    # -- snapshot / restore ---------------------------------------------------------------
    def snapshot(self) -> int:
        """Remember the read position (a stream offset); bytes from it on are kept."""
        self._pin = pin = self.base + self.pos
        return pin

    def restore(self, snapshot: int) -> None:
        """Move the read position back to ``snapshot`` (the newest one taken)."""
        if snapshot != self._pin:
            raise ValueError("restore of a snapshot that is not the newest one")
        self.pos = snapshot - self.base

    def drop_snapshot(self) -> None:
        """Forget the snapshot: its bytes may be dropped again."""
        self._pin = None
