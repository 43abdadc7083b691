"""Synthetic pcaps (written with dpkt): reassembly, holes, roles, correlation, CLI."""

from __future__ import annotations

import io
import json
import os
import struct
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from migcompat.capture import CaptureOptions, Record, decode_capture
from migcompat.cli import main
from migcompat.protocol import InputError, parse_release

from .builders import (
    Conn,
    command,
    device_full,
    header,
    packaged,
    packets,
    ping,
    ram_pages,
    ram_start,
    rp,
    write_pcap,
)

REL = "10.0"


def migration(cport: int = 40000, sport: int = 4444, t: float = 1.0) -> Conn:
    """A postcopy migration: precopy pages, page requests, PACKAGED, SHUT."""
    c = Conn(cport=cport, sport=sport, t=t).handshake()
    c.send(
        True,
        header()
        + command(REL, "OPEN_RETURN_PATH")
        + ping(REL, 1)
        + command(REL, "POSTCOPY_ADVISE", struct.pack(">QQ", 4096, 4096))
        + ram_start()
        + ram_pages(range(0, 12 * 4096, 4096)),
    )
    c.send(False, rp(REL, "SWITCHOVER_ACK") + rp(REL, "PONG", value=1))
    c.send(
        True,
        ping(REL, 2)
        + packaged(
            REL,
            command(REL, "POSTCOPY_LISTEN")
            + device_full(2, "timer")
            + ping(REL, 3)
            + command(REL, "POSTCOPY_RUN"),
        )
        + ping(REL, 4),
    )
    c.send(False, rp(REL, "PONG", value=2))
    c.send(False, rp(REL, "PONG", value=3) + rp(REL, "PONG", value=4))
    c.send(False, rp(REL, "REQ_PAGES_ID", start=0x40000, len=4096, idstr="pc.ram"), dt=0.01)
    c.send(True, ram_pages([0x40000, 0x41000]), dt=0.002)
    c.send(False, rp(REL, "REQ_PAGES", start=0x80000, len=4096), dt=0.02)
    c.send(True, ram_pages(range(0x80000, 0x80000 + 12 * 4096, 4096)), dt=0.003)
    c.send(True, b"\x00")
    c.send(False, rp(REL, "SHUT", sibling_error=0))
    return c.fin()


def decode(path: str, **kw: object) -> tuple:
    recs: list[Record] = []
    opts = CaptureOptions(source=parse_release(REL), **kw)  # type: ignore[arg-type]
    return decode_capture(path, opts, recs.append), recs


def essence(recs: list[Record]) -> list[tuple]:
    """What a decode says, without times and TCP details."""
    keep = ("header", "section", "command", "rp-frame", "page-served", "ram-blocks")
    return [(r.conn, r.dir, r.kind, r.name, r.offset) for r in recs
            if r.kind in keep]  # fmt: skip


@pytest.fixture
def plain(tmp_path: Path) -> str:
    return write_pcap(str(tmp_path / "plain.pcap"), packets(migration()))


def test_plain_migration(plain: str) -> None:
    rep, _ = decode(plain)
    assert rep.problems == []
    (c,) = rep.connections.values()
    assert c.role == "main" and c.holes == [] and c.rp_verdict == "accepted"
    assert dict(c.rp_counts) == {
        "MIG_RP_MSG_SWITCHOVER_ACK": 1, "MIG_RP_MSG_PONG": 4, "MIG_RP_MSG_REQ_PAGES_ID": 1,
        "MIG_RP_MSG_REQ_PAGES": 1, "MIG_RP_MSG_SHUT": 1,
    }  # fmt: skip
    (m,) = rep.migrations
    assert m.machine_type == "pc-q35-10.0"
    assert len(m.ping_rtts) == 4 and m.unanswered_pings == 0
    assert len(m.page_latencies) == 2 and all(x > 0 for x in m.page_latencies)
    assert [s for _, s in m.states] == [
        "setup", "precopy", "postcopy-listen", "postcopy-active", "completed",
    ]  # fmt: skip
    assert m.commands["MIG_CMD_POSTCOPY_RUN"] == 1  # found at the PACKAGED body's end


def test_retransmissions_change_nothing(tmp_path: Path, plain: str) -> None:
    c = migration()
    data = [s for s in c.segs if s.data]
    for s in (data[3], data[len(data) // 2], data[-2]):
        c.segs.append(type(s)(s.c2s, s.offset, s.data, s.ts + 0.5, s.flags, ack=s.ack))
    c.segs.sort(key=lambda s: s.ts)
    path = write_pcap(str(tmp_path / "retrans.pcap"), packets(c))
    rep, recs = decode(path)
    assert essence(recs) == essence(decode(plain)[1])
    (info,) = rep.connections.values()
    assert info.retransmitted >= 3 and info.holes == []


def test_reordering_changes_nothing(tmp_path: Path, plain: str) -> None:
    c = migration()
    fwd = [i for i, s in enumerate(c.segs) if s.data and s.c2s]
    i, j = fwd[5], fwd[6]
    c.segs[i], c.segs[j] = c.segs[j], c.segs[i]
    path = write_pcap(str(tmp_path / "reorder.pcap"), packets(c))
    rep, recs = decode(path)
    assert essence(recs) == essence(decode(plain)[1])
    (info,) = rep.connections.values()
    assert info.out_of_order >= 1 and info.holes == []


def test_overlapping_segments(tmp_path: Path, plain: str) -> None:
    c = migration()
    k = next(i for i, s in enumerate(c.segs) if s.data and s.c2s and s.offset > 5000)
    a, b = c.segs[k], c.segs[k + 1]
    # Re-cut the two segments so that the second starts inside the first.
    whole = a.data + b.data
    c.segs[k + 1] = type(b)(b.c2s, a.offset + 600, whole[600:], b.ts, b.flags, ack=b.ack)
    path = write_pcap(str(tmp_path / "overlap.pcap"), packets(c))
    rep, recs = decode(path)
    assert essence(recs) == essence(decode(plain)[1])
    assert next(iter(rep.connections.values())).overlaps >= 1


def test_hole_in_return_path_is_reported_and_resynced(tmp_path: Path) -> None:
    c = migration()
    lost = next(i for i, s in enumerate(c.segs) if not s.c2s and s.data and len(s.data) == 16)
    gone = c.segs.pop(lost)  # PONG 3 + PONG 4
    path = write_pcap(str(tmp_path / "rphole.pcap"), packets(c))
    rep, recs = decode(path)
    (info,) = rep.connections.values()
    assert info.holes == [
        {"dir": "rp", "offset": gone.offset, "length": 16, "reason": "lost",
         "t": info.holes[0]["t"], "packet": info.holes[0]["packet"], "packets": 1},
    ]  # fmt: skip
    frames = [(r.name, r.offset, r.fields) for r in recs if r.kind == "rp-frame"]
    # After the hole the reader re-syncs on the next segment; no frame is misparsed.
    requests = [(n, o, f["start"]) for n, o, f in frames if "start" in f]
    assert requests == [
        ("MIG_RP_MSG_REQ_PAGES_ID", gone.offset + 16, 0x40000),
        ("MIG_RP_MSG_REQ_PAGES", gone.offset + 16 + 23, 0x80000),
    ]
    assert [f["value"] for n, _, f in frames if n == "MIG_RP_MSG_PONG"] == [1, 2]
    assert rep.migrations[0].unanswered_pings == 2
    assert any(r.kind == "resync" and r.name == "re-synced" for r in recs)
    assert info.rp_counts["MIG_RP_MSG_SHUT"] == 1


def test_hole_in_forward_stream_resyncs_on_pages(tmp_path: Path) -> None:
    c = migration()
    fwd = [i for i, s in enumerate(c.segs) if s.c2s and s.data]
    gone = c.segs.pop(fwd[2])
    path = write_pcap(str(tmp_path / "fwdhole.pcap"), packets(c))
    rep, recs = decode(path)
    (info,) = rep.connections.values()
    assert [(h["dir"], h["offset"], h["length"]) for h in info.holes] == [
        ("fwd", gone.offset, len(gone.data))
    ]
    assert any(r.kind == "resync" and r.dir == "fwd" for r in recs)
    # Commands after the resync point are still found.
    assert rep.migrations[0].commands["MIG_CMD_PACKAGED"] == 1
    assert len(rep.migrations[0].ping_rtts) == 4


def test_truncated_last_packet_and_snaplen(tmp_path: Path) -> None:
    c = migration()
    last = max(i for i, s in enumerate(c.segs) if s.c2s and len(s.data) > 100)
    c.segs[last].caplen = 10
    path = write_pcap(str(tmp_path / "snap.pcap"), packets(c))
    rep, _ = decode(path)
    (info,) = rep.connections.values()
    assert any(h["reason"] == "snaplen" for h in info.holes)
    # The file itself cut inside its last record: what came before is decoded.
    raw = Path(path).read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(raw[:-7])
    rep, _ = decode(str(cut))
    assert rep.migrations and rep.migrations[0].commands["MIG_CMD_PING"] >= 2


def test_two_migrations_and_port_filter(tmp_path: Path) -> None:
    a = packets(migration(cport=40000, sport=4444, t=1.0))
    b = packets(migration(cport=40001, sport=5555, t=2.0))
    path = write_pcap(str(tmp_path / "two.pcap"), sorted(a + b, key=lambda p: p[0]))
    rep, _ = decode(path)
    assert [m.index for m in rep.migrations] == [0, 1]
    assert [c.role for c in rep.connections.values()] == ["main", "main"]
    assert all(len(m.ping_rtts) == 4 for m in rep.migrations)
    rep, _ = decode(path, port=5555)
    assert [c.server for c in rep.connections.values()] == ["127.0.0.2:5555"]
    rep, _ = decode(path, connection="c1")
    assert [c.id for c in rep.connections.values()] == ["c1"]


@pytest.mark.parametrize(
    ("linktype", "fmt"), [(0, "pcap"), (101, "pcap"), (113, "pcap"), (276, "pcap"), (1, "pcapng")]
)
def test_link_types_and_pcapng(tmp_path: Path, plain: str, linktype: int, fmt: str) -> None:
    path = write_pcap(str(tmp_path / f"l{linktype}.{fmt}"), packets(migration()), linktype, fmt)
    assert essence(decode(path)[1]) == essence(decode(plain)[1])


def test_lab_recording_folder(tmp_path: Path, plain: str) -> None:
    c = migration()
    fwd = bytearray()
    back = bytearray()
    lines = []
    for s in c.segs:
        if not s.data:
            continue
        buf = fwd if s.c2s else back
        lines.append({"t": s.ts, "conn": 0, "dir": "fwd" if s.c2s else "rp",
                      "offset": len(buf), "len": len(s.data)})  # fmt: skip
        buf += s.data
    (tmp_path / "fwd.bin").write_bytes(bytes(fwd[:20000]))  # cut, as the lab's fixtures are
    (tmp_path / "rp.bin").write_bytes(bytes(back))
    (tmp_path / "chunks.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    rep, _ = decode(str(tmp_path))
    (info,) = rep.connections.values()
    assert info.role == "main" and info.rp_verdict == "accepted"
    assert info.holes[0]["reason"] == "not recorded" and info.holes[0]["offset"] == 20000
    assert sum(info.rp_counts.values()) == 8


def test_cli_json_keys_and_summary(plain: str) -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        rc = main(["capture", plain, "--json", "--source", REL])
    assert rc == 0
    objs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert all(list(o) == ["t", "conn", "dir", "kind", "name", "offset", "fields"] for o in objs)
    assert objs[-1]["kind"] == "summary"
    summary = objs[-1]["fields"]
    assert summary["migrations"][0]["ping_pong"]["count"] == 4
    assert summary["migrations"][0]["page_requests"]["count"] == 2


def test_cli_text_check_against_and_plot(tmp_path: Path, plain: str) -> None:
    out = io.StringIO()
    png = tmp_path / "p.png"
    with redirect_stdout(out):
        rc = main(["capture", plain, "--summary", "--check-against", "7.2", "10.0",
                   "--keepalive-period", "500", "--plot", str(png)])  # fmt: skip
    text = out.getvalue()
    assert rc == 1  # 7.2 rejects SWITCHOVER_ACK
    assert "check against 7.2: rejected" in text and "check against 10.0: accepted" in text
    assert "with P = 0.5 s the destination would have sent" in text
    # A 10.0 source: the wire bounds it to 10.0 … 10.1 (was "11.1", the newest, before).
    assert "source release 10.1 (stream: consistent with 10.0 … 10.1" in text
    assert png.stat().st_size > 1000


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"not a capture at all", "not a pcap or pcapng"), (None, "no such file")],
)
def test_cli_bad_input(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "x.pcap"
    if content is not None:
        path.write_bytes(content)
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        rc = main(["capture", str(path)])
    assert rc == 2 and message in err.getvalue()
    with pytest.raises(InputError):
        decode_capture(str(path), CaptureOptions())


def test_empty_capture(tmp_path: Path) -> None:
    path = write_pcap(str(tmp_path / "empty.pcap"), [])
    rep, recs = decode(path)
    assert rep.problems == ["the capture holds no packets"] and recs == []
    assert os.path.getsize(path) == 24


def test_capture_started_mid_connection(tmp_path: Path) -> None:
    c = migration()
    first_rp = next(i for i, s in enumerate(c.segs) if not s.c2s and s.data)
    # Keep from one forward segment into the RAM pages on; the first return-path
    # segment left is the middle of nothing in particular.
    start = next(i for i, s in enumerate(c.segs) if s.c2s and s.data and s.offset > 9000)
    c.segs = c.segs[min(start, first_rp + 1) :]
    path = write_pcap(str(tmp_path / "mid.pcap"), packets(c))
    rep, recs = decode(path)
    (info,) = rep.connections.values()
    assert info.mid_stream and info.role == "main-rp-only"
    assert any(r.kind == "resync" and r.dir == "fwd" for r in recs)
    assert info.rp_counts["MIG_RP_MSG_SHUT"] == 1 and info.rp_counts["MIG_RP_MSG_PONG"] >= 3
    assert rep.migrations[0].commands["MIG_CMD_PACKAGED"] == 1


def test_consecutive_holes_are_one_record_and_keep_offsets(tmp_path: Path, plain: str) -> None:
    c = migration()
    fwd = [s for s in c.segs if s.c2s and s.data]
    for s in fwd[3:6]:
        s.caplen = 0  # three packets cut to their headers in a row
    path = write_pcap(str(tmp_path / "cuts.pcap"), packets(c))
    rep, recs = decode(path, pages=True)
    (info,) = rep.connections.values()
    assert [(h["offset"], h["length"], h["packets"]) for h in info.holes] == [
        (fwd[3].offset, sum(len(s.data) for s in fwd[3:6]), 3)
    ]
    real = {r.offset: r.fields["addr"] for r in decode(plain, pages=True)[1]
            if r.kind == "page"}  # fmt: skip
    pages = [r for r in recs if r.kind == "page"]
    assert pages and all(real[r.offset] == r.fields["addr"] for r in pages)


def test_side_channels_are_labelled(tmp_path: Path) -> None:
    main_conn = migration(cport=40000, sport=4444, t=1.0)
    multifd = Conn(cport=40001, sport=4444, t=1.0005).handshake()
    multifd.send(True, struct.pack(">II", 0x11223344, 1) + bytes(16 + 8 + 32) + b"\x01" * 5000)
    preempt = Conn(cport=40002, sport=4444, t=1.0006).handshake()
    page = struct.pack(">Q", 0x40000 | 0x08) + b"\x06pc.ram" + b"\x05" * 4096
    preempt.t = 1.3  # after the destination asked for 0x40000
    preempt.send(True, page + struct.pack(">Q", 0x10))
    frames = packets(main_conn) + packets(multifd) + packets(preempt)
    path = write_pcap(str(tmp_path / "side.pcap"), sorted(frames, key=lambda p: p[0]))
    rep, recs = decode(path)
    roles = {c.client.rsplit(":", 1)[1]: c.role for c in rep.connections.values()}
    assert roles == {"40000": "main", "40001": "multifd", "40002": "postcopy-preempt"}
    (m,) = rep.migrations
    assert len(m.connections) == 3
    pre = next(c for c in rep.connections.values() if c.role == "postcopy-preempt")
    assert pre.pages == 1 and pre.rp_counts == {}
    assert not any(r.conn == pre.id and r.kind == "rp-frame" for r in recs)


def test_plot_without_matplotlib(
    tmp_path: Path, plain: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        rc = main(["capture", plain, "--plot", str(tmp_path / "p.png")])
    assert rc == 2 and "--plot needs matplotlib" in err.getvalue()
