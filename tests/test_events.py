"""Every event class of protocol/ (return path and forward stream) shares one base."""

from __future__ import annotations

import json
import typing

import msgspec
import pytest

import migcompat.protocol as protocol
from migcompat.protocol import Event, ForwardReader, Reader, Release, build_frame, machine_version

#: A value of each field type the events use, by annotation.
_SAMPLES: dict[object, object] = {
    int: 7,
    str: "pc.ram",
    bytes: b"\x00\xff",
    bool: True,
    Release: Release("10.0"),
}


def _event_classes() -> list[type[Event]]:
    classes = [getattr(protocol, n) for n in protocol.__all__]
    return [
        c for c in classes if isinstance(c, type) and issubclass(c, Event) and c.__struct_fields__
    ]


def _sample(annotation: object) -> object:
    if annotation in _SAMPLES:
        return _SAMPLES[annotation]
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin is tuple:
        return ()
    if origin is list:
        return []
    if origin is dict:
        return {"value": 1}
    if type(None) in args:  # X | None
        return _sample(next(a for a in args if a is not type(None)))
    raise AssertionError(f"no sample for {annotation!r}")


def test_every_public_event_is_a_struct_on_the_event_base() -> None:
    names = {c.__name__ for c in _event_classes()}
    # Return-path and forward events alike (the forward ones were dataclasses once).
    assert {"Pong", "RecvBitmap", "EndOfStream", "VmEof", "ForwardCommand", "RamPage"} <= names
    for cls in _event_classes():
        assert issubclass(cls, msgspec.Struct), cls
        assert cls.__struct_fields__[:2] == ("release", "offset"), cls


@pytest.mark.parametrize("cls", _event_classes(), ids=lambda c: c.__name__)
def test_as_dict_on_every_event_class(cls: type[Event]) -> None:
    hints = typing.get_type_hints(cls)
    values = {name: _sample(hints[name]) for name in cls.__struct_fields__}
    ev = cls(**values)
    d = ev.as_dict()
    assert list(d) == list(cls.__struct_fields__)
    assert d["release"] == "10.0" and d["offset"] == 7
    for name, value in values.items():
        if isinstance(value, bytes):
            assert d[name] == value.hex()
    json.dumps(d)  # plain values only


def test_as_dict_of_decoded_events() -> None:
    r = Reader("10.0")
    r.receive_data(build_frame("10.0", "PONG", value=3))
    r.receive_data(b"")
    assert next(iter(r.events())).as_dict() == {
        "release": "10.0",
        "offset": 0,
        "type_id": 2,
        "length": 4,
        "size": 8,
        "value": 3,
    }
    f = ForwardReader("10.0", channel="auto")
    f.receive_data(b"\x00")  # QEMU_VM_EOF
    f.receive_data(b"")
    eof = next(iter(f.events()))
    assert eof.as_dict() == {"release": "10.0", "offset": 0, "size": 1, "depth": 0}


def test_machine_version_is_public() -> None:
    assert "machine_version" in protocol.__all__
    assert machine_version("pc-q35-10.0") == Release("10.0")
    assert machine_version("pc-i440fx-2.12") == Release("2.12")
    assert machine_version("q35") is None
