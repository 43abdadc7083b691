"""The lab's relay (``migcompat.lab.Proxy``) under load: byte-exact check, soak, throughput.

    python benchmarks/proxy_load.py exact             # 1 GiB forward, 10 MiB return path
    python benchmarks/proxy_load.py soak -n 10000     # 10 000 connections with injections
    python benchmarks/proxy_load.py exact --fwd-mb 64 --rp-mb 10   # a shorter run

Synthetic endpoints on 127.0.0.1 only: a fake destination writes return-path frames (PONG,
REQ_PAGES, REQ_PAGES_ID, RESUME_ACK and RECV_BITMAP with its bitmap blob) in odd pieces and
reads the forward stream; a fake source writes the forward stream and reads the return path.
Frames are injected at random times (the relay puts them at the next frame boundary) and
right after RECV_BITMAP blobs. Checks, per connection:

* the destination received exactly what the source sent (sha256);
* the source received what the destination sent plus each injected frame at the offset the
  relay recorded (sha256), and every recorded offset is a frame boundary of the destination's
  stream;
* nothing stalls: a connection that makes no progress for ``STALL_S`` seconds is a stall, and
  the relay's :meth:`~migcompat.lab.Proxy.state` is printed (a bug report).

``exact`` also relays the same load through a plain asyncio socket relay (no framing, no
recording) in the same run and prints the throughput ratio. The tests
(``tests/lab/test_proxy_load.py``) run the same code with smaller sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import socket
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migcompat.lab import Proxy
from migcompat.lab.proxy import make_frame

#: A connection with no byte moved for this long is a stall.
STALL_S = 20.0
_BITMAP_END = 0x0123456789ABCDEF
KEEPALIVE = make_frame(8)


def recv_bitmap(blob: bytes, name: bytes = b"pc.ram") -> bytes:
    """RECV_BITMAP frame plus the blob QEMU sends after it (size, bitmap, end marker)."""
    head = make_frame(5, bytes([len(name)]) + name)
    return head + struct.pack(">Q", len(blob)) + blob + struct.pack(">Q", _BITMAP_END)


def rp_stream(
    rng: random.Random, total: int, bitmap_max: int
) -> tuple[bytes, list[int], list[int]]:
    """Frames of about ``total`` bytes; returns (stream, frame ends, RECV_BITMAP ends)."""
    out = bytearray()
    ends: list[int] = []
    bitmap_ends: list[int] = []
    while len(out) < total:
        k = rng.random()
        if k < 0.45:
            f = make_frame(4, struct.pack(">QI", rng.randrange(1 << 30) << 12, 4096))
        elif k < 0.6:
            page = struct.pack(">QI", rng.randrange(1 << 30) << 12, 4096)
            f = make_frame(3, page + b"\x06pc.ram")
        elif k < 0.8:
            f = make_frame(2, rng.randbytes(4))
        elif k < 0.9:
            f = make_frame(6, b"\x00\x00\x00\x01")
        else:
            f = recv_bitmap(rng.randbytes(rng.randrange(0, bitmap_max + 1)))
        out += f
        ends.append(len(out))
        if f[1] == 5:
            bitmap_ends.append(len(out))
    return bytes(out), ends, bitmap_ends


@dataclass
class Load:
    """One connection's load and how it ends."""

    fwd_bytes: int
    rp_bytes: int
    seed: int = 0
    close: str = "fin"  #: ``fin`` both ways, or ``rst-src`` / ``rst-dst`` (one side resets)
    slow: str = ""  #: ``src`` / ``dst``: that side reads slowly (back-pressure on the relay)
    injections: int = 3  #: at random times
    after_bitmap: int = 1  #: injections placed right after a RECV_BITMAP blob
    bitmap_max: int = 65536
    release: str | None = None  #: framing: None = the relay's own parser


@dataclass
class Outcome:
    ok: bool
    seconds: float
    fwd_bytes: int
    rp_bytes: int
    injections: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    stalled: bool = False
    state: dict[str, Any] | None = None


class PlainRelay:
    """The baseline: a bare asyncio relay (read, write, drain; both ways; nothing else)."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None

    async def listen(self, target: int) -> int:
        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(1 << 16):
                    w.write(data)
                    await w.drain()
                w.write_eof()
            except OSError:
                w.transport.abort()

        async def handle(sr: asyncio.StreamReader, sw: asyncio.StreamWriter) -> None:
            dr, dw = await asyncio.open_connection("127.0.0.1", target)
            await asyncio.gather(pump(sr, dw), pump(dr, sw))
            sw.close()
            dw.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> dict[str, Any]:
        if self.server is not None:
            self.server.close()
        return {}


def _block(seed: int) -> bytes:
    return random.Random(seed).randbytes(1 << 20)


def _rst(w: asyncio.StreamWriter) -> None:
    sock = w.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    w.transport.abort()


async def exchange(load: Load, outdir: Path, *, plain: bool = False) -> Outcome:
    """Run one connection's load through a fresh relay; check every byte."""
    rng = random.Random(load.seed)
    rp, ends, bitmap_ends = rp_stream(rng, load.rp_bytes, load.bitmap_max)
    boundaries = {0, *ends}
    block = _block(load.seed)
    progress = [time.monotonic()]
    problems: list[str] = []
    got_rp = bytearray()
    fwd_hash_recv = hashlib.sha256()
    fwd_recv = [0]
    injections: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    dst_conn: asyncio.Future[tuple[Any, Any]] = loop.create_future()
    after = set(rng.sample(bitmap_ends, min(load.after_bitmap, len(bitmap_ends))))
    relay: Any = PlainRelay() if plain else Proxy(outdir, src_release=load.release, fwd_cap=0)

    async def on_dst(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if not dst_conn.done():
            dst_conn.set_result((r, w))

    server = await asyncio.start_server(on_dst, "127.0.0.1", 0)
    port = await relay.listen(server.sockets[0].getsockname()[1])
    sr, sw = await asyncio.open_connection("127.0.0.1", port)
    dr, dw = await asyncio.wait_for(dst_conn, 10)

    async def dst_send() -> None:
        pos = 0
        while pos < len(rp):
            n = rng.choice((1, 3, 4, 5, 17, 512, 4096, 65536))
            nxt = min(len(rp), pos + n)
            cut = next((e for e in sorted(after) if pos < e <= nxt), None)
            if cut is not None and not plain:
                nxt = cut
            dw.write(rp[pos:nxt])
            pos = nxt
            await dw.drain()
            progress[0] = time.monotonic()
            if cut is not None and not plain:
                after.discard(cut)
                # wait until the relay forwarded the RECV_BITMAP, then inject right behind it
                while relay.conns[0].framer.boundary < cut:
                    await asyncio.sleep(0.001)
                injections.append(await relay.inject(KEEPALIVE))
        if load.close == "rst-dst":
            return
        dw.write_eof()

    async def dst_recv() -> None:
        while True:
            data = await dr.read(4096 if load.slow == "dst" else 1 << 16)
            if not data:
                return
            fwd_hash_recv.update(data)
            fwd_recv[0] += len(data)
            progress[0] = time.monotonic()
            if load.slow == "dst":
                await asyncio.sleep(0.0005)

    fwd_hash_sent = hashlib.sha256()

    async def src_send() -> None:
        sent = 0
        i = 0
        while sent < load.fwd_bytes:
            chunk = block[(i * 7919) % 4096 :][: min(load.fwd_bytes - sent, 1 << 18)]
            i += 1
            fwd_hash_sent.update(chunk)
            sw.write(chunk)
            sent += len(chunk)
            await sw.drain()
            progress[0] = time.monotonic()
        if load.close == "rst-src":
            return
        sw.write_eof()

    async def src_recv() -> None:
        while True:
            data = await sr.read(4096 if load.slow == "src" else 1 << 16)
            if not data:
                return
            got_rp.extend(data)
            progress[0] = time.monotonic()
            if load.slow == "src":
                await asyncio.sleep(0.0005)

    async def injector() -> None:
        if plain:
            return
        for _ in range(load.injections):
            await asyncio.sleep(rng.random() * 0.02)
            if relay.conns[0].rp_eof or relay.conns[0].closed:
                return
            injections.append(await relay.inject(KEEPALIVE))

    t0 = time.monotonic()
    tasks = [asyncio.create_task(c()) for c in (dst_send, dst_recv, src_send, src_recv, injector)]
    stalled = False
    state = None
    try:
        if load.close.startswith("rst"):
            # everything arrives first (a reset drops what is in flight), then one side resets
            await asyncio.wait([tasks[0], tasks[2], tasks[4]], timeout=STALL_S)
            await _until(lambda: fwd_recv[0] >= load.fwd_bytes and len(got_rp) >= _expected_len(
                rp, injections), progress)  # fmt: skip
            for t in tasks:
                t.cancel()
            await asyncio.wait(tasks, timeout=5)
            _rst(sw if load.close == "rst-src" else dw)
            other = dr if load.close == "rst-src" else sr
            try:
                tail = await asyncio.wait_for(other.read(1), STALL_S)
            except ConnectionResetError:
                tail = b""
            if tail:
                problems.append(f"bytes after the {load.close}: {tail!r}")
            for t in tasks:
                t.cancel()
        while True:
            live = [t for t in tasks if not t.done()]
            if not live:
                break
            await asyncio.wait(live, timeout=0.5)
            if time.monotonic() - progress[0] > STALL_S:
                stalled = True
                state = None if plain else relay.state()
                problems.append(f"stall: no progress for {STALL_S:.0f} s")
                break
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.wait(tasks, timeout=5)
        seconds = time.monotonic() - t0
        for w in (sw, dw):
            w.close()
        summary = await relay.close()
        server.close()
    for t in tasks:
        if t.done() and not t.cancelled() and t.exception() is not None:
            problems.append(f"{t.get_coro().__qualname__}: {t.exception()!r}")
    if not stalled:
        if fwd_hash_recv.digest() != fwd_hash_sent.digest() or fwd_recv[0] != load.fwd_bytes:
            problems.append(f"forward: {fwd_recv[0]} of {load.fwd_bytes} bytes or sha256 differ")
        problems += _check_rp(rp, boundaries, got_rp, injections)
        if not plain and summary["connections"][0]["violation"]:
            problems.append(f"framer violation: {summary['connections'][0]['violation']}")
        if not plain and len(summary["injections"]) != len(injections):
            problems.append("the relay recorded a different number of injections")
    if problems and not plain and state is None:
        state = {"injections": summary["injections"], "notes": summary["notes"][-12:],
                 "connection": summary["connections"][0]}  # fmt: skip
    return Outcome(not problems, seconds, load.fwd_bytes, len(rp), injections, problems,
                   stalled, state)  # fmt: skip


def _expected_len(rp: bytes, injections: list[dict[str, Any]]) -> int:
    return len(rp) + len(KEEPALIVE) * len(injections)


async def _until(cond: Any, progress: list[float]) -> None:
    while not cond():
        if time.monotonic() - progress[0] > STALL_S:
            return
        await asyncio.sleep(0.005)


def _check_rp(
    rp: bytes, boundaries: set[int], got: bytes | bytearray, injections: list[dict[str, Any]]
) -> list[str]:
    """The source's bytes = the destination's, plus each injection at its recorded offset."""
    problems = []
    expected = bytearray()
    dst_pos = 0
    for inj in sorted(injections, key=lambda r: r["src_offset"]):
        n = inj["src_offset"] - len(expected)
        expected += rp[dst_pos : dst_pos + n]
        dst_pos += n
        if dst_pos != inj["dst_boundary"] or dst_pos not in boundaries:
            problems.append(f"injection at dst offset {dst_pos} (recorded "
                            f"{inj['dst_boundary']}) is not a frame boundary")  # fmt: skip
        expected += bytes.fromhex(inj["hex"])
    expected += rp[dst_pos:]
    if hashlib.sha256(expected).digest() != hashlib.sha256(got).digest():
        at = next((i for i in range(min(len(got), len(expected))) if got[i] != expected[i]),
                  min(len(got), len(expected)))  # fmt: skip
        problems.append(f"return path: got {len(got)} bytes, expected {len(expected)}; sha256 "
                        f"differs from offset {at}: got {bytes(got[at:at + 12]).hex()}, expected "
                        f"{bytes(expected[at:at + 12]).hex()}")  # fmt: skip
    return problems


async def soak(n: int, concurrency: int, seed: int, quiet: bool = False) -> dict[str, Any]:
    """``n`` connections (random sizes, closes, slow sides, injections), ``concurrency`` at once."""
    rng = random.Random(seed)
    results: list[Outcome] = []
    failures: list[dict[str, Any]] = []
    sem = asyncio.Semaphore(concurrency)
    with tempfile.TemporaryDirectory(prefix="mc-soak-") as tmp:

        async def one(i: int) -> None:
            load = Load(
                fwd_bytes=rng.choice((0, 1, 1000, 70_000, 400_000)),
                rp_bytes=rng.choice((4, 300, 5000, 60_000)),
                seed=rng.randrange(1 << 30),
                close=rng.choice(("fin", "fin", "rst-src", "rst-dst")),
                slow=rng.choice(("", "", "src", "dst")),
                injections=rng.choice((0, 1, 3)),
                after_bitmap=rng.choice((0, 1)),
                bitmap_max=rng.choice((0, 100, 5000)),
                release=rng.choice((None, "7.2", "11.1")),
            )
            async with sem:
                d = Path(tmp) / f"c{i}"
                out = await exchange(load, d)
            results.append(out)
            if not out.ok:
                failures.append({"i": i, "load": load.__dict__, "problems": out.problems,
                                 "state": out.state})  # fmt: skip
                if not quiet:
                    print(json.dumps(failures[-1], default=str), file=sys.stderr)
            for p in d.glob("*"):
                p.unlink()
            d.rmdir()

        t0 = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(n)))
        elapsed = time.monotonic() - t0
    return {
        "connections": n,
        "concurrency": concurrency,
        "seconds": round(elapsed, 1),
        "stalls": sum(r.stalled for r in results),
        "failures": len(failures),
        "injections": sum(len(r.injections) for r in results),
        "fwd_bytes": sum(r.fwd_bytes for r in results),
        "rp_bytes": sum(r.rp_bytes for r in results),
        "first_failures": failures[:3],
    }


async def exact(fwd_mb: int, rp_mb: int, seed: int) -> dict[str, Any]:
    """The full-size byte-exact run, then the same load through the plain relay."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="mc-exact-") as tmp:
        for name, plain in (("proxy", False), ("plain-relay", True)):
            load = Load(fwd_bytes=fwd_mb << 20, rp_bytes=rp_mb << 20, seed=seed, injections=20,
                        after_bitmap=5)  # fmt: skip
            r = await exchange(load, Path(tmp) / name, plain=plain)
            out[name] = {
                "ok": r.ok, "problems": r.problems, "seconds": round(r.seconds, 2),
                "fwd_MBps": round(r.fwd_bytes / r.seconds / 1e6, 1),
                "injections": len(r.injections),
            }  # fmt: skip
    out["ratio_proxy_vs_plain"] = round(out["plain-relay"]["seconds"] / out["proxy"]["seconds"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("exact", help="byte-exact run at full size, plus the plain-relay baseline")
    e.add_argument("--fwd-mb", type=int, default=1024)
    e.add_argument("--rp-mb", type=int, default=10)
    e.add_argument("--seed", type=int, default=1)
    s = sub.add_parser("soak", help="many connections with injections; counts stalls")
    s.add_argument("-n", type=int, default=10_000)
    s.add_argument("-j", "--concurrency", type=int, default=32)
    s.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    if args.cmd == "exact":
        res = asyncio.run(exact(args.fwd_mb, args.rp_mb, args.seed))
        ok = res["proxy"]["ok"] and res["plain-relay"]["ok"]
    else:
        res = asyncio.run(soak(args.n, args.concurrency, args.seed))
        ok = res["stalls"] == 0 and res["failures"] == 0
    print(json.dumps(res, indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    os.nice(5)
    sys.exit(main())
