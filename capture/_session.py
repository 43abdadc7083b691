"""Migration connections in a capture: find them, decode both directions, correlate.

Data flow: packets (pcap/pcapng) → :class:`~._tcp.HalfStream` per direction →
:class:`Data`/:class:`Hole` pieces → per connection, once its role is known,
the protocol core's readers (:class:`~migcompat.protocol.FastReader` for the
return path, the model ``Reader``'s events at its speed;
:class:`~migcompat.protocol.ForwardReader` for the forward stream; no
second parser, style anchor 13) → records (plain dicts with stable keys) handed
to a callback as they appear, plus the counters of a :class:`CaptureReport`.

A lab recording folder (``rp.bin``, ``fwd.bin``, ``chunks.jsonl``) enters the
same pipeline as pieces straight from its chunk index.

Roles (reference §E-F): the direction whose first bytes are ``QEVM`` + version is
the source's main channel, its reverse the return path; a stream that starts
with ``MIG_CMD_RECV_BITMAP``/``POSTCOPY_RESUME`` is a main channel resumed after
postcopy recovery (no header); ``0x11223344`` starts a multifd channel; bare RAM
page headers a postcopy-preempt channel. Those carry no return-path frames.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import struct
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from migcompat.protocol import (
    NEED_DATA,
    STOPPED,
    DeviceState,
    DumpLayout,
    EndOfStream,
    FastReader,
    ForwardCommand,
    ForwardEnd,
    ForwardReader,
    ForwardResync,
    ForwardStop,
    InputError,
    Message,
    Pong,
    RamBlock,
    RamBlocks,
    RamPage,
    Reader,
    RecvBitmap,
    Release,
    RemoteViolation,
    ReqPages,
    ReqPagesId,
    ResumeAck,
    SectionHeader,
    Shut,
    StreamHeader,
    VmDescription,
    VmEof,
    fields_dict,
    known_releases,
    machine_version,
    parse_release,
    stream_catalog,
)

from ._packets import addr_text, decode_tcp, iter_packets, sniff_format
from ._tcp import Data, HalfStream, Hole

__all__ = [
    "CaptureOptions",
    "CaptureReport",
    "ConnectionInfo",
    "Migration",
    "decode_capture",
    "iter_all",
    "keepalives",
    "percentile",
    "rp_silences",
]


def __dir__() -> list[str]:
    return list(__all__)


Record = dict[str, Any]
_MULTIFD_MAGIC = 0x11223344
_HEAD_NEEDED = 16
_TOP_GAPS = 5
#: A connection seen without its start: return-path segments tried as sync points, and
#: bytes kept while deciding (then it is "other").
_SYNC_TRIES = 8
_MAX_PENDING = 4 << 20
_CLASSIFY_SECONDS = 60.0


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100) of a non-empty sequence."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))
    return s[k]


@dataclass(slots=True)
class CaptureOptions:
    """What to decode and how."""

    source: Release | None = None
    #: Why ``source`` was chosen (``"--source"``, ``"metadata.json"``, ``"stream"``).
    source_basis: str = "--source"
    port: int | None = None
    connection: str | None = None
    check_against: tuple[Release, ...] = ()
    keepalive_period: float = 60.0
    pages: bool = False
    descend_packaged: bool = True
    #: Decode every field of device sections walked with a vmdesc (off: delimit only).
    decode_fields: bool = False
    #: ``-dump-vmstate`` of the source binary (delimits device sections inside PACKAGED).
    dump: DumpLayout | None = None


@dataclass(slots=True)
class ConnectionInfo:
    """One TCP connection (or one recorded connection of a lab run)."""

    id: str
    client: str
    server: str
    first_ts: float
    role: str = "pending"
    migration: int | None = None
    #: Which side is the source (the client for every channel QEMU opens).
    fwd_is_c2s: bool = True
    closed_ts: float | None = None
    closed_how: str | None = None
    mid_stream: bool = False
    bytes: dict[str, int] = field(default_factory=lambda: {"fwd": 0, "rp": 0})
    holes: list[dict[str, Any]] = field(default_factory=list)
    retransmitted: int = 0
    out_of_order: int = 0
    overlaps: int = 0
    rp_counts: Counter[str] = field(default_factory=Counter)
    fwd_counts: Counter[str] = field(default_factory=Counter)
    rp_verdict: str = "no frames"
    rp_error: str | None = None
    fwd_end: str | None = None
    fwd_decoded: int = 0
    pages: int = 0
    resyncs: int = 0
    resyncs_fwd: int = 0
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: RP frame times, for silences (return paths are small: kept as floats).
    rp_times: list[float] = field(default_factory=list)

    def label(self) -> str:
        return f"{self.id} {self.client} → {self.server}"


@dataclass(slots=True)
class Migration:
    """A migration: one QEVM main channel plus its resumed main channels and side channels."""

    index: int
    machine_type: str | None = None
    connections: list[str] = field(default_factory=list)
    states: list[tuple[float, str]] = field(default_factory=list)
    commands: Counter[str] = field(default_factory=Counter)
    sections: dict[int, str] = field(default_factory=dict)
    pings: dict[int, deque[float]] = field(default_factory=dict)
    ping_rtts: list[float] = field(default_factory=list)
    unanswered_pings: int = 0
    #: PONGs whose PING was not seen (it fell in a hole or an undelimited package).
    orphan_pongs: int = 0
    bitmaps: dict[str, deque[float]] = field(default_factory=dict)
    bitmap_pairs: list[tuple[str, float]] = field(default_factory=list)
    resume_ts: deque[float] = field(default_factory=deque)
    resume_pairs: list[float] = field(default_factory=list)
    requests: dict[tuple[str, int], deque[tuple[float, bool]]] = field(default_factory=dict)
    #: One bit per target page seen on the forward stream, per block (grows on demand).
    seen: dict[str, bytearray] = field(default_factory=dict)
    request_count: int = 0
    page_latencies: list[float] = field(default_factory=list)
    pages_walked: int = 0
    #: The source's RAMBlocks (idstr → used length), from ``RAM_SAVE_FLAG_MEM_SIZE``.
    ram_blocks: dict[str, int] = field(default_factory=dict)
    #: Stream time after which forward pages could not be seen (a hole, a stop).
    fwd_blind_from: float | None = None
    fwd_holes: int = 0
    postcopy: bool = False
    done: bool = False

    def mark_seen(self, block: str, addr: int) -> None:
        bits = self.seen.setdefault(block, bytearray())
        i = addr >> 12
        if (i >> 3) >= len(bits):
            bits.extend(bytes((i >> 3) + 1 - len(bits) + 4096))
        bits[i >> 3] |= 1 << (i & 7)

    def was_seen(self, block: str, addr: int) -> bool:
        bits = self.seen.get(block)
        i = addr >> 12
        return bits is not None and (i >> 3) < len(bits) and bool(bits[i >> 3] & (1 << (i & 7)))

    def state(self, ts: float, name: str) -> None:
        if not self.states or self.states[-1][1] != name:
            self.states.append((ts, name))


@dataclass(slots=True)
class CaptureReport:
    """Everything the summary prints: connections, migrations, problems."""

    path: str
    kind: str
    source: Release | None
    source_basis: str
    start_ts: float = 0.0
    end_ts: float = 0.0
    packets: int = 0
    connections: dict[str, ConnectionInfo] = field(default_factory=dict)
    migrations: list[Migration] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    metadata_source: str | None = None

    @property
    def duration(self) -> float:
        return max(0.0, self.end_ts - self.start_ts)


# -- per-connection decoding --------------------------------------------------------------
class _RpStream:
    """The return path of one main channel: the source's reader, re-synced after holes."""

    def __init__(self, release: Release, checks: Sequence[Release]) -> None:
        self.release = release
        self.reader: FastReader | None = FastReader(release)
        self.base = 0
        self.waiting_sync = False
        self.dead = False
        self.checks = {str(r): FastReader(r) for r in checks}
        self.check_state: dict[str, dict[str, Any]] = {
            str(r): {"verdict": "accepted", "frames": 0, "offset": None, "error": None}
            for r in checks
        }
        self.last_block: str | None = None
        #: Set once a page request was read: RAM checks can no longer start cleanly.
        self.req_seen = False

    def apply_ram(self, blocks: dict[str, int]) -> None:
        """Give the readers the source's RAMBlocks (from the forward stream's MEM_SIZE).

        With them the readers run QEMU's block-name, range and alignment checks on page
        requests and bitmaps. Only before the first page request (so that "the last
        block named" is known to them) and never to a reader re-synced after a hole.
        """
        if self.req_seen or self.waiting_sync or self.base:
            return
        for rd in (self.reader, *self.checks.values()):
            if rd is not None and rd.ram_blocks is None:
                rd.ram_blocks = {k: RamBlock(k, v) for k, v in blocks.items()}

    def apply_machine(self, machine: str) -> None:
        """Tell the readers the machine type (11.1+ sources expect the legacy
        SWITCHOVER_ACK of older machine types)."""
        for rd in (self.reader, *self.checks.values()):
            if rd is not None:
                rd.set_machine(machine)

    def feed_checks(self, data: bytes | None, hole_at: int | None = None) -> None:
        for rel, rd in list(self.checks.items()):
            st = self.check_state[rel]
            if data is None:
                if st["verdict"] == "accepted":
                    st["verdict"], st["offset"] = "incomplete", hole_at
                del self.checks[rel]
                continue
            rd.receive_data(data) if data else rd.receive_data(b"")
            try:
                for ev in rd.events():
                    if isinstance(ev, Message):
                        st["frames"] += 1
                    elif isinstance(ev, EndOfStream) and ev.truncated:
                        st["verdict"], st["offset"] = "truncated", ev.offset
                        st["error"] = ev.qemu_error
            except RemoteViolation as exc:
                st["verdict"], st["offset"], st["error"] = "rejected", exc.offset, exc.qemu_error
                del self.checks[rel]


def _try_sync(release: Release, data: bytes) -> FastReader | None:
    """A fresh reader if ``data`` is whole frames from its first byte to its last.

    The bytes continue a return path (after a hole): a block was named before them, so a
    REQ_PAGES without a REQ_PAGES_ID is a frame here (``req_pages_block``).
    """
    probe = Reader(release, req_pages_block="")
    probe.receive_data(data)
    end = 0
    frames = 0
    try:
        for ev in probe.events():
            if isinstance(ev, Message):
                frames += 1
                end = ev.offset + ev.size
    except RemoteViolation:
        return None
    if frames == 0 or end != len(data):
        return None
    fresh = FastReader(release, req_pages_block="")
    fresh.receive_data(data)
    return fresh


class CaptureDecoder:
    """Feeds reassembled pieces to the readers; emits records; keeps the report's counters."""

    def __init__(
        self,
        report: CaptureReport,
        options: CaptureOptions,
        on_record: Callable[[Record], None] | None,
    ) -> None:
        self.report = report
        self.opt = options
        self.on_record = on_record
        assert options.source is not None
        self.release = options.source
        self.stream_cat = stream_catalog(self.release)
        self._cmd_ids = {m.short_name: m.id for m in self.stream_cat.commands}
        self.conns = report.connections
        self._fwd: dict[str, ForwardReader | None] = {}
        self._rp: dict[str, _RpStream] = {}
        self._pending: dict[str, list[tuple[str, Data | Hole]]] = {}
        self._heads: dict[str, dict[str, bytearray]] = {}
        self._last_ts = 0.0
        self._blind: dict[str, bool] = {}
        self._open_holes: dict[tuple[str, str], dict[str, Any]] = {}

    # -- records --------------------------------------------------------------------------
    def emit(
        self,
        ts: float,
        conn: str | None,
        direction: str | None,
        kind: str,
        name: str,
        offset: int | None = None,
        **fields: Any,
    ) -> None:
        if self.on_record is None:
            return
        self.on_record(
            {
                "t": round(ts - self.report.start_ts, 6),
                "conn": conn,
                "dir": direction,
                "kind": kind,
                "name": name,
                "offset": offset,
                "fields": fields,
            }
        )

    def migration_of(self, conn: ConnectionInfo) -> Migration | None:
        return None if conn.migration is None else self.report.migrations[conn.migration]

    # -- connections ---------------------------------------------------------------------------
    def open(self, info: ConnectionInfo) -> None:
        self.conns[info.id] = info
        self._pending[info.id] = []
        self._heads[info.id] = {"c2s": bytearray(), "s2c": bytearray()}
        self.emit(
            info.first_ts,
            info.id,
            None,
            "connection",
            "open",
            client=info.client,
            server=info.server,
            mid_stream=info.mid_stream,
        )

    def set_role(self, info: ConnectionInfo, role: str, fwd_is_c2s: bool, ts: float) -> None:
        info.role = role
        info.fwd_is_c2s = fwd_is_c2s
        mig: Migration | None = None
        if role == "main" or (role == "main-rp-only" and not self.report.migrations):
            mig = Migration(index=len(self.report.migrations))
            self.report.migrations.append(mig)
        elif self.report.migrations:
            # Resumed main channels and side channels join the latest migration.
            mig = self.report.migrations[-1]
        if mig is not None:
            info.migration = mig.index
            mig.connections.append(info.id)
        if role == "main-rp-only":
            rs = _RpStream(self.release, self.opt.check_against)
            if info.mid_stream:
                rs.waiting_sync = True  # the first bytes may be the middle of a frame
                rs.reader = None
                rs.feed_checks(None, hole_at=0)
            self._rp[info.id] = rs
            # The forward reader starts as after a gap: it waits for page records.
            fwd = ForwardReader(
                self.release, channel="main", descend_packaged=self.opt.descend_packaged
            )
            fwd.gap(0)
            self._fwd[info.id] = fwd
            self.emit(
                ts,
                info.id,
                None,
                "connection",
                "note",
                "forward-unseen",  # type: ignore[arg-type]  # as offset: a bug, for branch capture
                note="the forward stream's start is not in the capture; the reverse "
                "direction starts with whole return-path frames",
            )
        if role in ("main", "main-resumed"):
            seed = dict(mig.sections) if (mig and role == "main-resumed") else None
            self._fwd[info.id] = ForwardReader(
                self.release,
                channel="main",
                sections=seed,
                descend_packaged=self.opt.descend_packaged,
                decode_fields=self.opt.decode_fields,
                dump=self.opt.dump,
            )
            self._rp[info.id] = _RpStream(self.release, self.opt.check_against)
            if mig is not None and mig.ram_blocks:
                self._rp[info.id].apply_ram(mig.ram_blocks)
            if mig is not None and role == "main-resumed":
                mig.postcopy = True
                mig.state(ts, "postcopy-recover")
        elif role == "postcopy-preempt":
            self._fwd[info.id] = ForwardReader(self.release, channel="preempt")
        self.emit(
            ts,
            info.id,
            None,
            "connection",
            "role",
            role=role,
            migration=info.migration,
            source=info.client if fwd_is_c2s else info.server,
        )

    def _classify(self, info: ConnectionInfo) -> bool:
        heads = self._heads[info.id]
        # Mid-connection bytes are not a channel's opening: never classify on them.
        for d in () if info.mid_stream else ("c2s", "s2c"):
            head = bytes(heads[d])
            role = self._role_of(head)
            if role:
                self.set_role(info, role, d == "c2s", self._last_ts)
                return True
        c2s = len(heads["c2s"])
        if self._blind.get(info.id):
            # The source's side was not captured from its start: the reverse direction
            # is a return path if one of its first segments is a run of whole frames.
            tried = _SYNC_TRIES
            for d in ("s2c", "c2s"):
                backs = [p for dd, p in self._pending[info.id] if dd == d and isinstance(p, Data)]
                tried = min(tried, len(backs))
                for p in backs[:_SYNC_TRIES]:
                    if _try_sync(self.release, p.data) is not None:
                        self.set_role(info, "main-rp-only", d == "s2c", self._last_ts)
                        return True
            if tried >= _SYNC_TRIES or self._last_ts - info.first_ts > _CLASSIFY_SECONDS:
                info.role = "other"
                self.emit(self._last_ts, info.id, None, "connection", "role", role="other",
                          migration=None, source=None)  # fmt: skip
                return True
            self._bound_pending(info.id)
            return False
        if c2s >= _HEAD_NEEDED:
            info.role = "other"
            self.emit(
                self._last_ts,
                info.id,
                None,
                "connection",
                "role",
                role="other",
                migration=None,
                source=None,
            )
            return True
        return False

    def _bound_pending(self, cid: str) -> None:
        """Keep at most :data:`_MAX_PENDING` bytes per direction while a role is undecided.

        The oldest are turned into holes: a forward reader starts such a connection as
        after a gap anyway, and a return path re-syncs the same way.
        """
        pending = self._pending[cid]
        for d in ("c2s", "s2c"):
            size = sum(len(p.data) for dd, p in pending if dd == d and isinstance(p, Data))
            for i, (dd, p) in enumerate(pending):
                if size <= _MAX_PENDING:
                    break
                if dd == d and isinstance(p, Data):
                    pending[i] = (dd, Hole(p.offset, len(p.data), p.ts, p.packet, "lost"))
                    size -= len(p.data)

    def _role_of(self, head: bytes) -> str | None:
        cat = self.stream_cat
        if len(head) >= 8:
            magic, version = struct.unpack_from(">II", head)
            if magic == cat.magic and version in (cat.version, 2):
                return "main"
            if magic == _MULTIFD_MAGIC:
                return "multifd"
        if len(head) >= 5 and head[0] == cat.section_types["QEMU_VM_COMMAND"]:
            cmd, length = struct.unpack_from(">HH", head, 1)
            spec = cat.by_id.get(cmd)
            if spec is not None and spec.short_name in ("RECV_BITMAP", "POSTCOPY_RESUME"):
                if spec.length is None or spec.length == length:
                    return "main-resumed"
        if len(head) >= 10:
            (word,) = struct.unpack_from(">Q", head)
            flags = word & 0xFFF
            n = head[8]
            name = head[9 : 9 + n]
            if (
                flags in (0x02, 0x08)
                and 0 < n
                and len(name) == n
                and all(0x20 <= b < 0x7F for b in name)
            ):
                return "postcopy-preempt"
        return None

    def piece(self, info: ConnectionInfo, d: str, p: Data | Hole) -> None:
        """A reassembled piece of direction ``d`` (``c2s``/``s2c``) of a connection."""
        self._last_ts = p.ts
        if info.role == "pending":
            if info.mid_stream:
                self._blind[info.id] = True
            self._pending[info.id].append((d, p))
            head = self._heads[info.id][d]
            if len(head) < _HEAD_NEEDED:
                if isinstance(p, Data) and p.offset == len(head):
                    head += p.data[: _HEAD_NEEDED - len(head)]
                else:
                    # A hole at the start: pad with bytes that match no channel's opening,
                    # so the connection is classified on what is there, never guessed.
                    head += b"\xff" * (_HEAD_NEEDED - len(head))
                    self._blind[info.id] = True
            if not self._classify(info):
                return
            pending = self._pending.pop(info.id, [])
            for dd, pp in pending:
                self._dispatch(info, dd, pp)
            return
        self._dispatch(info, d, p)

    def _dispatch(self, info: ConnectionInfo, d: str, p: Data | Hole) -> None:
        if info.role in ("pending", "other"):
            return
        direction = "fwd" if (d == "c2s") == info.fwd_is_c2s else "rp"
        key = (info.id, direction)
        if isinstance(p, Hole):
            hole = self._open_holes.get(key)
            if hole is not None and hole["offset"] + hole["length"] == p.offset:
                # One record per run of missing bytes; the readers still get every piece.
                hole["length"] += p.length
                hole["packets"] += 1
            else:
                self._flush_hole(info, direction)
                self._open_holes[key] = {
                    "dir": direction,
                    "offset": p.offset,
                    "length": p.length,
                    "reason": p.reason,
                    "t": round(p.ts - self.report.start_ts, 6),
                    "packet": p.packet,
                    "packets": 1,
                    "ts": p.ts,
                }
        else:
            self._flush_hole(info, direction)
            info.bytes[direction] += len(p.data)
        if direction == "fwd":
            self._fwd_piece(info, p)
        elif info.role in ("main", "main-resumed", "main-rp-only"):
            self._rp_piece(info, p)
        elif isinstance(p, Data):
            self.emit(
                p.ts,
                info.id,
                "rp",
                "note",
                "unexpected-reverse-bytes",
                p.offset,
                length=len(p.data),
                note=f"{info.role} channels carry no return-path frames",
            )

    def _flush_hole(self, info: ConnectionInfo, direction: str) -> None:
        hole = self._open_holes.pop((info.id, direction), None)
        if hole is None:
            return
        ts = hole.pop("ts")
        info.holes.append(hole)
        self.emit(
            ts,
            info.id,
            direction,
            "hole",
            hole["reason"],
            hole["offset"],
            length=hole["length"],
            packet=hole["packet"],
            packets=hole["packets"],
        )

    # -- forward ------------------------------------------------------------------------------
    def _fwd_piece(self, info: ConnectionInfo, p: Data | Hole) -> None:
        rd = self._fwd.get(info.id)
        if rd is None:
            return
        mig = self.migration_of(info)
        if isinstance(p, Hole):
            # The reader drops what it buffered and looks for a run of page records.
            rd.gap(p.length)
            if mig is not None:
                mig.fwd_holes += 1
                if mig.fwd_blind_from is None:
                    mig.fwd_blind_from = p.ts
            self._drain_fwd(info, rd, p.ts)
            return
        rd.receive_data(p.data)
        self._drain_fwd(info, rd, p.ts)

    def _drain_fwd(self, info: ConnectionInfo, rd: ForwardReader, ts: float) -> None:
        mig = self.migration_of(info)
        try:
            while True:
                ev = rd.next_event()
                if ev is NEED_DATA or ev is STOPPED:
                    break
                self._fwd_event(info, mig, ev, ts)
        except RemoteViolation as exc:
            info.fwd_end = f"rejected at offset {exc.offset}: {exc.message}"
            info.fwd_decoded = rd.offset
            self._fwd[info.id] = None
            self.emit(ts, info.id, "fwd", "fwd-violation", exc.message, exc.offset)
            if mig is not None and mig.fwd_blind_from is None:
                mig.fwd_blind_from = ts
            return
        if rd.stopped and self._fwd.get(info.id) is rd:
            info.fwd_decoded = rd.offset
            self._fwd[info.id] = None
            if mig is not None and mig.fwd_blind_from is None and info.role != "main-resumed":
                mig.fwd_blind_from = ts

    def _fwd_event(self, info: ConnectionInfo, mig: Migration | None, ev: Any, ts: float) -> None:
        cid = info.id
        if isinstance(ev, RamPage):
            info.pages += 1
            if mig is not None:
                mig.pages_walked += 1
                mig.mark_seen(ev.block, ev.addr)
                waiting = mig.requests.get((ev.block, ev.addr))
                if waiting:
                    t_req, _ = waiting.popleft()
                    if not waiting:
                        del mig.requests[(ev.block, ev.addr)]
                    lat = ts - t_req
                    mig.page_latencies.append(lat)
                    self.emit(
                        ts,
                        cid,
                        "fwd",
                        "page-served",
                        ev.kind,
                        ev.offset,
                        block=ev.block,
                        addr=ev.addr,
                        latency_ms=round(lat * 1e3, 3),
                    )
                    return
            if self.opt.pages:
                self.emit(
                    ts,
                    cid,
                    "fwd",
                    "page",
                    ev.kind,
                    ev.offset,
                    block=ev.block,
                    addr=ev.addr,
                    flags=ev.flags,
                )
            return
        if isinstance(ev, StreamHeader):
            info.fwd_counts["header"] += 1
            if mig:
                mig.state(ts, "setup")
            self.emit(
                ts,
                cid,
                "fwd",
                "header",
                "QEVM",
                ev.offset,
                magic=f"0x{ev.magic:08x}",
                version=ev.version,
            )
        elif isinstance(ev, SectionHeader):
            info.fwd_counts[f"section {ev.kind}"] += 1
            if ev.kind == "CONFIGURATION":
                if mig:
                    mig.machine_type = ev.idstr
                if cid in self._rp:
                    self._rp[cid].apply_machine(ev.idstr)
                self.emit(
                    ts, cid, "fwd", "section", "CONFIGURATION", ev.offset, machine_type=ev.idstr
                )
                return
            if mig is not None:
                mig.sections[ev.section_id] = ev.idstr
                if ev.idstr == "ram" and mig.states and mig.states[-1][1] == "setup":
                    mig.state(ts, "precopy")
                elif ev.kind == "FULL" and ev.depth == 0 and not mig.postcopy:
                    mig.state(ts, "device")
            if ev.kind != "PART" or ev.idstr != "ram":
                self.emit(
                    ts,
                    cid,
                    "fwd",
                    "section",
                    ev.kind,
                    ev.offset,
                    section_id=ev.section_id,
                    idstr=ev.idstr,
                    instance_id=ev.instance_id,
                    version_id=ev.version_id,
                    depth=ev.depth,
                )
        elif isinstance(ev, RamBlocks):
            if mig is not None:
                mig.ram_blocks.update(ev.blocks)
                for other in mig.connections:
                    if other in self._rp:
                        self._rp[other].apply_ram(mig.ram_blocks)
            self.emit(
                ts,
                cid,
                "fwd",
                "ram-blocks",
                "MEM_SIZE",
                ev.offset,
                total=ev.total,
                blocks={k: v for k, v in ev.blocks},
            )
        elif isinstance(ev, ForwardCommand):
            info.fwd_counts[ev.name] += 1
            fields = dict(ev.fields)
            if mig is not None:
                mig.commands[ev.name] += 1
                self._fwd_command(mig, ev, ts, fields)
            self.emit(
                ts,
                cid,
                "fwd",
                "command",
                ev.name,
                ev.offset,
                length=ev.length,
                depth=ev.depth,
                **fields,
            )
        elif isinstance(ev, VmEof):
            info.fwd_counts["QEMU_VM_EOF"] += 1
            if mig and ev.depth == 0:
                mig.state(ts, "completed")
                mig.done = True
            self.emit(ts, cid, "fwd", "section", "QEMU_VM_EOF", ev.offset, depth=ev.depth)
        elif isinstance(ev, VmDescription):
            self.emit(
                ts,
                cid,
                "fwd",
                "section",
                "QEMU_VM_VMDESCRIPTION",
                ev.offset,
                json_size=ev.json_size,
            )
        elif isinstance(ev, ForwardResync):
            info.resyncs_fwd += 1
            if mig is not None:
                mig.fwd_blind_from = None
            self.emit(
                ts,
                cid,
                "fwd",
                "resync",
                "re-synced",
                ev.offset,
                skipped=ev.skipped,
                records=ev.records,
                section_id=ev.section_id,
                note="inside the RAM section; what the hole held is unknown",
            )
        elif isinstance(ev, DeviceState):
            info.fwd_counts["device sections"] += 1
            extra: dict[str, Any] = {}
            if ev.fields is not None:
                extra["fields"] = fields_dict(ev.fields)
            self.emit(
                ts, cid, "fwd", "device", ev.idstr, ev.offset, size=ev.size,
                section_id=ev.section_id, instance_id=ev.instance_id, version_id=ev.version_id,
                delimited_by=ev.delimited_by, vmsd_name=ev.vmsd_name,
                device_type=ev.device_type, depth=ev.depth, **extra,
            )  # fmt: skip
        elif isinstance(ev, ForwardStop):
            if ev.final:
                info.fwd_end = f"stopped at offset {ev.offset}: {ev.reason}"
            self.emit(
                ts,
                cid,
                "fwd",
                "fwd-stop",
                "undelimited",
                ev.offset,
                reason=ev.reason,
                section_id=ev.section_id,
                idstr=ev.idstr,
                final=ev.final,
            )
        elif isinstance(ev, ForwardEnd):
            info.fwd_end = (
                f"ended inside a unit at offset {ev.offset}" if ev.truncated else "ended cleanly"
            )
            self.emit(ts, cid, "fwd", "fwd-end", ev.reason, ev.offset, truncated=ev.truncated)

    def _fwd_command(
        self, mig: Migration, ev: ForwardCommand, ts: float, fields: dict[str, Any]
    ) -> None:
        name = ev.short_name
        if name == "PING":
            mig.pings.setdefault(ev.fields["value"], deque()).append(ts)
        elif name == "RECV_BITMAP":
            mig.bitmaps.setdefault(ev.fields.get("block_name", ""), deque()).append(ts)
            mig.state(ts, "postcopy-recover")
        elif name == "POSTCOPY_RESUME":
            mig.resume_ts.append(ts)
        elif name == "POSTCOPY_ADVISE":
            fields["postcopy_ram"] = ev.length == 16
        elif name == "POSTCOPY_LISTEN":
            mig.state(ts, "postcopy-listen")
        elif name == "POSTCOPY_RUN":
            mig.postcopy = True
            mig.state(ts, "postcopy-active")
        elif name == "SWITCHOVER_START":
            mig.state(ts, "device")

    # -- return path ---------------------------------------------------------------------------
    def _rp_piece(self, info: ConnectionInfo, p: Data | Hole) -> None:
        rs = self._rp[info.id]
        if rs.dead:
            return
        if isinstance(p, Hole):
            rs.feed_checks(None, hole_at=p.offset)
            rs.reader = None
            rs.waiting_sync = True
            return
        rs.feed_checks(p.data)
        if rs.waiting_sync:
            fresh = _try_sync(self.release, p.data)
            if fresh is None:
                self.emit(
                    p.ts,
                    info.id,
                    "rp",
                    "resync",
                    "skipped",
                    p.offset,
                    length=len(p.data),
                    note="bytes after a hole that do not start a run of whole frames",
                )
                return
            rs.reader, rs.base, rs.waiting_sync = fresh, p.offset, False
            info.resyncs += 1
            self.emit(
                p.ts,
                info.id,
                "rp",
                "resync",
                "re-synced",
                p.offset,
                note="whole frames from here to the end of the segment",
            )
        else:
            assert rs.reader is not None
            rs.reader.receive_data(p.data)
        self._drain_rp(info, rs, p.ts)

    def _drain_rp(self, info: ConnectionInfo, rs: _RpStream, ts: float) -> None:
        rd = rs.reader
        if rd is None:
            return
        mig = self.migration_of(info)
        try:
            while True:
                ev = rd.next_event()
                if ev is NEED_DATA or ev is STOPPED:
                    break
                if isinstance(ev, Message):
                    self._rp_frame(info, mig, rs, ev, ts)
                elif isinstance(ev, EndOfStream):
                    if ev.truncated:
                        info.rp_verdict = "truncated"
                        info.rp_error = ev.qemu_error
                    self.emit(
                        ts,
                        info.id,
                        "rp",
                        "rp-end",
                        ev.reason,
                        rs.base + ev.offset,
                        truncated=ev.truncated,
                        partial=ev.partial,
                        qemu_error=ev.qemu_error,
                    )
        except RemoteViolation as exc:
            info.rp_verdict = "rejected"
            info.rp_error = exc.qemu_error or exc.message
            rs.dead = True
            self.emit(
                ts,
                info.id,
                "rp",
                "rp-violation",
                exc.message,
                rs.base + exc.offset,
                type=exc.message_type,
                qemu_error=exc.qemu_error,
                source=str(self.release),
            )

    def _rp_frame(
        self, info: ConnectionInfo, mig: Migration | None, rs: _RpStream, ev: Message, ts: float
    ) -> None:
        info.rp_counts[ev.name] += 1
        info.rp_times.append(ts)
        if info.rp_verdict == "no frames":
            info.rp_verdict = "accepted"
        fields = ev.payload_fields()
        if isinstance(ev, RecvBitmap):
            fields.pop("bitmap", None)
            fields.pop("payload", None)
        if mig is not None:
            if isinstance(ev, Pong):
                sent = mig.pings.get(ev.value)
                if sent:
                    rtt = ts - sent.popleft()
                    mig.ping_rtts.append(rtt)
                    fields["rtt_ms"] = round(rtt * 1e3, 3)
                else:
                    mig.orphan_pongs += 1
            elif isinstance(ev, RecvBitmap):
                sent = mig.bitmaps.get(ev.block_name)
                if sent:
                    lat = ts - sent.popleft()
                    mig.bitmap_pairs.append((ev.block_name, lat))
                    fields["after_command_ms"] = round(lat * 1e3, 3)
            elif isinstance(ev, ResumeAck):
                if mig.resume_ts:
                    lat = ts - mig.resume_ts.popleft()
                    mig.resume_pairs.append(lat)
                    fields["after_resume_ms"] = round(lat * 1e3, 3)
                mig.state(ts, "postcopy-active")
            elif isinstance(ev, ReqPagesId | ReqPages):
                rs.req_seen = True
                block = ev.idstr if isinstance(ev, ReqPagesId) else rs.last_block
                if isinstance(ev, ReqPagesId):
                    rs.last_block = ev.idstr
                mig.request_count += 1
                if not mig.postcopy:
                    # Page requests come only from a destination running in postcopy.
                    mig.postcopy = True
                    if not any(st == "postcopy-active" for _, st in mig.states):
                        mig.state(ts, "postcopy-active")
                if block is not None:
                    # A page the forward stream already carried was in flight when the
                    # destination asked: no later copy may come, so it stays unmatched.
                    mig.requests.setdefault((block, ev.start), deque()).append(
                        (ts, mig.was_seen(block, ev.start))
                    )
            elif isinstance(ev, Shut):
                mig.state(ts, "completed" if ev.sibling_error == 0 else "failed")
                mig.done = True
        self.emit(
            ts,
            info.id,
            "rp",
            "rp-frame",
            ev.name,
            rs.base + ev.offset,
            type=ev.type_id,
            length=ev.length,
            **fields,
        )

    # -- ends ------------------------------------------------------------------------------
    def close(self, info: ConnectionInfo, ts: float, how: str) -> None:
        if info.closed_ts is None:
            info.closed_ts, info.closed_how = ts, how
            self.emit(ts, info.id, None, "connection", "close", how=how)
            mig = self.migration_of(info)
            if mig is not None and info.role.startswith("main") and not mig.done:
                mig.state(ts, "postcopy-paused" if mig.postcopy else "connection-lost")

    def finish(self, ts: float) -> None:
        """The capture ended: flush readers (``b""``), unanswered correlations."""
        for cid, info in self.conns.items():
            for direction in ("fwd", "rp"):
                self._flush_hole(info, direction)
            if info.role == "pending":
                info.role = "other"
            rd = self._fwd.get(cid)
            if rd is not None:
                info.fwd_decoded = rd.offset
                rd.receive_data(b"")
                self._drain_fwd(info, rd, ts)
                if rd is not None and info.fwd_decoded < rd.offset:
                    info.fwd_decoded = rd.offset
            rs = self._rp.get(cid)
            if rs is not None:
                rs.feed_checks(b"")
                info.checks = rs.check_state
                if rs.reader is not None and not rs.dead:
                    rs.reader.receive_data(b"")
                    self._drain_rp(info, rs, ts)
        for mig in self.report.migrations:
            mig.unanswered_pings = sum(len(q) for q in mig.pings.values())


# -- inputs ------------------------------------------------------------------------------------
def _canon(seg: Any) -> tuple[tuple[bytes, int], tuple[bytes, int]]:
    return (seg.src, seg.sport), (seg.dst, seg.dport)


class _TcpConn:
    __slots__ = ("c2s", "client", "closed", "info", "s2c")

    def __init__(self, info: ConnectionInfo, client: tuple[bytes, int]) -> None:
        self.info = info
        self.client = client
        self.c2s = HalfStream()
        self.s2c = HalfStream()
        self.closed = False


def _wanted(opt: CaptureOptions, info: ConnectionInfo, sport: int, dport: int) -> bool:
    if opt.port is not None and opt.port not in (sport, dport):
        return False
    if opt.connection is not None:
        c = opt.connection
        return c in (
            info.id,
            info.id.lstrip("c"),
            f"{info.client}-{info.server}",
            f"{info.server}-{info.client}",
        )
    return True


def _run_pcap(
    path: str, dec: CaptureDecoder, report: CaptureReport, progress: Callable[[int], None] | None
) -> None:
    table: dict[tuple[tuple[bytes, int], tuple[bytes, int]], _TcpConn] = {}
    ignored: set[tuple[tuple[bytes, int], tuple[bytes, int]]] = set()
    n = 0
    next_id = 0
    last_ts: float | None = None
    unusable = Counter[str]()
    for pkt in iter_packets(path, problems=report.problems, on_progress=progress):
        if last_ts is None:
            report.start_ts = pkt.ts
        last_ts = pkt.ts
        n += 1
        seg = decode_tcp(pkt)
        if seg is None:
            continue
        if isinstance(seg, str):
            unusable[seg.split(": ", 1)[1]] += 1
            if sum(unusable.values()) <= 5:
                report.problems.append(seg)
            continue
        a, b = _canon(seg)
        if (a, b) in ignored or (b, a) in ignored:
            continue
        key = (a, b) if (a, b) in table else (b, a)
        conn = table.get(key)
        if conn is not None and conn.closed and seg.syn and not seg.has_ack:
            del table[key]  # the 4-tuple is reused by a new connection
            conn = None
        if conn is None:
            client = b if (seg.syn and seg.has_ack) else a
            server = a if client == b else b
            info = ConnectionInfo(
                id=f"c{next_id}",
                client=addr_text(*client),
                server=addr_text(*server),
                first_ts=pkt.ts,
                mid_stream=not seg.syn,
            )
            next_id += 1
            if not _wanted(dec.opt, info, seg.sport, seg.dport):
                ignored.add((client, server))
                continue
            conn = _TcpConn(info, client)
            table[(client, server)] = conn
            dec.open(info)
        c2s = (seg.src, seg.sport) == conn.client
        half, other = (conn.c2s, conn.s2c) if c2s else (conn.s2c, conn.c2s)
        d = "c2s" if c2s else "s2c"
        info = conn.info
        for p in half.segment(
            seg.seq,
            syn=seg.syn,
            fin=seg.fin,
            payload=seg.payload,
            wire_len=seg.wire_len,
            ts=seg.ts,
            packet=seg.index,
        ):
            dec.piece(info, d, p)
        if seg.has_ack:
            for p in other.ack(seg.ack, seg.ts, seg.index):
                dec.piece(info, "s2c" if c2s else "c2s", p)
        if seg.rst or (conn.c2s.fin_at is not None and conn.s2c.fin_at is not None):
            conn.closed = True
            dec.close(info, seg.ts, "RST" if seg.rst else "FIN")
    for sym, count in unusable.items():
        if count > 1:
            report.problems.append(f"{count} packets: {sym}")
    report.packets = n
    report.end_ts = last_ts if last_ts is not None else 0.0
    for conn in table.values():
        info = conn.info
        for d, half in (("c2s", conn.c2s), ("s2c", conn.s2c)):
            for p in half.finish(report.end_ts, n):
                dec.piece(info, d, p)
            info.retransmitted += half.retransmitted
            info.out_of_order += half.out_of_order
            info.overlaps += half.overlaps
        if conn.c2s.mid_stream or conn.s2c.mid_stream:
            info.mid_stream = True
    if n == 0:
        report.problems.append("the capture holds no packets")


def _run_raw(path: str, dec: CaptureDecoder, report: CaptureReport) -> None:
    folder = path if os.path.isdir(path) else os.path.dirname(path) or "."
    index = os.path.join(folder, "chunks.jsonl")
    files: dict[tuple[int, str], Any] = {}
    infos: dict[int, ConnectionInfo] = {}
    last_t: dict[int, float] = {}
    first = True

    def fh(conn: int, d: str) -> Any:
        key = (conn, d)
        if key not in files:
            name = f"{d}.bin" if conn == 0 else f"{d}.{conn}.bin"
            p = os.path.join(folder, name)
            files[key] = open(p, "rb") if os.path.exists(p) else None
        return files[key]

    try:
        with open(index, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    t, conn, d = float(rec["t"]), int(rec["conn"]), str(rec["dir"])
                    off, ln = int(rec["offset"]), int(rec["len"])
                    if d not in ("fwd", "rp", "inject") or off < 0 or ln < 0:
                        raise ValueError(d)
                except (ValueError, KeyError, TypeError) as exc:
                    report.problems.append(f"chunks.jsonl line {lineno}: unusable ({exc!r})")
                    continue
                if first:
                    report.start_ts, first = t, False
                report.end_ts = max(report.end_ts, t)
                report.packets += 1
                if conn not in infos:
                    info = ConnectionInfo(
                        id=f"c{conn}", client="source", server="destination", first_ts=t
                    )
                    infos[conn] = info
                    if not _wanted(dec.opt, info, -1, -1):
                        info.role = "skip"
                        continue
                    dec.open(info)
                info = infos[conn]
                if info.role == "skip":
                    continue
                last_t[conn] = t
                injected = d == "inject"
                if injected:
                    # Bytes the lab's proxy put into the return path (rp.bin holds them).
                    d = "rp"
                    dec.emit(t, info.id, "rp", "note", "injected-by-lab", off, length=ln)
                h = fh(conn, d)
                data = b""
                if h is not None:
                    h.seek(off)
                    data = h.read(ln)
                c2s = "c2s" if d == "fwd" else "s2c"
                if data:
                    dec.piece(info, c2s, Data(off, data, t, lineno))
                if len(data) < ln:
                    dec.piece(
                        info, c2s, Hole(off + len(data), ln - len(data), t, lineno, "not recorded")
                    )
    except OSError as exc:
        raise InputError(f"{index}: {exc.strerror or exc}") from None
    finally:
        for h in files.values():
            if h is not None:
                h.close()
    for conn, info in infos.items():
        if info.role != "skip":
            dec.close(info, last_t.get(conn, report.end_ts), "last recorded chunk")


def _metadata_release(path: str) -> tuple[str, str] | None:
    """(source release, file) from a lab run's ``metadata.json`` or ``record.json`` beside it."""
    folder = path if os.path.isdir(path) else os.path.dirname(path) or "."
    for name in ("metadata.json", "record.json"):
        try:
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                src = json.load(f).get("src", {})
            # a `migcompat lab build` names its own source's release (10.0.13+keepalive)
            rel = src.get("protocol_release") or src.get("release")
        except (OSError, ValueError, AttributeError):
            continue
        if rel:
            return str(rel), name
    return None


def _run(
    path: str,
    kind: str,
    options: CaptureOptions,
    on_record: Callable[[Record], None] | None,
    progress: Callable[[int], None] | None,
) -> CaptureReport:
    report = CaptureReport(
        path=path, kind=kind, source=options.source, source_basis=options.source_basis
    )
    dec = CaptureDecoder(report, options, on_record)
    if kind == "raw":
        _run_raw(path, dec, report)
    else:
        pcap = os.path.join(path, "capture.pcap") if kind == "pcap-dir" else path
        _run_pcap(pcap, dec, report, progress)
    dec.finish(report.end_ts)
    return report


def _auto_release(
    path: str,
    kind: str,
    options: CaptureOptions,
    progress: Callable[[int], None] | None = None,
) -> tuple[Release, str]:
    """The newest release consistent with the capture (one silent decoding pass)."""
    lines = known_releases()
    newest = lines[-1]
    probe = CaptureOptions(
        source=newest,
        port=options.port,
        connection=options.connection,
        check_against=lines,
        descend_packaged=options.descend_packaged,
    )
    rep = _run(path, kind, probe, None, progress)
    floor: Release | None = None
    for mig in rep.migrations:
        version = machine_version(mig.machine_type or "")
        if version is not None:
            floor = max(floor or lines[0], version)
    seen = Counter[str]()
    for mig in rep.migrations:
        seen.update(mig.commands)
    ok: list[Release] = []
    for line in lines:
        if floor is not None and line < floor:
            continue
        names = {m.name for m in stream_catalog(line).commands}
        if any(n not in names for n in seen):
            continue
        if any(
            info.checks.get(str(line), {}).get("verdict") == "rejected"
            for info in rep.connections.values()
        ):
            continue
        ok.append(line)
    if not ok:
        return newest, "stream: no release accepts everything; decoding as the newest"
    span = f"{ok[0]} … {ok[-1]}" if len(ok) > 1 else str(ok[0])
    why = f"stream: consistent with {span}"
    if floor is not None:
        why += f" (machine type implies ≥ {floor})"
    return ok[-1], why


def decode_capture(
    path: str,
    options: CaptureOptions,
    on_record: Callable[[Record], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> CaptureReport:
    """Decode a pcap/pcapng file or a lab recording folder.

    :param options: ``source=None`` picks the release: the ``src.release`` of a
        ``metadata.json`` beside the capture (a lab run), else the newest release
        consistent with the capture (an extra silent pass over the file).
    :param on_record: called with each record (dict with keys ``t``, ``conn``,
        ``dir``, ``kind``, ``name``, ``offset``, ``fields``) as it is decoded.
    :param progress: called with the byte position in the file now and then.
    :raises InputError: the file cannot be read as a capture at all.
    """
    kind = sniff_format(path)
    meta = _metadata_release(path)
    if options.source is None:
        if meta is not None:
            options.source, options.source_basis = parse_release(meta[0]), meta[1]
        else:
            options.source, options.source_basis = _auto_release(path, kind, options, progress)
    report = _run(path, kind, options, on_record, progress)
    report.metadata_source = meta[0] if meta else None
    return report


def rp_silences(info: ConnectionInfo, end_ts: float) -> list[tuple[float, float]]:
    """(start, length) of the gaps on a return path, longest first.

    The gaps run from the connection's first packet to the first frame, between
    frames, and from the last frame to the connection's close (or the capture's end).
    """
    times = [info.first_ts, *info.rp_times, info.closed_ts or end_ts]
    gaps = [(a, b - a) for a, b in itertools.pairwise(times) if b > a]
    return sorted(gaps, key=lambda g: -g[1])


def keepalives(gaps: Iterable[tuple[float, float]], period: float) -> int:
    """Keepalives a destination sending one after every ``period`` of silence would add."""
    return sum(int(length // period) for _, length in gaps) if period > 0 else 0


def iter_all(report: CaptureReport) -> Iterator[ConnectionInfo]:
    yield from report.connections.values()
