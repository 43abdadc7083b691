"""Property tests of the protocol core (hypothesis), over every release and overlay.

The grammar (declarative, construct) and the reader (QEMU's check order) are
built independently from the same catalog; these properties make them agree.
"""

from __future__ import annotations

import struct

import construct as cs
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from migcompat.protocol import (
    NEED_DATA,
    STOPPED,
    EndOfStream,
    Message,
    Reader,
    RecvBitmap,
    RemoteViolation,
    catalog,
    frame_grammar,
    switchover_acks_expected,
)
from migcompat.protocol import strategies as rps

pytestmark = pytest.mark.property

RELEASE = rps.releases()


def reader_first(release: object, data: bytes) -> object:
    """The reader's first outcome on ``data`` (no EOF): event, NEED_DATA or a violation."""
    r = Reader(release)  # type: ignore[arg-type]
    if data:  # b"" would mean end of stream
        r.receive_data(data)
    try:
        return r.next_event()
    except RemoteViolation as exc:
        return exc


def grammar_first(release: object, data: bytes) -> cs.Container | Exception:
    # The grammar is given the stream state of a fresh Reader(release): SWITCHOVER_ACKs
    # it still takes (switchover-ack on, the release's newest machine type) and no block
    # named yet, so that a context-dependent rule is checked by both or by neither.
    try:
        return frame_grammar(release).parse(
            data,
            acks_left=switchover_acks_expected(release, machine=None, capability=True),
            block_named=False,
        )
    except cs.ConstructError as exc:
        return exc


@given(RELEASE.flatmap(lambda r: st.tuples(st.just(r), rps.valid_frames(r))))
def test_build_parse_round_trip(pair: tuple[object, rps.FrameSample]) -> None:
    release, sample = pair
    g = frame_grammar(release)
    parsed = g.parse(sample.data)
    # A REQ_PAGES sample is the pair REQ_PAGES_ID + REQ_PAGES (no previous block
    # otherwise): the round trip is of its first frame.
    first = sample.data[: 4 + parsed.length + (16 + parsed.blob.bitmap_size if parsed.blob else 0)]
    assert sample.frames == 1 or sample.kind == "valid:REQ_PAGES"
    assert g.build(parsed) == first
    ev = reader_first(release, sample.data)
    assert isinstance(ev, Message)
    assert ev.size == len(first) and ev.type_id == parsed.type


def _mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    b = bytearray(data)
    for pos, val in edits:
        if b:
            b[pos % len(b)] = val
    return bytes(b)


inputs = st.one_of(
    st.binary(max_size=80),
    st.tuples(
        RELEASE.flatmap(lambda r: rps.streams(r, max_frames=3)),
        st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=3),
    ).map(lambda t: _mutate(t[0].data, t[1])),
)


@given(RELEASE, inputs)
def test_grammar_and_reader_agree_on_the_first_frame(release: object, data: bytes) -> None:
    ev = reader_first(release, data)
    parsed = grammar_first(release, data)
    note(f"reader: {ev!r}\ngrammar: {parsed!r}")
    if isinstance(ev, RemoteViolation):
        assert isinstance(parsed, Exception)
    elif ev is NEED_DATA:
        assert isinstance(parsed, Exception)
    else:
        assert isinstance(ev, Message)
        if isinstance(parsed, Exception):
            # The one documented leniency: QEMU reads a RECV_BITMAP name that runs
            # past the frame from its stack buffer; the grammar refuses it.
            assert isinstance(ev, RecvBitmap)
            assert ev.payload[0] + 1 > ev.length
            return
        assert parsed.type == ev.type_id and parsed.length == ev.length
        size = 4 + parsed.length + (16 + parsed.blob.bitmap_size if parsed.blob else 0)
        assert size == ev.size
        for key, value in parsed.payload.items():
            if key.startswith("_") or key == "trailing":
                continue
            if key == "block_name":
                assert value.split("\0")[0] == ev.block_name  # type: ignore[attr-defined]
            else:
                assert getattr(ev, key) == value


@given(
    RELEASE.flatmap(lambda r: st.tuples(st.just(r), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)))
)
def test_max_rule(args: tuple[object, int, int]) -> None:
    """Every type >= MAX and type 0 is rejected with the release's text; no other type is."""
    release, type_id, length = args
    cat = catalog(release)
    data = struct.pack(">HH", type_id, length) + bytes(min(length, 600))
    ev = reader_first(release, data)
    if type_id == 0 or type_id >= cat.max:
        assert isinstance(ev, RemoteViolation)
        assert ev.qemu_error == cat.format_error("invalid_type", type_id, length)
        assert ev.stopped_at == 4
    else:
        assert not (
            isinstance(ev, RemoteViolation)
            and ev.qemu_error == cat.format_error("invalid_type", type_id, length)
        )
        spec = cat.by_id[type_id]
        if (
            spec.length is not None
            and length == spec.length
            and spec.short_name not in ("RESUME_ACK",)
        ):
            assert isinstance(ev, Message)


@given(RELEASE.flatmap(lambda r: rps.streams(r)), st.lists(st.integers(0, 10_000), max_size=8))
def test_any_split_gives_the_same_events(sample: rps.FrameSample, cuts: list[int]) -> None:
    def run(chunks: list[bytes]) -> list[object]:
        r = Reader(sample.release)
        out: list[object] = []
        try:
            for c in [*chunks, b""]:
                r.receive_data(c)
                for ev in r.events():
                    out.append(ev)
        except RemoteViolation as exc:
            out.append(("violation", exc.offset, exc.qemu_error, exc.stopped_at))
        return out

    data = sample.data
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert run([data] if data else []) == run([c for c in chunks if c])


@given(RELEASE, st.binary(max_size=200))
def test_random_bytes_only_yield_events_need_data_or_violations(
    release: object, data: bytes
) -> None:
    r = Reader(release)  # type: ignore[arg-type]
    r.receive_data(data)
    r.receive_data(b"")
    try:
        while True:
            ev = r.next_event()
            if ev is STOPPED:
                break
            assert isinstance(ev, (Message, EndOfStream))
    except RemoteViolation:
        pass


@given(RELEASE.flatmap(lambda r: rps.streams(r)))
def test_stream_verdict_and_rejection_position(sample: rps.FrameSample) -> None:
    r = Reader(sample.release)
    r.receive_data(sample.data)
    r.receive_data(b"")
    consumed = 0
    try:
        for ev in r.events():
            if isinstance(ev, Message):
                assert ev.offset == consumed
                consumed += ev.size
        assert sample.accepted
    except RemoteViolation as exc:
        assert not sample.accepted
        assert exc.offset == consumed  # where the rejected frame starts
        cat = catalog(sample.release)
        assert sample.error_key is not None and exc.qemu_error is not None
        assert exc.qemu_error.startswith(cat.errors[sample.error_key].split("%")[0])
