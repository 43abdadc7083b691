"""Reassembled pieces in, typed records out: roles, the readers, correlation, the bound.

Data flow per connection: :class:`~._tcp.Data`/:class:`~._tcp.Hole` pieces of each
direction → held until the channel is classified (:func:`~._classify.role_of`) → the
forward stream batched into the protocol's :class:`~migcompat.protocol.ForwardReader`
(page payloads are skipped by their length inside it, never parsed), the return path
into a :class:`~._returnpath.ReturnPath` → per migration a
:class:`~._correlate.Migration` → records (:mod:`._records`), released to the callback
in time order.

Time order: a record is held until nothing still undecided can produce an earlier one
(an open run of holes, a connection not yet classified, a forward batch not yet read);
:data:`MAX_HELD` bounds what is held.
"""

from __future__ import annotations

import heapq
import itertools
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from migcompat.protocol import (
    NEED_DATA,
    STOPPED,
    DeviceState,
    EndOfStream,
    Event,
    ForwardCommand,
    ForwardEnd,
    ForwardReader,
    ForwardResync,
    ForwardStop,
    Message,
    Pong,
    RamBlocks,
    RamPage,
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
    stream_catalog,
)

from ._classify import HEAD_NEEDED, role_of
from ._correlate import Migration
from ._records import (
    ConnectionClosed,
    ConnectionOpened,
    ConnectionRole,
    DeviceRecord,
    ForwardCommandRecord,
    ForwardEndRecord,
    ForwardStopRecord,
    ForwardViolation,
    HeaderRecord,
    HoleRecord,
    NoteRecord,
    PageRecord,
    PageServed,
    PostcopyDevice,
    RamBlocksRecord,
    Record,
    ReleaseBoundRecord,
    ResyncRecord,
    RpEnd,
    RpFrame,
    RpUnread,
    RpViolation,
    SectionRecord,
    SplitBrain,
)
from ._release import POSTCOPY_DEVICE_PING, ReleaseBound
from ._returnpath import ReturnPath, try_sync
from ._tcp import Data, Hole

__all__ = ["MAX_HELD", "CaptureDecoder", "ConnectionInfo"]


def __dir__() -> list[str]:
    return list(__all__)


#: A connection seen without its start: return-path segments tried as sync points, and
#: bytes kept while deciding (then it is "other").
_SYNC_TRIES = 8
_MAX_PENDING = 4 << 20
_CLASSIFY_SECONDS = 60.0
#: Forward bytes read in one go (the reader's events get their own packet's time).
_BATCH_BYTES = 256 << 10
#: Records held back for time order at most (beyond, the oldest go out as they are).
MAX_HELD = 1 << 16
_MAIN_ROLES = ("main", "main-resumed", "main-rp-only")


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
    fwd_counts: Counter[str] = field(default_factory=Counter)
    fwd_end: str | None = None
    fwd_decoded: int = 0
    pages: int = 0
    resyncs_fwd: int = 0
    #: The return path's readings (main channels only).
    rp: ReturnPath | None = None
    #: RP frame times, for silences (return paths are small: kept as floats).
    rp_times: list[float] = field(default_factory=list)

    def label(self) -> str:
        return f"{self.id} {self.client} → {self.server}"

    # -- the return path as the source reads it (the primary reading's verdict) --------
    @property
    def rp_counts(self) -> Counter[str]:
        return self.rp.primary.verdict.counts if self.rp is not None else Counter()

    @property
    def rejection(self) -> RemoteViolation | None:
        return self.rp.primary.verdict.rejection if self.rp is not None else None

    @property
    def rp_verdict(self) -> str:
        """``rejected``, ``truncated``, ``accepted`` or ``no frames``."""
        if self.rp is None:
            return "no frames"
        v = self.rp.primary.verdict
        if v.rejection is not None:
            return "rejected"
        if v.end is not None and v.end.truncated:
            return "truncated"
        return "accepted" if v.frames else "no frames"

    @property
    def rp_error(self) -> str | None:
        if self.rp is None:
            return None
        v = self.rp.primary.verdict
        if v.rejection is not None:
            return v.rejection.qemu_error or v.rejection.message
        if v.end is not None and v.end.truncated:
            return v.end.qemu_error
        return None

    @property
    def resyncs(self) -> int:
        return self.rp.resyncs if self.rp is not None else 0

    @property
    def checks(self) -> dict[str, dict[str, Any]]:
        if self.rp is None:
            return {}
        return {str(r): x.summary() for r, x in self.rp.checks.items()}

    @property
    def candidates_rejected(self) -> list[str]:
        """Releases the source can still be (by the bound) that reject this return path."""
        if self.rp is None:
            return []
        return [str(r) for r, x in self.rp.candidates.items() if x.verdict.rejection is not None]

    @property
    def checks_rejected(self) -> bool:
        return self.rp is not None and any(
            x.verdict.rejection is not None for x in self.rp.checks.values()
        )


class _Batch:
    """Forward bytes of one connection not yet given to its reader."""

    __slots__ = ("ends", "first_ts", "parts", "size", "tss")

    def __init__(self) -> None:
        self.parts: list[Any] = []
        self.ends: list[int] = []
        self.tss: list[float] = []
        self.size = 0
        self.first_ts = 0.0


class CaptureDecoder:
    """Feeds reassembled pieces to the readers; emits records; keeps the report's counters."""

    def __init__(
        self,
        report: Any,
        options: Any,
        bound: ReleaseBound,
        on_record: Callable[[Record], None] | None,
        pinned: Release | None = None,
    ) -> None:
        self.report = report
        self.opt = options
        self.bound = bound
        #: The release line the source is known to be (``--source``, a lab record).
        self.pinned = pinned
        self.on_record = on_record
        self.emitting = on_record is not None
        #: The forward stream's grammar (MIG_CMD ids are only ever added: the newest
        #: release's table reads every older stream).
        self.release: Release = pinned or bound.lines[-1]
        self.stream_cat = stream_catalog(self.release)
        self.conns: dict[str, ConnectionInfo] = report.connections
        self._fwd: dict[str, ForwardReader | None] = {}
        self._pending: dict[str, list[tuple[str, Data | Hole]]] = {}
        self._heads: dict[str, dict[str, bytearray]] = {}
        self._blind: dict[str, bool] = {}
        self._open_holes: dict[tuple[str, str], dict[str, Any]] = {}
        self._batch: dict[str, _Batch] = {}
        self._batch_owner: ConnectionInfo | None = None
        self._cur = _Batch()
        self._last_ts = 0.0
        self._held: list[tuple[float, int, Record]] = []
        self._seq = itertools.count()

    # -- records, in time order -----------------------------------------------------------
    def rel(self, ts: float) -> float:
        return round(ts - self.report.start_ts, 6)

    def emit(self, rec: Record) -> None:
        if self.on_record is None:
            return
        heapq.heappush(self._held, (rec.t, next(self._seq), rec))
        if len(self._held) > MAX_HELD:
            self.on_record(heapq.heappop(self._held)[2])

    def _watermark(self, now: float) -> float:
        wm = now
        for h in self._open_holes.values():
            wm = min(wm, h["ts"])
        for pend in self._pending.values():
            if pend:
                wm = min(wm, pend[0][1].ts)
        for b in self._batch.values():
            if b.parts:
                wm = min(wm, b.first_ts)
        return self.rel(wm)

    def release_held(self, now: float | None = None) -> None:
        """Hand out every held record that nothing undecided can precede."""
        if not self._held or self.on_record is None:
            return
        wm = float("inf") if now is None else self._watermark(now)
        held = self._held
        while held and held[0][0] <= wm:
            self.on_record(heapq.heappop(held)[2])

    def migration_of(self, conn: ConnectionInfo) -> Migration | None:
        return None if conn.migration is None else self.report.migrations[conn.migration]

    # -- the release bound ------------------------------------------------------------------
    def _evidence(self, ev: Any, ts: float) -> None:
        if ev is None:
            return
        b = self.bound
        self.emit(
            ReleaseBoundRecord(
                t=self.rel(ts), conn=None, dir=None, name=b.text(), low=str(b.low),
                high=str(b.high), evidence=ev.text(),
            )
        )  # fmt: skip
        if self.pinned is not None:
            return
        allowed = b.candidates()
        for info in self.conns.values():
            if info.rp is None:
                continue
            old = info.rp.prune(allowed)
            new = info.rp.primary
            if old is not None and (old.state, old.verdict.frames) != (
                new.state,
                new.verdict.frames,
            ):
                self.emit(
                    NoteRecord(
                        t=self.rel(ts), conn=info.id, dir="rp", name="read-as",
                        payload={"note": f"the bound excludes {old.release}: the return path "
                                 f"is read as {new.release} from here ({old.release} read "
                                 f"{old.state}, {new.release} {new.state})"},
                    )
                )  # fmt: skip

    def _candidates(self) -> tuple[Release, ...]:
        return (self.pinned,) if self.pinned is not None else self.bound.candidates()

    def _new_rp(self) -> ReturnPath:
        return ReturnPath(self._candidates(), self.opt.check_against)

    def _make_rp(self, info: ConnectionInfo) -> ReturnPath:
        """A main channel's return path, with what the migration already knows."""
        rs = info.rp = self._new_rp()
        rs.whole = info.role == "main"
        mig = self.migration_of(info)
        if mig is not None and mig.ram_blocks:
            rs.apply_ram(mig.ram_blocks)
        if mig is not None and mig.machine_type:
            rs.apply_machine(mig.machine_type)
        return rs

    # -- connections --------------------------------------------------------------------------
    def open(self, info: ConnectionInfo) -> None:
        self.conns[info.id] = info
        self._pending[info.id] = []
        self._heads[info.id] = {"c2s": bytearray(), "s2c": bytearray()}
        self.emit(
            ConnectionOpened(
                t=self.rel(info.first_ts), conn=info.id, dir=None, name="open",
                client=info.client, server=info.server, mid_stream=info.mid_stream,
            )
        )  # fmt: skip

    def set_role(self, info: ConnectionInfo, role: str, fwd_is_c2s: bool, ts: float) -> None:
        info.role = role
        info.fwd_is_c2s = fwd_is_c2s
        mig: Migration | None = None
        migs = self.report.migrations
        if role == "main" or (role == "main-rp-only" and not migs):
            mig = Migration(index=len(migs))
            migs.append(mig)
        elif migs:
            # Resumed main channels and side channels join the latest migration.
            mig = migs[-1]
        if mig is not None:
            info.migration = mig.index
            mig.connections.append(info.id)
        if role == "main-rp-only":
            rs = self._new_rp()
            rs.whole = False
            if info.mid_stream:
                rs.hole(0)  # the first bytes may be the middle of a frame
            info.rp = rs
            # The forward reader starts as after a gap: it waits for page records.
            fwd = ForwardReader(
                self.release,
                channel="main",
                descend_packaged=self.opt.descend_packaged,
                decode_fields=self.opt.decode_fields,
                dump=self.opt.dump,
            )
            fwd.gap(0)
            self._fwd[info.id] = fwd
            self.emit(
                NoteRecord(
                    t=self.rel(ts), conn=info.id, dir=None, name="forward-unseen",
                    payload={"note": "the forward stream's start is not in the capture; the "
                             "reverse direction starts with whole return-path frames"},
                )
            )  # fmt: skip
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
            # The return path's readings start at its first byte (by then the forward
            # stream's machine type has usually narrowed the releases to read it with).
            if mig is not None and role == "main-resumed":
                mig.postcopy = True
                mig.state(ts, "postcopy-recover")
        elif role == "postcopy-preempt":
            self._fwd[info.id] = ForwardReader(self.release, channel="preempt")
        self.emit(
            ConnectionRole(
                t=self.rel(ts), conn=info.id, dir=None, name="role", role=role,
                migration=info.migration, source=info.client if fwd_is_c2s else info.server,
            )
        )  # fmt: skip

    def _other(self, info: ConnectionInfo) -> bool:
        info.role = "other"
        self.emit(
            ConnectionRole(t=self.rel(self._last_ts), conn=info.id, dir=None, name="role",
                           role="other")
        )  # fmt: skip
        return True

    def _classify(self, info: ConnectionInfo) -> bool:
        heads = self._heads[info.id]
        # Mid-connection bytes are not a channel's opening: never classify on them.
        for d in () if info.mid_stream else ("c2s", "s2c"):
            role = role_of(bytes(heads[d]), self.stream_cat)
            if role:
                self.set_role(info, role, d == "c2s", self._last_ts)
                return True
        if self._blind.get(info.id):
            # The source's side was not captured from its start: the reverse direction
            # is a return path if one of its first segments is a run of whole frames.
            tried = _SYNC_TRIES
            for d in ("s2c", "c2s"):
                backs = [p for dd, p in self._pending[info.id] if dd == d and isinstance(p, Data)]
                tried = min(tried, len(backs))
                for p in backs[:_SYNC_TRIES]:
                    if try_sync(self._candidates()[-1], bytes(p.data)) is not None:
                        self.set_role(info, "main-rp-only", d == "s2c", self._last_ts)
                        return True
            if tried >= _SYNC_TRIES or self._last_ts - info.first_ts > _CLASSIFY_SECONDS:
                return self._other(info)
            self._bound_pending(info.id)
            return False
        if len(heads["c2s"]) >= HEAD_NEEDED:
            return self._other(info)
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

    # -- pieces -----------------------------------------------------------------------------
    def data(
        self, info: ConnectionInfo, c2s: bool, off: int, payload: Any, ts: float, packet: int
    ) -> None:
        """In-order bytes of a direction: :meth:`piece` without building a :class:`Data`
        when they are more forward bytes of the connection being batched (the hot path)."""
        if self._batch_owner is info and c2s == info.fwd_is_c2s:
            self._last_ts = ts
            n = len(payload)
            info.bytes["fwd"] += n
            b = self._cur
            b.parts.append(payload)
            b.ends.append(off + n)
            b.tss.append(ts)
            b.size += n
            if b.size >= _BATCH_BYTES:
                self._flush_batch()
            if self._held:
                self.release_held(ts)
            return
        self.piece(info, "c2s" if c2s else "s2c", Data(off, payload, ts, packet))

    def piece(self, info: ConnectionInfo, d: str, p: Data | Hole) -> None:
        """A reassembled piece of direction ``d`` (``c2s``/``s2c``) of a connection."""
        self._last_ts = p.ts
        role = info.role
        if role == "pending":
            if info.mid_stream:
                self._blind[info.id] = True
            self._pending[info.id].append((d, p))
            head = self._heads[info.id][d]
            if len(head) < HEAD_NEEDED:
                if isinstance(p, Data) and p.offset == len(head):
                    head += p.data[: HEAD_NEEDED - len(head)]
                else:
                    # A hole at the start: pad with bytes that match no channel's opening,
                    # so the connection is classified on what is there, never guessed.
                    head += b"\xff" * (HEAD_NEEDED - len(head))
                    self._blind[info.id] = True
            if self._classify(info):
                for dd, pp in self._pending.pop(info.id, []):
                    self._dispatch(info, dd, pp)
        elif role != "other":
            self._dispatch(info, d, p)
        if self._held:
            self.release_held(p.ts)

    def _dispatch(self, info: ConnectionInfo, d: str, p: Data | Hole) -> None:
        fwd = (d == "c2s") == info.fwd_is_c2s
        if type(p) is Data:
            if fwd and self._batch_owner is info and not self._open_holes:
                # The hot path: more forward bytes of the connection being batched.
                info.bytes["fwd"] += len(p.data)
                self._add_batch(info, p)
                return
        self._flush_batch()
        direction = "fwd" if fwd else "rp"
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
                    "t": self.rel(p.ts),
                    "packet": p.packet,
                    "packets": 1,
                    "ts": p.ts,
                }
        else:
            self._flush_hole(info, direction)
            info.bytes[direction] += len(p.data)
        if fwd:
            self._fwd_piece(info, p)
        elif info.role in _MAIN_ROLES:
            self._rp_piece(info, p)
        elif isinstance(p, Data):
            self.emit(
                NoteRecord(
                    t=self.rel(p.ts), conn=info.id, dir="rp", name="unexpected-reverse-bytes",
                    offset=p.offset, payload={"length": len(p.data),
                    "note": f"{info.role} channels carry no return-path frames"},
                )
            )  # fmt: skip

    def _flush_hole(self, info: ConnectionInfo, direction: str) -> None:
        hole = self._open_holes.pop((info.id, direction), None)
        if hole is None:
            return
        ts = hole.pop("ts")
        info.holes.append(hole)
        self.emit(
            HoleRecord(
                t=self.rel(ts), conn=info.id, dir=direction, name=hole["reason"],
                offset=hole["offset"], length=hole["length"], packet=hole["packet"],
                packets=hole["packets"],
            )
        )  # fmt: skip

    # -- forward ------------------------------------------------------------------------------
    def _fwd_piece(self, info: ConnectionInfo, p: Data | Hole) -> None:
        rd = self._fwd.get(info.id)
        if rd is None:
            return
        if isinstance(p, Hole):
            mig = self.migration_of(info)
            # The reader drops what it buffered and looks for a run of page records.
            rd.gap(p.length)
            if mig is not None:
                mig.fwd_holes += 1
                if mig.fwd_blind_from is None:
                    mig.fwd_blind_from = p.ts
            self._drain_fwd(info, rd, None, p.ts)
            return
        self._batch_owner = info
        self._add_batch(info, p)

    def _add_batch(self, info: ConnectionInfo, p: Data) -> None:
        b = self._batch.get(info.id)
        if b is None:
            b = self._batch[info.id] = _Batch()
        self._cur = b
        if not b.parts:
            b.first_ts = p.ts
        b.parts.append(p.data)
        b.size += len(p.data)
        b.ends.append(p.offset + len(p.data))
        b.tss.append(p.ts)
        if b.size >= _BATCH_BYTES:
            self._flush_batch()

    def _flush_batch(self) -> None:
        info = self._batch_owner
        if info is None:
            return
        self._batch_owner = None
        b = self._batch.get(info.id)
        if b is None or not b.parts:
            return
        rd = self._fwd.get(info.id)
        parts, ends, tss = b.parts, b.ends, b.tss
        b.parts, b.ends, b.tss, b.size = [], [], [], 0
        if rd is None:
            return
        rd.receive_data(b"".join(parts))
        self._drain_fwd(info, rd, (ends, tss), tss[-1])

    def _drain_fwd(
        self,
        info: ConnectionInfo,
        rd: ForwardReader,
        times: tuple[list[int], list[float]] | None,
        ts: float,
    ) -> None:
        mig = self.migration_of(info)
        ends, tss = times if times is not None else ((), ())
        last = len(tss) - 1
        # Pages are most of the events: counted here; a time is looked up only for a page
        # someone asked for, or when pages are listed.
        plain_pages = mig is not None and not (self.opt.pages and self.emitting)
        seen = mig.mark_seen if mig is not None else None
        requests = mig.requests if mig is not None else {}
        pages = 0
        try:
            while True:
                ev = rd.next_event()
                if ev is NEED_DATA or ev is STOPPED:
                    break
                if (
                    plain_pages
                    and type(ev) is RamPage
                    and (not requests or (ev.block, ev.addr) not in requests)
                ):
                    pages += 1
                    seen(ev.block, ev.addr)  # type: ignore[misc]
                    continue
                t = ts
                if times is not None:
                    # The time of the packet that carried the event's first byte.
                    i = bisect_right(ends, ev.offset)  # type: ignore[union-attr]
                    t = tss[i if i <= last else last]
                self._fwd_event(info, mig, ev, t)
        except RemoteViolation as exc:
            info.fwd_end = f"rejected at offset {exc.offset}: {exc.message}"
            info.fwd_decoded = rd.offset
            self._fwd[info.id] = None
            self.emit(
                ForwardViolation(t=self.rel(ts), conn=info.id, dir="fwd", name=exc.message,
                                 offset=exc.offset)
            )  # fmt: skip
            if mig is not None and mig.fwd_blind_from is None:
                mig.fwd_blind_from = ts
            return
        finally:
            if pages:
                info.pages += pages
                mig.pages_walked += pages  # type: ignore[union-attr]
        if rd.stopped and self._fwd.get(info.id) is rd:
            info.fwd_decoded = rd.offset
            self._fwd[info.id] = None
            if mig is not None and mig.fwd_blind_from is None and info.role != "main-resumed":
                mig.fwd_blind_from = ts

    def _fwd_event(self, info: ConnectionInfo, mig: Migration | None, ev: Any, ts: float) -> None:
        cid = info.id
        if type(ev) is RamPage:
            info.pages += 1
            if mig is not None:
                lat = mig.page(ts, ev.block, ev.addr)
                if lat is not None:
                    self.emit(
                        PageServed(
                            t=self.rel(ts), conn=cid, dir="fwd", name=ev.kind, offset=ev.offset,
                            block=ev.block, addr=ev.addr, latency_ms=round(lat * 1e3, 3),
                        )
                    )  # fmt: skip
                    return
            if self.opt.pages and self.emitting:
                self.emit(
                    PageRecord(
                        t=self.rel(ts), conn=cid, dir="fwd", name=ev.kind, offset=ev.offset,
                        block=ev.block, addr=ev.addr, flags=ev.flags,
                    )
                )  # fmt: skip
            return
        t = self.rel(ts)
        if isinstance(ev, StreamHeader):
            info.fwd_counts["header"] += 1
            if mig:
                mig.state(ts, "setup")
            self.emit(
                HeaderRecord(t=t, conn=cid, dir="fwd", name="QEVM", offset=ev.offset,
                             magic=f"0x{ev.magic:08x}", version=ev.version)
            )  # fmt: skip
        elif isinstance(ev, SectionHeader):
            info.fwd_counts[f"section {ev.kind}"] += 1
            if ev.kind == "CONFIGURATION":
                if mig:
                    mig.machine_type = ev.idstr
                    for other in mig.connections:
                        rp = self.conns[other].rp
                        if rp is not None:
                            rp.apply_machine(ev.idstr)
                self.emit(
                    SectionRecord(t=t, conn=cid, dir="fwd", name="CONFIGURATION",
                                  offset=ev.offset, payload={"machine_type": ev.idstr})
                )  # fmt: skip
                self._evidence(self.bound.machine(ts, ev.idstr), ts)
                return
            if mig is not None:
                mig.sections[ev.section_id] = ev.idstr
                if ev.idstr == "ram" and mig.states and mig.states[-1][1] == "setup":
                    mig.state(ts, "precopy")
                elif ev.kind == "FULL" and ev.depth == 0 and not mig.postcopy:
                    mig.state(ts, "device")
            if ev.kind != "PART" or ev.idstr != "ram":
                self.emit(
                    SectionRecord(
                        t=t, conn=cid, dir="fwd", name=ev.kind, offset=ev.offset,
                        payload={"section_id": ev.section_id, "idstr": ev.idstr,
                                 "instance_id": ev.instance_id, "version_id": ev.version_id,
                                 "depth": ev.depth},
                    )
                )  # fmt: skip
        elif isinstance(ev, RamBlocks):
            if mig is not None:
                mig.ram_blocks.update(ev.blocks)
                for other in mig.connections:
                    rp = self.conns[other].rp
                    if rp is not None:
                        rp.apply_ram(mig.ram_blocks)
            self.emit(
                RamBlocksRecord(t=t, conn=cid, dir="fwd", name="MEM_SIZE", offset=ev.offset,
                                total=ev.total, blocks=dict(ev.blocks))
            )  # fmt: skip
        elif isinstance(ev, ForwardCommand):
            info.fwd_counts[ev.name] += 1
            fields = dict(ev.fields)
            if mig is not None:
                mig.commands[ev.name] += 1
                mig.command(ts, ev.short_name, fields, ev.length)
                if ev.short_name == "PING" and fields.get("value") == POSTCOPY_DEVICE_PING:
                    self.emit(
                        PostcopyDevice(
                            t=t, conn=cid, dir="fwd", name="PING 0x42", offset=ev.offset,
                            meaning="source enters postcopy-device (10.2+): it waits for the "
                            "destination to load the device state before postcopy-active",
                        )
                    )  # fmt: skip
            self._evidence(self.bound.command(ts, ev.name), ts)
            if ev.short_name == "PING" and fields.get("value") == POSTCOPY_DEVICE_PING:
                self._evidence(self.bound.device_ping(ts, "PING"), ts)
            self.emit(
                ForwardCommandRecord(t=t, conn=cid, dir="fwd", name=ev.name, offset=ev.offset,
                                     length=ev.length, depth=ev.depth, payload=fields)
            )  # fmt: skip
        elif isinstance(ev, VmEof):
            info.fwd_counts["QEMU_VM_EOF"] += 1
            if mig and ev.depth == 0:
                mig.eof(ts)
            self.emit(
                SectionRecord(t=t, conn=cid, dir="fwd", name="QEMU_VM_EOF", offset=ev.offset,
                              payload={"depth": ev.depth})
            )  # fmt: skip
        elif isinstance(ev, VmDescription):
            self.emit(
                SectionRecord(t=t, conn=cid, dir="fwd", name="QEMU_VM_VMDESCRIPTION",
                              offset=ev.offset, payload={"json_size": ev.json_size})
            )  # fmt: skip
        elif isinstance(ev, ForwardResync):
            info.resyncs_fwd += 1
            if mig is not None:
                mig.fwd_blind_from = None
            self.emit(
                ResyncRecord(
                    t=t, conn=cid, dir="fwd", name="re-synced", offset=ev.offset,
                    payload={"skipped": ev.skipped, "records": ev.records,
                             "section_id": ev.section_id,
                             "note": "inside the RAM section; what the hole held is unknown"},
                )
            )  # fmt: skip
        elif isinstance(ev, DeviceState):
            info.fwd_counts["device sections"] += 1
            self.emit(
                DeviceRecord(
                    t=t, conn=cid, dir="fwd", name=ev.idstr, offset=ev.offset, size=ev.size,
                    section_id=ev.section_id, instance_id=ev.instance_id,
                    version_id=ev.version_id, delimited_by=ev.delimited_by,
                    vmsd_name=ev.vmsd_name, device_type=ev.device_type, depth=ev.depth,
                    values=None if ev.fields is None else fields_dict(ev.fields),
                )
            )  # fmt: skip
        elif isinstance(ev, ForwardStop):
            if ev.final:
                info.fwd_end = f"stopped at offset {ev.offset}: {ev.reason}"
            self.emit(
                ForwardStopRecord(t=t, conn=cid, dir="fwd", name="undelimited", offset=ev.offset,
                                  reason=ev.reason, section_id=ev.section_id, idstr=ev.idstr,
                                  final=ev.final)
            )  # fmt: skip
        elif isinstance(ev, ForwardEnd):
            info.fwd_end = (
                f"ended inside a unit at offset {ev.offset}" if ev.truncated else "ended cleanly"
            )
            self.emit(
                ForwardEndRecord(t=t, conn=cid, dir="fwd", name=ev.reason, offset=ev.offset,
                                 truncated=ev.truncated)
            )  # fmt: skip

    # -- return path ---------------------------------------------------------------------------
    def _rp_piece(self, info: ConnectionInfo, p: Data | Hole) -> None:
        rs = info.rp if info.rp is not None else self._make_rp(info)
        if isinstance(p, Hole):
            rs.hole(p.offset)
            return
        data = bytes(p.data)
        mig = self.migration_of(info)
        if rs.primary.verdict.rejection is not None:
            for ev in rs.feed_unread(p.offset, data):
                if isinstance(ev, Message):
                    self._rp_unread(info, mig, rs, ev, p.ts)
            return
        events, exc, how = rs.feed(p.offset, data)
        if how == "skipped":
            self.emit(
                ResyncRecord(
                    t=self.rel(p.ts), conn=info.id, dir="rp", name="skipped", offset=p.offset,
                    payload={"length": len(data), "note": "bytes after a hole that do not "
                             "start a run of whole frames"},
                )
            )  # fmt: skip
            return
        if how == "re-synced":
            self.emit(
                ResyncRecord(
                    t=self.rel(p.ts), conn=info.id, dir="rp", name="re-synced", offset=p.offset,
                    payload={"note": "whole frames from here to the end of the segment"},
                )
            )  # fmt: skip
        self._rp_events(info, mig, rs, events, p.ts)
        if exc is not None:
            self._rp_rejected(info, mig, rs, exc, p.ts)

    def _rp_events(
        self,
        info: ConnectionInfo,
        mig: Migration | None,
        rs: ReturnPath,
        events: list[Event],
        ts: float,
    ) -> None:
        base = rs.primary.base
        for ev in events:
            if isinstance(ev, Message):
                self._rp_frame(info, mig, rs, ev, ts, base)
            elif isinstance(ev, EndOfStream):
                self.emit(
                    RpEnd(t=self.rel(ts), conn=info.id, dir="rp", name=ev.reason,
                          offset=base + ev.offset, truncated=ev.truncated, partial=ev.partial,
                          qemu_error=ev.qemu_error)
                )  # fmt: skip

    def _rp_rejected(
        self,
        info: ConnectionInfo,
        mig: Migration | None,
        rs: ReturnPath,
        exc: RemoteViolation,
        ts: float,
    ) -> None:
        offset = rs.primary.base + exc.offset
        self.emit(
            RpViolation(
                t=self.rel(ts), conn=info.id, dir="rp", name=exc.message, offset=offset,
                type=exc.message_type, qemu_error=exc.qemu_error,
                source=str(rs.primary.release),
            )
        )  # fmt: skip
        if mig is not None:
            note = mig.rejection(ts, offset, exc.qemu_error or exc.message)
            if note is not None:
                assert mig.device_pong_ts is not None
                self.emit(
                    SplitBrain(t=self.rel(ts), conn=info.id, dir="rp", name="boundary",
                               offset=offset, device_loaded_t=self.rel(mig.device_pong_ts),
                               note=note)
                )  # fmt: skip

    def _rp_frame(
        self,
        info: ConnectionInfo,
        mig: Migration | None,
        rs: ReturnPath,
        ev: Message,
        ts: float,
        base: int,
    ) -> None:
        info.rp_times.append(ts)
        emitting = self.emitting
        fields = ev.payload_fields() if emitting else {}
        if emitting and isinstance(ev, RecvBitmap):
            fields.pop("bitmap", None)
            fields.pop("payload", None)
        if mig is not None:
            if isinstance(ev, Pong):
                rtt = mig.pong(ts, ev.value)
                if rtt is not None:
                    fields["rtt_ms"] = round(rtt * 1e3, 3)
                if ev.value == POSTCOPY_DEVICE_PING:
                    self._device_pong(info, mig, ts, base + ev.offset, rtt, read=True)
            elif isinstance(ev, RecvBitmap):
                lat = mig.bitmap(ts, ev.block_name)
                if lat is not None:
                    fields["after_command_ms"] = round(lat * 1e3, 3)
            elif isinstance(ev, ResumeAck):
                lat = mig.resume_ack(ts)
                if lat is not None:
                    fields["after_resume_ms"] = round(lat * 1e3, 3)
            elif isinstance(ev, ReqPagesId | ReqPages):
                rs.req_seen = True
                block = ev.idstr if isinstance(ev, ReqPagesId) else rs.last_block
                if isinstance(ev, ReqPagesId):
                    rs.last_block = ev.idstr
                mig.request(ts, block, ev.start)
                if (
                    mig.request_count == 1
                    and info.role == "main"
                    and rs.whole
                    and mig.device_pong_ts is None
                ):
                    self._evidence(self.bound.no_device_ping(ts), ts)
            elif isinstance(ev, Shut):
                mig.shut(ts, ev.sibling_error)
        if emitting:
            self.emit(
                RpFrame(t=self.rel(ts), conn=info.id, dir="rp", name=ev.name,
                        offset=base + ev.offset, type=ev.type_id, length=ev.length,
                        payload=fields)
            )  # fmt: skip

    def _device_pong(
        self,
        info: ConnectionInfo,
        mig: Migration,
        ts: float,
        offset: int,
        rtt: float | None,
        *,
        read: bool,
    ) -> None:
        if mig.device_pong_ts != ts:
            return
        meaning = "destination has loaded the device state (postcopy-device → postcopy-active)"
        if not read:
            meaning += "; the source never read it (it had stopped reading)"
        self.emit(
            PostcopyDevice(t=self.rel(ts), conn=info.id, dir="rp", name="PONG 0x42",
                           offset=offset, meaning=meaning,
                           rtt_ms=None if rtt is None else round(rtt * 1e3, 3))
        )  # fmt: skip
        self._evidence(self.bound.device_ping(ts, "PONG"), ts)

    def _rp_unread(
        self, info: ConnectionInfo, mig: Migration | None, rs: ReturnPath, ev: Message, ts: float
    ) -> None:
        offset = rs.unread_base + ev.offset
        fields = ev.payload_fields()
        if isinstance(ev, RecvBitmap):
            fields.pop("bitmap", None)
            fields.pop("payload", None)
        self.emit(
            RpUnread(t=self.rel(ts), conn=info.id, dir="rp", name=ev.name, offset=offset,
                     type=ev.type_id, length=ev.length, payload=fields)
        )  # fmt: skip
        if mig is not None and isinstance(ev, Pong) and ev.value == POSTCOPY_DEVICE_PING:
            mig.pong(ts, ev.value, read=False)
            self._device_pong(info, mig, ts, offset, None, read=False)
            note = mig.unread_device_pong()
            if note is not None:
                self.emit(
                    SplitBrain(t=self.rel(ts), conn=info.id, dir="rp", name="boundary",
                               offset=offset, device_loaded_t=self.rel(ts), note=note)
                )  # fmt: skip

    # -- ends ------------------------------------------------------------------------------
    def close(self, info: ConnectionInfo, ts: float, how: str) -> None:
        if info.closed_ts is None:
            self._flush_batch()
            info.closed_ts, info.closed_how = ts, how
            self.emit(ConnectionClosed(t=self.rel(ts), conn=info.id, dir=None, name="close",
                                       how=how))  # fmt: skip
            mig = self.migration_of(info)
            if mig is not None and info.role.startswith("main"):
                mig.close(ts)

    def finish(self, ts: float) -> None:
        """The capture ended: flush readers (``b""``), unanswered correlations."""
        self._flush_batch()
        for cid, info in self.conns.items():
            for direction in ("fwd", "rp"):
                self._flush_hole(info, direction)
            if info.role == "pending":
                info.role = "other"
            rd = self._fwd.get(cid)
            if rd is not None:
                info.fwd_decoded = rd.offset
                rd.receive_data(b"")
                self._drain_fwd(info, rd, None, ts)
                if info.fwd_decoded < rd.offset:
                    info.fwd_decoded = rd.offset
            if info.rp is None and info.role in ("main", "main-resumed"):
                self._make_rp(info)  # no return-path byte: its readings say so
            rs = info.rp
            if rs is not None and rs.primary.verdict.rejection is None:
                mig = self.migration_of(info)
                self._rp_events(info, mig, rs, rs.finish(), ts)
            elif rs is not None:
                rs.finish()
        for mig in self.report.migrations:
            mig.unanswered_pings = sum(len(q) for q in mig.pings.values())
        self.release_held()


def iter_connections(report: Any) -> Iterator[ConnectionInfo]:
    yield from report.connections.values()
