"""A migration file as capture input: the raw forward stream, no pcap, no recording folder.

``migrate "exec:cat > mig.bin"`` (or a ``file:`` URI) writes the forward stream as it
would go over the wire: ``QEVM`` header, sections, ``QEMU_VM_EOF`` and the vmdesc. It is
decoded by the same :class:`~migcompat.capture.CaptureDecoder` as a capture, as one
connection ``c0`` (source → destination) without a return path, so the records are the
same as for that stream in a pcap (``t`` is 0: a file has no times).

A separate entry point (not a branch of ``decode_capture``) while ``capture/`` is being
rebuilt; it only reads the file, in pieces.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from migcompat.protocol import InputError, parse_release

from ._session import CaptureDecoder, CaptureOptions, CaptureReport, ConnectionInfo
from ._tcp import Data

__all__ = ["MIGFILE_CHUNK", "decode_migration_file", "is_migration_file"]


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


def _machine_release(path: str) -> str | None:
    """The release a stream's configuration section names (``pc-q35-10.0`` → ``10.0``)."""
    from migcompat.protocol import machine_version

    with open(path, "rb") as f:
        head = f.read(64)
    if len(head) < 13 or head[8] != 0x07:
        return None
    n = int.from_bytes(head[9:13], "big")
    version = machine_version(head[13 : 13 + n].decode("latin-1", "replace"))
    return str(version) if version is not None else None


def decode_migration_file(
    path: str,
    options: CaptureOptions,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> CaptureReport:
    """Decode a migration file; ``options.source=None``: the release its machine type implies.

    :raises InputError: not a migration file, or unreadable.
    """
    if not is_migration_file(path):
        raise InputError(f"{path}: not a migration file (no QEVM magic)")
    if options.source is None:
        rel = _machine_release(path)
        if rel is None:
            raise InputError(f"{path}: no machine type in the stream; pass --source REL")
        try:
            options.source = parse_release(rel)
        except InputError:
            raise InputError(f"{path}: machine type implies {rel}; pass --source REL") from None
        options.source_basis = "machine type (a file's newest possible source is unknown)"
    report = CaptureReport(
        path=path, kind="migfile", source=options.source, source_basis=options.source_basis
    )
    dec = CaptureDecoder(report, options, on_record)
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
    dec.finish(0.0)
    return report
