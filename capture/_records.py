"""Typed records of a decoded capture (msgspec Structs, like the protocol's events).

One class per kind of thing the timeline shows. Every record has ``t`` (seconds since
the capture's first packet), ``conn`` (``c0`` …), ``dir`` (``fwd``/``rp``/``None``),
``name`` and ``offset`` (stream offset or ``None``); its own attributes are its
``fields``. :meth:`Record.to_json` gives the stable JSON shape
``{t, conn, dir, kind, name, offset, fields}``; the CLI renders the objects and takes
exit codes from their attributes (:class:`RpViolation` is a rejection), never from text.
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

__all__ = [
    "ConnectionClosed",
    "ConnectionOpened",
    "ConnectionRole",
    "DeviceRecord",
    "ForwardCommandRecord",
    "ForwardEndRecord",
    "ForwardStopRecord",
    "ForwardViolation",
    "HeaderRecord",
    "HoleRecord",
    "NoteRecord",
    "PageRecord",
    "PageServed",
    "PostcopyDevice",
    "RamBlocksRecord",
    "Record",
    "ReleaseBoundRecord",
    "ResyncRecord",
    "RpEnd",
    "RpFrame",
    "RpUnread",
    "RpViolation",
    "SectionRecord",
    "SplitBrain",
]


def __dir__() -> list[str]:
    return list(__all__)


_BASE = ("t", "conn", "dir", "name", "offset")


class Record(msgspec.Struct, kw_only=True, frozen=True):
    """Base of every timeline record (abstract)."""

    KIND: ClassVar[str] = ""
    #: Attributes kept on the object for callers but not part of ``fields``.
    HIDDEN: ClassVar[tuple[str, ...]] = ()

    t: float
    conn: str | None
    dir: str | None
    name: str
    offset: int | None = None

    @property
    def kind(self) -> str:
        return self.KIND

    @property
    def fields(self) -> dict[str, Any]:
        """The record's own attributes (``payload`` dicts merged in), for JSON and text."""
        out: dict[str, Any] = {}
        for k in self.__struct_fields__:
            if k in _BASE or k in self.HIDDEN:
                continue
            v = getattr(self, k)
            if k == "payload":
                out.update(v)
            else:
                out[k] = v
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "t": self.t,
            "conn": self.conn,
            "dir": self.dir,
            "kind": self.KIND,
            "name": self.name,
            "offset": self.offset,
            "fields": self.fields,
        }


class ConnectionOpened(Record, kw_only=True, frozen=True):
    KIND: ClassVar[str] = "connection"
    client: str
    server: str
    mid_stream: bool


class ConnectionRole(Record, kw_only=True, frozen=True):
    KIND: ClassVar[str] = "connection"
    role: str
    migration: int | None = None
    source: str | None = None


class ConnectionClosed(Record, kw_only=True, frozen=True):
    KIND: ClassVar[str] = "connection"
    how: str


class HoleRecord(Record, kw_only=True, frozen=True):
    """Bytes the capture does not have (``name`` is the reason: snaplen, lost …)."""

    KIND: ClassVar[str] = "hole"
    length: int
    packet: int
    packets: int


class HeaderRecord(Record, kw_only=True, frozen=True):
    KIND: ClassVar[str] = "header"
    magic: str
    version: int


class SectionRecord(Record, kw_only=True, frozen=True):
    """A section header, the configuration (``machine_type``), QEMU_VM_EOF or the vmdesc."""

    KIND: ClassVar[str] = "section"
    payload: dict[str, Any] = {}


class DeviceRecord(Record, kw_only=True, frozen=True):
    """A device section's data, delimited (``name`` is its idstr; ``size`` excludes the footer).

    ``values`` (the ``fields`` key in JSON) is the decoded fields, only when asked for
    (``CaptureOptions.decode_fields``): delimiting alone is cheaper.
    """

    KIND: ClassVar[str] = "device"
    HIDDEN: ClassVar[tuple[str, ...]] = ("values",)
    size: int
    section_id: int
    instance_id: int
    version_id: int
    delimited_by: str
    vmsd_name: str | None = None
    device_type: str | None = None
    depth: int = 0
    values: dict[str, Any] | None = None

    @property
    def fields(self) -> dict[str, Any]:
        out = Record.fields.fget(self)  # type: ignore[attr-defined]
        if self.values is not None:
            out["fields"] = self.values
        return out


class RamBlocksRecord(Record, kw_only=True, frozen=True):
    KIND: ClassVar[str] = "ram-blocks"
    total: int
    blocks: dict[str, int]


class ForwardCommandRecord(Record, kw_only=True, frozen=True):
    KIND: ClassVar[str] = "command"
    length: int
    depth: int
    payload: dict[str, Any] = {}


class RpFrame(Record, kw_only=True, frozen=True):
    """A return-path frame as the source reads it (``payload``: its fields + correlation)."""

    KIND: ClassVar[str] = "rp-frame"
    type: int
    length: int
    payload: dict[str, Any] = {}


class RpUnread(Record, kw_only=True, frozen=True):
    """A frame on the wire after the source stopped reading (it never saw it)."""

    KIND: ClassVar[str] = "rp-unread"
    type: int
    length: int
    payload: dict[str, Any] = {}


class RpEnd(Record, kw_only=True, frozen=True):
    KIND: ClassVar[str] = "rp-end"
    truncated: bool
    partial: Any = None
    qemu_error: str | None = None


class RpViolation(Record, kw_only=True, frozen=True):
    """The source rejects the return path here (``name`` is the reader's message)."""

    KIND: ClassVar[str] = "rp-violation"
    type: int | None
    qemu_error: str | None
    source: str


class ForwardViolation(Record, kw_only=True, frozen=True):
    KIND: ClassVar[str] = "fwd-violation"


class ForwardStopRecord(Record, kw_only=True, frozen=True):
    KIND: ClassVar[str] = "fwd-stop"
    reason: str
    section_id: int | None
    idstr: str | None
    final: bool


class ForwardEndRecord(Record, kw_only=True, frozen=True):
    KIND: ClassVar[str] = "fwd-end"
    truncated: bool


class ResyncRecord(Record, kw_only=True, frozen=True):
    """Decoding resumed after a hole (``re-synced``) or bytes skipped while looking."""

    KIND: ClassVar[str] = "resync"
    payload: dict[str, Any] = {}


class PageServed(Record, kw_only=True, frozen=True):
    KIND: ClassVar[str] = "page-served"
    block: str
    addr: int
    latency_ms: float


class PageRecord(Record, kw_only=True, frozen=True):
    KIND: ClassVar[str] = "page"
    block: str
    addr: int
    flags: int


class NoteRecord(Record, kw_only=True, frozen=True):
    KIND: ClassVar[str] = "note"
    payload: dict[str, Any] = {}


class PostcopyDevice(Record, kw_only=True, frozen=True):
    """10.2+'s postcopy-device handshake: ``PING 0x42`` sent, ``PONG 0x42`` received."""

    KIND: ClassVar[str] = "postcopy-device"
    meaning: str
    rtt_ms: float | None = None


class SplitBrain(Record, kw_only=True, frozen=True):
    """The source failed after the destination had loaded the device state."""

    KIND: ClassVar[str] = "split-brain"
    device_loaded_t: float
    note: str


class ReleaseBoundRecord(Record, kw_only=True, frozen=True):
    """The source release's bound narrowed (``name`` is the bound, e.g. ``≥ 10.0 ≤ 10.1``)."""

    KIND: ClassVar[str] = "release"
    low: str
    high: str
    evidence: str
