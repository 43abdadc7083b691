"""The relay over plain asyncio sockets, no QEMU: byte-exact, boundary injection, blackhole."""

from __future__ import annotations

import asyncio
import os
import struct

import pytest

from migcompat.lab.proxy import Framer, Proxy, make_frame


def _reader_available() -> bool:
    try:
        return Framer("7.2").reader is not None
    except Exception:
        return False


# None = the relay's own header parser; "7.2"/"11.1" = the protocol core's Reader for that source.
FRAMINGS = [
    None,
    pytest.param("7.2", marks=pytest.mark.skipif(not _reader_available(), reason="no Reader")),
    pytest.param("11.1", marks=pytest.mark.skipif(not _reader_available(), reason="no Reader")),
]

PONG = make_frame(2, b"\x00\x00\x00\x01")
REQ_PAGES = make_frame(4, struct.pack(">QI", 0x2000000, 4096))
KEEPALIVE = make_frame(8)


def recv_bitmap(name: bytes = b"pc.ram", bitmap: bytes = bytes(range(16))) -> bytes:
    """RECV_BITMAP frame plus the blob QEMU sends outside the frame."""
    frame = make_frame(5, bytes([len(name)]) + name)
    return frame + struct.pack(">Q", len(bitmap)) + bitmap + struct.pack(">Q", 0x0123456789ABCDEF)


class Pair:
    """A fake destination (server) and source (client) joined through a Proxy."""

    async def start(self, tmp_path, src_release=None):
        self.dst_conn: asyncio.Future = asyncio.get_running_loop().create_future()

        async def on_dst(r, w):
            self.dst_conn.set_result((r, w))

        self.server = await asyncio.start_server(on_dst, "127.0.0.1", 0)
        dport = self.server.sockets[0].getsockname()[1]
        self.proxy = Proxy(tmp_path, src_release=src_release)
        pport = await self.proxy.listen(dport)
        self.src_r, self.src_w = await asyncio.open_connection("127.0.0.1", pport)
        self.dst_r, self.dst_w = await asyncio.wait_for(self.dst_conn, 5)
        return self

    async def close(self):
        self.src_w.close()
        self.dst_w.close()
        summary = await self.proxy.close()
        self.server.close()
        return summary


async def read_exactly(reader, n, timeout=5.0):
    return await asyncio.wait_for(reader.readexactly(n), timeout)


async def until_received(proxy, n, timeout=5.0):
    """Wait until the relay has read ``n`` return-path bytes (so the test does not race it)."""
    end = asyncio.get_running_loop().time() + timeout
    while not proxy.conns or proxy.conns[0].framer.received < n:
        assert asyncio.get_running_loop().time() < end, "relay never read the bytes"
        await asyncio.sleep(0.01)


async def nothing_arrives(reader, timeout=0.3):
    try:
        data = await asyncio.wait_for(reader.read(1), timeout)
    except TimeoutError:
        return True
    return data == b""


def test_make_frame():
    assert make_frame(8) == b"\x00\x08\x00\x00"
    assert make_frame(4, b"\x01\x02", length=12) == b"\x00\x04\x00\x0c\x01\x02"


@pytest.mark.parametrize("step", [1, 3, 7, 1000])
def test_framer_finds_boundaries_whatever_the_split(step):
    stream = PONG + REQ_PAGES + recv_bitmap() + make_frame(6, b"\x00\x00\x00\x01")
    f = Framer(None)
    frames = []
    for i in range(0, len(stream), step):
        frames += f.feed(stream[i : i + step])
    names = ["PONG", "REQ_PAGES", "RECV_BITMAP", "RESUME_ACK"]
    assert [x.name for x in frames] == [f"MIG_RP_MSG_{n}" for n in names]
    assert sum(x.size for x in frames) == len(stream)
    assert frames[2].size == len(recv_bitmap())
    assert f.boundary == len(stream)


@pytest.mark.parametrize("release", FRAMINGS)
def test_byte_exact_both_ways(tmp_path, release):
    async def main():
        p = await Pair().start(tmp_path, release)
        fwd = os.urandom(300_000)
        rp = b"".join([PONG, REQ_PAGES, recv_bitmap(), PONG] * 20)
        p.src_w.write(fwd)
        # the destination writes the return path in awkward pieces
        for i in range(0, len(rp), 5):
            p.dst_w.write(rp[i : i + 5])
        await p.dst_w.drain()
        got_fwd = await read_exactly(p.dst_r, len(fwd))
        got_rp = await read_exactly(p.src_r, len(rp))
        summary = await p.close()
        return fwd, rp, got_fwd, got_rp, summary

    fwd, rp, got_fwd, got_rp, summary = asyncio.run(main())
    assert got_fwd == fwd
    assert got_rp == rp
    assert (tmp_path / "rp.bin").read_bytes() == rp
    assert (tmp_path / "fwd.bin").read_bytes() == fwd[: 256 * 1024]
    assert summary["connections"][0]["fwd_bytes"] == len(fwd)
    assert len(summary["frames"]) == 80
    assert (tmp_path / "chunks.jsonl").read_text().count('"dir": "rp"') >= 1


@pytest.mark.parametrize("release", FRAMINGS)
def test_injection_waits_for_a_frame_boundary(tmp_path, release):
    async def main():
        p = await Pair().start(tmp_path, release)
        p.dst_w.write(PONG + REQ_PAGES[:5])  # a whole frame, then half of one
        await p.dst_w.drain()
        assert await read_exactly(p.src_r, len(PONG)) == PONG
        await until_received(p.proxy, len(PONG) + 5)
        task = asyncio.create_task(p.proxy.inject(KEEPALIVE))
        # the half frame is held back and the injection waits for the boundary
        assert await nothing_arrives(p.src_r)
        assert not task.done()
        p.dst_w.write(REQ_PAGES[5:])
        await p.dst_w.drain()
        rec = await asyncio.wait_for(task, 5)
        got = await read_exactly(p.src_r, len(REQ_PAGES) + len(KEEPALIVE))
        await p.close()
        return rec, got

    rec, got = asyncio.run(main())
    assert got == REQ_PAGES + KEEPALIVE
    assert rec["src_offset"] == len(PONG) + len(REQ_PAGES)
    assert rec["hex"] == "00080000"
    assert (tmp_path / "rp.bin").read_bytes() == PONG + REQ_PAGES + KEEPALIVE


@pytest.mark.parametrize("release", FRAMINGS)
def test_injection_after_the_recv_bitmap_blob(tmp_path, release):
    blob_frame = recv_bitmap(bitmap=bytes(64))

    async def main():
        p = await Pair().start(tmp_path, release)
        cut = len(blob_frame) - 8  # everything but the end marker
        p.dst_w.write(blob_frame[:cut])
        await p.dst_w.drain()
        await until_received(p.proxy, cut)
        task = asyncio.create_task(p.proxy.inject(KEEPALIVE))
        assert await nothing_arrives(p.src_r)
        p.dst_w.write(blob_frame[cut:])
        await p.dst_w.drain()
        await asyncio.wait_for(task, 5)
        got = await read_exactly(p.src_r, len(blob_frame) + 4)
        await p.close()
        return got

    assert asyncio.run(main()) == blob_frame + KEEPALIVE


@pytest.mark.parametrize("release", FRAMINGS)
def test_bytes_after_shut_still_go_through(tmp_path, release):
    """The source stops reading after SHUT; the relay must not hold back what follows."""
    shut = make_frame(1, bytes(4))

    async def main():
        p = await Pair().start(tmp_path, release)
        p.dst_w.write(PONG + shut + b"\x00\x02\x00")  # a stray partial frame after SHUT
        await p.dst_w.drain()
        got = await read_exactly(p.src_r, len(PONG) + len(shut) + 3)
        summary = await p.close()
        return got, summary

    got, summary = asyncio.run(main())
    assert got == PONG + shut + b"\x00\x02\x00"
    assert [f["name"] for f in summary["frames"]] == ["MIG_RP_MSG_PONG", "MIG_RP_MSG_SHUT"]


def test_injection_at_once_when_idle(tmp_path):
    async def main():
        p = await Pair().start(tmp_path)
        rec = await asyncio.wait_for(p.proxy.inject(KEEPALIVE), 5)
        got = await read_exactly(p.src_r, 4)
        await p.close()
        return rec, got

    rec, got = asyncio.run(main())
    assert got == KEEPALIVE
    assert rec["src_offset"] == 0


def test_blackhole_holds_both_ways_without_closing(tmp_path):
    async def main():
        p = await Pair().start(tmp_path)
        p.proxy.blackhole()
        p.dst_w.write(PONG)
        p.src_w.write(b"forward")
        await p.dst_w.drain()
        await p.src_w.drain()
        held = await nothing_arrives(p.src_r) and await nothing_arrives(p.dst_r)
        p.proxy.unblock()
        got_rp = await read_exactly(p.src_r, len(PONG))
        got_fwd = await read_exactly(p.dst_r, 7)
        await p.close()
        return held, got_rp, got_fwd

    held, got_rp, got_fwd = asyncio.run(main())
    assert held
    assert got_rp == PONG
    assert got_fwd == b"forward"


def test_cut_closes_both_sides(tmp_path):
    async def main():
        p = await Pair().start(tmp_path)
        p.proxy.cut(reset=False)
        a = await asyncio.wait_for(p.src_r.read(10), 5)
        b = await asyncio.wait_for(p.dst_r.read(10), 5)
        await p.close()
        return a, b

    assert asyncio.run(main()) == (b"", b"")


def test_a_reset_on_one_leg_resets_the_other(tmp_path):
    """A source that resets must not leave the destination's leg open (a relay artefact)."""
    import socket as _socket

    async def main():
        p = await Pair().start(tmp_path)
        p.dst_w.write(PONG)
        await p.dst_w.drain()
        await read_exactly(p.src_r, len(PONG))
        sock = p.src_w.get_extra_info("socket")
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, struct.pack("ii", 1, 0))
        p.src_w.transport.abort()
        try:
            got = await asyncio.wait_for(p.dst_r.read(10), 5)
        except ConnectionResetError:
            got = b""
        await p.close()
        return got

    assert asyncio.run(main()) == b""
