"""A recording, injecting, partitioning TCP relay between migration source and destination.

Strategy: the forward direction (source → destination) is relayed as it comes. The return path
(destination → source) is cut into frames by the protocol core's :class:`Reader` (or a minimal
header parser while the core is absent) and forwarded **one whole frame at a time**, so the
relay is always at a frame boundary between two writes; an injected frame is written there
(after a RECV_BITMAP's trailing bitmap blob, which the framing includes). Bytes are never
changed or reordered: what the source receives is the destination's stream with our frames
inserted between frames, and that is what ``rp.bin`` records.

Files written to ``outdir`` (``N`` = connection index; 0 has no suffix — a recovery opens a
second connection):

* ``fwd[.N].bin`` — forward bytes (capped at ``fwd_cap``; the total is in the summary);
* ``rp[.N].bin`` — return-path bytes as delivered to the source, injections included;
* ``chunks.jsonl`` — one line per read/write: ``t``, ``conn``, ``dir`` (``fwd``/``rp``/
  ``inject``), ``offset`` in that file's stream, ``len``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from migcompat.lab._errors import LabError
from migcompat.protocol import make_frame

__all__ = ["FrameInfo", "Framer", "Proxy", "make_frame"]


def __dir__() -> list[str]:
    return list(__all__)


# MIG_RP_MSG_* ids (stable since 2.5; the catalog in protocol/data/ has them per release), for
# the fallback framer only; QEMU's names, as the protocol core's events spell them.
_RP_NAMES = {
    0: "MIG_RP_MSG_INVALID", 1: "MIG_RP_MSG_SHUT", 2: "MIG_RP_MSG_PONG",
    3: "MIG_RP_MSG_REQ_PAGES_ID", 4: "MIG_RP_MSG_REQ_PAGES", 5: "MIG_RP_MSG_RECV_BITMAP",
    6: "MIG_RP_MSG_RESUME_ACK", 7: "MIG_RP_MSG_SWITCHOVER_ACK",
}  # fmt: skip
_SHUT = 1
_RECV_BITMAP = 5
_BITMAP_END = 0x0123456789ABCDEF


@dataclass(frozen=True)
class FrameInfo:
    """One return-path frame as the destination sent it (``offset`` in the destination's stream)."""

    offset: int
    size: int
    type_id: int
    name: str


class Framer:
    """Finds frame boundaries in the destination's return-path stream.

    Uses ``migcompat.protocol.Reader`` for ``release`` when it exists. Bytes that source
    would reject (``RemoteViolation``) or an unknown framing switch it to pass-through: the
    relay keeps forwarding, but knows no more boundaries (``violation`` says why).
    """

    def __init__(self, release: str | None) -> None:
        self.reader: Any = None
        self.violation: dict[str, Any] | None = None
        self.received = 0  #: bytes fed
        self.boundary = 0  #: stream offset up to which whole frames were seen
        self._buf = bytearray()  # fallback parser only
        self._violation_types: tuple[type[BaseException], ...] = ()
        self.reader_error: str | None = None  #: why the protocol core's Reader is not used
        self.stopped: str | None = None  #: the Reader's end sentinel, once it returned one
        if release is not None:
            try:
                from migcompat.protocol import (
                    NEED_DATA,
                    Reader,
                    RemoteViolation,
                    parse_release,
                )
            except ImportError:
                pass
            else:
                try:
                    # Framing, not verdicts: a REQ_PAGES before any REQ_PAGES_ID is still
                    # one frame (the reader rejects it as a source would, without this).
                    self.reader = Reader(parse_release(release), req_pages_block="")
                except Exception as exc:
                    self.reader_error = f"{type(exc).__name__}: {exc}"
                else:
                    self._need_data = NEED_DATA
                    self._violation_types = (RemoteViolation,)

    @property
    def passthrough(self) -> bool:
        """True once frame boundaries are no longer known."""
        return self.violation is not None or self.stopped is not None

    def feed(self, data: bytes) -> list[FrameInfo]:
        """Feed bytes (``b""`` = EOF); return the frames completed by them."""
        self.received += len(data)
        if self.passthrough:
            self.boundary = self.received
            return []
        try:
            frames = self._feed_reader(data) if self.reader is not None else self._feed_own(data)
        except self._violation_types as exc:
            self.violation = {
                "offset": getattr(exc, "offset", None),
                "qemu_error": getattr(exc, "qemu_error", None),
                "error": str(exc),
            }
            self.boundary = self.received
            return []
        except Exception as exc:
            self.reader_error = f"{type(exc).__name__}: {exc}"
            self.violation = {"offset": None, "qemu_error": None, "error": self.reader_error}
            self.boundary = self.received
            return []
        if self.passthrough:
            self.boundary = self.received
        elif frames:
            last = frames[-1]
            self.boundary = last.offset + last.size
        return frames

    def _feed_reader(self, data: bytes) -> list[FrameInfo]:
        self.reader.receive_data(data)
        out: list[FrameInfo] = []
        while True:
            ev = self.reader.next_event()
            if ev is self._need_data:
                return out
            if not hasattr(ev, "size"):
                # STOPPED (after SHUT the source reads no more) or EndOfStream: from here on
                # the relay passes bytes through untouched, knowing no boundaries.
                self.stopped = str(ev)
                return out
            out.append(FrameInfo(ev.offset, ev.size, ev.type_id, ev.name))

    def _feed_own(self, data: bytes) -> list[FrameInfo]:
        self._buf += data
        out: list[FrameInfo] = []
        pos = 0
        start = self.received - len(self._buf)
        while len(self._buf) - pos >= 4:
            type_id, length = struct.unpack_from(">HH", self._buf, pos)
            size = 4 + length
            if type_id == _RECV_BITMAP:
                if len(self._buf) - pos < size + 8:
                    break
                (blob,) = struct.unpack_from(">Q", self._buf, pos + size)
                if blob > 1 << 32:
                    self.violation = {"offset": start + pos, "error": "absurd bitmap size"}
                    return out
                size += 8 + blob + 8
            if len(self._buf) - pos < size:
                break
            name = _RP_NAMES.get(type_id, f"UNKNOWN_0x{type_id:04x}")
            out.append(FrameInfo(start + pos, size, type_id, name))
            pos += size
            if type_id == _SHUT:  # every source's return-path thread ends after SHUT
                self.stopped = "STOPPED"
                break
        del self._buf[:pos]
        return out


@dataclass
class _Conn:
    index: int
    src_reader: asyncio.StreamReader
    src_writer: asyncio.StreamWriter
    dst_reader: asyncio.StreamReader
    dst_writer: asyncio.StreamWriter
    framer: Framer
    fwd_file: BinaryIO
    rp_file: BinaryIO
    fwd_total: int = 0
    rp_out: int = 0  #: bytes delivered to the source (rp file offset)
    unsent: bytearray = field(default_factory=bytearray)  #: received from dst, not yet forwarded
    frames_forwarded: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pending: list[tuple[bytes, asyncio.Future[dict[str, Any]]]] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    closed: bool = False
    rp_eof: bool = False  #: the destination ended the return path (FIN passed on to the source)


class Proxy:
    """Relay on 127.0.0.1; see the module docstring.

    :param outdir: where the streams and the chunk index go.
    :param src_release: source release line; selects the Reader that frames the return path.
    :param clock: the run's time origin (``time.monotonic()``), so times line up with QEMU's.
    :param fwd_cap: bytes of the forward stream kept per connection (``None``: all).
    :param host: where it listens and connects: a loopback address (anything else is refused).
    """

    def __init__(
        self,
        outdir: Path,
        *,
        src_release: str | None = None,
        clock: float | None = None,
        fwd_cap: int | None = 256 * 1024,
        host: str = "127.0.0.1",
    ) -> None:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise LabError(f"proxy host {host!r}: the lab listens on loopback addresses only")
        self.outdir = outdir
        self.src_release = src_release
        self.clock = time.monotonic() if clock is None else clock
        self.fwd_cap = fwd_cap
        self.host = host
        self.conns: list[_Conn] = []
        self.frames: list[dict[str, Any]] = []
        self.injections: list[dict[str, Any]] = []
        self.notes: list[dict[str, Any]] = []
        self.ports: list[int] = []
        self._servers: list[asyncio.Server] = []
        self._flowing = asyncio.Event()
        self._flowing.set()
        outdir.mkdir(parents=True, exist_ok=True)
        self._chunks = open(outdir / "chunks.jsonl", "w")
        self._frame_waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        #: Why recording stopped (a full disk), if it did; the relay goes on regardless.
        self.disk_error: str | None = None

    # ------------------------------------------------------------------
    # Section: Public interface

    def now(self) -> float:
        """Seconds since the run's clock origin."""
        return round(time.monotonic() - self.clock, 4)

    async def listen(self, target_port: int, port: int = 0) -> int:
        """Accept source connections on a new port, relaying each to ``target_port``.

        :returns: the port the source should ``migrate`` to.
        """

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await self._accept(r, w, target_port)

        server = await asyncio.start_server(handle, self.host, port)
        self._servers.append(server)
        bound = server.sockets[0].getsockname()[1]
        self.ports.append(bound)
        self._note("listen", port=bound, target=target_port)
        return bound

    async def inject(self, data: bytes, *, conn: int = -1) -> dict[str, Any]:
        """Write ``data`` to the source at the next return-path frame boundary.

        Returns when it was written: ``t``, ``conn``, ``src_offset`` (offset in ``rp.bin``),
        ``dst_boundary`` (destination stream offset it was inserted at), ``hex``.
        """
        if not self.conns:
            raise LabError("inject: no connection yet")
        c = self.conns[conn]
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        async with c.lock:
            if c.closed or c.rp_eof:
                why = "closed" if c.closed else "past its return-path EOF"
                raise LabError(f"inject: connection {c.index} is {why}")
            if not c.unsent:
                return self._write_injection(c, data)
            c.pending.append((data, fut))
        return await fut

    async def wait_frames(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` return-path frames have been forwarded (all connections)."""
        return await self._wait(lambda: len(self.frames) >= count, timeout)

    def blackhole(self) -> None:
        """Stop forwarding both ways, closing nothing (data waits in buffers and kernels)."""
        self._flowing.clear()
        self._note("blackhole")

    def unblock(self) -> None:
        """Undo :meth:`blackhole`."""
        self._flowing.set()
        self._note("unblock")

    def cut(self, *, reset: bool = True) -> None:
        """Close every connection both ways (``reset``: RST via SO_LINGER 0, else FIN)."""
        self._note("cut", reset=reset)
        for c in self.conns:
            self._close_conn(c, reset=reset)

    async def close(self) -> dict[str, Any]:
        """Stop listening, close everything, flush the files; return the summary."""
        for s in self._servers:
            s.close()
        for c in self.conns:
            self._close_conn(c, reset=False)
        tasks = [t for c in self.conns for t in c.tasks if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:  # asyncio.wait: lets a cancel of ours through, never raises a task's
            await asyncio.wait(tasks, timeout=5)
        files = [f for c in self.conns for f in (c.fwd_file, c.rp_file)] + [self._chunks]
        for f in files:
            try:
                f.close()
            except OSError as exc:
                self.disk_error = self.disk_error or f"{f.name}: {type(exc).__name__}: {exc}"
        self._flowing.set()
        if self.disk_error is not None:
            # incomplete streams would mislead whoever reads them: absent, and said why
            for f in files:
                with contextlib.suppress(OSError):
                    Path(f.name).unlink()
        return self.summary()

    def state(self) -> dict[str, Any]:
        """Live state, for a stall report: every pump, every transport, the framer, the queue."""

        def leg(w: asyncio.StreamWriter, r: asyncio.StreamReader) -> dict[str, Any]:
            t = w.transport
            proto = getattr(w, "_protocol", None)
            return {
                "closing": t.is_closing(),
                "reading": t.is_reading() if hasattr(t, "is_reading") else None,
                "write_buffer": t.get_write_buffer_size(),
                "writing_paused": getattr(proto, "_paused", None),
                "read_buffer": len(getattr(r, "_buffer", b"")),
                "at_eof": r.at_eof(),
            }

        def task(t: asyncio.Task[None]) -> dict[str, Any]:
            exc = t.exception() if t.done() and not t.cancelled() else None
            return {
                "name": t.get_name(), "done": t.done(), "cancelled": t.cancelled(),
                "exception": repr(exc) if exc else None,
                "waits_at": [f"{f.f_code.co_name}:{f.f_lineno}" for f in t.get_stack(limit=4)],
            }  # fmt: skip

        def conn(c: _Conn) -> dict[str, Any]:
            return {
                "index": c.index, "closed": c.closed, "fwd_total": c.fwd_total,
                "rp_from_dst": c.framer.received, "rp_to_src": c.rp_out,
                "boundary": c.framer.boundary, "unsent": len(c.unsent),
                "pending_injections": len(c.pending), "lock_held": c.lock.locked(),
                "passthrough": c.framer.passthrough,
                "src": leg(c.src_writer, c.src_reader), "dst": leg(c.dst_writer, c.dst_reader),
                "pumps": [task(t) for t in c.tasks],
            }  # fmt: skip

        return {
            "flowing": self._flowing.is_set(),
            "waiters": len(self._frame_waiters),
            "frames": len(self.frames),
            "connections": [conn(c) for c in self.conns],
            "last_notes": self.notes[-10:],
        }

    def summary(self) -> dict[str, Any]:
        """JSON-able account of what went through."""
        return {
            "ports": self.ports,
            "reader": "migcompat.protocol.Reader"
            if any(c.framer.reader is not None for c in self.conns)
            else "builtin-header-parser",
            "connections": [
                {
                    "index": c.index,
                    "fwd_bytes": c.fwd_total,
                    "fwd_recorded": min(c.fwd_total, self.fwd_cap or c.fwd_total),
                    "rp_bytes_from_dst": c.framer.received,
                    "rp_bytes_to_src": c.rp_out,
                    "violation": c.framer.violation,
                    "reader_error": c.framer.reader_error,
                    "reader_stopped": c.framer.stopped,
                }
                for c in self.conns
            ],
            "frames": self.frames,
            "injections": self.injections,
            "notes": self.notes,
            "disk_error": self.disk_error,
        }

    # ------------------------------------------------------------------
    # Section: Machinery

    def _note(self, what: str, **kw: Any) -> None:
        self.notes.append({"t": self.now(), "what": what, **kw})

    def _chunk(self, conn: int, direction: str, offset: int, length: int) -> None:
        if not self._chunks.closed and self.disk_error is None:
            rec = {"t": self.now(), "conn": conn, "dir": direction, "offset": offset, "len": length}
            self._record(self._chunks, json.dumps(rec) + "\n")

    def _record(self, f: Any, data: Any) -> None:
        """Write to a recording; a full disk stops recording (said once), never the relay."""
        if self.disk_error is not None:
            return
        try:
            f.write(data)
        except OSError as exc:
            self.disk_error = f"{getattr(f, 'name', '?')}: {type(exc).__name__}: {exc}"
            self._note("recording-stopped", error=self.disk_error)

    async def _accept(
        self, sr: asyncio.StreamReader, sw: asyncio.StreamWriter, target: int
    ) -> None:
        index = len(self.conns)
        try:
            dr, dw = await asyncio.open_connection(self.host, target)
        except OSError as exc:
            self._note("connect-failed", conn=index, target=target, error=str(exc))
            sw.close()
            return
        suffix = "" if index == 0 else f".{index}"
        c = _Conn(
            index, sr, sw, dr, dw, Framer(self.src_release),
            open(self.outdir / f"fwd{suffix}.bin", "wb"),
            open(self.outdir / f"rp{suffix}.bin", "wb"),
        )  # fmt: skip
        self.conns.append(c)
        self._note("connect", conn=index, target=target)
        c.tasks.append(asyncio.create_task(self._pump_fwd(c), name=f"proxy-fwd-{index}"))
        c.tasks.append(asyncio.create_task(self._pump_rp(c), name=f"proxy-rp-{index}"))

    async def _pump_fwd(self, c: _Conn) -> None:
        try:
            while True:
                await self._flowing.wait()
                data = await c.src_reader.read(1 << 16)
                await self._flowing.wait()
                if not data:
                    self._note("eof", conn=c.index, dir="fwd")
                    with contextlib.suppress(OSError):
                        c.dst_writer.write_eof()
                    return
                self._chunk(c.index, "fwd", c.fwd_total, len(data))
                if self.fwd_cap is None or c.fwd_total < self.fwd_cap:
                    keep = len(data) if self.fwd_cap is None else self.fwd_cap - c.fwd_total
                    self._record(c.fwd_file, data[:keep])
                c.fwd_total += len(data)
                c.dst_writer.write(data)
                await c.dst_writer.drain()
        except (OSError, asyncio.IncompleteReadError) as exc:
            self._note("error", conn=c.index, dir="fwd", error=f"{type(exc).__name__}: {exc}")
            self._propagate_failure(c)
        except Exception as exc:  # a relay bug: said, and both legs reset, never a silent hang
            self._crashed(c, "fwd", exc)

    async def _pump_rp(self, c: _Conn) -> None:
        try:
            while True:
                await self._flowing.wait()
                data = await c.dst_reader.read(1 << 16)
                await self._flowing.wait()
                async with c.lock:
                    if not data:
                        c.framer.feed(b"")
                        # A partial frame at EOF goes through as it is: the source judges it.
                        self._send_rp(c, bytes(c.unsent))
                        c.unsent.clear()
                        self._note("eof", conn=c.index, dir="rp")
                        c.rp_eof = True
                        with contextlib.suppress(OSError):
                            c.src_writer.write_eof()
                        self._fail_pending(c, "return path ended")
                        return
                    # dst offset of the first unsent byte, which goes to src at c.rp_out
                    base_dst = c.framer.received - len(c.unsent)
                    frames = c.framer.feed(data)
                    c.unsent += data
                    ready = c.framer.boundary - (c.framer.received - len(c.unsent))
                    for f in frames:
                        self.frames.append(
                            {"t": self.now(), "conn": c.index, "offset": f.offset,
                             "size": f.size, "type_id": f.type_id, "name": f.name,
                             "src_offset": c.rp_out + f.offset - base_dst}
                        )  # fmt: skip
                    if ready > 0:
                        self._send_rp(c, bytes(c.unsent[:ready]))
                        del c.unsent[:ready]
                        c.frames_forwarded += len(frames)
                    while c.pending and not c.unsent:
                        payload, fut = c.pending.pop(0)
                        if not fut.done():
                            fut.set_result(self._write_injection(c, payload))
                await c.src_writer.drain()
                self._wake()
        except (OSError, asyncio.IncompleteReadError) as exc:
            self._note("error", conn=c.index, dir="rp", error=f"{type(exc).__name__}: {exc}")
            self._fail_pending(c, str(exc))
            self._propagate_failure(c)
        except Exception as exc:  # a relay bug: said, and both legs reset, never a silent hang
            self._crashed(c, "rp", exc)

    def _crashed(self, c: _Conn, direction: str, exc: Exception) -> None:
        import traceback

        self._note("pump-crashed", conn=c.index, dir=direction, error=repr(exc),
                   traceback=traceback.format_exc(limit=6))  # fmt: skip
        self._fail_pending(c, f"the relay's {direction} pump crashed: {exc!r}")
        self._propagate_failure(c)

    def _propagate_failure(self, c: _Conn) -> None:
        """A reset or error on one leg resets the other, as one direct connection would.

        Without this, a source that resets its socket (e.g. its return-path thread gave up)
        would leave the destination's leg open and the destination waiting forever: an
        artefact of the relay, not QEMU's behaviour.
        """
        if not c.closed:
            self._note("propagate-reset", conn=c.index)
            self._close_conn(c, reset=True)

    def _send_rp(self, c: _Conn, data: bytes) -> None:
        if not data:
            return
        self._chunk(c.index, "rp", c.rp_out, len(data))
        self._record(c.rp_file, data)
        c.rp_out += len(data)
        c.src_writer.write(data)

    def _write_injection(self, c: _Conn, data: bytes) -> dict[str, Any]:
        rec = {
            "t": self.now(),
            "conn": c.index,
            "src_offset": c.rp_out,
            "dst_boundary": c.framer.boundary,
            "hex": data.hex(),
        }
        self._chunk(c.index, "inject", c.rp_out, len(data))
        self._record(c.rp_file, data)
        c.rp_out += len(data)
        c.src_writer.write(data)
        self.injections.append(rec)
        return rec

    def _fail_pending(self, c: _Conn, why: str) -> None:
        for _data, fut in c.pending:
            if not fut.done():
                fut.set_exception(LabError(f"inject: not written ({why})"))
        c.pending.clear()

    def _close_conn(self, c: _Conn, *, reset: bool) -> None:
        if c.closed:
            return
        c.closed = True
        for w in (c.src_writer, c.dst_writer):
            sock = w.get_extra_info("socket")
            if reset and sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            if reset:
                w.transport.abort()
            else:
                w.close()

    async def _wait(self, cond: Callable[[], bool], timeout: float) -> bool:
        if cond():
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._frame_waiters.append((cond, fut))
        try:
            async with asyncio.timeout(timeout):
                await fut
            return True
        except TimeoutError:
            return False
        finally:
            self._frame_waiters = [(c, f) for c, f in self._frame_waiters if f is not fut]

    def _wake(self) -> None:
        for cond, fut in self._frame_waiters:
            if not fut.done() and cond():
                fut.set_result(None)
