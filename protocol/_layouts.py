"""Payload layouts of the return-path messages, in QEMU's field names.

QEMU's ``rp_cmd_args[]`` table (extracted into the catalog) gives each id's
name and length; the *meaning* of the payload bytes lives in the handlers of
``source_return_path_thread`` (migration/migration.c) and in the destination's
``migrate_send_rp_*`` senders. This table records those handlers' reads, keyed
by the table name QEMU prints, and is checked against the catalog: the fixed
sizes here must equal every release's ``rp_cmd_args[].len`` (see
``tests/test_layouts.py``). A message without a layout still decodes, as raw
payload (``RawMessage``), so a catalog built from a patched QEMU needs no code.

Field kinds: ``be32``/``be64`` (``ldl_be_p``/``ldq_be_p``), ``pstr8`` (one length
byte, then that many bytes of idstr, no NUL on the wire).
"""

from __future__ import annotations

from types import MappingProxyType

__all__ = ["FIELD_SIZES", "PAYLOAD_LAYOUTS", "fixed_size"]


def __dir__() -> list[str]:
    return list(__all__)


FIELD_SIZES = MappingProxyType({"be32": 4, "be64": 8})

PAYLOAD_LAYOUTS = MappingProxyType(
    {
        # case MIG_RP_MSG_SHUT: sibling_error = ldl_be_p(buf)
        "SHUT": (("sibling_error", "be32"),),
        # case MIG_RP_MSG_PONG: tmp32 = ldl_be_p(buf) (the PING value echoed)
        "PONG": (("value", "be32"),),
        # case MIG_RP_MSG_REQ_PAGES: start = ldq_be_p(buf); len = ldl_be_p(buf + 8)
        "REQ_PAGES": (("start", "be64"), ("len", "be32")),
        # case MIG_RP_MSG_REQ_PAGES_ID: as REQ_PAGES, then buf[12] = idstr length
        "REQ_PAGES_ID": (("start", "be64"), ("len", "be32"), ("idstr", "pstr8")),
        # case MIG_RP_MSG_RECV_BITMAP: buf[0] = name length, name at buf + 1;
        # the bitmap itself follows *outside* the frame (ram_dirty_bitmap_reload)
        "RECV_BITMAP": (("block_name", "pstr8"),),
        # case MIG_RP_MSG_RESUME_ACK: tmp32 = ldl_be_p(buf), must be MIGRATION_RESUME_ACK_VALUE
        "RESUME_ACK": (("value", "be32"),),
        # case MIG_RP_MSG_SWITCHOVER_ACK: no payload
        "SWITCHOVER_ACK": (),
        # keepalive proposal (never merged): no payload
        "KEEPALIVE": (),
    }
)


def fixed_size(table_name: str) -> int | None:
    """Payload size a layout implies, or ``None`` when it has a variable part."""
    layout = PAYLOAD_LAYOUTS[table_name]
    total = 0
    for _, kind in layout:
        if kind not in FIELD_SIZES:
            return None
        total += FIELD_SIZES[kind]
    return total
