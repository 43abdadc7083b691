"""The source's return-path reader, modelled exactly (``source_return_path_thread``).

Theory of operation
-------------------
QEMU's source runs one thread that loops: read be16 type and be16 length;
(3.0+) stop if the file has an error; reject ``type >= MIG_RP_MSG_MAX`` or
``type == 0`` ("Received invalid message …"); reject a length that differs from
``rp_cmd_args[type].len`` (unless that is -1) or exceeds its 512-byte stack
buffer ("… withincorrect length …"); read the payload into that buffer ("Failed
reading data …" when short); then dispatch, where each handler adds its own
rules (REQ_PAGES_ID's 13 + N length, RECV_BITMAP's name and the bitmap blob it
reads *outside* the frame, RESUME_ACK == 1, SHUT ends the thread). The first
error ends the thread; nothing after it is read.

:class:`Reader` replays that loop on bytes fed to it (sans-IO, h11 style): it
never opens anything, never sleeps, keeps O(n) work when fed a byte at a time,
and emulates the stack buffer, because QEMU reads RECV_BITMAP's name up to a
NUL it writes at ``buf[buf[0] + 1]`` — past the frame when the name length
byte lies, where stale bytes of earlier frames are still there.

Every number and text comes from the catalog of the source release; nothing
here names a release. Rules QEMU applies only with knowledge of the source's
RAM (block names, sizes, page size) run when ``ram_blocks`` is given.

WARNING: the check order below mirrors QEMU's code; when a release changes it,
the catalog must grow a field for it (as ``file_error_check`` did), not an
``if release >= …`` here.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from typing import Any, NamedTuple, TypedDict

from ._catalog import MessageSpec, RpCatalog, catalog, known_releases
from ._cformat import c_conversions, c_format
from ._errors import RemoteViolation
from ._events import (
    EVENT_TYPES,
    EndOfStream,
    Event,
    EventSource,
    Message,
    RawMessage,
    RecvBitmap,
    ReqPages,
    ReqPagesId,
    ResumeAck,
    Shut,
)
from ._layouts import PAYLOAD_LAYOUTS
from ._receivebuffer import ReceiveBuffer
from ._releases import Release
from ._sentinels import NEED_DATA, STOPPED

__all__ = [
    "DEFAULT_MAX_BITMAP_SIZE",
    "HANDLERS",
    "Handler",
    "RamBlock",
    "Reader",
    "ReaderSnapshot",
    "event_class",
    "first_counted_line",
    "legacy_switchover_ack",
    "machine_version",
    "model_reads",
    "switchover_acks_expected",
]


def __dir__() -> list[str]:
    return list(__all__)


#: Bitmap blobs larger than this are refused without buffering them. 256 MiB
#: covers 8 TiB of guest RAM at 4 KiB pages; QEMU itself would refuse any size
#: that differs from its RAMBlock's (``ram_dirty_bitmap_reload``).
DEFAULT_MAX_BITMAP_SIZE = 256 << 20

_BE16x2 = struct.Struct(">HH")
_BE32 = struct.Struct(">I")
_BE64 = struct.Struct(">Q")
_BE64_BE32 = struct.Struct(">QI")

# Reader phases (what the next bytes are).
_HEADER, _PAYLOAD, _BLOB_SIZE, _BLOB_DATA, _BLOB_END, _STOPPED, _ERROR = range(7)

#: When a handler's rules apply beyond reading its layout: on every frame, only when
#: the reader knows the source's RAM (``ram_blocks``), or only where the release counts
#: SWITCHOVER_ACKs (11.1+, ``switchover_ack_accounting == "counted"``) with the
#: ``switchover-ack`` capability on.
ALWAYS, WITH_RAM, COUNTED = "always", "ram", "counted"


class Handler(NamedTuple):
    """A message whose handler in ``source_return_path_thread`` does more than read its layout."""

    #: The :class:`Reader` method that replays it: ``method(reader, payload)``.
    method: str
    #: When its rules apply (:data:`ALWAYS`, :data:`WITH_RAM`, :data:`COUNTED`).
    when: str


#: The one table of handler rules (migration.c). The model dispatches through it and
#: the fast path derives from it which frames it must leave to the model
#: (:func:`model_reads`). A message not here is its layout and nothing more.
HANDLERS: Mapping[str, Handler] = {
    # The thread exits after SHUT, whatever its value.
    "SHUT": Handler("_shut", ALWAYS),
    # Only the value the release's destination sends is accepted.
    "RESUME_ACK": Handler("_resume_ack", ALWAYS),
    # Its name is read from the stack buffer, and a bitmap blob follows the frame.
    "RECV_BITMAP": Handler("_recv_bitmap_frame", ALWAYS),
    # Alignment, block and range against the source's RAMBlocks. REQ_PAGES_ID's length
    # rule (12 + 1 + the idstr length byte) is its pstr8 layout's, which the fast path has.
    # Without RAM a REQ_PAGES still needs a REQ_PAGES_ID before it ("no previous block"):
    # the fast path leaves a REQ_PAGES to the model until one was read (``_block_named``).
    "REQ_PAGES": Handler("_req_pages", WITH_RAM),
    "REQ_PAGES_ID": Handler("_req_pages_id", WITH_RAM),
    # Counted against the devices' requests ("Switchover ack pending num underflowed");
    # whether it is counted depends on machine type and capability, which may be set
    # midway (switchover_acks_expected): the fast path always leaves it to the model.
    "SWITCHOVER_ACK": Handler("_switchover_ack", COUNTED),
}


def model_reads(name: str, *, ram_checks: bool, counted: bool) -> bool:
    """Whether frames of message ``name`` need the model's handler, given the reader's context.

    :param ram_checks: the reader knows the source's RAMBlocks.
    :param counted: SWITCHOVER_ACKs are counted (the release counts them, capability on).
    """
    handler = HANDLERS.get(name)
    if handler is None:
        return False
    return (
        handler.when == ALWAYS
        or (handler.when == WITH_RAM and ram_checks)
        or (handler.when == COUNTED and counted)
    )


def event_class(spec: MessageSpec) -> type[Message]:
    """The event class of ``spec``'s frames: its typed event, or :class:`RawMessage` when no
    payload layout describes it (a message of a patched catalog)."""
    cls = EVENT_TYPES.get(spec.short_name)
    if cls is None or spec.short_name not in PAYLOAD_LAYOUTS:
        return RawMessage
    return cls


#: Where a :class:`Reader` stood at a frame boundary (:meth:`Reader.snapshot`): the receive
#: buffer's snapshot (a stream offset), QEMU's stack buffer then, and whether a REQ_PAGES_ID
#: had named a block (``last_req_rb``). A plain tuple: the fast path takes one per batch.
ReaderSnapshot = tuple[int, bytes, bool]


class _Common(TypedDict):
    """The fields every return-path message carries."""

    release: Release
    offset: int
    type_id: int
    length: int
    size: int


class _Bitmap:
    """The RECV_BITMAP being read: its frame, then its blob."""

    __slots__ = ("bitmap", "bitmap_size", "block_name", "frame_len", "payload")

    def __init__(self, block_name: str, payload: bytes, frame_len: int) -> None:
        self.block_name = block_name
        self.payload = payload
        self.frame_len = frame_len
        self.bitmap_size = 0
        self.bitmap = b""


_MACHINE_VERSION = re.compile(r"-(\d+)\.(\d+)$")


def machine_version(machine: str) -> Release | None:
    """``pc-q35-10.0`` → 10.0; ``None`` for unversioned names (``q35``, ``none``)."""
    m = _MACHINE_VERSION.search(machine)
    return Release(f"{int(m.group(1))}.{int(m.group(2))}") if m else None


@cache
def first_counted_line() -> Release | None:
    """The first release line whose source counts SWITCHOVER_ACKs (catalog data)."""
    return next(
        (r for r in known_releases() if catalog(r).switchover_ack_accounting == "counted"), None
    )


def legacy_switchover_ack(release: Release | str, machine: str | None) -> bool:
    """An 11.1+ source on a machine type older than the first counting line runs the
    legacy mechanism (``switchover-ack-legacy``); ``None`` is the release's own newest
    machine type (what ``-machine q35`` gives), never legacy."""
    if catalog(release).switchover_ack_accounting != "counted" or machine is None:
        return False
    version, first = machine_version(machine), first_counted_line()
    return version is not None and first is not None and version < first


def switchover_acks_expected(
    release: Release | str, *, machine: str | None, capability: bool, requested: int = 0
) -> int | None:
    """SWITCHOVER_ACKs the source of ``release`` takes in all; ``None``: it does not count them.

    The one rule every engine, the strategies and the CLI's stated assumptions use.
    Measured on 11.1.3 (``tests/qemu/test_switchover_ack_context.py``,
    ``tests/qemu/test_scenarios_live.py``): an 11.1 source counts whatever the capability;
    the machine type sets how many it takes. On machine types older than 11.1 the legacy
    mechanism takes one ACK for all devices (with ``switchover-ack`` on, the destination
    sends that one itself; with it off a single ACK is still taken and a second one
    underflows); on ``pc-q35-11.1`` it takes the devices' requests (``requested``, 0
    without VFIO devices). Releases before 11.1 never count (8.1 … 11.0 set a flag).
    ``capability`` is kept for callers that state it; it does not change the count.
    """
    if catalog(release).switchover_ack_accounting != "counted":
        return None
    if legacy_switchover_ack(release, machine):
        return max(requested, 1)
    return requested


class RamBlock:
    """What the source knows of one RAMBlock, for the checks that need it."""

    __slots__ = ("idstr", "used_length")

    def __init__(self, idstr: str, used_length: int) -> None:
        self.idstr = idstr
        self.used_length = used_length

    def recv_bitmap_size(self, target_page_size: int = 4096) -> int:
        """Bytes of bitmap the source expects (``ROUND_UP(DIV_ROUND_UP(nbits, 8), 8)``)."""
        nbits = self.used_length // target_page_size
        return (((nbits + 7) // 8) + 7) // 8 * 8


def as_ram_blocks(blocks: Mapping[str, RamBlock | int] | None) -> dict[str, RamBlock] | None:
    """RAMBlocks as the reader keeps them: idstr → :class:`RamBlock` (an int is a used length)."""
    if blocks is None:
        return None
    return {k: v if isinstance(v, RamBlock) else RamBlock(k, v) for k, v in blocks.items()}


class Reader(EventSource):
    """Feed destination-to-source bytes; get the events the source would see.

    :param release: the *source* release (``"7.2"``, ``"11.1+keepalive"``, a
        :class:`Release`, a package version …).
    :param ram_blocks: optional RAMBlocks of the source (idstr → :class:`RamBlock`
        or used length), enabling QEMU's block-name, size and alignment checks.
    :param target_page_size: ``TARGET_PAGE_SIZE`` (bitmap sizes count target pages).
    :param host_page_size: ``qemu_real_host_page_size()`` (page requests must align to it).
    :param max_bitmap_size: refuse larger RECV_BITMAP blobs without buffering them.
    :param switchover_ack_capability: the ``switchover-ack`` capability is on. It
        matters on machine types older than 11.1 only: off, an 11.1+ source counts
        nothing there (lab: 11.1.3 on pc-q35-10.0 and pc-q35-7.2, and → 7.2, → 5.2);
        on ``pc-q35-11.1`` it counts either way (:func:`switchover_acks_expected`).
    :param switchover_acks_requested: ACKs the source expects (11.1+): one per device
        request — 0 for a guest without VFIO devices, where any SWITCHOVER_ACK is one
        too many ("Switchover ack pending num underflowed", lab: 11.1.3 on pc-q35-11.1).
    :param migration_state: the source's migration status (QAPI name), enabling the
        state rule of ``ram_dirty_bitmap_reload`` (RECV_BITMAP only in postcopy-recover).
    :param machine: the machine type; one older than the release line that began
        counting runs the legacy mechanism (``switchover-ack-legacy``), where the
        destination's one ACK for all devices is expected (lab: 11.1.3 on
        pc-q35-10.0 takes one ACK, fails on a second). ``None``: the release's own
        newest machine type.
    :param req_pages_block: the RAMBlock the last REQ_PAGES_ID named before these
        bytes (a return path resumed after postcopy recovery continues the source's
        ``last_req_rb``). ``None``: the stream is the whole return path, so a REQ_PAGES
        before any REQ_PAGES_ID is rejected ("… no previous block"), RAM known or not.
    """

    def __init__(
        self,
        release: Release | str,
        *,
        ram_blocks: Mapping[str, RamBlock | int] | None = None,
        target_page_size: int = 4096,
        host_page_size: int = 4096,
        max_bitmap_size: int = DEFAULT_MAX_BITMAP_SIZE,
        switchover_ack_capability: bool = True,
        switchover_acks_requested: int = 0,
        machine: str | None = None,
        migration_state: str | None = None,
        req_pages_block: str | None = None,
    ) -> None:
        self.catalog: RpCatalog = catalog(release)
        self.release = self.catalog.release
        self.ram_blocks = as_ram_blocks(ram_blocks)
        self.target_page_size = target_page_size
        self.host_page_size = host_page_size
        self.switchover_ack_capability = switchover_ack_capability
        self._acks_requested = switchover_acks_requested
        #: ACKs the source still takes; ``None``: it does not count them.
        self.switchover_acks_pending: int | None = switchover_acks_expected(
            self.release,
            machine=None,
            capability=switchover_ack_capability,
            requested=switchover_acks_requested,
        )
        self._acks_seen = 0
        self.machine: str | None = None
        #: The source's MigrationStatus (``postcopy-active`` …), when known: bitmaps
        #: are only reloaded in ``postcopy-recover``.
        self.migration_state = migration_state
        if machine is not None:
            self.set_machine(machine)
        self.max_bitmap_size = max_bitmap_size
        self._buf = ReceiveBuffer()
        self._phase = _HEADER
        self._error: RemoteViolation | None = None
        # The frame being read.
        self._frame_start = 0
        self._type = 0
        self._len = 0
        self._bitmap: _Bitmap | None = None
        # QEMU's `uint8_t buf[512]` on the thread's stack, kept across frames.
        self._stack_buf = bytearray(self.catalog.buffer_size + 1)
        self._last_block: RamBlock | None = None
        #: A REQ_PAGES_ID has named a block (QEMU's ``last_req_rb`` is set), RAM known or not.
        self._block_named = req_pages_block is not None
        if req_pages_block is not None and self.ram_blocks is not None:
            self._last_block = self.ram_blocks.get(req_pages_block)
        self._by_id = {m.id: m for m in self.catalog.messages}
        # Type id -> how the model reads the payload (the handler table, else the layout).
        self._readers: dict[int, Callable[[Reader, bytes], Event | type[NEED_DATA]]] = {}
        for m in self.catalog.messages:
            handler = HANDLERS.get(m.short_name)
            if event_class(m) is RawMessage:
                self._readers[m.id] = Reader._raw
            elif handler is not None:
                self._readers[m.id] = getattr(Reader, handler.method)
            else:
                self._readers[m.id] = Reader._layout

    # -- public interface -----------------------------------------------------------
    def set_machine(self, machine: str) -> None:
        """The machine type, once known (a capture learns it from the forward stream)."""
        self.machine = machine
        if self._acks_seen:
            return  # the source chose its mechanism before the first ACK
        self.switchover_acks_pending = switchover_acks_expected(
            self.release,
            machine=machine,
            capability=self.switchover_ack_capability,
            requested=self._acks_requested,
        )

    @property
    def offset(self) -> int:
        """Stream offset of the next unread byte (where the source's read position is)."""
        return self._buf.offset

    @property
    def stopped(self) -> bool:
        return self._phase in (_STOPPED, _ERROR)

    @property
    def at_frame_boundary(self) -> bool:
        """The next byte starts a frame header (no frame or bitmap blob is half read)."""
        return self._phase == _HEADER

    @property
    def buffered(self) -> int:
        """Bytes received but not yet consumed."""
        return self._buf.available

    @property
    def buffer(self) -> ReceiveBuffer:
        """The received bytes, for decoders that read ahead of the model (the fast path)."""
        return self._buf

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the wire; ``b""`` means the connection ended."""
        # Once the thread has ended the source no longer reads: the bytes stay unread.
        # Mid-frame, the frame's own bytes are kept (events and violations carry them).
        keep = None if self._phase == _HEADER else self._frame_start
        self._buf.receive(data, reading=self._phase not in (_STOPPED, _ERROR), keep_from=keep)

    def next_event(self) -> Event | type[NEED_DATA] | type[STOPPED]:
        """The next event, :data:`NEED_DATA`, or :data:`STOPPED` once the thread has ended.

        :raises RemoteViolation: the source rejects the bytes; it is raised again on
            every later call (the thread has exited).
        """
        if self._phase == _ERROR:
            assert self._error is not None
            raise self._error
        if self._phase == _STOPPED:
            return STOPPED
        try:
            return self._step()
        except RemoteViolation as exc:
            self._phase = _ERROR
            self._error = exc
            raise

    def snapshot(self) -> ReaderSnapshot:
        """Where the reader stands now, at a frame boundary, to :meth:`restore` later.

        The receive buffer keeps the bytes from here on until the next snapshot or
        :meth:`drop_snapshot`. Only position and stack buffer are kept: a reader that
        decodes ahead (the fast path) takes it before frames no other state depends on
        (but REQ_PAGES_ID's naming of a block, kept too).
        """
        return (self._buf.snapshot(), bytes(self._stack_buf), self._block_named)

    def restore(self, snap: ReaderSnapshot) -> None:
        """Go back to ``snap`` (the newest snapshot): its bytes are read again."""
        assert self._phase == _HEADER
        offset, stack, named = snap
        self._buf.restore(offset)
        self._stack_buf[:] = stack
        self._block_named = named

    def drop_snapshot(self) -> None:
        """Forget the snapshot (its bytes may be dropped)."""
        self._buf.drop_snapshot()

    def skip_frames(self, end: int, payloads: Iterable[tuple[int, int, bool]]) -> None:
        """Consume the frames before buffer index ``end``, decoded by someone else.

        ``payloads``: (buffer index, length, NUL written after it) of the frames whose
        payloads QEMU's stack buffer would hold, in stream order: they are written
        into it as reading those frames would have written them.
        """
        assert self._phase == _HEADER
        buf, data = self._stack_buf, self._buf.data
        self._buf.pos = end
        for at, length, nul in payloads:
            buf[:length] = data[at : at + length]
            if nul:
                buf[length] = 0

    # -- machinery ---------------------------------------------------------------------
    def _violation(self, key: str, *args: object, caret: int, message: str) -> RemoteViolation:
        qemu_error = self.catalog.format_error(key, *args) if key in self.catalog.errors else None
        end = self.offset
        return RemoteViolation(
            message,
            offset=self._frame_start,
            release=self.release,
            message_type=self._type,
            qemu_error=qemu_error,
            data=self._buf.span(self._frame_start, end),
            caret=caret,
            stopped_at=end,
        )

    def _stop_eof(self, *, truncated: bool, reason: str, qemu_error: str | None) -> EndOfStream:
        start = self._frame_start if truncated else self.offset
        ev = EndOfStream(
            release=self.release,
            offset=start,
            truncated=truncated,
            partial=self._buf.end - start,
            qemu_error=qemu_error,
            reason=reason,
        )
        self._buf.consume_all()
        self._phase = _STOPPED
        return ev

    def _step(self) -> Event | type[NEED_DATA]:
        if self._phase == _HEADER:
            return self._read_header()
        if self._phase == _PAYLOAD:
            return self._read_payload()
        return self._read_blob()

    def _read_header(self) -> Event | type[NEED_DATA]:
        buf = self._buf
        pos = buf.pos
        avail = len(buf.data) - pos
        self._frame_start = buf.base + pos
        if avail < 4:
            if not self._buf.eof:
                return NEED_DATA
            if self.catalog.file_error_check:
                # 3.0+: qemu_file_get_error() after the header ends the thread with
                # the channel's own error, not a protocol message.
                return self._stop_eof(
                    truncated=avail > 0,
                    reason="truncated-header" if avail else "eof",
                    qemu_error=None,
                )
            # Older sources read zeros at EOF and carry on into the checks below:
            # what they print then is the end of the stream, not the peer's fault.
            padded = self._buf.peek(avail) + bytes(4 - avail)
            type_id, length = _BE16x2.unpack(padded)
            self._type, self._len = type_id, length
            try:
                self._check_header(type_id, length)
                # The header passed: the payload read then finds nothing either.
                if length:
                    qemu_error = self.catalog.format_error("short_read", type_id, 0, length)
                elif self._by_id[type_id].short_name == "REQ_PAGES_ID":
                    qemu_error = self.catalog.format_error("req_pages_id_length", 0, 13)
                else:
                    qemu_error = None
            except RemoteViolation as exc:
                qemu_error = exc.qemu_error
            return self._stop_eof(
                truncated=avail > 0,
                reason="truncated-header" if avail else "eof",
                qemu_error=qemu_error,
            )
        # The hot path: the buffer's fields read and moved in place.
        type_id, length = _BE16x2.unpack_from(buf.data, pos)
        buf.pos = pos + 4
        self._type, self._len = type_id, length
        self._check_header(type_id, length)
        self._phase = _PAYLOAD
        return self._read_payload()

    def _check_header(self, type_id: int, length: int) -> None:
        """The two header checks, in QEMU's order: type, then length."""
        cat = self.catalog
        if type_id >= cat.max or type_id == 0:
            raise self._violation(
                "invalid_type",
                type_id,
                length,
                caret=0,
                message=f"type 0x{type_id:04x} is not a message {cat.release} knows "
                f"(MIG_RP_MSG_MAX = {cat.max})",
            )
        spec = self._by_id[type_id]
        if (spec.length is not None and length != spec.length) or length > cat.buffer_size:
            raise self._violation(
                "bad_length",
                cat.printed_name(spec),
                type_id,
                length,
                cat.printed_length(spec),
                caret=2,
                message=f"{spec.name} with length {length}, "
                + (
                    f"expected {spec.length}"
                    if spec.length is not None
                    else f"more than the {cat.buffer_size}-byte buffer"
                ),
            )

    def _read_payload(self) -> Event | type[NEED_DATA]:
        length = self._len
        buf = self._buf
        pos = buf.pos
        avail = len(buf.data) - pos
        if avail < length:
            return self._cut(
                "truncated-payload",
                lambda: self.catalog.format_error("short_read", self._type, avail, length),
            )
        payload = bytes(buf.data[pos : pos + length])
        buf.pos = pos + length
        self._stack_buf[:length] = payload
        self._phase = _HEADER
        return self._dispatch(payload)

    def _common(self) -> _Common:
        return {
            "release": self.release,
            "offset": self._frame_start,
            "type_id": self._type,
            "length": self._len,
            "size": self._buf.base + self._buf.pos - self._frame_start,
        }

    def _dispatch(self, payload: bytes) -> Event | type[NEED_DATA]:
        return self._readers[self._type](self, payload)

    # -- handlers (HANDLERS), and the frames that have none ------------------------------
    def _raw(self, payload: bytes) -> Event:
        name = self._by_id[self._type].short_name
        return RawMessage(**self._common(), short_name=name, payload=payload)

    def _layout(self, payload: bytes) -> Event:
        """A message that is its layout: ``be32``/``be64`` fields read in order."""
        name = self._by_id[self._type].short_name
        values: dict[str, Any] = {}
        at = 0
        for field_name, kind in PAYLOAD_LAYOUTS[name]:
            if kind == "be32":
                (values[field_name],) = _BE32.unpack_from(payload, at)
                at += 4
            elif kind == "be64":
                (values[field_name],) = _BE64.unpack_from(payload, at)
                at += 8
            else:  # pragma: no cover - layouts with pstr8 have handlers
                raise AssertionError(kind)
        return EVENT_TYPES[name](**self._common(), **values)

    def _shut(self, payload: bytes) -> Event:
        (value,) = _BE32.unpack_from(payload)
        # The thread exits after SHUT whatever its value (migration.c: `goto out`).
        self._phase = _STOPPED
        return Shut(**self._common(), sibling_error=value)

    def _req_pages(self, payload: bytes) -> Event:
        start, ln = _BE64_BE32.unpack_from(payload)
        self._check_req_pages(None, start, ln)
        return ReqPages(**self._common(), start=start, len=ln)

    def _switchover_ack(self, payload: bytes) -> Event:
        if self.catalog.switchover_ack_accounting == "counted":
            self._acks_seen += 1
            if self.switchover_acks_pending is not None:
                if self.switchover_acks_pending <= 0:
                    raise self._violation(
                        "switchover_ack_underflow",
                        caret=0,
                        message="SWITCHOVER_ACK the source does not expect (no device "
                        "requested one, or it came already)",
                    )
                self.switchover_acks_pending -= 1
        return self._layout(payload)

    def _resume_ack(self, payload: bytes) -> Event:
        (value,) = _BE32.unpack_from(payload)
        if value != self.catalog.resume_ack_value:
            raise self._violation(
                "resume_ack_value",
                value,
                caret=4,
                message=f"RESUME_ACK value {value}, only "
                f"{self.catalog.resume_ack_value} is accepted",
            )
        return ResumeAck(**self._common(), value=value)

    def _req_pages_id(self, payload: bytes) -> Event:
        length = self._len
        expected = 12 + 1  # start + len + the idstr length byte
        idstr = b""
        start = ln = 0
        if length >= expected:
            start, ln = _BE64_BE32.unpack_from(payload)
            n = payload[12]
            self._stack_buf[13 + n] = 0
            expected += n
            idstr = payload[13 : 13 + n]
        if length != expected:
            raise self._violation(
                "req_pages_id_length",
                length,
                expected,
                caret=4 + 12 if length >= 13 else 2,
                message=f"REQ_PAGES_ID with length {length}, its idstr length says {expected}",
            )
        name = idstr.decode("latin-1")
        self._check_req_pages(name.split("\0", 1)[0], start, ln)
        return ReqPagesId(**self._common(), start=start, len=ln, idstr=name)

    def _check_req_pages(self, block_name: str | None, start: int, ln: int) -> None:
        """QEMU's ``migrate_handle_rp_req_pages`` then ``ram_save_queue_pages``, when RAM is known.

        Order as in QEMU: host-page alignment of start and len; the block (the last
        one named, or the one named now, which becomes the last); then the range,
        ``start + len - 1`` in ram_addr_t arithmetic, inside the block's used length.

        Without the source's RAM only the previous-block rule applies (it needs no RAM:
        QEMU's ``last_req_rb`` is unset until a REQ_PAGES_ID names a block), after the
        alignment check that precedes it in QEMU (to the assumed host page size).
        """
        if self.ram_blocks is None:
            if block_name is not None:
                self._block_named = True
            elif not self._block_named:
                self._check_alignment(start, ln)
                raise self._no_previous_block()
            return
        self._check_alignment(start, ln)
        if block_name is None:
            block = self._last_block
            if block is None:
                if self._block_named:
                    return  # named before the RAM was known: its range is not checked
                raise self._no_previous_block()
        else:
            self._block_named = True
            found = self.ram_blocks.get(block_name)
            if found is None:
                raise self._violation(
                    "req_pages_no_block",
                    block_name,
                    caret=4 + 13,
                    message=f"REQ_PAGES_ID names RAMBlock {block_name!r}, which the source lacks",
                )
            block = self._last_block = found
        if (start + ln - 1) & (2**64 - 1) >= block.used_length:
            raise self._violation(
                "req_pages_overrun",
                start,
                ln,
                block.used_length,
                caret=4,
                message=f"page request 0x{start:x}+{ln} beyond RAMBlock {block.idstr!r} "
                f"({block.used_length} bytes)",
            )

    def _no_previous_block(self) -> RemoteViolation:
        return self._violation(
            "req_pages_no_previous_block",
            caret=4,
            message="REQ_PAGES before any REQ_PAGES_ID named a RAMBlock (assuming the "
            "bytes are the whole return path)",
        )

    def _check_alignment(self, start: int, ln: int) -> None:
        hps = self.host_page_size
        if start % hps or ln % hps:
            raise self._violation(
                "req_pages_misaligned",
                start,
                ln,
                caret=4,
                message=f"page request start 0x{start:x} len {ln} not aligned to the "
                f"source's {hps}-byte host pages",
            )

    def _recv_bitmap_frame(self, payload: bytes) -> Event | type[NEED_DATA]:
        if self._len < 1:
            raise self._violation(
                "recv_bitmap_no_name", caret=2, message="RECV_BITMAP with no block name"
            )
        n = self._stack_buf[0]
        self._stack_buf[n + 1] = 0
        raw_name = bytes(self._stack_buf[1 : n + 1])
        name = raw_name.split(b"\0", 1)[0].decode("latin-1")
        if self.ram_blocks is not None and name not in self.ram_blocks:
            raise self._violation(
                "recv_bitmap_bad_block",
                name,
                caret=5,
                message=f"RECV_BITMAP names RAMBlock {name!r}, which the source lacks",
            )
        if (
            self.ram_blocks is not None
            and self.migration_state is not None
            and self.migration_state != "postcopy-recover"
        ):
            # ram_dirty_bitmap_reload checks the state before it reads the blob.
            raise self._violation(
                "recv_bitmap_state",
                self.migration_state,
                caret=0,
                message=f"RECV_BITMAP while the source is {self.migration_state}, "
                "not postcopy-recover",
            )
        self._bitmap = _Bitmap(name, payload, self._len)
        self._phase = _BLOB_SIZE
        return self._read_blob()

    def _read_failed_text(self, name: str, size: int, got: int) -> str | None:
        fmt = self.catalog.errors.get("recv_bitmap_read_failed")
        if fmt is None:
            return None
        # Up to 7.2 the text also prints qemu_file_get_error(): -EIO at end of file.
        args: tuple[object, ...] = (name, size, got)
        if c_conversions(fmt) == 4:
            args = (name, -5, size, got)
        return c_format(fmt, *args)

    def _expected_bitmap_size(self) -> int | None:
        if self.ram_blocks is None:
            return None
        assert self._bitmap is not None
        block = self.ram_blocks[self._bitmap.block_name]
        return block.recv_bitmap_size(self.target_page_size)

    def _be64_or_end(self) -> int | None:
        """The next be64 of the blob, consumed; ``None`` when it has not arrived (yet)."""
        buf = self._buf
        if buf.available < 8:
            return None
        value: int = _BE64.unpack_from(buf.data, buf.pos)[0]
        buf.consume(8)
        return value

    def _cut(
        self, reason: str, qemu_error: Callable[[], str | None] | None = None
    ) -> EndOfStream | type[NEED_DATA]:
        """Bytes are missing: wait for them, or at end of stream the frame was cut short
        (``qemu_error`` says what the source prints then)."""
        if not self._buf.eof:
            return NEED_DATA
        return self._stop_eof(
            truncated=True, reason=reason, qemu_error=qemu_error() if qemu_error else None
        )

    def _read_blob(self) -> Event | type[NEED_DATA]:
        p = self._bitmap
        assert p is not None
        name = p.block_name
        if self._phase == _BLOB_SIZE:
            size = self._be64_or_end()
            if size is None:
                return self._cut("truncated-bitmap")
            expected = self._expected_bitmap_size()
            if expected is not None and size != expected:
                raise self._violation(
                    "recv_bitmap_size_mismatch",
                    name,
                    size,
                    expected,
                    caret=4 + p.frame_len,
                    message=f"bitmap size {size} for {name!r}, the source expects {expected}",
                )
            if size > self.max_bitmap_size:
                raise self._violation(
                    "",
                    caret=4 + p.frame_len,
                    message=f"bitmap size {size} exceeds this reader's limit "
                    f"({self.max_bitmap_size}); no RAMBlock the model allows is that large, so "
                    "the source rejects it too, with a text that needs its RAMBlocks "
                    "(ram_blocks) to predict",
                )
            p.bitmap_size = size
            self._phase = _BLOB_DATA
        if self._phase == _BLOB_DATA:
            size = p.bitmap_size
            got = self._buf.available
            if got < size:
                return self._cut(
                    "truncated-bitmap", lambda: self._read_failed_text(name, size, got)
                )
            p.bitmap = self._buf.take(size)
            self._phase = _BLOB_END
        end_mark = self._be64_or_end()
        if end_mark is None:
            return self._cut("truncated-bitmap")
        self._phase = _HEADER
        if end_mark != self.catalog.recv_bitmap_ending:
            raise self._violation(
                "recv_bitmap_end_mark",
                name,
                end_mark,
                caret=4 + p.frame_len + 8 + p.bitmap_size,
                message=f"bitmap end mark 0x{end_mark:016x}, expected "
                f"0x{self.catalog.recv_bitmap_ending:016x}",
            )
        self._bitmap = None
        return RecvBitmap(
            **self._common(),
            block_name=name,
            payload=p.payload,
            bitmap_size=p.bitmap_size,
            bitmap=p.bitmap,
            end_mark=end_mark,
        )
