"""Device sections delimited and decoded: the stream's vmdesc, ``-dump-vmstate``, buffering."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from migcompat.protocol import (
    DeviceState,
    ForwardCommand,
    ForwardEnd,
    ForwardStop,
    RemoteViolation,
    VmDescription,
    VmEof,
    VmstateError,
    decoded_value,
    find_vmdesc,
    parse_dump_vmstate,
    parse_vmdesc,
    walk_fields,
)
from tests.capture.builders import command, device_full, header, packaged, ping, pstr, ram_start
from tests.test_forward import decode

REL = "10.0"

TIMER = {
    "name": "timer", "instance_id": 0, "vmsd_name": "timer", "version": 1,
    "fields": [
        {"name": "cpu_ticks_offset", "type": "int64", "size": 8},
        {"name": "unused", "type": "unused_buffer", "size": 8},
        {"name": "flag", "type": "bool", "size": 1},
        {"name": "regs", "type": "uint16", "size": 2, "array_len": 3},
        {"name": "segs", "type": "struct", "size": 5, "array_len": 2, "struct": {
            "vmsd_name": "segment", "version": 1,
            "fields": [{"name": "sel", "type": "uint8", "size": 1},
                       {"name": "base", "type": "int32 le", "size": 4}]}},
        {"name": "odd", "type": "float64", "size": 8},
    ],
    "subsections": [{"vmsd_name": "timer/dpm", "version": 1,
                     "fields": [{"name": "dpm", "type": "uint32 equal", "size": 4}]}],
}  # fmt: skip
TIMER_DATA = (
    struct.pack(">q", -5) + b"\xaa" * 8 + b"\x01" + struct.pack(">3H", 1, 2, 65535)
    + b"\x07" + struct.pack(">i", -1) + b"\x08" + struct.pack(">i", 9)
    + b"\x11" * 8
    + b"\x05" + pstr("timer/dpm") + struct.pack(">I", 1) + struct.pack(">I", 42)
)  # fmt: skip
VMDESC = {"page_size": 4096, "devices": [TIMER]}


def vmdesc_bytes(doc: dict = VMDESC) -> bytes:
    js = json.dumps(doc).encode()
    return b"\x06" + struct.pack(">I", len(js)) + js


def precopy(vmdesc: bool = True) -> bytes:
    return (
        header() + ram_start() + device_full(2, "timer", TIMER_DATA) + b"\x00"
        + (vmdesc_bytes() if vmdesc else b"")
    )  # fmt: skip


def test_vmdesc_delimits_and_decodes_every_type() -> None:
    evs = decode(precopy(), decode_fields=True)
    dev = [e for e in evs if isinstance(e, DeviceState)]
    assert len(dev) == 1 and dev[0].delimited_by == "vmdesc" and dev[0].size == len(TIMER_DATA)
    values = {f["name"]: decoded_value(f) for f in dev[0].fields or []}
    assert values == {
        "cpu_ticks_offset": -5,
        "unused": {"raw": "aa" * 8},
        "flag": True,
        "regs": [1, 2, 65535],
        "segs": [{"sel": 7, "base": -1}, {"sel": 8, "base": 9}],
        "odd": {"raw": "11" * 8},
        "timer/dpm": {"dpm": 42},
    }
    assert isinstance(evs[-2], VmEof) and isinstance(evs[-1], VmDescription)
    assert not [e for e in evs if isinstance(e, ForwardStop)]


def test_fields_off_by_default_but_same_delimiting() -> None:
    a = [e for e in decode(precopy()) if isinstance(e, DeviceState)]
    b = [e for e in decode(precopy(), decode_fields=True) if isinstance(e, DeviceState)]
    assert a[0].fields is None and (a[0].offset, a[0].size) == (b[0].offset, b[0].size)


@pytest.mark.parametrize("step", [1, 5, 333])
def test_streamed_in_pieces_gives_the_same_events(step: int) -> None:
    assert decode(precopy(), step, decode_fields=True) == decode(precopy(), decode_fields=True)


def test_vmdesc_given_by_the_caller() -> None:
    evs = decode(precopy(vmdesc=False), vmdesc=parse_vmdesc(json.dumps(VMDESC)))
    assert [e.idstr for e in evs if isinstance(e, DeviceState)] == ["timer"]


def test_no_vmdesc_stops_as_before() -> None:
    evs = decode(precopy(vmdesc=False))
    stop = [e for e in evs if isinstance(e, ForwardStop)]
    assert [s.reason for s in stop] == [
        "cannot delimit device section 2 'timer' (FULL) without vmdesc"
    ]
    assert not [e for e in evs if isinstance(e, DeviceState)]


def test_buffering_is_bounded() -> None:
    # The vmdesc is there, but further away than the reader may buffer.
    evs = decode(precopy(), 16, vmdesc_buffer=32)
    assert [e.idstr for e in evs if isinstance(e, ForwardStop)] == ["timer"]
    assert not [e for e in evs if isinstance(e, DeviceState)]


def test_data_not_following_the_vmdesc_stops() -> None:
    bad = TIMER_DATA.replace(b"\x05" + pstr("timer/dpm"), b"\x05" + pstr("timer/xyz"))
    data = header() + ram_start() + device_full(2, "timer", bad) + b"\x00" + vmdesc_bytes()
    stop = [e for e in decode(data) if isinstance(e, ForwardStop)]
    assert len(stop) == 1 and "does not follow the vmdesc" in stop[0].reason
    assert "'timer/xyz' where the vmdesc has 'timer/dpm'" in stop[0].reason


def test_find_vmdesc_only_at_the_very_end() -> None:
    data = precopy()
    at, n = find_vmdesc(data) or (0, 0)
    assert data[at] == 0x06 and at + 5 + n == len(data)
    assert find_vmdesc(data + b"\x00") is None
    assert find_vmdesc(precopy(vmdesc=False)) is None


def test_bad_vmdesc_json_is_input_error() -> None:
    with pytest.raises(VmstateError):
        parse_vmdesc(b"{not json")
    with pytest.raises(VmstateError):
        parse_vmdesc('{"devices": [{"name": "x"}]}')


# -- -dump-vmstate and PACKAGED ----------------------------------------------------------------
DUMP = {
    "vmschkmachine": {"Name": "pc-q35-10.0"},
    "ich9-ahci": {"Name": "ich9-ahci", "version_id": 1, "minimum_version_id": 1,
                  "Description": {"name": "ich9_ahci", "version_id": 1, "minimum_version_id": 1,
                                  "Fields": [{"field": "ahci", "version_id": 0,
                                              "field_exists": False, "size": 8}]}},
}  # fmt: skip


def postcopy(ahci_version: int = 1) -> bytes:
    ahci = (
        b"\x04" + struct.pack(">I", 7) + pstr("0000:00:1f.2/ich9_ahci")
        + struct.pack(">II", 0, ahci_version) + b"\x7e\x00\x00\x00\x07\x04" * 3
        + b"\x7e" + struct.pack(">I", 7)
    )  # fmt: skip
    return (
        header() + command(REL, "OPEN_RETURN_PATH") + ram_start()
        + packaged(REL, command(REL, "POSTCOPY_LISTEN") + device_full(2, "timer") + ahci
                   + device_full(3, "apic", b"\x7e\x00\x00\x00\x03\x00" * 2)
                   + ping(REL, 3) + command(REL, "POSTCOPY_RUN"))
        + ping(REL, 4)
    )  # fmt: skip


def test_packaged_devices_delimited_with_the_dump() -> None:
    evs = decode(postcopy(), dump=parse_dump_vmstate(json.dumps(DUMP)))
    dev = [e for e in evs if isinstance(e, DeviceState)]
    assert [(d.idstr, d.size, d.delimited_by) for d in dev] == [
        ("timer", 24, "footer"), ("0000:00:1f.2/ich9_ahci", 18, "footer"), ("apic", 12, "footer"),
    ]  # fmt: skip
    assert dev[1].device_type == "ich9-ahci" and dev[1].vmsd_name == "ich9_ahci"
    assert not [e for e in evs if isinstance(e, ForwardStop)]
    cmds = [e.short_name for e in evs if isinstance(e, ForwardCommand)]
    assert cmds[-3:] == ["PING", "POSTCOPY_RUN", "PING"]
    assert all("located" not in e.fields for e in evs if isinstance(e, ForwardCommand))


def test_dump_version_mismatch_is_not_delimited() -> None:
    # The source writes its own vmsd version: a dump of another binary does not fit.
    evs = decode(postcopy(ahci_version=2), dump=parse_dump_vmstate(json.dumps(DUMP)))
    stop = [e for e in evs if isinstance(e, ForwardStop)]
    assert stop and not stop[0].final and stop[0].idstr == "timer"


def test_without_dump_packaged_devices_stop_as_before() -> None:
    evs = decode(postcopy())
    stop = [e for e in evs if isinstance(e, ForwardStop)]
    assert len(stop) == 1 and not stop[0].final and stop[0].idstr == "timer"


def test_dump_parse_errors() -> None:
    with pytest.raises(VmstateError):
        parse_dump_vmstate("[]")
    with pytest.raises(VmstateError):
        parse_dump_vmstate("{}")
    lay = parse_dump_vmstate(json.dumps(DUMP))
    assert lay.machine == "pc-q35-10.0" and lay.lookup("ich9_ahci") is not None


# -- property: any layout, any values, round trip -----------------------------------------------
_INT = {
    f"{'' if signed else 'u'}int{8 * size}": (size, signed)
    for size in (1, 2, 4, 8)
    for signed in (True, False)
}


@st.composite
def _field(draw: st.DrawFn, depth: int = 0) -> tuple[dict, bytes, object]:
    kind = draw(st.sampled_from([*_INT, "bool", "buffer", *(["struct"] if depth < 2 else [])]))
    n = draw(st.one_of(st.none(), st.integers(0, 3)))
    count = 1 if n is None else n
    if kind == "struct":
        subs = draw(
            st.lists(_field(depth + 1), min_size=1, max_size=3, unique_by=lambda x: x[0]["name"])
        )
        desc = {"name": draw(st.from_regex(r"[a-z]{1,6}", fullmatch=True)), "type": "struct",
                "size": 0, "struct": {"vmsd_name": "s", "version": 1,
                                      "fields": [s[0] for s in subs]}}  # fmt: skip
        items = [draw(st.lists(st.just(0), min_size=0, max_size=0)) for _ in range(count)]
        blob = b"".join(s[1] for s in subs) * count
        one = {s[0]["name"]: s[2] for s in subs}
        value: object = [one] * count if n is not None else one
        del items
    else:
        size, signed = (
            _INT.get(kind, (1, False)) if kind != "buffer" else (draw(st.integers(1, 5)), False)
        )
        vals = []
        blob = b""
        for _ in range(count):
            if kind in _INT:
                lo, hi = (
                    (-(1 << (8 * size - 1)), (1 << (8 * size - 1)) - 1)
                    if signed
                    else (0, (1 << (8 * size)) - 1)
                )
                v = draw(st.integers(lo, hi))
                blob += v.to_bytes(size, "big", signed=signed)
                vals.append(v)
            elif kind == "bool":
                v = draw(st.booleans())
                blob += bytes([v])
                vals.append(v)
            else:
                b = draw(st.binary(min_size=size, max_size=size))
                blob += b
                vals.append({"raw": b.hex()})
        desc = {
            "name": draw(st.from_regex(r"[a-z]{1,6}", fullmatch=True)),
            "type": kind,
            "size": size,
        }
        value = vals if n is not None else (vals[0] if vals else None)
        if n is None and not vals:
            value = None
    if n is not None:
        desc["array_len"] = n
    return desc, blob, value


@settings(max_examples=150, deadline=None)
@given(
    st.lists(_field(), min_size=1, max_size=6, unique_by=lambda x: x[0]["name"]),
    st.binary(max_size=4),
)
def test_walk_round_trip(fields: list, tail: bytes) -> None:
    vmsd = parse_vmdesc(
        {
            "devices": [
                {
                    "name": "d",
                    "instance_id": 0,
                    "vmsd_name": "d",
                    "version": 1,
                    "fields": [f[0] for f in fields],
                }
            ]
        }
    ).lookup("d", 0)
    assert vmsd is not None
    blob = b"".join(f[1] for f in fields)
    data = b"\xee" * 3 + blob + tail
    end, out = walk_fields(vmsd, data, 3, len(data), decode=True, origin=100)
    assert end == 103 + len(blob)
    assert {f["name"]: decoded_value(f) for f in out or []} == {f[0]["name"]: f[2] for f in fields}
    if blob:
        with pytest.raises(EOFError):
            walk_fields(vmsd, data, 3, 3 + len(blob) - 1)


def test_vmdesc_of_another_version_is_not_used() -> None:
    doc = json.loads(json.dumps(VMDESC))
    doc["devices"][0]["version"] = 2
    data = header() + ram_start() + device_full(2, "timer", TIMER_DATA) + b"\x00"
    stop = [e for e in decode(data + vmdesc_bytes(doc)) if isinstance(e, ForwardStop)]
    assert len(stop) == 1 and "is version 1, its vmdesc entry version 2" in stop[0].reason


@pytest.mark.parametrize(
    "field",
    [
        {"name": "x", "type": "uint8", "size": -1},
        {"name": "x", "type": "uint8", "size": 1, "array_len": -3},
        {"name": "x", "type": "uint8", "size": 1, "array_len": 1 << 30},
    ],
)
def test_vmdesc_with_impossible_sizes_is_rejected(field: dict) -> None:
    doc = {"devices": [{"name": "d", "instance_id": 0, "version": 1, "fields": [field]}]}
    with pytest.raises(VmstateError):
        parse_vmdesc(json.dumps(doc))
    with pytest.raises(VmstateError):
        parse_vmdesc('{"devices": [{"name": "d", "instance_id": 0, "subsections": [1]}]}')


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.booleans())
def test_any_device_data_gives_events_or_a_violation(body: bytes, with_vmdesc: bool) -> None:
    data = header() + ram_start() + device_full(2, "timer", b"")[:-5] + body
    if with_vmdesc:
        data += vmdesc_bytes()
    try:
        evs = decode(data, decode_fields=True)
    except RemoteViolation:
        return  # bytes the destination rejects too: the one error a reader raises
    dev = [e for e in evs if isinstance(e, DeviceState)]
    if dev:  # walked with the vmdesc: the data's length is what the layout says
        assert dev[0].size == len(TIMER_DATA) and with_vmdesc
    else:
        assert any(isinstance(e, (ForwardStop, ForwardEnd)) for e in evs)
