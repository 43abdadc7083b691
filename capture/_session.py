"""A capture decoded in one pass: inputs → TCP reassembly → decoder → report.

Layers (each its own module): :mod:`._readers` (pcap over an mmap, pcapng, stdin, lab
recordings) → :mod:`._tcp` (:class:`HalfStream` per direction) → :mod:`._decode`
(channel classification :mod:`._classify`, the protocol's readers, the return path's
readings :mod:`._returnpath`, the per-migration correlator :mod:`._correlate`, the
source release bounded from the wire :mod:`._release`) → typed records
(:mod:`._records`) to a callback, in time order, and a :class:`CaptureReport`.

The release bound is gathered in the same pass: every release line the source can
still be reads the return path side by side, and the newest of them is the one the
timeline shows. Nothing is decoded twice.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from migcompat.protocol import (
    DumpLayout,
    InputError,
    Release,
    catalog,
    parse_release,
    resolve_line,
)

from ._correlate import Migration
from ._decode import CaptureDecoder, ConnectionInfo
from ._migfile import is_migration_file, machine_release, run_migfile
from ._packets import addr_text
from ._readers import metadata_of, raw_pieces, segments, sniff_format
from ._records import NoteRecord, Record
from ._release import ReleaseBound
from ._tcp import Data, HalfStream, Hole

__all__ = [
    "CaptureOptions",
    "CaptureReport",
    "ConnectionInfo",
    "Migration",
    "decode_capture",
    "decode_migration_file",
    "iter_all",
    "keepalives",
    "percentile",
    "rp_silences",
]


def __dir__() -> list[str]:
    return list(__all__)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100) of a non-empty sequence."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))
    return s[k]


@dataclass(slots=True)
class CaptureOptions:
    """What to decode and how."""

    source: Release | None = None
    #: Why ``source`` was chosen (``"--source"``, ``"metadata.json"``, ``"stream: …"``).
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

    def validate(self) -> None:
        """Every release named has a catalog (before anything is read or printed).

        :raises InvalidRelease: a release the catalog does not cover.
        """
        for r in (self.source, *self.check_against):
            if r is not None:
                catalog(r)


@dataclass(slots=True)
class CaptureReport:
    """Everything the summary prints: connections, migrations, the release bound, problems."""

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
    bound: ReleaseBound | None = None
    #: The release line read with when it was given (``--source``, a lab record).
    pinned: Release | None = None
    #: Readings inside the bound that disagree with the one shown (still ambiguous).
    ambiguous: dict[str, list[str]] = field(default_factory=dict)
    #: What the lab recorded beside the capture (final QMP statuses), if anything.
    lab_statuses: dict[str, str] | None = None
    #: ``--port``/``--connection`` given and nothing matched (the message says so).
    unmatched_filter: str | None = None
    #: The input itself is damaged (cut short, no packets): exit 2 after the decode.
    damaged: bool = False

    @property
    def duration(self) -> float:
        return max(0.0, self.end_ts - self.start_ts)

    @property
    def rejected(self) -> bool:
        """The source (or, while the bound leaves it open, a release it can be, or a
        ``--check-against`` release) rejects some return path."""
        return any(
            c.rejection is not None or c.checks_rejected or c.candidates_rejected
            for c in self.connections.values()
        )


# -- inputs ------------------------------------------------------------------------------------
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


_SYN, _FIN, _RST, _ACK = 0x02, 0x01, 0x04, 0x10


def _run_segments(
    segs: Iterable[tuple[Any, ...]],
    dec: CaptureDecoder,
    report: CaptureReport,
    stats: dict[str, int],
) -> list[str]:
    """Reassemble every connection of the capture; the ids of those filtered out."""
    table: dict[tuple[bytes, int, bytes, int], tuple[_TcpConn, bool]] = {}
    ignored: set[tuple[bytes, int, bytes, int]] = set()
    skipped: list[str] = []
    conns: list[_TcpConn] = []
    n = 0
    next_id = 0
    last_ts: float | None = None
    piece = dec.piece
    data = dec.data
    for seg in segs:
        index, ts, src, sport, dst, dport, seq, ack, flags, payload, wire = seg
        if last_ts is None:
            report.start_ts = ts
        last_ts = ts
        n = index + 1
        key = (src, sport, dst, dport)
        hit = table.get(key)
        if hit is not None and not flags & (_SYN | _FIN | _RST):
            # The hot path: an established connection, no SYN/FIN/RST.
            conn, c2s = hit
            if flags & _ACK:
                other = conn.s2c if c2s else conn.c2s
                if other._ooo:
                    if other.ack_only(ack):
                        hit = None  # bytes became deliverable: the general path below
                else:
                    other.raw_ack = ack  # settled by the next call that needs it
            if hit is not None:
                if not wire:
                    continue
                half = conn.c2s if c2s else conn.s2c
                isn = half.isn
                if (
                    isn is not None
                    and wire == len(payload)
                    and not half._ooo
                    and (seq - isn) & 0xFFFFFFFF == half.next & 0xFFFFFFFF
                ):
                    off = half.next
                    half.next = off + wire
                    half.delivered += wire
                    data(conn.info, c2s, off, payload, ts, index)
                    continue
            hit = table.get(key)
        if key in ignored:
            continue
        if hit is not None and hit[0].closed and flags & _SYN and not flags & _ACK:
            old = hit[0]
            for k in ((src, sport, dst, dport), (dst, dport, src, sport)):
                table.pop(k, None)  # the 4-tuple is reused by a new connection
            del old
            hit = None
        if hit is None:
            client = (dst, dport) if (flags & _SYN and flags & _ACK) else (src, sport)
            server = (src, sport) if client == (dst, dport) else (dst, dport)
            info = ConnectionInfo(
                id=f"c{next_id}",
                client=addr_text(*client),
                server=addr_text(*server),
                first_ts=ts,
                mid_stream=not flags & _SYN,
            )
            next_id += 1
            if not _wanted(dec.opt, info, sport, dport):
                ignored.add((src, sport, dst, dport))
                ignored.add((dst, dport, src, sport))
                skipped.append(info.id)
                continue
            conn = _TcpConn(info, client)
            conns.append(conn)
            table[(*client, *server)] = (conn, True)
            table[(*server, *client)] = (conn, False)
            dec.open(info)
            hit = table[key]
        conn, c2s = hit
        info = conn.info
        half, other = (conn.c2s, conn.s2c) if c2s else (conn.s2c, conn.c2s)
        d = "c2s" if c2s else "s2c"
        for p in half.segment(
            seq,
            syn=bool(flags & _SYN),
            fin=bool(flags & _FIN),
            payload=payload,
            wire_len=wire,
            ts=ts,
            packet=index,
        ):
            piece(info, d, p)
        if flags & _ACK:
            for p in other.ack(ack, ts, index):
                piece(info, "s2c" if c2s else "c2s", p)
        if flags & _RST or (conn.c2s.fin_at is not None and conn.s2c.fin_at is not None):
            conn.closed = True
            dec.close(info, ts, "RST" if flags & _RST else "FIN")
    report.packets = max(n, stats.get("packets", 0))
    report.end_ts = last_ts if last_ts is not None else 0.0
    for conn in conns:
        info = conn.info
        for d, half in (("c2s", conn.c2s), ("s2c", conn.s2c)):
            for p in half.finish(report.end_ts, n):
                piece(info, d, p)
            info.retransmitted += half.retransmitted
            info.out_of_order += half.out_of_order
            info.overlaps += half.overlaps
        if conn.c2s.mid_stream or conn.s2c.mid_stream:
            info.mid_stream = True
    return skipped


def _run_raw(path: str, dec: CaptureDecoder, report: CaptureReport) -> list[str]:
    infos: dict[int, ConnectionInfo] = {}
    last_t: dict[int, float] = {}
    skipped: list[str] = []
    first = True
    for t, conn, d, off, ln, data, lineno in raw_pieces(path, report.problems):
        if first:
            report.start_ts, first = t, False
        report.end_ts = max(report.end_ts, t)
        report.packets += 1
        if conn not in infos:
            info = ConnectionInfo(id=f"c{conn}", client="source", server="destination", first_ts=t)
            infos[conn] = info
            if not _wanted(dec.opt, info, -1, -1):
                info.role = "skip"
                skipped.append(info.id)
                continue
            dec.open(info)
        info = infos[conn]
        if info.role == "skip":
            continue
        last_t[conn] = t
        if d == "inject":
            # Bytes the lab's proxy put into the return path (rp.bin holds them).
            d = "rp"
            dec.emit(
                NoteRecord(t=dec.rel(t), conn=info.id, dir="rp", name="injected-by-lab",
                           offset=off, payload={"length": ln})
            )  # fmt: skip
        c2s = "c2s" if d == "fwd" else "s2c"
        if data:
            dec.piece(info, c2s, Data(off, data, t, lineno))
        if len(data) < ln:
            dec.piece(info, c2s, Hole(off + len(data), ln - len(data), t, lineno, "not recorded"))
    for conn, info in infos.items():
        if info.role != "skip":
            dec.close(info, last_t.get(conn, report.end_ts), "last recorded chunk")
    return skipped


def _filter_text(opt: CaptureOptions, seen: list[str]) -> str:
    what = f"--port {opt.port}" if opt.port is not None else f"--connection {opt.connection}"
    if not seen:
        return f"no connection matches {what}: the capture holds no TCP connection"
    return f"no connection matches {what} (the capture's connections: {', '.join(seen)})"


def decode_capture(
    path: str,
    options: CaptureOptions,
    on_record: Callable[[Record], None] | None = None,
    progress: Callable[[int], None] | None = None,
    *,
    stdin: BinaryIO | None = None,
) -> CaptureReport:
    """Decode a pcap/pcapng file, stdin (``-``) or a lab recording folder, in one pass.

    :param options: ``source=None`` bounds the release from the wire unless a lab run's
        ``metadata.json`` beside the capture names it (the bound is reported either way
        as :attr:`CaptureReport.bound` when it is gathered).
    :param on_record: called with each typed record (:mod:`migcompat.capture` records:
        ``t``, ``conn``, ``dir``, ``kind``, ``name``, ``offset``, ``fields``), in time order.
    :param progress: called with the byte position in the file now and then.
    :raises InputError: the file cannot be read as a capture at all.
    """
    kind = sniff_format(path)
    options.validate()
    meta = metadata_of(path)
    meta_rel = None
    if meta is not None:
        src = meta.get("src") or {}
        # a `migcompat lab build` names its own source's release (10.0.13+keepalive)
        rel = src.get("protocol_release") or src.get("release")
        meta_rel = str(rel) if rel else None
    if options.source is None and meta_rel is not None:
        options.source, options.source_basis = parse_release(meta_rel), meta["_file"]  # type: ignore[index]
    if options.source is None and kind == "migfile":
        # No return path to bound it by: the release the machine type names.
        rel = machine_release(path)
        if rel is None:
            raise InputError(f"{path}: no machine type in the stream; pass --source REL")
        try:
            options.source = parse_release(rel)
        except InputError:
            raise InputError(f"{path}: machine type implies {rel}; pass --source REL") from None
        options.source_basis = "machine type (a file's newest possible source is unknown)"
    pinned = resolve_line(options.source) if options.source is not None else None
    if pinned is not None and options.source is not None and options.source.overlay:
        # the line, with the proposal the source carries (10.0.13+keepalive → 10.0+keepalive)
        pinned = Release(f"{pinned}+{options.source.overlay}")
    bound = ReleaseBound()
    report = CaptureReport(
        path=path, kind=kind, source=options.source, source_basis=options.source_basis
    )
    report.bound, report.pinned = bound, pinned
    report.metadata_source = meta_rel
    if meta is not None:
        st = meta.get("final_migrate") or {}
        report.lab_statuses = {
            side: str((st.get(side) or {}).get("status"))
            for side in ("src", "dst")
            if (st.get(side) or {}).get("status")
        } or None
    dec = CaptureDecoder(report, options, bound, on_record, pinned)
    if kind == "raw":
        skipped = _run_raw(path, dec, report)
    elif kind == "migfile":
        skipped = []
        run_migfile(path, dec, report, progress)
    else:
        pcap = os.path.join(path, "capture.pcap") if kind == "pcap-dir" else path
        pkind = sniff_format(pcap) if kind == "pcap-dir" else kind
        stats: dict[str, int] = {}
        skipped = _run_segments(
            segments(pcap, pkind, report.problems, progress, stdin, stats), dec, report, stats
        )
        if report.packets == 0:
            report.problems.append("the capture holds no packets")
    dec.finish(report.end_ts)
    report.damaged = any(
        p.startswith("record ") or p == "the capture holds no packets" for p in report.problems
    )
    if (options.port is not None or options.connection is not None) and not report.connections:
        report.unmatched_filter = _filter_text(options, skipped)
    if options.source is None:
        report.source = bound.high
        report.source_basis = bound.basis()
    for info in report.connections.values():
        if info.rp is not None:
            diff = info.rp.disagreements()
            if diff:
                report.ambiguous[info.id] = diff
    return report


def decode_migration_file(
    path: str,
    options: CaptureOptions,
    on_record: Callable[[Record], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> CaptureReport:
    """:func:`decode_capture` of a migration file (``QEVM`` magic) only.

    :raises InputError: not a migration file, or unreadable.
    """
    if not is_migration_file(path):
        raise InputError(f"{path}: not a migration file (no QEVM magic)")
    return decode_capture(path, options, on_record, progress)


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
