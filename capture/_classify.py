"""Which channel a TCP connection is, from the first bytes of each direction.

Roles (reference §E-F): the direction whose first bytes are ``QEVM`` + version is the
source's main channel, its reverse the return path; a stream that starts with
``MIG_CMD_RECV_BITMAP``/``POSTCOPY_RESUME`` is a main channel resumed after postcopy
recovery (no header); ``0x11223344`` starts a multifd channel; bare RAM page headers a
postcopy-preempt channel. Those carry no return-path frames. A connection seen without
its start is a main channel whose forward start is unseen (``main-rp-only``) when one of
its first segments is whole return-path frames (:func:`~._returnpath.try_sync`).
"""

from __future__ import annotations

import struct

from migcompat.protocol import StreamCatalog

__all__ = ["HEAD_NEEDED", "MULTIFD_MAGIC", "role_of"]


def __dir__() -> list[str]:
    return list(__all__)


MULTIFD_MAGIC = 0x11223344
#: Bytes of a direction's start needed to classify it.
HEAD_NEEDED = 16


def role_of(head: bytes, cat: StreamCatalog) -> str | None:
    """The role the opening ``head`` of a direction implies, or ``None``."""
    if len(head) >= 8:
        magic, version = struct.unpack_from(">II", head)
        if magic == cat.magic and version in (cat.version, 2):
            return "main"
        if magic == MULTIFD_MAGIC:
            return "multifd"
    if len(head) >= 5 and head[0] == cat.section_types["QEMU_VM_COMMAND"]:
        cmd, length = struct.unpack_from(">HH", head, 1)
        spec = cat.by_id.get(cmd)
        if spec is not None and spec.short_name in ("RECV_BITMAP", "POSTCOPY_RESUME"):
            if spec.length is None or spec.length == length:
                return "main-resumed"
    if len(head) >= 10:
        (word,) = struct.unpack_from(">Q", head)
        flags = word & 0xFFF
        n = head[8]
        name = head[9 : 9 + n]
        printable = all(0x20 <= b < 0x7F for b in name)
        if flags in (0x02, 0x08) and 0 < n and len(name) == n and printable:
            return "postcopy-preempt"
    return None
