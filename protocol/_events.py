"""Typed events of every reader in protocol/ (after h11's ``_events.py``).

Each event is a frozen, keyword-only record carrying QEMU's field names, the
``release`` whose catalog its reader used and the stream ``offset`` where it
begins. Return-path messages also carry the header ``length`` and the ``size``
of everything the frame occupies on the wire (header + payload, plus the bitmap
blob after RECV_BITMAP); the forward-stream events (``_forward.py``) are built
on the same :class:`Event` base. Value equality lets tests compare whole event
lists. Don't subclass these outside protocol/.
``gc=False`` is safe because events hold no cycles (ints, str, bytes, tuples,
``Release``); :class:`~migcompat.protocol.ForwardCommand`, which holds a dict,
keeps the garbage collector's tracking.

They are ``msgspec.Struct`` classes, not dataclasses, for one reason: a bulk
decode makes millions of them. A Struct is built by C code (about a third of a
frozen dataclass's ``__init__``) and, with ``gc=False``, is never tracked by the
garbage collector, so holding many events does not trigger full collections
(docs/performance.md). Fields: ``type(ev).__struct_fields__``; copy with a
change: ``msgspec.structs.replace``; plain values: :meth:`Event.as_dict`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import msgspec

from ._releases import Release
from ._sentinels import NEED_DATA, STOPPED

__all__ = [
    "EVENT_TYPES",
    "EndOfStream",
    "Event",
    "EventSource",
    "Keepalive",
    "Message",
    "Pong",
    "RawMessage",
    "RecvBitmap",
    "ReqPages",
    "ReqPagesId",
    "ResumeAck",
    "Shut",
    "SwitchoverAck",
]


def __dir__() -> list[str]:
    return list(__all__)


class Event(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Base of everything a reader returns that is not a sentinel."""

    release: Release
    offset: int

    def as_dict(self) -> dict[str, Any]:
        """The fields as plain values: ``Release`` as text, bytes as hex."""
        out: dict[str, Any] = {}
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if isinstance(value, Release):
                value = str(value)
            elif isinstance(value, bytes):
                value = value.hex()
            out[name] = value
        return out


class EventSource:
    """The sans-IO reader interface: ``next_event()``, and ``events()`` built on it once.

    A reader that decodes ahead (the fast path) keeps the events not yet returned
    in ``_ready`` (an iterator) and overrides :meth:`_advance`, so that ``events()``
    hands them on at C speed, one as the consumer asks, and none is lost when the
    consumer stops early.
    """

    __slots__ = ()

    #: Decoded ahead, not yet returned (an exhausted iterator when nothing is).
    _ready: Iterator[Event] = iter(())
    #: The reader overrides :meth:`_advance` (it decodes ahead into ``_ready``).
    _reads_ahead: ClassVar[bool] = False

    def next_event(self) -> Event | type[NEED_DATA] | type[STOPPED]:
        raise NotImplementedError

    def _advance(self) -> Event | type[NEED_DATA] | type[STOPPED] | None:
        """With ``_ready`` used up: refill it (``None``), or what ``next_event()`` returns."""
        return self.next_event()

    def events(self) -> Iterator[Event]:
        """Drain every event available now (stops at NEED_DATA or STOPPED)."""
        step = self._advance if self._reads_ahead else self.next_event
        while True:
            ev = step()
            if ev is None:  # decoded ahead into _ready
                yield from self._ready
            elif isinstance(ev, Event):
                yield ev
            else:  # NEED_DATA or STOPPED
                return


class Message(Event, frozen=True, kw_only=True, gc=False):
    """A return-path frame the source dispatched (abstract)."""

    #: QEMU's ``rp_cmd_args[].name`` of this message; set by each subclass.
    TABLE_NAME: ClassVar[str] = ""

    type_id: int
    length: int
    size: int

    @property
    def name(self) -> str:
        """QEMU's enum name, e.g. ``MIG_RP_MSG_PONG``."""
        return "MIG_RP_MSG_" + self.TABLE_NAME

    def payload_fields(self) -> dict[str, Any]:
        """The decoded payload, QEMU's field names to values (bytes as hex)."""
        skip = {"release", "offset", "type_id", "length", "size"}
        return {k: v for k, v in self.as_dict().items() if k not in skip}


class Shut(Message, frozen=True, kw_only=True, gc=False):
    """``MIG_RP_MSG_SHUT``: the destination will send nothing more; non-zero = it failed."""

    TABLE_NAME: ClassVar[str] = "SHUT"
    sibling_error: int


class Pong(Message, frozen=True, kw_only=True, gc=False):
    """``MIG_RP_MSG_PONG``: the echo of a ``MIG_CMD_PING`` value."""

    TABLE_NAME: ClassVar[str] = "PONG"
    value: int


class ReqPages(Message, frozen=True, kw_only=True, gc=False):
    """``MIG_RP_MSG_REQ_PAGES``: a postcopy page request in the last named RAMBlock."""

    TABLE_NAME: ClassVar[str] = "REQ_PAGES"
    start: int
    len: int


class ReqPagesId(Message, frozen=True, kw_only=True, gc=False):
    """``MIG_RP_MSG_REQ_PAGES_ID``: a page request naming its RAMBlock (``idstr``)."""

    TABLE_NAME: ClassVar[str] = "REQ_PAGES_ID"
    start: int
    len: int
    #: The idstr bytes as sent (latin-1, so any byte round-trips).
    idstr: str


class RecvBitmap(Message, frozen=True, kw_only=True, gc=False):
    """``MIG_RP_MSG_RECV_BITMAP`` plus the bitmap blob that follows it outside the frame.

    ``block_name`` is what the source reads (up to the NUL it writes at
    ``buf[buf[0] + 1]``); ``payload`` keeps the frame's bytes exactly, since
    QEMU does not check that the frame length equals the name length + 1.
    """

    TABLE_NAME: ClassVar[str] = "RECV_BITMAP"
    block_name: str
    payload: bytes
    #: The blob: be64 size, ``bitmap`` (little-endian longs), be64 end mark.
    bitmap_size: int
    bitmap: bytes
    end_mark: int


class ResumeAck(Message, frozen=True, kw_only=True, gc=False):
    """``MIG_RP_MSG_RESUME_ACK``: the destination is ready to resume after recovery."""

    TABLE_NAME: ClassVar[str] = "RESUME_ACK"
    value: int


class SwitchoverAck(Message, frozen=True, kw_only=True, gc=False):
    """``MIG_RP_MSG_SWITCHOVER_ACK`` (8.1+): the destination agrees to switch over."""

    TABLE_NAME: ClassVar[str] = "SWITCHOVER_ACK"


class Keepalive(Message, frozen=True, kw_only=True, gc=False):
    """``MIG_RP_MSG_KEEPALIVE``: the Jan-2025 proposal's message (never merged)."""

    TABLE_NAME: ClassVar[str] = "KEEPALIVE"


class RawMessage(Message, frozen=True, kw_only=True, gc=False):
    """A message the catalog knows but no payload layout describes (e.g. from a patched
    catalog): the source dispatched it, the payload is kept as bytes."""

    short_name: str
    payload: bytes

    @property
    def name(self) -> str:
        return "MIG_RP_MSG_" + self.short_name


class EndOfStream(Event, frozen=True, kw_only=True, gc=False):
    """The byte stream ended (``receive_data(b"")``).

    ``truncated`` says a frame was cut short; ``qemu_error`` is what the source
    reports about it, when the catalog can say (e.g. a short payload's
    "Failed reading data …", or 2.5's "invalid message 0x0000" read from zeros).
    """

    truncated: bool
    #: Bytes of the cut-short frame that did arrive.
    partial: int = 0
    qemu_error: str | None = None
    reason: str = "eof"


#: Table name → event class, for the messages that have a typed event.
EVENT_TYPES: dict[str, type[Message]] = {
    cls.TABLE_NAME: cls
    for cls in (Shut, Pong, ReqPages, ReqPagesId, RecvBitmap, ResumeAck, SwitchoverAck, Keepalive)
}
