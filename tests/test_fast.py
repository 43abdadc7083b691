"""The fast path: derived from the catalog, same events as the model (table-driven cases).

The exhaustive equivalence is in ``tests/property/test_fast_equivalence.py``; these
pin the plan's derivation and the cases that matter most, in every release.
"""

from __future__ import annotations

import struct

import pytest

from migcompat.protocol import (
    NEED_DATA,
    STOPPED,
    FastReader,
    RamBlock,
    Reader,
    RecvBitmap,
    RemoteViolation,
    ReqPages,
    build_frame,
    catalog,
    known_releases,
)
from migcompat.protocol._fast import _HANDLER_RULES, _WINDOW, MAX_BATCH, fast_plan
from migcompat.protocol._layouts import PAYLOAD_LAYOUTS

RELEASES = [
    *known_releases(),
    *(r.with_overlay("keepalive") for r in known_releases() if catalog(r).max == 8),
]


def both(release: object, data: bytes, **kw: object) -> tuple[list[object], list[object]]:
    def run(cls: type) -> list[object]:
        r = cls(release, **kw)
        r.receive_data(data)
        r.receive_data(b"")
        out: list[object] = []
        try:
            out += list(r.events())
        except RemoteViolation as exc:
            out.append((exc.offset, exc.qemu_error, exc.stopped_at, str(exc)))
        out.append((r.offset, r.buffered, r.stopped))
        return out

    return run(Reader), run(FastReader)


@pytest.mark.parametrize("release", RELEASES, ids=str)
def test_plan_is_derived_from_the_catalog(release: object) -> None:
    cat = catalog(release)
    plan = fast_plan(cat.release)
    expected = set()
    for m in cat.messages:
        if not m.id or m.short_name in _HANDLER_RULES:
            continue
        if m.short_name == "SWITCHOVER_ACK" and cat.switchover_ack_accounting == "counted":
            continue  # counted against the devices' requests (11.1+): the model's
        layout = PAYLOAD_LAYOUTS.get(m.short_name, ())
        if m.length is not None or (layout and layout[-1][1] == "pstr8"):
            expected.add(m.short_name)
    assert set(plan.names) == expected
    for key, run in plan.runs.items():
        spec = cat.by_id[key >> 16]
        assert (spec.length, run.header) == (key & 0xFFFF, struct.pack(">HH", spec.id, spec.length))
    # With RAM known, the page requests carry state: the model reads them.
    ram = fast_plan(cat.release, ram_checks=True)
    assert not {"REQ_PAGES", "REQ_PAGES_ID"} & set(ram.names)


@pytest.mark.parametrize("release", RELEASES, ids=str)
def test_every_fast_message_equals_the_model(release: object) -> None:
    cat = catalog(release)
    fields = {
        "PONG": {"value": 7},
        "REQ_PAGES": {"start": 0x7FF000, "len": 4096},
        "REQ_PAGES_ID": {"start": 0x1000, "len": 8192, "idstr": "pc.ram"},
    }
    for name in fast_plan(cat.release).names:
        frame = build_frame(cat.release, name, **fields.get(name, {}))
        # (a REQ_PAGES reuses the block of an earlier REQ_PAGES_ID: req_pages_block)
        model, fast = both(release, frame * 3 + frame[:-1], req_pages_block="pc.ram")
        assert fast == model
        ev = fast[0]
        assert type(ev).__name__ == type(model[0]).__name__  # never the private builder
        assert type(ev).__module__ == "migcompat.protocol._events"
        with pytest.raises(AttributeError):
            ev.offset = 1  # type: ignore[union-attr]  # still frozen


def test_runs_longer_than_window_and_batch() -> None:
    frame = build_frame("10.0", "REQ_PAGES", start=0x1000, len=4096)
    n = MAX_BATCH * 2 + _WINDOW + 3
    data = frame * n + build_frame("10.0", "PONG", value=1) + frame * 5
    model, fast = both("10.0", data, req_pages_block="pc.ram")
    assert fast == model
    assert sum(isinstance(e, ReqPages) for e in fast) == n + 5


def test_stale_stack_bytes_and_the_idstr_nul() -> None:
    # A long REQ_PAGES_ID, a shorter one (its NUL cuts the stale name), a run of
    # REQ_PAGES, then a RECV_BITMAP of length 1 whose name byte says 40: QEMU reads
    # buf[1..40] up to the first NUL, all of it left by frames the fast path decoded.
    ending = catalog("10.0").recv_bitmap_ending
    long_id = build_frame("10.0", "REQ_PAGES_ID", start=2**64 - 1, len=2**32 - 1, idstr="A" * 30)
    short_id = build_frame("10.0", "REQ_PAGES_ID", start=2**64 - 1, len=2**32 - 1, idstr="BB")
    pages = build_frame("10.0", "REQ_PAGES", start=0x0102030405060708, len=0x0A0B0C0D) * 7
    lying = (
        struct.pack(">HHB", 5, 1, 40) + struct.pack(">Q", 8) + bytes(8) + struct.pack(">Q", ending)
    )
    model, fast = both("10.0", long_id + short_id + pages + lying)
    assert fast == model
    bm = next(e for e in fast if isinstance(e, RecvBitmap))
    # buf[1:12] from the REQ_PAGES, buf[12] = 2 and "BB" from short_id, then its NUL.
    assert bm.block_name == (pages[5:16] + b"\x02BB").decode("latin-1")


@pytest.mark.parametrize(
    "tail",
    [
        struct.pack(">HH", 0x99, 0),  # invalid type
        struct.pack(">HH", 4, 13) + bytes(13),  # REQ_PAGES with a wrong length
        struct.pack(">HHQIB", 3, 20, 0, 0, 6) + b"pc.ram" + b"x",  # idstr length lies
        struct.pack(">HHI", 6, 4, 2),  # RESUME_ACK value
        struct.pack(">HHI", 1, 4, 5) + b"never read",  # SHUT
        struct.pack(">HHQ", 4, 12, 1),  # cut short
    ],
    ids=["invalid-type", "bad-length", "idstr-length", "resume-ack", "shut", "truncated"],
)
def test_what_ends_a_run_is_the_models_verdict(tail: bytes) -> None:
    frame = build_frame("10.0", "REQ_PAGES", start=0, len=4096)
    model, fast = both("10.0", frame * 100 + tail)
    assert fast == model


def test_byte_at_a_time_need_data_until_the_last_byte() -> None:
    data = build_frame("10.0", "REQ_PAGES_ID", start=0, len=4096, idstr="pc.ram")
    r = FastReader("10.0")
    for b in data[:-1]:
        r.receive_data(bytes([b]))
        assert r.next_event() is NEED_DATA
    r.receive_data(data[-1:])
    assert r.next_event() == reader_first("10.0", data)


def reader_first(release: str, data: bytes) -> object:
    r = Reader(release)
    r.receive_data(data)
    return r.next_event()


def test_offset_and_buffered_follow_returned_events() -> None:
    frame = build_frame("10.0", "PONG", value=1)
    r = FastReader("10.0")
    r.receive_data(frame * 10 + b"\x00")
    first = r.next_event()
    assert first.offset == 0  # type: ignore[union-attr]
    assert (r.offset, r.buffered, r.stopped) == (8, 73, False)
    assert len(list(r.events())) == 9
    assert (r.offset, r.buffered) == (80, 1)


def test_events_stopped_early_lose_nothing_and_mix_with_next_event_and_drain() -> None:
    """``events()`` hands out a decoded batch one by one: breaking out, then calling
    ``next_event()`` or ``drain()`` (even inside the loop) returns each event once."""
    frames = b"".join(build_frame("10.0", "PONG", value=i) for i in range(20))
    r = FastReader("10.0")
    r.receive_data(frames)
    got = []
    for ev in r.events():
        got.append(ev.value)  # type: ignore[attr-defined]
        assert r.offset == ev.offset + 8  # type: ignore[attr-defined]
        if len(got) == 3:
            break
    got.append(r.next_event().value)  # type: ignore[union-attr]
    for ev in r.events():
        got.append(ev.value)  # type: ignore[attr-defined]
        if len(got) == 6:
            got += [e.value for e in r.drain()]  # type: ignore[attr-defined]
    assert got == list(range(20))
    assert r.next_event() is NEED_DATA and r.offset == 160


def test_drain_returns_events_then_raises_the_rejection() -> None:
    good = build_frame("10.0", "PONG", value=1)
    r = FastReader("10.0")
    r.receive_data(good * 3 + struct.pack(">HH", 0x99, 0))
    assert len(r.drain()) == 3
    with pytest.raises(RemoteViolation) as exc:
        r.drain()
    assert exc.value.offset == 24
    with pytest.raises(RemoteViolation):
        r.next_event()


def test_shut_stops_like_the_model() -> None:
    data = build_frame("7.2", "PONG", value=1) * 4 + build_frame("7.2", "SHUT", sibling_error=0)
    r = FastReader("7.2")
    r.receive_data(data + build_frame("7.2", "PONG", value=2))
    assert len(r.drain()) == 5
    assert r.next_event() is STOPPED and r.stopped


def test_ram_checks_stay_with_the_model() -> None:
    blocks = {"pc.ram": RamBlock("pc.ram", 1 << 20)}
    data = build_frame("10.0", "REQ_PAGES", start=0, len=4096) * 3
    model, fast = both("10.0", data, ram_blocks=blocks)
    assert fast == model
    assert "REQ_PAGES before any REQ_PAGES_ID" in str(fast[0][3])  # type: ignore[index]


def test_catalog_message_without_layout_decodes_raw(monkeypatch: pytest.MonkeyPatch) -> None:
    layouts = dict(PAYLOAD_LAYOUTS)
    del layouts["PONG"]
    monkeypatch.setattr("migcompat.protocol._reader.PAYLOAD_LAYOUTS", layouts)
    monkeypatch.setattr("migcompat.protocol._fast.PAYLOAD_LAYOUTS", layouts)
    fast_plan.cache_clear()
    try:
        model, fast = both("10.0", struct.pack(">HHI", 2, 4, 7) * 5)
        assert fast == model
        assert type(fast[0]).__name__ == "RawMessage" and fast[0].payload == b"\0\0\0\7"  # type: ignore[attr-defined]
    finally:
        fast_plan.cache_clear()


def test_req_pages_before_any_req_pages_id_is_the_models_to_reject() -> None:
    """QEMU's ``last_req_rb`` is unset until a REQ_PAGES_ID: "no previous block", RAM
    known or not; the fast path leaves such a REQ_PAGES to the model, then decodes runs."""
    pages = build_frame("10.0", "REQ_PAGES", start=0x1000, len=4096) * 100
    named = build_frame("10.0", "REQ_PAGES_ID", start=0, len=4096, idstr="pc.ram")
    model, fast = both("10.0", pages)
    assert fast == model
    assert fast[0][1] == "MIG_RP_MSG_REQ_PAGES has no previous block"  # type: ignore[index]
    model, fast = both("10.0", named + pages)
    assert fast == model
    assert sum(isinstance(e, ReqPages) for e in fast) == 100
    r = FastReader("10.0")
    r.receive_data(named)
    assert r.drain()[0].name == "MIG_RP_MSG_REQ_PAGES_ID"  # type: ignore[union-attr]
    r.receive_data(pages)  # a later fill: the block is still named
    assert len(r.drain()) == 100
