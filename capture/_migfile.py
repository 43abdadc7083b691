"""A migration file as capture input: the raw forward stream, no pcap, no recording folder.

``migrate "exec:cat > mig.bin"`` (or a ``file:`` URI) writes the forward stream as it
would go over the wire: ``QEVM`` header, sections, ``QEMU_VM_EOF`` and the vmdesc.
:func:`~migcompat.capture.decode_capture` sniffs it (``migfile``) and feeds it to the same
:class:`~migcompat.capture.CaptureDecoder` as a capture, as one connection ``c0`` (source
→ destination) without a return path, so the records are the same as for that stream in
a recording (``t`` is 0: a file has no times). It is read in pieces.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from migcompat.protocol import InputError, machine_version

from ._decode import CaptureDecoder, ConnectionInfo
from ._tcp import Data

__all__ = ["MIGFILE_CHUNK", "is_migration_file", "machine_release", "run_migfile"]


def __dir__() -> list[str]:
    return list(__all__)


#: Bytes read per piece (the reader is sans-IO: any split gives the same events).
MIGFILE_CHUNK = 1 << 20
_MAGIC = b"QEVM"


def is_migration_file(path: str) -> bool:
    """Whether ``path`` is a file that starts with the ``QEVM`` magic."""
    if not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as f:
            return f.read(4) == _MAGIC
    except OSError:
        return False


def machine_release(path: str) -> str | None:
    """The release a stream's configuration section names (``pc-q35-10.0`` → ``10.0``)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from None
    if len(head) < 13 or head[8] != 0x07:
        return None
    n = int.from_bytes(head[9:13], "big")
    version = machine_version(head[13 : 13 + n].decode("latin-1", "replace"))
    return str(version) if version is not None else None


def run_migfile(
    path: str, dec: CaptureDecoder, report: Any, progress: Callable[[int], None] | None
) -> None:
    """Feed the file to ``dec`` as connection ``c0``'s forward direction."""
    info = ConnectionInfo(id="c0", client="source", server="destination", first_ts=0.0)
    dec.open(info)
    pos = 0
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from None
    with f:
        while True:
            try:
                chunk = f.read(MIGFILE_CHUNK)
            except OSError as exc:  # only the file's own errors (not the printer's)
                raise InputError(f"{path}: {exc.strerror or exc}") from None
            if not chunk:
                break
            report.packets += 1
            dec.piece(info, "c2s", Data(pos, chunk, 0.0, report.packets))
            pos += len(chunk)
            if progress is not None:
                progress(pos)
    dec.close(info, 0.0, "end of file")
