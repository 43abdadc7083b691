"""Inputs: pcap (walked over an mmap), pcapng (dpkt), stdin (``-``), lab recordings.

Every capture reader yields TCP segments as plain tuples (:data:`Segment`), the hot
path's currency. pcap records are walked with ``struct.unpack_from`` straight over a
read-only ``mmap`` of the file, and the payload handed on is a ``memoryview`` of the
mapping — no copy until a reader buffers it; pages behind the read position are
dropped from the process (``MADV_DONTNEED``) so memory stays flat on a many-GB file.
Ethernet + IPv4 + TCP without IP options (what loopback and bridge captures hold) is
sliced with one precompiled struct; everything else goes through
:func:`~._packets.decode_tcp`. pcapng (several block types, per-interface link types
and time resolutions) is read with dpkt, the maintained tool for it.

Lab recordings (``chunks.jsonl`` + ``fwd.bin``/``rp.bin``) yield reassembled pieces
directly (:func:`raw_pieces`).
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import sys
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from migcompat.protocol import InputError

from ._packets import LINKTYPES, Packet, TcpSegment, decode_tcp

__all__ = [
    "Segment",
    "iter_packets",
    "metadata_of",
    "raw_pieces",
    "segments",
    "sniff_format",
]


def __dir__() -> list[str]:
    return list(__all__)


#: (packet index, ts, src addr, sport, dst addr, dport, seq, ack, flags, payload, wire length)
Segment = tuple[int, float, bytes, int, bytes, int, int, int, int, Any, int]

_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e6),
    b"\xa1\xb2\xc3\xd4": (">", 1e6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e9),
    b"\xa1\xb2\x3c\x4d": (">", 1e9),
}
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
_QEVM_MAGIC = b"QEVM"
#: Ethernet (dst, src skipped; ethertype), IPv4 with IHL 5 (version/IHL, total length,
#: fragment field, protocol, addresses), TCP (ports, seq, ack, data offset, flags).
_ETH_IP4_TCP = struct.Struct(">12xHBxHxxHxB2x4s4sHHIIBB")
_FAST_MIN = _ETH_IP4_TCP.size  # 14 + 20 + 14
#: Drop mapped pages behind the read position every this many bytes.
_DROP_EVERY = 8 << 20
_CHECK_EVERY = 2 << 20
_DROP_LAG = 2 << 20
_STDIN_CHUNK = 1 << 20


def sniff_format(path: str) -> str:
    """``pcap``, ``pcapng``, ``raw``, ``pcap-dir``, ``stdin``, ``migfile`` or :class:`InputError`.

    ``migfile``: a migration file (``QEVM`` magic), the raw forward stream as
    ``migrate "exec:cat > mig.bin"`` writes it.
    """
    if path == "-":
        return "stdin"
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "chunks.jsonl")):
            return "raw"
        if os.path.exists(os.path.join(path, "capture.pcap")):
            return "pcap-dir"
        raise InputError(
            f"{path}: a folder without chunks.jsonl or capture.pcap (not a lab recording)"
        )
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from None
    if head in _PCAP_MAGICS:
        return "pcap"
    if head == _PCAPNG_MAGIC:
        return "pcapng"
    if head == _QEVM_MAGIC:
        return "migfile"
    if os.path.basename(path) == "chunks.jsonl":
        return "raw"
    raise InputError(
        f"{path}: not a pcap or pcapng file (starts with {head.hex() or 'nothing'}); "
        "for a raw return-path stream use `migcompat decode`"
    )


def _as_segment(seg: TcpSegment | str | None, unusable: Callable[[str], None]) -> Segment | None:
    if seg is None:
        return None
    if isinstance(seg, str):
        unusable(seg)
        return None
    return (
        seg.index, seg.ts, seg.src, seg.sport, seg.dst, seg.dport, seg.seq, seg.ack,
        seg.flags, seg.payload, seg.wire_len,
    )  # fmt: skip


# -- pcap ------------------------------------------------------------------------------------
def _pcap_header(head: bytes, where: str) -> tuple[str, float, int]:
    """(byte order, fractions per second, link type) of a pcap global header."""
    if len(head) < 24:
        raise InputError(f"{where}: cannot read the pcap header: {len(head)} of 24 bytes")
    order, unit = _PCAP_MAGICS[head[:4]]
    linktype = struct.unpack_from(order + "I", head, 20)[0] & 0x0FFFFFFF
    if linktype not in LINKTYPES:
        raise InputError(
            f"{where}: link type {linktype} is not one loopback or Ethernet captures use "
            f"(supported: {', '.join(sorted(set(LINKTYPES.values())))})"
        )
    return order, unit, linktype


def _walk(
    buf: Any,
    pos: int,
    end: int,
    order: str,
    unit: float,
    linktype: int,
    state: dict[str, Any],
) -> Iterator[Segment]:
    """Yield the segments of every whole record in ``buf[pos:end]``.

    ``state`` carries ``index`` (records so far) in and ``pos``/``index`` out, the
    ``unusable`` callback, and optionally ``checkpoint(pos)`` (called every
    :data:`_CHECK_EVERY` bytes) and ``on_close()`` (called when the walk ends, however
    it ends).
    """
    unpack_rec = struct.Struct(order + "IIII").unpack_from
    fast = linktype == 1
    unpack_fast = _ETH_IP4_TCP.unpack_from
    unusable = state["unusable"]
    checkpoint = state.get("checkpoint")
    mv = memoryview(buf)
    index = state["index"]
    check_at = pos + _CHECK_EVERY if checkpoint is not None else end + 1
    try:
        while pos + 16 <= end:
            sec, frac, incl, _orig = unpack_rec(buf, pos)
            start = pos + 16
            stop = start + incl
            if stop > end:
                break
            pos = stop
            ts = sec + frac / unit  # as dpkt computes it
            if fast and incl >= _FAST_MIN:
                et, vihl, total, frag, proto, src, dst, sport, dport, seq, ack, doff, flags = (
                    unpack_fast(buf, start)
                )
                if et == 0x0800 and vihl == 0x45 and proto == 6 and not frag & 0x3FFF:
                    hl = 34 + ((doff >> 4) << 2)
                    if doff >= 0x50 and total >= 40:
                        wire = total + 14 - hl
                        cut = total + 14 if total + 14 < incl else incl
                        payload: memoryview | bytes
                        if wire <= 0:
                            wire, payload = 0, b""
                        else:
                            payload = mv[start + hl : start + cut] if cut > hl else b""
                        yield (index, ts, src, sport, dst, dport, seq, ack, flags, payload, wire)
                        index += 1
                        if pos >= check_at:
                            checkpoint(pos)  # type: ignore[misc]
                            check_at = pos + _CHECK_EVERY
                        continue
                elif et == 0x0800 and proto != 6 and (vihl >> 4) == 4:
                    index += 1
                    continue  # not TCP
            seg = decode_tcp(Packet(index, ts, linktype, bytes(buf[start:stop])))
            out = _as_segment(seg, unusable)
            if out is not None:
                yield out
            index += 1
            if pos >= check_at:
                checkpoint(pos)  # type: ignore[misc]
                check_at = pos + _CHECK_EVERY
    finally:
        state["pos"], state["index"] = pos, index
        mv.release()
        on_close = state.get("on_close")
        if on_close is not None:
            on_close()


def _tail(left: int, index: int, problems: list[str]) -> None:
    if left <= 0:
        return
    if left < 16:
        problems.append(
            f"record {index}: header cut short ({left} of 16 bytes); the file ends there"
        )
    else:
        problems.append(
            f"record {index}: claims more bytes than the file has left (cut short, "
            f"{left} bytes unread); the rest of the file is not read"
        )


class _Dropper:
    """Drops the mapped pages behind the read position (RSS stays flat on big files).

    Read-only file pages: dropping them only unmaps them from this process; a later
    access (a payload still waiting in a forward batch, an out-of-order buffer) faults
    them back in. So the drop lags the read position by :data:`_DROP_LAG`, and each drop
    covers the previous window again to take back such stragglers.
    """

    def __init__(self, mm: mmap.mmap) -> None:
        self.mm = mm
        self.done = 0

    def __call__(self, pos: int) -> None:
        upto = max(0, pos - _DROP_LAG) & ~(mmap.PAGESIZE - 1)
        if upto - self.done >= _DROP_EVERY:
            start = max(0, self.done - _DROP_EVERY)
            self.mm.madvise(mmap.MADV_DONTNEED, start, upto - start)
            self.done = upto


def _pcap_mmap(
    path: str,
    problems: list[str],
    unusable: Callable[[str], None],
    progress: Any,
    counts: dict[str, int],
    done: Callable[[], None],
) -> Iterator[Segment]:
    """One walk over a read-only mapping of the whole file (pages dropped behind it)."""
    try:
        f = open(path, "rb")  # closed by the walk's on_close (or below)
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from None
    try:
        size = os.fstat(f.fileno()).st_size
        order, unit, linktype = _pcap_header(f.read(24), path)
        if size == 24:
            f.close()
            done()
            return iter(())
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except BaseException:
        f.close()
        raise
    mm.madvise(mmap.MADV_SEQUENTIAL)
    drop = _Dropper(mm)
    state: dict[str, Any] = {"unusable": unusable, "pos": 24, "index": 0}

    def checkpoint(pos: int) -> None:
        drop(pos)
        if progress is not None:
            progress(pos)

    def on_close() -> None:
        pos = state["pos"]
        counts["packets"] = state["index"]
        _tail(size - pos, state["index"], problems)
        if progress is not None:
            progress(pos)
        try:
            mm.close()
        except BufferError:
            pass  # a payload view is still referenced; the mapping goes with it
        f.close()
        done()

    state["checkpoint"], state["on_close"] = checkpoint, on_close
    return _walk(mm, 24, size, order, unit, linktype, state)


def _pcap_stream(
    f: BinaryIO,
    head: bytes,
    problems: list[str],
    unusable: Callable[[str], None],
    counts: dict[str, int],
) -> Iterator[Segment]:
    """A pcap from a pipe: chunks read as they come, records walked across them."""
    while len(head) < 24:
        more = f.read(24 - len(head))
        if not more:
            break
        head += more
    order, unit, linktype = _pcap_header(head, "stdin")
    buf = head[24:]
    state: dict[str, Any] = {"unusable": unusable, "pos": 0, "index": 0}
    while True:
        chunk = f.read(_STDIN_CHUNK)
        if chunk:
            buf = buf + chunk if buf else chunk
        yield from _walk(buf, 0, len(buf), order, unit, linktype, state)
        counts["packets"] = state["index"]
        buf = buf[state["pos"] :]
        if not chunk:
            _tail(len(buf), state["index"], problems)
            return


# -- pcapng (and pcap through dpkt) ------------------------------------------------------------
class _BoundedFile:
    """A read-only file whose ``read(n)`` never asks for more than the bytes left.

    dpkt reads a record's ``caplen`` (pcap) or block length (pcapng) straight from
    the file's header and passes it to ``read``; a damaged header saying 4 GiB would
    make the read allocate 4 GiB before finding a 40-byte file. Capping each read at
    what remains keeps allocation bounded by the file, and marks the file damaged.
    """

    def __init__(self, f: BinaryIO, size: int | None, prefix: bytes = b"") -> None:
        self._f = f
        self._size = size
        self._prefix = prefix
        self._pos = 0
        #: Set when a read asked for more than the file holds (a damaged length field).
        self.overrun: int | None = None

    def read(self, n: int = -1) -> bytes:
        if self._size is not None:
            left = self._size - self._pos
            if n is None or n < 0 or n > left:
                if n is not None and n > left and self.overrun is None:
                    self.overrun = n
                n = max(left, 0)
        out = b""
        if self._prefix:
            out, self._prefix = self._prefix[:n], self._prefix[n:]
            n -= len(out)
        if n:
            out += self._f.read(n)
        self._pos += len(out)
        return out

    def tell(self) -> int:
        return self._pos

    def __getattr__(self, name: str) -> object:
        return getattr(self._f, name)


def iter_packets(
    path: str,
    *,
    problems: list[str],
    on_progress: Callable[[int], None] | None = None,
    stream: BinaryIO | None = None,
    prefix: bytes = b"",
) -> Iterator[Packet]:
    """Yield every record of a pcap or pcapng file through dpkt.

    A damaged record ends the iteration with a note in ``problems`` (what was read
    before it is kept); a file dpkt cannot open at all raises :class:`InputError`.
    ``stream`` reads from an open binary stream instead (stdin; ``prefix`` = bytes
    already read from it).
    """
    import dpkt

    if stream is not None:
        kind = "pcapng" if prefix[:4] == _PCAPNG_MAGIC else "pcap"
        raw = None
        f = _BoundedFile(stream, None, prefix)
    else:
        kind = sniff_format(path)
        try:
            raw = open(path, "rb")  # closed in the finally below
            size = os.fstat(raw.fileno()).st_size
        except OSError as exc:
            raise InputError(f"{path}: {exc.strerror or exc}") from None
        f = _BoundedFile(raw, size)
    try:
        try:
            reader = dpkt.pcapng.Reader(f) if kind == "pcapng" else dpkt.pcap.Reader(f)
            linktype = int(reader.datalink())
        except Exception as exc:  # dpkt raises ValueError, struct.error, its own errors
            raise InputError(f"{path}: cannot read the {kind} header: {exc}") from None
        if linktype not in LINKTYPES:
            raise InputError(
                f"{path}: link type {linktype} is not one loopback or Ethernet captures use "
                f"(supported: {', '.join(sorted(set(LINKTYPES.values())))})"
            )
        index = 0
        it = iter(reader)
        while True:
            try:
                ts, buf = next(it)
            except StopIteration:
                break
            except Exception as exc:  # a damaged record: keep what came before
                problems.append(
                    f"record {index}: damaged ({type(exc).__name__}: {exc}); "
                    "the rest of the file is not read"
                )
                break
            if f.overrun is not None:
                problems.append(
                    f"record {index}: claims {f.overrun} bytes, more than the file has left; "
                    "the rest of the file is not read"
                )
                break
            yield Packet(index, float(ts), linktype, bytes(buf))
            index += 1
            if on_progress is not None and index % 256 == 0:
                on_progress(f.tell())
        if on_progress is not None:
            on_progress(f.tell())
    finally:
        if raw is not None:
            raw.close()


def segments(
    path: str,
    kind: str,
    problems: list[str],
    progress: Callable[[int], None] | None = None,
    stdin: BinaryIO | None = None,
    stats: dict[str, int] | None = None,
) -> Iterator[Segment]:
    """The TCP segments of a pcap/pcapng file (or of stdin, ``kind="stdin"``);
    ``stats["packets"]`` gets the number of records read (TCP or not)."""
    unusable: dict[str, int] = {}
    counts = stats if stats is not None else {}
    counts["packets"] = 0

    def note(text: str) -> None:
        sym = text.split(": ", 1)[1]
        unusable[sym] = unusable.get(sym, 0) + 1
        if sum(unusable.values()) <= 5:
            problems.append(text)

    def done() -> None:
        for sym, count in unusable.items():
            if count > 1:
                problems.append(f"{count} packets: {sym}")

    if kind == "pcap":
        # Returned, not yielded from: the walk is the only generator on the hot path.
        return _pcap_mmap(path, problems, note, progress, counts, done)
    return _other_segments(path, kind, problems, progress, stdin, counts, note, done)


def _other_segments(
    path: str,
    kind: str,
    problems: list[str],
    progress: Callable[[int], None] | None,
    stdin: BinaryIO | None,
    counts: dict[str, int],
    note: Callable[[str], None],
    done: Callable[[], None],
) -> Iterator[Segment]:
    try:
        if kind == "stdin":
            f = stdin if stdin is not None else sys.stdin.buffer
            head = f.read(4)
            if head in _PCAP_MAGICS:
                yield from _pcap_stream(f, head, problems, note, counts)
            elif head == _PCAPNG_MAGIC:
                for pkt in iter_packets("stdin", problems=problems, stream=f, prefix=head):
                    counts["packets"] += 1
                    s = _as_segment(decode_tcp(pkt), note)
                    if s is not None:
                        yield s
            else:
                raise InputError(
                    f"stdin: not a pcap or pcapng stream (starts with {head.hex() or 'nothing'})"
                )
        else:
            for pkt in iter_packets(path, problems=problems, on_progress=progress):
                counts["packets"] += 1
                s = _as_segment(decode_tcp(pkt), note)
                if s is not None:
                    yield s
    finally:
        done()


# -- lab recordings ------------------------------------------------------------------------------
def raw_pieces(
    path: str, problems: list[str]
) -> Iterator[tuple[float, int, str, int, int, bytes, int]]:
    """A lab recording's chunks: (t, conn, dir, offset, length, bytes read, line number).

    ``dir`` is ``fwd``, ``rp`` or ``inject`` (bytes the lab's proxy put into the return
    path; ``rp.bin`` holds them). Fewer bytes than ``length``: the files lack the rest.
    """
    folder = path if os.path.isdir(path) else os.path.dirname(path) or "."
    index = os.path.join(folder, "chunks.jsonl")
    files: dict[tuple[int, str], Any] = {}

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
                    problems.append(f"chunks.jsonl line {lineno}: unusable ({exc!r})")
                    continue
                h = fh(conn, "rp" if d == "inject" else d)
                data = b""
                if h is not None:
                    h.seek(off)
                    data = h.read(ln)
                yield t, conn, d, off, ln, data, lineno
    except OSError as exc:
        raise InputError(f"{index}: {exc.strerror or exc}") from None
    finally:
        for h in files.values():
            if h is not None:
                h.close()


def metadata_of(path: str) -> dict[str, Any] | None:
    """A lab run's ``metadata.json`` (or ``record.json``) beside the capture, if any."""
    if path == "-":
        return None
    folder = path if os.path.isdir(path) else os.path.dirname(path) or "."
    for name in ("metadata.json", "record.json"):
        try:
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and isinstance(meta.get("src"), dict):
            meta["_file"] = name
            return meta
    return None
