"""The forward (source-to-destination) migration stream, walked as far as it can be delimited.

Theory of operation
-------------------
The forward stream is QEMU's ``savevm`` format: a ``QEVM`` header (be32 magic,
be32 version), a configuration section (``QEMU_VM_CONFIGURATION``: be32 length
+ machine type name, then optional subsections), then a sequence of units each
opened by a section-type byte (savevm.h ``QEMU_VM_*``):

* ``QEMU_VM_COMMAND``: be16 ``MIG_CMD_*`` id, be16 length, payload
  (``qemu_savevm_command_send``). ``MIG_CMD_PACKAGED`` is followed by a be32
  size and that many bytes of an inner stream (no header) that the destination
  loads from a buffer (``loadvm_handle_cmd_packaged``).
* ``QEMU_VM_SECTION_START``/``FULL``: be32 section id, u8 idstr length, idstr,
  be32 instance id, be32 version id, the section's data, and (machine types
  since 2.4) a footer ``QEMU_VM_SECTION_FOOTER`` + be32 section id.
* ``QEMU_VM_SECTION_PART``/``END``: be32 section id, data, footer.
* ``QEMU_VM_EOF`` ends a precopy stream; ``QEMU_VM_VMDESCRIPTION`` (be32 length
  + JSON) may follow it.

A section's data has no length: only the device's own load function knows
where it ends. The ``ram`` section is the exception this reader relies on: its
data is a run of page headers (be64 ``addr | flags``, migration/ram.c
``ram_load_precopy``) that ends with ``RAM_SAVE_FLAG_EOS``, so it can be walked
page by page and the commands after it are found. Any other section (a device's
``FULL`` state, ``block``, ``dirty-bitmap``, vfio …) cannot be delimited without
the vmdesc JSON, which comes only at the very end of a precopy stream and never
in postcopy; the reader then returns a :class:`ForwardStop` saying so, and
nothing after it is decoded — never a guess. Inside a descended ``PACKAGED``
body the same stop only ends the package: its size is known, so decoding goes
on after it.

The section-type bytes, the magic, the version and the ``MIG_CMD_*`` table
(ids, names and fixed lengths) all come from :func:`stream_catalog`; the RAM
flag values are ``RAM_SAVE_FLAG_*`` of migration/ram.c, identical from 2.5 to
11.0 (0x80 ``HOOK`` is RDMA, which this reader does not walk).

Like :class:`~migcompat.protocol.Reader`, :class:`ForwardReader` is sans-IO:
``receive_data(bytes)`` (``b""`` = end of stream), ``next_event()`` returning an
event, :data:`NEED_DATA` or :data:`STOPPED`. Internally a generator pulls bytes
as the grammar needs them, so feeding one byte at a time gives the same events.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Generator, Iterator
from typing import Any

import msgspec

from ._catalog import StreamCatalog, stream_catalog
from ._errors import RemoteViolation
from ._events import Event, EventSource
from ._receivebuffer import ReceiveBuffer
from ._releases import Release
from ._sentinels import NEED_DATA, STOPPED
from ._vmstate import (
    DumpLayout,
    VmDescLayout,
    VmstateError,
    find_vmdesc,
    parse_vmdesc,
    walk_fields,
)

__all__ = [
    "MAX_VMDESC_BUFFER",
    "DeviceState",
    "ForwardCommand",
    "ForwardEnd",
    "ForwardReader",
    "ForwardResync",
    "ForwardStop",
    "RamBlocks",
    "RamPage",
    "SectionHeader",
    "StreamHeader",
    "VmDescription",
    "VmEof",
]


def __dir__() -> list[str]:
    return list(__all__)


# -- RAM_SAVE_FLAG_* (migration/ram.c; same values 2.5 … 11.0) -------------------------
_RAM_FULL = 0x01  # obsolete, rejected by ram_load
_RAM_ZERO = 0x02
_RAM_MEM_SIZE = 0x04
_RAM_PAGE = 0x08
_RAM_EOS = 0x10
_RAM_CONTINUE = 0x20
_RAM_XBZRLE = 0x40
_RAM_HOOK = 0x80  # RDMA: not walked
_RAM_COMPRESS_PAGE = 0x100  # removed in 9.1
_RAM_MULTIFD_FLUSH = 0x200  # 8.0+
_RAM_WITH_BLOCK = _RAM_PAGE | _RAM_ZERO | _RAM_COMPRESS_PAGE | _RAM_XBZRLE
# Candidate page headers for re-synchronisation (4 KiB target pages): two zero bytes
# (addresses < 256 TiB), four address bytes, a byte whose low nibble (flag bits 8-11)
# is 0 or 2 (MULTIFD_FLUSH), then a flag byte of PAGE or ZERO (with or without CONTINUE),
# EOS, or 0. A lookahead, so that overlapping candidates are all tried.
_HEADER_RE = re.compile(
    rb"(?=\x00\x00.{4}["
    + b"".join(re.escape(bytes([b])) for b in range(256) if b & 0x0F in (0, 2))
    + rb"][\x02\x08\x22\x28\x10\x00])",
    re.DOTALL,
)
_ANY_HEADER_RE = re.compile(rb"(?=\x00\x00)")

#: Consecutive page records that must parse, back to back, before decoding resumes after a
#: gap: 8 records are >= 8 x 4104 bytes in which every header has a legal flag set, a page
#: address inside a known RAMBlock and (when not CONTINUE) a known block name.
RESYNC_MIN_RECORDS = 8
#: PACKAGED bodies up to this size are buffered to look for their trailing commands
#: (device state is usually well under 1 MiB; QEMU caps packages at 4 GiB).
MAX_TRAILER_SCAN = 16 << 20

#: A streaming reader that meets a device section before it has a vmdesc keeps every byte
#: from there on until the vmdesc (the stream's last bytes) arrives: at most this many.
#: Past it (or at the end of a stream without one) the decode stops there, as without
#: buffering. A -S 7.2 guest's device state and vmdesc are ~90 KB; 1 GiB of busy RAM
#: still sent in the last round counts too, so the bound is generous but fixed.
MAX_VMDESC_BUFFER = 64 << 20

#: ``TARGET_PAGE_SIZE`` assumed until ``MIG_CMD_POSTCOPY_ADVISE`` says otherwise (x86, arm64).
DEFAULT_TARGET_PAGE_SIZE = 4096

_BE16 = struct.Struct(">H")
_BE32 = struct.Struct(">I")
_BE64 = struct.Struct(">Q")
_CMD_HDR = struct.Struct(">HH")

# The QEMUFile idstr of the RAM section (savevm "ram", migration/ram.c register_savevm_live).
_RAM_IDSTR = "ram"


# -- events ------------------------------------------------------------------------------
class StreamHeader(Event, frozen=True, kw_only=True, gc=False):
    """The ``QEVM`` magic and version (``qemu_savevm_state_header``)."""

    size: int
    magic: int
    version: int


class ForwardCommand(Event, frozen=True, kw_only=True, gc=True):
    """A ``QEMU_VM_COMMAND``: ``MIG_CMD_*`` id, length and payload, decoded where QEMU says how.

    ``depth`` is 1 inside a descended ``MIG_CMD_PACKAGED`` body. ``fields`` holds the
    payload decoded in QEMU's words (``value`` of PING, ``size`` of PACKAGED,
    ``block_name`` of RECV_BITMAP, ``page_size_summary``/``target_page_size`` of
    POSTCOPY_ADVISE, ``block_name``/``ranges`` of POSTCOPY_RAM_DISCARD).
    """

    size: int
    cmd: int
    name: str
    length: int
    payload: bytes
    depth: int = 0
    fields: dict[str, Any] = msgspec.field(default_factory=dict)

    @property
    def short_name(self) -> str:
        return self.name.removeprefix("MIG_CMD_")


class SectionHeader(Event, frozen=True, kw_only=True, gc=False):
    """A section's opening: ``kind`` is ``START``/``PART``/``END``/``FULL``/``CONFIGURATION``."""

    size: int
    kind: str
    section_id: int
    idstr: str
    instance_id: int | None = None
    version_id: int | None = None
    depth: int = 0


class DeviceState(Event, frozen=True, kw_only=True, gc=True):
    """A device section's data, delimited: ``size`` bytes from ``offset`` (footer excluded).

    ``delimited_by``: ``vmdesc`` (walked field by field with the stream's own vmdesc)
    or ``footer`` (inside a PACKAGED body: the one chain of section footers and unit
    headers that tiles the rest of the body, checked against ``-dump-vmstate``).
    ``vmsd_name``/``device_type`` name the description (``device_type`` is the qdev
    type of a ``-dump-vmstate`` entry). ``fields`` is set only when field decoding is
    asked for (``ForwardReader(decode_fields=True)``): see
    :func:`~migcompat.protocol.walk_fields` for its shape.
    """

    size: int
    section_id: int
    idstr: str
    instance_id: int
    version_id: int
    delimited_by: str
    vmsd_name: str | None = None
    device_type: str | None = None
    depth: int = 0
    fields: list[dict[str, Any]] | None = None


class RamBlocks(Event, frozen=True, kw_only=True, gc=False):
    """``RAM_SAVE_FLAG_MEM_SIZE``: total RAM and every RAMBlock's idstr and used length."""

    size: int
    total: int
    blocks: tuple[tuple[str, int], ...]


class RamPage(Event, frozen=True, kw_only=True, gc=False):
    """One RAM page header and its data (``kind``: page, zero, xbzrle, compressed)."""

    size: int
    block: str
    addr: int
    flags: int
    kind: str


class VmEof(Event, frozen=True, kw_only=True, gc=False):
    """``QEMU_VM_EOF``: the end of the device state (precopy completes)."""

    size: int = 1
    depth: int = 0


class VmDescription(Event, frozen=True, kw_only=True, gc=False):
    """``QEMU_VM_VMDESCRIPTION``: the JSON description after EOF (kept only as its size)."""

    size: int
    json_size: int


class ForwardStop(Event, frozen=True, kw_only=True, gc=False):
    """The forward decode cannot go on without guessing; ``reason`` says why.

    ``final`` is false when only a ``PACKAGED`` body is abandoned (its size is known)
    and decoding resumes after it.
    """

    reason: str
    section_id: int | None = None
    idstr: str | None = None
    depth: int = 0
    final: bool = True


class ForwardResync(Event, frozen=True, kw_only=True, gc=False):
    """Decoding resumes after a gap (:meth:`ForwardReader.gap`), inside a RAM section.

    ``offset`` is where the first validated page record starts; ``skipped`` counts
    bytes after the gap that were passed over to find it; ``records`` is how many
    consecutive records validated the position (see :data:`RESYNC_MIN_RECORDS`).
    Whatever the gap held (commands, section boundaries) is unknown.
    """

    skipped: int
    records: int
    section_id: int | None


class ForwardEnd(Event, frozen=True, kw_only=True, gc=False):
    """The byte stream ended; ``truncated`` when it ended inside a unit."""

    truncated: bool
    reason: str = "eof"


# -- machinery -----------------------------------------------------------------------------
class _Eof(Exception):
    """Raised inside the grammar generator when bytes run out after EOF."""


class _Stuck(Exception):
    """Raised inside the grammar when a section cannot be delimited."""

    def __init__(self, reason: str, section_id: int | None, idstr: str | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.section_id = section_id
        self.idstr = idstr


_Need = Generator[Any, None, Any]


class _Section:
    __slots__ = ("idstr", "instance_id", "version_id")

    def __init__(self, idstr: str, instance_id: int, version_id: int) -> None:
        self.idstr = idstr
        self.instance_id = instance_id
        self.version_id = version_id


class ForwardReader(EventSource):
    """Feed source-to-destination bytes; get the stream's header, sections and commands.

    :param release: the release whose ``MIG_CMD_*`` table and section types apply.
    :param channel: ``"main"`` (QEVM header expected, or a headerless stream that starts
        with a command, as after ``migrate`` with ``resume=true``), ``"auto"`` (same,
        also accepting a stream without a header), or ``"preempt"`` (the postcopy
        preempt channel: bare RAM page headers).
    :param descend_packaged: walk ``MIG_CMD_PACKAGED`` bodies (else skip them whole).
    :param pages: emit a :class:`RamPage` per page (else pages are only counted).
    :param target_page_size: ``TARGET_PAGE_SIZE``; ``POSTCOPY_ADVISE`` overrides it.
    :param sections: sections started on an earlier connection of the same migration
        (section id → idstr), for a stream resumed after postcopy recovery, whose
        ``SECTION_PART`` units name sections it never started.
    :param vmdesc: the stream's vmdesc (:func:`parse_vmdesc`), when the caller has it
        (a file read twice); else the reader waits for the stream's own, buffering at
        most ``vmdesc_buffer`` bytes (:data:`MAX_VMDESC_BUFFER`; 0: stop at once).
    :param dump: ``-dump-vmstate`` of the source binary (:func:`parse_dump_vmstate`):
        device sections inside a PACKAGED body (postcopy: no vmdesc) are delimited by
        their footers and checked against it.
    :param decode_fields: decode every field of sections walked with a vmdesc (off by
        default: delimiting alone is cheaper).
    """

    def __init__(
        self,
        release: Release | str,
        *,
        channel: str = "main",
        descend_packaged: bool = True,
        pages: bool = True,
        target_page_size: int | None = None,
        sections: dict[int, str] | None = None,
        vmdesc: VmDescLayout | None = None,
        dump: DumpLayout | None = None,
        decode_fields: bool = False,
        vmdesc_buffer: int = MAX_VMDESC_BUFFER,
    ) -> None:
        if channel not in ("main", "auto", "preempt"):
            raise ValueError(f"channel must be main, auto or preempt, not {channel!r}")
        self.catalog: StreamCatalog = stream_catalog(release)
        self.release = self.catalog.release
        self.channel = channel
        self.descend_packaged = descend_packaged
        self.pages = pages
        self.target_page_size = target_page_size or DEFAULT_TARGET_PAGE_SIZE
        self._page_size_known = target_page_size is not None
        self.vmdesc = vmdesc
        self.dump = dump
        self.decode_fields = decode_fields
        self.vmdesc_buffer = vmdesc_buffer
        self._awaiting: ForwardStop | None = None
        self._package_end: int | None = None
        st = self.catalog.section_types
        self._t_eof = st["QEMU_VM_EOF"]
        self._t_start = st["QEMU_VM_SECTION_START"]
        self._t_part = st["QEMU_VM_SECTION_PART"]
        self._t_end = st["QEMU_VM_SECTION_END"]
        self._t_full = st["QEMU_VM_SECTION_FULL"]
        self._t_sub = st["QEMU_VM_SUBSECTION"]
        self._t_vmdesc = st["QEMU_VM_VMDESCRIPTION"]
        self._t_config = st["QEMU_VM_CONFIGURATION"]
        self._t_command = st["QEMU_VM_COMMAND"]
        self._t_footer = st["QEMU_VM_SECTION_FOOTER"]
        self._kind_of = {
            self._t_start: "START",
            self._t_part: "PART",
            self._t_end: "END",
            self._t_full: "FULL",
        }
        self._cmd_by_name = {m.short_name: m for m in self.catalog.commands}
        self._buf = ReceiveBuffer()
        self._done = False
        self._error: RemoteViolation | None = None
        self._unit_start = 0
        self._at_boundary = True
        self._sections: dict[int, _Section] = {
            k: _Section(v, 0, 0) for k, v in (sections or {}).items()
        }
        self._footers: bool | None = None
        self._postcopy_advised = False
        self._last_block = ""
        #: Blocks seen in ``RAM_SAVE_FLAG_MEM_SIZE`` (idstr → used length).
        self.ram_blocks: dict[str, int] = {}
        #: Page records walked (counted even when ``pages`` is off).
        self.page_count = 0
        self.machine_type: str | None = None
        self._header_seen = False
        self._gen = self._top()

    # -- public interface -----------------------------------------------------------
    @property
    def offset(self) -> int:
        """Stream offset of the next unread byte."""
        return self._buf.offset

    @property
    def stopped(self) -> bool:
        return self._done

    def receive_data(self, data: bytes) -> None:
        """Add bytes; ``b""`` means the stream ended."""
        self._buf.receive(data, reading=not self._done)

    def next_event(self) -> Event | type[NEED_DATA] | type[STOPPED]:
        """The next event, :data:`NEED_DATA`, or :data:`STOPPED` after a final stop or the end.

        :raises RemoteViolation: bytes the destination would reject (bad magic, unknown
            section type or ``MIG_CMD``, wrong command length); raised again on later calls.
        """
        if self._error is not None:
            raise self._error
        if self._done:
            return STOPPED
        try:
            out = next(self._gen)
        except _Eof:
            self._done = True
            return ForwardEnd(
                release=self.release,
                offset=self._unit_start if not self._at_boundary else self.offset,
                truncated=not self._at_boundary,
                reason="eof" if self._at_boundary else "truncated",
            )
        except StopIteration:
            self._done = True
            return STOPPED
        except _Stuck as stuck:
            self._done = True
            return ForwardStop(
                release=self.release,
                offset=self._unit_start,
                reason=stuck.reason,
                section_id=stuck.section_id,
                idstr=stuck.idstr,
            )
        except RemoteViolation as exc:
            self._error = exc
            self._done = True
            raise
        if out is NEED_DATA:
            return NEED_DATA
        if isinstance(out, ForwardStop) and out.final:
            self._done = True
        ev: Event = out  # the grammar yields events and NEED_DATA only
        return ev

    def gap(self, length: int) -> None:
        """``length`` bytes are missing right after the bytes received so far (a capture hole).

        Buffered bytes not yet decoded are dropped with them; decoding resumes only
        where a run of :data:`RESYNC_MIN_RECORDS` RAM page records validates a position
        (a :class:`ForwardResync` event), else the stream ends with a :class:`ForwardStop`.
        """
        if self._done or self._error is not None:
            return
        if self._buf.eof:
            raise ValueError("gap after EOF")
        if self._awaiting is not None:
            # Waiting for the vmdesc: the stream now has a hole, so none will help.
            stop = self._awaiting
            self._gen.close()
            self._buf.skip_gap(length)
            self._gen = self._replay(stop)
            return
        self._gen.close()
        self._buf.skip_gap(length)
        self._at_boundary = False
        self._unit_start = self._buf.base
        self._gen = self._resync()

    def _replay(self, stop: ForwardStop) -> _Need:
        yield stop

    # -- byte access (generator helpers) ---------------------------------------------------
    def _take(self, n: int) -> _Need:
        buf = self._buf
        while buf.available < n:
            if buf.eof:
                raise _Eof
            yield NEED_DATA
        return buf.take(n)

    def _peek(self, n: int) -> _Need:
        """Up to ``n`` next bytes without consuming (fewer only at end of stream)."""
        buf = self._buf
        while buf.available < n and not buf.eof:
            yield NEED_DATA
        return buf.peek(n)

    def _skip(self, n: int) -> _Need:
        buf = self._buf
        while n:
            avail = buf.available
            if not avail:
                if buf.eof:
                    raise _Eof
                yield NEED_DATA
                continue
            k = min(avail, n)
            buf.consume(k)
            n -= k

    def _u8(self) -> _Need:
        return (yield from self._take(1))[0]

    def _be16(self) -> _Need:
        return _BE16.unpack((yield from self._take(2)))[0]

    def _be32(self) -> _Need:
        return _BE32.unpack((yield from self._take(4)))[0]

    def _be64(self) -> _Need:
        return _BE64.unpack((yield from self._take(8)))[0]

    def _pstr(self) -> _Need:
        n = yield from self._u8()
        return (yield from self._take(n)).decode("latin-1")

    def _violation(self, message: str, start: int) -> RemoteViolation:
        at = self.offset
        return RemoteViolation(
            message,
            offset=start,
            release=self.release,
            data=self._buf.span(start, at + 8),
            caret=max(0, at - max(start, self._buf.base) - 1),
            stopped_at=self.offset,
        )

    def _begin(self) -> None:
        self._unit_start = self.offset
        self._at_boundary = False

    def _end_unit(self) -> None:
        self._at_boundary = True

    # -- grammar ------------------------------------------------------------------------------
    def _top(self) -> _Need:
        if self.channel == "preempt":
            yield from self._preempt()
            return
        head = yield from self._peek(8)
        magic = _BE32.pack(self.catalog.magic)
        if len(head) < 8 and head and magic.startswith(head[:4]):
            self._begin()  # the stream ends inside the header
            raise _Eof
        if head[:4] == magic:
            yield from self._header()
        elif self.channel == "main" and head and head[0] != self._t_command:
            self._begin()
            raise self._violation(
                f"stream does not start with the QEVM magic 0x{self.catalog.magic:08x}", 0
            )
        yield from self._units(depth=0, end=None)

    def _header(self) -> _Need:
        self._begin()
        start = self.offset
        magic = yield from self._be32()
        version = yield from self._be32()
        if version != self.catalog.version:
            # QEMU 2.x+ also loads version 2 streams (QEMU_VM_FILE_VERSION_COMPAT).
            if version != 2:
                raise self._violation(
                    f"QEVM version {version}, expected {self.catalog.version}", start
                )
        self._end_unit()
        self._header_seen = True
        yield StreamHeader(release=self.release, offset=start, size=8, magic=magic, version=version)

    def _units(self, *, depth: int, end: int | None) -> _Need:
        """Units until ``end`` (a PACKAGED body's end offset) or the stream's end."""
        while end is None or self.offset < end:
            if end is None:
                self._end_unit()
                probe = yield from self._peek(1)
                if not probe:
                    raise _Eof
            start = self.offset
            self._begin()
            t = yield from self._u8()
            if t == self._t_command:
                yield from self._command(start, depth)
            elif t in self._kind_of:
                yield from self._section(t, start, depth)
            elif t == self._t_config:
                yield from self._configuration(start)
            elif t == self._t_eof:
                yield VmEof(release=self.release, offset=start, depth=depth)
                if depth == 0:
                    head = yield from self._peek(1)
                    if head and head[0] == self._t_vmdesc:
                        yield from self._u8()
                        n = yield from self._be32()
                        yield from self._skip(n)
                        yield VmDescription(
                            release=self.release, offset=start + 1, size=5 + n, json_size=n
                        )
                    self._end_unit()
                    return
            else:
                raise self._violation(f"unknown section type 0x{t:02x}", start)
        self._end_unit()

    def _configuration(self, start: int) -> _Need:
        n = yield from self._be32()
        name = (yield from self._take(n)).decode("latin-1")
        self.machine_type = name
        subs: list[str] = []
        # vmstate_configuration's subsections (savevm.c): target-page-bits, capabilities, uuid.
        while True:
            head = yield from self._peek(1)
            if not head or head[0] != self._t_sub:
                break
            yield from self._u8()
            sub = yield from self._pstr()
            _version = yield from self._be32()
            if sub == "configuration/target-page-bits":
                bits = yield from self._be32()
                if not self._page_size_known:
                    self.target_page_size = 1 << bits
            elif sub == "configuration/capabilities":
                count = yield from self._be32()
                for _ in range(count):
                    subs.append("capability:" + (yield from self._pstr()))
            elif sub == "configuration/uuid":
                yield from self._take(16)
            else:
                raise _Stuck(f"cannot delimit configuration subsection {sub!r}", None, sub)
            subs.append(sub)
        yield SectionHeader(
            release=self.release,
            offset=start,
            size=self.offset - start,
            kind="CONFIGURATION",
            section_id=0,
            idstr=name,
        )

    def _command(self, start: int, depth: int) -> _Need:
        cmd, length = _CMD_HDR.unpack((yield from self._take(4)))
        spec = self.catalog.by_id.get(cmd)
        if spec is None or cmd == 0 or cmd >= self.catalog.max:
            raise self._violation(
                f"MIG_CMD 0x{cmd:x} unknown (len 0x{length:x}) to {self.release}", start
            )
        if spec.length is not None and length != spec.length:
            raise self._violation(
                f"{spec.name} with length {length}, {self.release} expects {spec.length}", start
            )
        payload = yield from self._take(length)
        name = spec.short_name
        fields: dict[str, Any] = {}
        if name == "PING" and length == 4:
            fields["value"] = _BE32.unpack(payload)[0]
        elif name == "POSTCOPY_ADVISE":
            self._postcopy_advised = length == 16
            if length == 16:
                summary, tps = struct.unpack(">QQ", payload)
                fields["page_size_summary"] = summary
                fields["target_page_size"] = tps
                if tps and not self._page_size_known:
                    self.target_page_size = tps
        elif name == "RECV_BITMAP" and length >= 1:
            fields["block_name"] = payload[1 : 1 + payload[0]].decode("latin-1")
        elif name == "POSTCOPY_RAM_DISCARD" and length >= 2:
            n = payload[1]
            fields["block_name"] = payload[2 : 2 + n].decode("latin-1")
            rest = payload[3 + n :]
            fields["ranges"] = [
                list(struct.unpack_from(">QQ", rest, i)) for i in range(0, len(rest) - 15, 16)
            ]
        elif name == "PACKAGED":
            fields["size"] = _BE32.unpack(payload)[0]
        ev = self._command_event(cmd, spec.name, start, payload, depth, fields)
        self._end_unit()
        yield ev
        if name == "PACKAGED":
            yield from self._packaged(fields["size"], depth)

    def _packaged(self, size: int, depth: int) -> _Need:
        body_start = self.offset
        end = body_start + size
        if not self.descend_packaged or depth >= 1:
            self._begin()
            yield from self._skip(size)
            self._end_unit()
            return
        self._package_end = end
        try:
            yield from self._units(depth=depth + 1, end=end)
        except _Stuck as stuck:
            self._begin()
            remaining = end - self.offset
            trailer: list[ForwardCommand] = []
            if remaining <= MAX_TRAILER_SCAN:
                body_at = self.offset
                body = yield from self._take(remaining)
                trailer = self._trailer(body, body_at, depth + 1)
            note = (
                f"; {len(trailer)} trailing command(s) located from the body's end"
                if trailer
                else ""
            )
            yield ForwardStop(
                release=self.release,
                offset=end - remaining,
                reason=stuck.reason + "; skipping the rest of the PACKAGED body" + note,
                section_id=stuck.section_id,
                idstr=stuck.idstr,
                depth=depth + 1,
                final=False,
            )
            yield from iter(trailer)
            yield from self._skip(end - self.offset)
        if self.offset != end:
            raise self._violation(
                f"PACKAGED body of {size} bytes overrun by {self.offset - end} bytes", body_start
            )
        self._end_unit()

    def _trailer(self, body: bytes, body_at: int, depth: int) -> list[ForwardCommand]:
        """Commands that end a PACKAGED body, found from its end.

        QEMU closes the package with ``MIG_CMD_PING`` 3 and ``MIG_CMD_POSTCOPY_RUN``
        after the device state (``postcopy_start``). A suffix is accepted only when
        it is a chain of legal commands ending exactly at the body's end and starting
        right after a section footer (``QEMU_VM_SECTION_FOOTER`` + be32 section id);
        the longest such chain within the last 256 bytes wins.
        """
        best: list[ForwardCommand] = []
        n = len(body)
        for k in range(n - 5, max(4, n - 256), -1):
            if body[k - 5] != self._t_footer:
                continue
            chain = self._command_chain(body, k, body_at, depth)
            if chain and len(chain) > len(best):
                best = chain
        return best

    def _command_chain(
        self, body: bytes, k: int, body_at: int, depth: int
    ) -> list[ForwardCommand] | None:
        out: list[ForwardCommand] = []
        i = k
        while i < len(body):
            if body[i] != self._t_command or i + 5 > len(body):
                return None
            cmd, length = _CMD_HDR.unpack_from(body, i + 1)
            spec = self.catalog.by_id.get(cmd)
            if spec is None or cmd == 0 or (spec.length is not None and spec.length != length):
                return None
            if spec.short_name == "PACKAGED" or i + 5 + length > len(body):
                return None
            payload = bytes(body[i + 5 : i + 5 + length])
            fields: dict[str, Any] = {"located": "from the end of the PACKAGED body"}
            if spec.short_name == "PING":
                fields["value"] = _BE32.unpack(payload)[0]
            out.append(self._command_event(cmd, spec.name, body_at + i, payload, depth, fields))
            i += 5 + length
        return out

    def _command_event(
        self, cmd: int, name: str, offset: int, payload: bytes, depth: int, fields: dict[str, Any]
    ) -> ForwardCommand:
        """The event of a command unit: section-type byte, be16 id, be16 length, payload."""
        return ForwardCommand(
            release=self.release,
            offset=offset,
            size=5 + len(payload),
            cmd=cmd,
            name=name,
            length=len(payload),
            payload=payload,
            depth=depth,
            fields=fields,
        )

    @property
    def sections(self) -> dict[int, str]:
        """Sections started so far (section id → idstr), to seed a resumed stream's reader."""
        return {k: v.idstr for k, v in self._sections.items()}

    def _section(self, t: int, start: int, depth: int) -> _Need:
        kind = self._kind_of[t]
        section_id = yield from self._be32()
        if t in (self._t_start, self._t_full):
            idstr = yield from self._pstr()
            instance_id = yield from self._be32()
            version_id = yield from self._be32()
            self._sections[section_id] = _Section(idstr, instance_id, version_id)
        else:
            known = self._sections.get(section_id)
            if known is None and self._header_seen:
                raise self._violation(f"section id {section_id} was never started", start)
            if known is None:
                # Started on an earlier connection (a resumed stream): it is the RAM
                # section only if its data validates as page records, as after a gap.
                while True:
                    _n, verdict = self._chain(self._buf.pos, len(self._buf.data), section_id)
                    if verdict is None and not self._buf.eof:
                        yield NEED_DATA
                        continue
                    break
                if not verdict:
                    raise _Stuck(
                        f"section {section_id} ({kind}) was started on an earlier connection; "
                        "its idstr is unknown here",
                        section_id,
                        None,
                    )
                known = self._sections[section_id] = _Section(_RAM_IDSTR, 0, 0)
            idstr, instance_id, version_id = known.idstr, known.instance_id, known.version_id
        yield SectionHeader(
            release=self.release,
            offset=start,
            size=self.offset - start,
            kind=kind,
            section_id=section_id,
            idstr=idstr,
            instance_id=instance_id,
            version_id=version_id,
            depth=depth,
        )
        if idstr != _RAM_IDSTR or t == self._t_full:
            done = yield from self._device(
                kind, section_id, idstr, instance_id, version_id, start, depth
            )
            if done:
                yield from self._footer(section_id, start)
                return
            stuck = _Stuck(
                f"cannot delimit device section {section_id} {idstr!r} ({kind}) without vmdesc",
                section_id,
                idstr,
            )
            if depth:
                raise stuck
            self._begin()
            yield ForwardStop(
                release=self.release,
                offset=start,
                reason=stuck.reason,
                section_id=section_id,
                idstr=idstr,
                depth=depth,
            )
            return
        yield from self._ram_records(section_id, depth)
        yield from self._footer(section_id, start)

    # -- device sections ----------------------------------------------------------------
    def _device(
        self,
        kind: str,
        section_id: int,
        idstr: str,
        instance_id: int,
        version_id: int,
        start: int,
        depth: int,
    ) -> _Need:
        """Delimit (and decode) a device section's data; False when nothing says where it ends."""
        if self.vmdesc is None and depth == 0 and self.vmdesc_buffer > 0:
            self._awaiting = ForwardStop(
                release=self.release,
                offset=start,
                reason=(
                    f"cannot delimit device section {section_id} {idstr!r} ({kind}) without vmdesc"
                ),
                section_id=section_id,
                idstr=idstr,
            )
            yield from self._await_vmdesc()
            self._awaiting = None
        entry = self.vmdesc.devices.get((idstr, instance_id)) if self.vmdesc else None
        if entry is not None and entry[0] != version_id:
            raise _Stuck(
                f"device section {section_id} {idstr!r} is version {version_id}, its vmdesc "
                f"entry version {entry[0]}",
                section_id,
                idstr,
            )
        vmsd = entry[1] if entry is not None else None
        buf = self._buf
        data_at = self.offset
        if vmsd is not None:
            while True:
                try:
                    end, fields = walk_fields(
                        vmsd, buf.data, buf.pos, len(buf.data), decode=self.decode_fields,
                        origin=buf.base,
                    )  # fmt: skip
                    break
                except EOFError:
                    if buf.eof:
                        raise _Eof from None
                    yield NEED_DATA
                except VmstateError as exc:
                    raise _Stuck(
                        f"device section {section_id} {idstr!r} does not follow the vmdesc: {exc}",
                        section_id,
                        idstr,
                    ) from None
            buf.pos = end - buf.base
            yield DeviceState(
                release=self.release, offset=data_at, size=self.offset - data_at,
                section_id=section_id, idstr=idstr, instance_id=instance_id,
                version_id=version_id, delimited_by="vmdesc", vmsd_name=vmsd.name,
                depth=depth, fields=fields,
            )  # fmt: skip
            return True
        if self.dump is None or depth == 0 or self._package_end is None:
            return False
        # Inside a PACKAGED body: its size is known, so the whole rest can be read and
        # tiled by units; this section ends at the first footer after which the rest tiles.
        remaining = self._package_end - self.offset
        if remaining > MAX_TRAILER_SCAN:
            return False
        body = yield from self._peek(remaining)
        if len(body) < remaining:
            return False
        memo: dict[int, bool] = {}
        foot = self._section_end(body, 0, section_id, idstr, version_id, memo)
        if foot is None:
            return False
        buf.consume(foot)
        described = self.dump.lookup(idstr)
        yield DeviceState(
            release=self.release, offset=data_at, size=foot, section_id=section_id,
            idstr=idstr, instance_id=instance_id, version_id=version_id,
            delimited_by="footer", vmsd_name=described.name if described else None,
            device_type=described.type_name if described else None, depth=depth,
        )  # fmt: skip
        return True

    def _await_vmdesc(self) -> _Need:
        """Keep every byte until a vmdesc ends the stream (at most :attr:`vmdesc_buffer`)."""
        buf = self._buf
        checked = -1
        while True:
            if len(buf.data) != checked:
                checked = len(buf.data)
                hit = find_vmdesc(buf.data, buf.pos)
                if hit is not None:
                    at, n = hit
                    try:
                        self.vmdesc = parse_vmdesc(bytes(buf.data[at + 5 : at + 5 + n]))
                        return
                    except VmstateError:
                        pass
            if buf.eof or buf.available > self.vmdesc_buffer:
                return
            yield NEED_DATA

    def _section_end(
        self, body: bytes, p: int, sid: int, idstr: str, version: int, memo: dict[int, bool]
    ) -> int | None:
        """Offset in ``body`` of the footer ending the section whose data starts at ``p``."""
        entry = self.dump.lookup(idstr) if self.dump is not None else None
        if entry is not None and entry.version != version:
            return None  # the source writes its own vmsd version_id
        footer = bytes([self._t_footer]) + _BE32.pack(sid)
        q = body.find(footer, p)
        while q != -1:
            if self._tiles(body, q + 5, memo):
                return q
            q = body.find(footer, q + 1)
        return None

    def _tiles(self, body: bytes, p: int, memo: dict[int, bool]) -> bool:
        """Whether ``body[p:]`` is a chain of legal units ending exactly at its end."""
        if p in memo:
            return memo[p]
        memo[p] = False  # no cycles: every unit moves on
        n = len(body)
        ok = False
        if p == n:
            ok = True
        elif body[p] == self._t_command and p + 5 <= n:
            cmd, length = _CMD_HDR.unpack_from(body, p + 1)
            spec = self.catalog.by_id.get(cmd)
            ok = (
                spec is not None and cmd != 0 and cmd < self.catalog.max
                and spec.short_name != "PACKAGED"
                and (spec.length is None or spec.length == length)
                and self._tiles(body, p + 5 + length, memo)
            )  # fmt: skip
        elif body[p] == self._t_eof:
            ok = self._tiles(body, p + 1, memo)
        elif body[p] in (self._t_full, self._t_start) and p + 6 <= n:
            sid = _BE32.unpack_from(body, p + 1)[0]
            ln = body[p + 5]
            q = p + 6 + ln + 8
            name = body[p + 6 : p + 6 + ln]
            if ln and q <= n and all(0x20 < c < 0x7F for c in name):
                version = _BE32.unpack_from(body, q - 4)[0]
                idstr = name.decode("latin-1")
                ok = self._section_end(body, q, sid, idstr, version, memo) is not None
        memo[p] = ok
        return ok

    def _footer(self, section_id: int | None, start: int) -> _Need:
        """The section footer; ``section_id=None`` (after a re-sync) learns the RAM section."""
        head = yield from self._peek(1)
        if not head:
            raise _Eof
        if head[0] == self._t_footer:
            yield from self._u8()
            sid = yield from self._be32()
            if section_id is None:
                self._sections[sid] = _Section(_RAM_IDSTR, 0, 0)
            elif sid != section_id:
                raise self._violation(
                    f"section footer names section {sid}, expected {section_id}", start
                )
            self._footers = True
        elif self._footers:
            raise self._violation(f"section {section_id} has no footer", start)
        self._end_unit()

    def _ram_records(self, section_id: int, depth: int) -> _Need:
        """``ram_load_precopy``'s loop: page headers until ``RAM_SAVE_FLAG_EOS``."""
        while True:
            rec, flags, addr, op = yield from self._record_header(guess_block=True)
            if op == _RAM_EOS:
                return
            if op == _RAM_MEM_SIZE:
                yield from self._mem_size(rec, addr)
                continue
            if op == _RAM_MULTIFD_FLUSH:
                continue
            yield from self._page(rec, flags, addr, op, section_id)

    def _record_header(self, *, guess_block: bool) -> _Need:
        """A page record's be64 ``addr | flags`` and block name: (offset, flags, addr, op).

        ``guess_block``: a CONTINUE record with no block named yet (after a gap) gets
        the only known block large enough for its address.
        """
        rec = self.offset
        self._begin()
        word = yield from self._be64()
        mask = self.target_page_size - 1
        flags, addr = word & mask, word & ~mask
        if flags & _RAM_WITH_BLOCK and not flags & _RAM_CONTINUE:
            self._last_block = yield from self._pstr()
        elif guess_block and not self._last_block and flags & _RAM_WITH_BLOCK:
            self._last_block = self._guess_block(addr)
        return rec, flags, addr, flags & ~_RAM_CONTINUE

    def _page(self, rec: int, flags: int, addr: int, op: int, section_id: int | None) -> _Need:
        """A page's data, counted, and its :class:`RamPage` when pages are wanted."""
        kind = yield from self._page_body(op, section_id)
        self.page_count += 1
        if self.pages:
            yield RamPage(
                release=self.release,
                offset=rec,
                size=self.offset - rec,
                block=self._last_block,
                addr=addr,
                flags=flags,
                kind=kind,
            )

    def _page_body(self, op: int, section_id: int | None) -> _Need:
        if op == _RAM_PAGE:
            yield from self._skip(self.target_page_size)
            return "page"
        if op == _RAM_ZERO:
            yield from self._take(1)
            return "zero"
        if op == _RAM_XBZRLE:
            yield from self._take(1)
            n = yield from self._be16()
            yield from self._skip(n)
            return "xbzrle"
        if op == _RAM_COMPRESS_PAGE:
            n = yield from self._be32()
            yield from self._skip(n)
            return "compressed"
        raise _Stuck(
            f"RAM flags 0x{op:x} cannot be walked (RDMA hook, obsolete FULL, or a target page "
            f"size other than {self.target_page_size})",
            section_id,
            _RAM_IDSTR,
        )

    def _mem_size(self, rec: int, total: int) -> _Need:
        blocks: list[tuple[str, int]] = []
        remaining = total
        while remaining > 0:
            name = yield from self._pstr()
            used = yield from self._be64()
            blocks.append((name, used))
            remaining -= used
            if self._postcopy_advised:
                # ram_save_setup adds be64 page_size for blocks whose page size differs
                # from the host's: it is a power of two with no flag bits, unlike the
                # length byte of the next idstr or the next page header.
                # A power of two >= 4096 is neither (its first byte is 0, and no idstr is
                # empty; its low 12 bits are 0, and every page header has a flag there).
                nxt = yield from self._peek(8)
                if len(nxt) == 8:
                    (v,) = _BE64.unpack(nxt)
                    if v >= 4096 and v & (v - 1) == 0:
                        yield from self._take(8)
        if remaining != 0:
            raise _Stuck(
                f"RAM_SAVE_FLAG_MEM_SIZE lists {total - remaining} bytes of blocks for a total "
                f"of {total}: ignore-shared or mapped-ram layouts are not walked",
                None,
                _RAM_IDSTR,
            )
        self.ram_blocks.update(blocks)
        yield RamBlocks(
            release=self.release,
            offset=rec,
            size=self.offset - rec,
            total=total,
            blocks=tuple(blocks),
        )

    def _preempt(self) -> _Need:
        """The postcopy preempt channel: page headers only (``ram_load_postcopy``)."""
        yield from self._preempt_records()

    # -- re-synchronisation after a gap --------------------------------------------------
    def _ram_section_id(self) -> int | None:
        ids = [k for k, v in self._sections.items() if v.idstr == _RAM_IDSTR]
        return ids[-1] if ids else None

    def _resync(self) -> _Need:
        sid = self._ram_section_id()
        # With no RAM section seen yet (a capture that begins mid-connection), any
        # section id is accepted in the footer that validates the chain, and learnt.
        skipped = 0
        scan = self._buf.pos  # candidates before this were rejected for good
        while True:
            found, scan = self._find_chain(scan, sid)
            if found is not None:
                p, n = found
                skipped += p - self._buf.pos
                self._buf.pos = p
                yield ForwardResync(
                    release=self.release,
                    offset=self.offset,
                    skipped=skipped,
                    records=n,
                    section_id=sid,
                )
                break
            if self._buf.eof:
                skipped += len(self._buf.data) - self._buf.pos
                self._buf.pos = len(self._buf.data)
                yield ForwardStop(
                    release=self.release,
                    offset=self.offset,
                    reason=(
                        f"no re-sync point in the {skipped} bytes after the gap"
                        if skipped
                        else "the stream ends in the gap: nothing after it to re-sync on"
                    ),
                )
                return
            # Bytes before the first undecided candidate can go (memory stays bounded).
            skipped += scan - self._buf.pos
            self._buf.pos = scan
            yield NEED_DATA
        if self.channel == "preempt":
            yield from self._preempt_records()
            return
        start = self.offset
        yield from self._ram_records(sid if sid is not None else -1, 0)
        yield from self._footer(sid, start)
        yield from self._units(depth=0, end=None)

    def _candidates(self, start: int) -> Iterator[int]:
        # A page header's top two bytes are 0 (addresses < 256 TiB) and its flag bits
        # sit below the page mask: cheap to find with a regex, then validated in full.
        pattern = _HEADER_RE if self.target_page_size == 4096 else _ANY_HEADER_RE
        for m in pattern.finditer(self._buf.data, start):
            yield m.start()

    def _find_chain(self, start: int, sid: int | None) -> tuple[tuple[int, int] | None, int]:
        """The first validated chain from ``start``, and where to scan from next time.

        A candidate is accepted once :data:`RESYNC_MIN_RECORDS` records parse, or fewer
        end in ``RAM_SAVE_FLAG_EOS`` followed by this section's footer; rejected when a
        header is illegal; undecided (wait for bytes) when the data runs out first.
        """
        end = len(self._buf.data)
        for p in self._candidates(start):
            n, verdict = self._chain(p, end, sid)
            if verdict is True:
                return (p, n), p
            if verdict is None:
                if self._buf.eof and n >= 2:
                    return (p, n), p
                if not self._buf.eof:
                    return None, p
        return None, max(start, end - 7)

    def _chain(self, p: int, end: int, sid: int | None) -> tuple[int, bool | None]:
        """Records parsed back to back from ``p``: (count, True/False/None = undecided)."""
        data = self._buf.data
        mask = self.target_page_size - 1
        sizes = self.ram_blocks
        biggest = max(sizes.values()) if sizes else 1 << 48
        n = 0
        while n < RESYNC_MIN_RECORDS:
            if p + 8 > end:
                return n, None
            (word,) = _BE64.unpack_from(data, p)
            flags, addr = word & mask, word & ~mask
            op = flags & ~_RAM_CONTINUE
            q = p + 8
            if op == _RAM_EOS:
                if n == 0:
                    return n, False
                if self._footers is False:
                    return n, True
                if q + 5 > end:
                    return n, None
                ok = data[q] == self._t_footer and (
                    sid is None or _BE32.unpack_from(data, q + 1)[0] == sid
                )
                return n, ok
            if op == _RAM_MULTIFD_FLUSH:
                p = q
                n += 1
                continue
            if op not in (_RAM_PAGE, _RAM_ZERO):
                return n, False
            if not flags & _RAM_CONTINUE:
                if q >= end:
                    return n, None
                ln = data[q]
                if q + 1 + ln > end:
                    return n, None
                name = bytes(data[q + 1 : q + 1 + ln]).decode("latin-1")
                if ln == 0 or (sizes and name not in sizes):
                    return n, False
                if sizes and addr >= sizes[name]:
                    return n, False
                q += 1 + ln
            elif addr >= biggest:
                return n, False
            q += self.target_page_size if op == _RAM_PAGE else 1
            p = q
            n += 1
        return n, True

    def _guess_block(self, addr: int) -> str:
        """The only known block large enough for ``addr`` (a CONTINUE record after a gap)."""
        fits = [k for k, v in self.ram_blocks.items() if addr < v]
        return fits[0] if len(fits) == 1 else ""

    def _preempt_records(self) -> _Need:
        while True:
            self._end_unit()
            probe = yield from self._peek(1)
            if not probe:
                raise _Eof
            rec, flags, addr, op = yield from self._record_header(guess_block=False)
            if op == _RAM_EOS:
                self._end_unit()
                continue
            try:
                yield from self._page(rec, flags, addr, op, None)
            except _Stuck as stuck:
                yield ForwardStop(release=self.release, offset=rec, reason=stuck.reason)
                return
