"""Device-section layouts (VMState descriptions) and the decoding of a section's fields.

A device section's data has no length on the wire: QEMU's ``vmstate_load_state`` knows
where it ends from the device's ``VMStateDescription``. Two places describe it from
outside QEMU:

* the stream's own **vmdesc** (``QEMU_VM_VMDESCRIPTION``, the JSON that
  ``qemu_savevm_state_complete_precopy`` writes after ``QEMU_VM_EOF``): one entry per
  section sent (``name``, ``instance_id``, ``vmsd_name``, ``version``), each field with
  its ``type`` (the ``VMStateInfo`` name: ``uint32``, ``bool``, ``buffer`` …), element
  ``size``, ``array_len`` and nested ``struct``\\ s, and exactly the subsections sent.
  It is exact for that stream: :func:`parse_vmdesc`.
* ``qemu-system-* -machine M -dump-vmstate FILE``: every qdev device's description
  (``Fields`` with ``size``, ``version_id``, ``field_exists``; ``num`` for arrays since
  10.0; ``Subsections``). It has no field types, no conditions, and lacks what is not a
  qdev device (``timer``, ``cpu``, ``ram`` …): :func:`parse_dump_vmstate` keeps it as a
  check on sizes and names (see ``_forward.py`` for how packaged sections are delimited).

:func:`walk_fields` walks a section's data with a vmdesc layout: the end offset, and
(when asked) the decoded fields. Integers of every width (``int8`` … ``uint64``,
``* equal``, ``int32 le`` — big-endian on the wire like the others), ``bool``, buffers,
arrays and nested structs (``struct``, ``tmp``) and subsections are decoded; any other
type is kept as raw bytes and marked ``raw`` — never a guess.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from ._errors import InputError

__all__ = [
    "DumpDevice",
    "DumpLayout",
    "VmDescLayout",
    "Vmsd",
    "VmsdField",
    "VmstateError",
    "decoded_value",
    "fields_dict",
    "find_vmdesc",
    "parse_dump_vmstate",
    "parse_vmdesc",
    "walk_fields",
]


def __dir__() -> list[str]:
    return list(__all__)


#: ``QEMU_VM_SUBSECTION`` (savevm.h; the same byte in every release).
QEMU_VM_SUBSECTION = 0x05
#: ``QEMU_VM_VMDESCRIPTION``.
QEMU_VM_VMDESCRIPTION = 0x06

#: VMStateInfo names decoded as big-endian integers: name → signed.
INT_TYPES: dict[str, bool] = {
    "int8": True, "int16": True, "int32": True, "int64": True,
    "int32 equal": True, "int32 le": True, "int64 equal": True,
    "uint8": False, "uint16": False, "uint32": False, "uint64": False,
    "uint8 equal": False, "uint16 equal": False, "uint32 equal": False,
    "uint64 equal": False,
}  # fmt: skip
#: Longest array a vmdesc may declare (QEMU's largest are RAM-sized bitmaps, sent as buffers).
MAX_ARRAY_LEN = 1 << 20
#: Types whose bytes are shown as they are (QEMU's own decoder shows them as hex too).
BYTES_TYPES = frozenset({"buffer", "unused_buffer", "bitmap"})


class VmstateError(InputError):
    """A section's data does not follow its layout (or a layout is not JSON QEMU writes)."""


class VmsdField(msgspec.Struct, frozen=True, kw_only=True):
    """One field of a description: VMStateInfo ``type``, element ``size``, ``array_len``."""

    name: str
    type: str
    size: int
    array_len: int | None = None
    struct: Vmsd | None = None
    #: Set when QEMU wrote an array one element at a time (each its own vmdesc entry).
    index: int | None = None


class Vmsd(msgspec.Struct, frozen=True, kw_only=True):
    """A ``VMStateDescription`` as the vmdesc gives it (fields, then subsections sent)."""

    name: str
    version: int
    fields: tuple[VmsdField, ...] = ()
    subsections: tuple[Vmsd, ...] = ()


class VmDescLayout(msgspec.Struct, frozen=True, kw_only=True):
    """A stream's vmdesc: each device section's description by (idstr, instance id)."""

    page_size: int | None
    devices: dict[tuple[str, int], tuple[int, Vmsd]]  # key → (version, description)
    json_size: int = 0

    def lookup(self, idstr: str, instance_id: int) -> Vmsd | None:
        entry = self.devices.get((idstr, instance_id))
        return entry[1] if entry else None


def _vmsd(d: dict[str, Any], name: str | None = None) -> Vmsd:
    fields = []
    for f in d.get("fields", ()):
        if not isinstance(f, dict) or "name" not in f or "type" not in f:
            raise VmstateError(f"vmdesc field without name/type in {d.get('vmsd_name')!r}")
        struct = None
        if f["type"] == "struct" and isinstance(f.get("struct"), dict):
            struct = _vmsd(f["struct"])
        elif f["type"] == "tmp" and "fields" in f:
            struct = _vmsd(f)
        size = int(f.get("size", 0))
        array_len = int(f["array_len"]) if "array_len" in f else None
        if size < 0 or not 0 <= (array_len or 0) <= MAX_ARRAY_LEN:
            raise VmstateError(f"vmdesc field {f['name']!r}: size {size}, array_len {array_len}")
        fields.append(
            VmsdField(
                name=str(f["name"]),
                type=str(f["type"]),
                size=size,
                array_len=array_len,
                struct=struct,
                index=int(f["index"]) if "index" in f else None,
            )
        )
    subs = tuple(_vmsd(s) for s in d.get("subsections", ()))
    return Vmsd(
        name=name or str(d.get("vmsd_name", "")),
        version=int(d.get("version", 0)),
        fields=tuple(fields),
        subsections=subs,
    )


def parse_vmdesc(data: bytes | str | dict[str, Any]) -> VmDescLayout:
    """The vmdesc JSON (the bytes after ``QEMU_VM_VMDESCRIPTION`` + be32 length).

    >>> lay = parse_vmdesc('{"page_size": 4096, "devices": [{"name": "timer", '
    ...     '"instance_id": 0, "vmsd_name": "timer", "version": 2, "fields": '
    ...     '[{"name": "cpu_ticks_offset", "type": "int64", "size": 8}]}]}')
    >>> lay.lookup("timer", 0).fields[0].type
    'int64'
    """
    size = len(data) if isinstance(data, (bytes, str)) else 0
    try:
        doc = json.loads(data) if isinstance(data, (bytes, str)) else data
    except ValueError as exc:
        raise VmstateError(f"vmdesc is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("devices"), list):
        raise VmstateError("vmdesc has no 'devices' list")
    devices: dict[tuple[str, int], tuple[int, Vmsd]] = {}
    try:
        for dev in doc["devices"]:
            key = (str(dev["name"]), int(dev["instance_id"]))
            devices[key] = (int(dev.get("version", 0)), _vmsd(dev))
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise VmstateError(f"vmdesc device entry malformed: {exc!r}") from exc
    ps = doc.get("page_size")
    return VmDescLayout(
        page_size=int(ps) if isinstance(ps, int) else None, devices=devices, json_size=size
    )


def find_vmdesc(data: bytes | bytearray | memoryview, start: int = 0) -> tuple[int, int] | None:
    """Where a vmdesc that ends exactly at ``data``'s end begins: (offset of 0x06, json length).

    As ``analyze-migration.py`` finds it: the JSON is the stream's last bytes, opened
    by ``QEMU_VM_VMDESCRIPTION`` and its be32 length; the candidate nearest the end wins.
    """
    n = len(data)
    if n - start < 7 or data[n - 1] != 0x7D:  # '}'
        return None
    mv = bytes(data[start:]) if not isinstance(data, bytes) or start else data
    i = len(mv)
    while True:
        i = mv.rfind(b"{", 0, i)
        if i < 5:
            return None
        if (
            mv[i - 5] == QEMU_VM_VMDESCRIPTION
            and int.from_bytes(mv[i - 4 : i], "big") == len(mv) - i
        ):
            return start + i - 5, len(mv) - i


# -- walking a section's data ----------------------------------------------------------------
class _Short(Exception):
    """The data ran out before the layout did."""


def walk_fields(
    vmsd: Vmsd,
    data: bytes | bytearray,
    pos: int,
    end: int,
    *,
    decode: bool = False,
    origin: int = 0,
) -> tuple[int, list[dict[str, Any]] | None]:
    """Walk one description's data from ``pos``: (offset after it, decoded fields or None).

    Offsets (the one returned and each field's) are stream offsets: ``origin`` is the
    stream offset of ``data[0]``.

    Each decoded field is ``{"name", "type", "offset", "size", "value"}`` (and
    ``count`` for an array, whose value is a list); a struct's value is a list of
    fields, raw bytes a ``{"raw": hex}``.

    :raises VmstateError: a subsection marker or name the layout does not have there.
    :raises EOFError: the data ends before the layout (``end`` reached).
    """
    out: list[dict[str, Any]] | None = [] if decode else None
    try:
        p = _walk(vmsd, data, pos, end, out)
    except _Short:
        raise EOFError(f"section data ends inside {vmsd.name!r}") from None
    if out is not None and origin:
        _shift(out, origin)
    return p + origin, out


def _shift(fields: list[Any], by: int) -> None:
    for f in fields:
        if isinstance(f, list):
            _shift(f, by)
            continue
        f["offset"] += by
        v = f["value"]
        if f["type"] in ("struct", "tmp", "subsection"):
            _shift(v, by)


def _walk(
    vmsd: Vmsd, data: bytes | bytearray, p: int, end: int, out: list[dict[str, Any]] | None
) -> int:
    for f in vmsd.fields:
        count = f.array_len if f.array_len is not None else 1
        start = p
        if f.struct is not None and f.type in ("struct", "tmp"):
            items: list[Any] = []
            for _ in range(count):
                sub: list[dict[str, Any]] | None = [] if out is not None else None
                p = _walk(f.struct, data, p, end, sub)
                items.append(sub)
            value: Any = items if f.array_len is not None else items[0]
        else:
            total = f.size * count
            if p + total > end:
                raise _Short
            value = None
            if out is not None:
                value = _values(f, data, p, count)
            p += total
        if out is not None:
            rec = {"name": f.name, "type": f.type, "offset": start, "size": p - start}
            if f.array_len is not None:
                rec["count"] = count
            if f.index is not None:
                rec["index"] = f.index
            rec["value"] = value
            out.append(rec)
    for subsec in vmsd.subsections:
        if p + 2 > end:
            raise _Short
        if data[p] != QEMU_VM_SUBSECTION:
            raise VmstateError(f"subsection {subsec.name!r} not found at offset {p}")
        n = data[p + 1]
        if p + 2 + n + 4 > end:
            raise _Short
        name = bytes(data[p + 2 : p + 2 + n]).decode("latin-1")
        if name != subsec.name:
            raise VmstateError(f"subsection {name!r} where the vmdesc has {subsec.name!r}")
        version = int.from_bytes(data[p + 2 + n : p + 6 + n], "big")
        start = p
        p += 6 + n
        fields: list[dict[str, Any]] | None = [] if out is not None else None
        p = _walk(subsec, data, p, end, fields)
        if out is not None:
            out.append(
                {
                    "name": name,
                    "type": "subsection",
                    "offset": start,
                    "size": p - start,
                    "version": version,
                    "value": fields,
                }
            )
    return p


def _one(f: VmsdField, b: bytes) -> Any:
    signed = INT_TYPES.get(f.type)
    if signed is not None and f.size in (1, 2, 4, 8):
        return int.from_bytes(b, "big", signed=signed)
    if f.type == "bool" and f.size == 1:
        return b[0] != 0
    return {"raw": b.hex()}


def _values(f: VmsdField, data: bytes | bytearray, p: int, count: int) -> Any:
    size = f.size
    if f.type in BYTES_TYPES:
        one = [{"raw": bytes(data[p + i * size : p + (i + 1) * size]).hex()} for i in range(count)]
    else:
        one = [_one(f, bytes(data[p + i * size : p + (i + 1) * size])) for i in range(count)]
    return one if f.array_len is not None else one[0]


def decoded_value(field: dict[str, Any]) -> Any:
    """A decoded field's value as plain nested data (struct fields become name → value)."""
    v = field["value"]
    if field["type"] in ("struct", "tmp", "subsection"):
        if "count" in field:
            return [fields_dict(item) for item in v]
        return fields_dict(v)
    return v


def fields_dict(fields: list[dict[str, Any]]) -> dict[str, Any]:
    """Decoded fields as name → value.

    QEMU writes some arrays one element at a time, each its own vmdesc entry of the same
    name (with an ``index``, except, since 10.0, the last of a run): those become a list.
    """
    out: dict[str, Any] = {}
    listed: set[str] = set()
    for f in fields:
        name, value = f["name"], decoded_value(f)
        if name in listed:
            out[name].append(value)
        elif name in out or "index" in f:
            out[name] = [out[name], value] if name in out else [value]
            listed.add(name)
        else:
            out[name] = value
    return out


# -- -dump-vmstate ------------------------------------------------------------------------------
class DumpDevice(msgspec.Struct, frozen=True, kw_only=True):
    """One ``-dump-vmstate`` description: its name, version, field names and subsections.

    The dump has no field types and no conditions (``field_exists``, variable arrays),
    so it cannot size a section; what it fixes is the section's ``version`` (the
    source writes its own ``version_id``) and the subsection names it may carry.
    """

    type_name: str
    name: str
    version: int
    fields: tuple[str, ...]
    subsections: tuple[str, ...]


class DumpLayout(msgspec.Struct, frozen=True, kw_only=True):
    """``-dump-vmstate`` JSON: the machine it was dumped for and descriptions by vmsd name."""

    machine: str | None
    devices: dict[str, DumpDevice]

    def lookup(self, idstr: str) -> DumpDevice | None:
        """The description of a section ``idstr`` (``0000:00:1f.2/ich9_ahci`` → ``ich9_ahci``)."""
        return self.devices.get(idstr) or self.devices.get(idstr.rsplit("/", 1)[-1])


def parse_dump_vmstate(data: bytes | str | dict[str, Any]) -> DumpLayout:
    """The JSON of ``-dump-vmstate FILE`` (keys: device type names; ``vmschkmachine``)."""
    try:
        doc = json.loads(data) if isinstance(data, (bytes, str)) else data
    except ValueError as exc:
        raise VmstateError(f"-dump-vmstate output is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise VmstateError("-dump-vmstate output is not a JSON object")
    chk = doc.get("vmschkmachine")
    machine = str(chk["Name"]) if isinstance(chk, dict) and "Name" in chk else None
    devices: dict[str, DumpDevice] = {}
    for key, entry in doc.items():
        if key == "vmschkmachine" or not isinstance(entry, dict):
            continue
        desc = entry.get("Description")
        if not isinstance(desc, dict) or "name" not in desc:
            continue
        try:
            devices[str(desc["name"])] = DumpDevice(
                type_name=str(key),
                name=str(desc["name"]),
                version=int(desc.get("version_id", 0)),
                fields=tuple(str(f.get("field", "")) for f in desc.get("Fields", ())),
                subsections=tuple(str(x.get("name", "")) for x in desc.get("Subsections", ())),
            )
        except (AttributeError, TypeError, ValueError) as exc:
            raise VmstateError(f"-dump-vmstate entry {key!r} malformed: {exc}") from exc
    if not devices:
        raise VmstateError("-dump-vmstate output describes no device")
    return DumpLayout(machine=machine, devices=devices)
