"""The composable scenario grammar (protocol/_scenario.py) and the guest-state labels."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from migcompat.compat import GUEST_STATES, Cell, predict
from migcompat.lab.runner import guest_state, side_state
from migcompat.protocol import InputError, make_frame, parse_scenario

moments = (
    st.sampled_from(["precopy", "postcopy-start", "postcopy-device", "postcopy"])
    | st.integers(0, 50).map(lambda n: f"frames={n}")
    | st.sampled_from(["t=1.5", "status=dst:postcopy-active", "status=postcopy-paused"])
)
injects = st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=8), moments).map(
    lambda t: (f"inject:{t[0]}:{len(t[1])}:{t[1].hex()}@{t[2]}", make_frame(t[0], t[1]), t[2])
)
shuts = st.tuples(st.integers(0, 0xFFFFFFFF), moments).map(
    lambda t: (f"shut:{t[0]}@{t[1]}", make_frame(1, struct.pack(">I", t[0])), t[1])
)
actions = st.sampled_from(["blackhole", "cut", "recover"]).map(lambda k: (k, None, "postcopy"))
caps = st.tuples(st.sampled_from(["src", "dst", "both"]), st.booleans()).map(
    lambda t: (f"{t[0]}:switchover-ack={'on' if t[1] else 'off'}", t)
)


@given(st.lists(caps, max_size=2), st.lists(injects | shuts | actions, min_size=1, max_size=4))
def test_specs_compose(cap_parts, steps) -> None:
    spec = "+".join([c for c, _ in cap_parts] + [s for s, _, _ in steps])
    sc = parse_scenario(spec)
    assert [(s.frame, s.trigger) for s in sc.actions] == [(f, m) for _, f, m in steps]
    assert sc.capabilities == tuple((t[0], "switchover-ack", t[1]) for _, t in cap_parts)
    assert sc.name == spec and parse_scenario(sc.name) == sc


def test_shorthands_and_overrides() -> None:
    assert parse_scenario("blackhole-active") == parse_scenario("active+blackhole").__class__(
        name="blackhole-active", kind="blackhole", steps=parse_scenario("blackhole").steps
    )
    assert parse_scenario("blackhole-idle").idle and not parse_scenario("blackhole-active").idle
    sc = parse_scenario("no-switchover-ack+dst:switchover-ack=on+inject:7")
    assert sc.capability_overrides("src") == {"switchover-ack": False}
    assert sc.capability_overrides("dst") == {"switchover-ack": True}
    assert parse_scenario("shut:0").frame == bytes.fromhex("0001000400000000")
    assert parse_scenario("shut:0x10").frame == bytes.fromhex("0001000400000010")


@pytest.mark.parametrize(
    "bad", ["inject:8+", "+cut", "shut:", "shut:0x100000000", "inject:8@later", "src:x=maybe"]
)
def test_bad_specs(bad: str) -> None:
    with pytest.raises(InputError):
        parse_scenario(bad)


def test_unpredicted_cells_say_what_is_missing() -> None:
    p = predict(Cell("10.0", "10.0", "pc-q35-10.0", "inject:8@frames=2"))
    assert p.unpredicted and "not fixed" in p.unpredicted
    p = predict(Cell("10.0", "10.0", "pc-q35-10.0", "inject:8@t=2+recover"))
    assert p.unpredicted and p.src_status is None


@given(st.integers(0, 5), st.sampled_from([True, False, None]),
       st.integers(0, 5), st.sampled_from([True, False, None]))  # fmt: skip
def test_guest_states(sd: int, sr: bool | None, dd: int, dr: bool | None) -> None:
    s, d = side_state(sd, sr), side_state(dd, dr)
    g = guest_state(s, d)
    assert g in GUEST_STATES
    assert (g == "split-brain") == (sd > 0 and dd > 0)
    if dd == 0 and dr:
        assert g == "destination-stalled"
    if sd == 0 and dd == 0 and not sr and not dr:
        assert g == "neither"


def test_any_spec_is_a_matrix_scenario() -> None:
    from migcompat.compat import parse_cell_id

    cell = parse_cell_id("11.1->11.1/pc-q35-10.0/no-switchover-ack+inject:7+inject:7")
    p = predict(cell)  # measured on 11.1.3: one ack passes, the second underflows
    assert p.src_error_desc == "Switchover ack pending num underflowed"
    with pytest.raises(InputError):
        parse_cell_id("11.1->11.1/pc-q35-10.0/no-such+thing")
