"""The construct grammar of return-path frames, built per release from the catalog.

This is the declarative definition: a frame reads like QEMU's
``source_return_path_thread`` — be16 type, be16 length, a payload chosen by the
type — with the catalog's rules as ``Check``s, and the RECV_BITMAP bitmap blob
that follows *outside* the frame (``ram_dirty_bitmap_reload``). It parses and
builds symmetrically. :class:`~migcompat.protocol.Reader` is the exact model of
QEMU's reader; the two are cross-checked by hypothesis (``tests/property``).

Two rules depend on what the source saw before the frame, so they are checked when
the caller passes that state as parse parameters (``frame_grammar(r).parse(data,
acks_left=0, block_named=False)``): ``acks_left``, the SWITCHOVER_ACKs the source still
takes (:func:`~migcompat.protocol.switchover_acks_expected`; ``None``: not counted), and
``block_named``, whether a REQ_PAGES_ID came before (a REQ_PAGES without one is "no
previous block"). Without them the grammar reads one frame on its own. The oracle
``strategies.check_grammar_agrees`` and :class:`~migcompat.protocol.ConstructReader` pass them.

Where QEMU is more lenient than any well-formed frame, the grammar is strict and
says so: a RECV_BITMAP whose name-length byte points past the frame parses in
QEMU from stale bytes of its stack buffer, and fails here.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import construct as cs
from construct import this

from ._catalog import RpCatalog, catalog
from ._errors import LocalViolation, RemoteViolation
from ._layouts import PAYLOAD_LAYOUTS
from ._releases import Release

__all__ = ["build_frame", "frame_grammar", "parse_frame", "payload_grammar"]


def __dir__() -> list[str]:
    return list(__all__)


_FIELD = {"be32": cs.Int32ub, "be64": cs.Int64ub, "pstr8": cs.PascalString(cs.Int8ub, "latin-1")}


def payload_grammar(cat: RpCatalog, table_name: str) -> cs.Construct:
    """The ``Struct`` of one message's payload, from its layout and the catalog."""
    layout = PAYLOAD_LAYOUTS.get(table_name)
    if layout is None:
        return cs.Struct("payload" / cs.GreedyBytes)
    fields: list[Any] = [name / _FIELD[kind] for name, kind in layout]
    if table_name == "REQ_PAGES_ID":
        # migration.c: expected_len = 12 + 1 + buf[12]; length must equal it.
        fields.append(cs.Check(lambda ctx: ctx._.length == 13 + len(ctx.idstr.encode("latin-1"))))
    elif table_name == "RECV_BITMAP":
        # QEMU only checks length >= 1; bytes after the name are ignored.
        fields.append("trailing" / cs.GreedyBytes)
    elif table_name == "RESUME_ACK":
        fields.append(cs.Check(this.value == cat.resume_ack_value))
    return cs.Struct(*fields)


def _state_allows(ctx: Any, ack: int, req: int) -> bool:
    """The handler's stream-state rules, when the caller passes the state (module doc)."""
    if ctx._building:
        return True
    params = ctx._params
    if ctx.type == ack:
        left = params.get("acks_left")
        return left is None or left > 0
    if ctx.type == req:
        return params.get("block_named") is not False
    return True


@cache
def frame_grammar(release: Release | str) -> cs.Construct:
    """One return-path frame (plus RECV_BITMAP's blob) as ``release``'s source reads it."""
    cat = catalog(release)
    fixed = {m.id: m.length for m in cat.messages}
    cases = {m.id: payload_grammar(cat, m.short_name) for m in cat.messages if m.id}
    ids = {m.short_name: m.id for m in cat.messages}
    recv_bitmap = ids.get("RECV_BITMAP", -1)
    ack, req = ids.get("SWITCHOVER_ACK", -1), ids.get("REQ_PAGES", -1)
    blob = cs.Struct(
        "bitmap_size" / cs.Int64ub,
        "bitmap" / cs.Bytes(this.bitmap_size),
        "end_mark" / cs.Const(cat.recv_bitmap_ending, cs.Int64ub),
    )
    return cs.Struct(
        # source_return_path_thread: header_type = qemu_get_be16(rp)
        "type" / cs.Int16ub,
        # header_len = qemu_get_be16(rp)
        "length" / cs.Int16ub,
        # header_type >= MIG_RP_MSG_MAX || header_type == MIG_RP_MSG_INVALID
        cs.Check(lambda ctx: 0 < ctx.type < cat.max),
        # rp_cmd_args[type].len != -1 && len != .len, or len > sizeof(buf)
        cs.Check(
            lambda ctx: (
                (fixed[ctx.type] is None or ctx.length == fixed[ctx.type])
                and ctx.length <= cat.buffer_size
            )
        ),
        "payload" / cs.FixedSized(this.length, cs.Switch(this.type, cases)),
        # the handler: SWITCHOVER_ACK counted, REQ_PAGES reuses the last block named
        cs.Check(lambda ctx: _state_allows(ctx, ack, req)),
        "blob" / cs.If(this.type == recv_bitmap, blob),
    )


def parse_frame(release: Release | str, data: bytes, offset: int = 0, **state: Any) -> cs.Container:
    """Parse exactly one frame from ``data``; a construct error becomes a RemoteViolation.

    ``state``: ``acks_left``, ``block_named`` (see the module docstring).
    """
    try:
        return frame_grammar(release).parse(data, **state)
    except cs.ConstructError as exc:
        raise RemoteViolation(
            f"not a frame {Release(str(release))} accepts: {exc}",
            offset=offset,
            release=Release(str(release)),
            data=bytes(data[:64]),
        ) from None


def build_frame(release: Release | str, name: str, **fields: Any) -> bytes:
    """Build the bytes of message ``name`` (``MIG_RP_MSG_PONG`` or ``PONG``) for ``release``.

    The length is computed from the payload unless given.

    >>> build_frame("7.2", "MIG_RP_MSG_PONG", value=1).hex()
    '0002000400000001'

    :raises LocalViolation: the release's source would reject these bytes.
    """
    cat = catalog(release)
    table = name.removeprefix("MIG_RP_MSG_")
    spec = next((m for m in cat.messages if m.short_name == table), None)
    if spec is None or spec.id == 0:
        raise LocalViolation(
            f"{cat.release} has no return-path message {name!r}",
            release=cat.release,
        )
    blob_fields = {k: fields.pop(k) for k in ("bitmap", "bitmap_size", "end_mark") if k in fields}
    length = fields.pop("length", None)
    if table == "RECV_BITMAP":
        fields.setdefault("trailing", b"")
    if length is None:
        length = _payload_length(table, fields)
    frame: dict[str, Any] = {"type": spec.id, "length": length, "payload": fields, "blob": None}
    if table == "RECV_BITMAP":
        bitmap = blob_fields.get("bitmap", b"")
        frame["blob"] = {
            "bitmap_size": blob_fields.get("bitmap_size", len(bitmap)),
            "bitmap": bitmap,
        }
    try:
        built: bytes = frame_grammar(release).build(frame)
        return built
    except (cs.ConstructError, KeyError, TypeError, AttributeError, UnicodeError) as exc:
        raise LocalViolation(
            f"{cat.release} would reject {name} {fields}: {exc}", release=cat.release
        ) from None


def _payload_length(table: str, fields: dict[str, Any]) -> int:
    layout = PAYLOAD_LAYOUTS.get(table)
    if layout is None:
        return len(fields.get("payload", b""))
    total = 0
    for name, kind in layout:
        if kind == "pstr8":
            value = fields.get(name, "")
            total += 1 + len(value.encode("latin-1") if isinstance(value, str) else value)
        else:
            total += {"be32": 4, "be64": 8}[kind]
    return total + len(fields.get("trailing", b""))
