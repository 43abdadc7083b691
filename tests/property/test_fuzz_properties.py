"""Fuzzing properties of the source-parser model, over every release and overlay (issue 7).

They extend ``test_protocol_properties.py`` (first-frame agreement, single-header MAX
rule, splits): here the strategies predict verdict, exact text and stream position
independently of the reader (``rps.check_sample``), every invalid-frame class is
drawn on its own, and the grammar is compared with the reader over whole streams
including RECV_BITMAP blobs. ``migcompat fuzz`` runs the same oracles as a command.
"""

from __future__ import annotations

import struct
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from migcompat.protocol import Reader, RemoteViolation, build_frame, catalog
from migcompat.protocol import strategies as rps

pytestmark = pytest.mark.property

RELEASE = rps.releases()
#: One release of each reader shape: pre-3.0, 3.0–8.0, 8.1+, and the overlay.
SHAPES = ("2.5", "7.2", "10.0", "11.1+keepalive")


def _with_release(f):
    return RELEASE.flatmap(lambda r: st.tuples(st.just(r), f(r)))


@given(_with_release(rps.max_rule_cases))
def test_max_rule_after_any_accepted_prefix(case: tuple[object, tuple[bytes, int, int]]) -> None:
    """Type 0 and every type >= MAX: rejected where the header starts, exact text, 4 bytes read."""
    release, (prefix, type_id, length) = case
    rps.check_max_rule(release, prefix, type_id, length)  # type: ignore[arg-type]


@pytest.mark.parametrize("release", SHAPES)
@pytest.mark.parametrize("kind", rps.INVALID_KINDS)
def test_every_invalid_kind_is_predicted_exactly(release: str, kind: str) -> None:
    if kind not in rps.kinds_for(release):
        with pytest.raises(ValueError, match="not an invalid-frame kind"):
            rps.invalid_frames(release, kind)
        return

    @settings(max_examples=60, deadline=None)
    @given(rps.invalid_frames(release, kind))
    def run(sample: rps.FrameSample) -> None:
        assert sample.kind == kind
        rps.check_sample(sample)

    run()


@given(RELEASE.flatmap(lambda r: rps.streams(r)))
def test_streams_are_predicted_exactly(sample: rps.FrameSample) -> None:
    rps.check_sample(sample)


@given(
    st.tuples(RELEASE, rps.ram_blocks()).flatmap(
        lambda t: rps.streams(t[0], ram=t[1], max_frames=6)
    )
)
def test_streams_with_ram_context_are_predicted_exactly(sample: rps.FrameSample) -> None:
    assert sample.ram is not None
    rps.check_sample(sample)


@given(_with_release(rps.lenient_frames))
def test_lenient_recv_bitmap_is_accepted(case: tuple[object, rps.FrameSample]) -> None:
    rps.check_sample(case[1])


@given(_with_release(rps.mutated_streams))
def test_grammar_and_reader_agree_on_whole_streams(case: tuple[object, bytes]) -> None:
    rps.check_grammar_agrees(*case)  # type: ignore[arg-type]


@given(_with_release(rps.mutated_streams))
def test_first_rejection_is_where_the_source_stops_reading(case: tuple[object, bytes]) -> None:
    rps.check_stop_position(*case)  # type: ignore[arg-type]


@given(
    st.tuples(RELEASE, rps.ram_blocks()).flatmap(
        lambda t: st.tuples(st.just(t[0]), rps.mutated_streams(t[0], ram=t[1]), st.just(t[1]))
    )
)
def test_stop_position_with_ram_context(case: tuple[object, bytes, dict[str, int]]) -> None:
    rps.check_stop_position(*case)  # type: ignore[arg-type]


@given(
    RELEASE.flatmap(lambda r: st.tuples(st.just(r), rps.mutated_streams(r))),
    st.lists(st.integers(0, 10_000), max_size=6),
)
def test_any_split_of_mutated_streams_gives_the_same_events(
    case: tuple[object, bytes], cuts: list[int]
) -> None:
    rps.check_chunking(case[0], case[1], cuts)  # type: ignore[arg-type]


@pytest.mark.parametrize("release", ["3.0", "7.2", "11.1+keepalive"])
@pytest.mark.parametrize("size", [2**63, 2**64 - 1, 256 << 20, (256 << 20) + 1])
def test_huge_bitmap_size_allocates_nothing(release: str, size: int) -> None:
    """A RECV_BITMAP blob size from the wire is never used to size a buffer."""
    head = build_frame(release, "RECV_BITMAP", block_name="pc.ram")[: 4 + 1 + 6]
    data = head + struct.pack(">Q", size) + bytes(64)
    for ram in (None, {"pc.ram": 128 << 20}):
        tracemalloc.start()
        try:
            r = Reader(release, ram_blocks=ram)
            r.receive_data(data)
            try:
                list(r.events())
            except RemoteViolation as exc:
                assert exc.offset == 0 and exc.stopped_at == len(head) + 8
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 256 << 10, f"peak {peak} bytes for a {size}-byte bitmap claim"


def test_sample_json_round_trip() -> None:
    @settings(max_examples=30, deadline=None)
    @given(st.tuples(RELEASE, rps.ram_blocks()).flatmap(lambda t: rps.streams(t[0], ram=t[1])))
    def run(sample: rps.FrameSample) -> None:
        assert rps.FrameSample.from_json(sample.to_json()) == sample

    run()


@given(RELEASE.flatmap(lambda r: rps.frames(r)))
def test_without_ram_every_prediction_holds_for_a_plain_reader(sample: rps.FrameSample) -> None:
    assert sample.ram is None
    rps.check_sample(sample)


def test_kinds_cover_the_issue() -> None:
    """Every class issue 7 names has a kind, and releases without a message lack its kinds."""
    assert "recv-bitmap-no-name" not in rps.kinds_for("2.12")
    assert "recv-bitmap-bad-size" in rps.kinds_for("3.0")
    assert "recv-bitmap-bad-size" not in rps.kinds_for("3.0", ram=False)
    assert catalog("11.1+keepalive").max == 9
    assert rps.all_releases()[-1] == catalog("11.1+keepalive").release
