"""The source context of ``check`` and ``decode``: flags, and a lab record beside the stream.

``--machine``, ``--capabilities`` and ``--ram-blocks`` say what the source had. When the
stream is a lab run's ``rp.bin`` (``metadata.json`` of a fixture or ``record.json`` of
``lab run --out`` beside it), the record supplies the machine type and the capabilities,
and the forward stream beside it (``fwd.bin``) the RAMBlocks; flags win over both.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from migcompat.protocol import (
    ForwardReader,
    InputError,
    RamBlocks,
    RemoteViolation,
    SourceContext,
    parse_capabilities,
    parse_ram_blocks,
)

__all__ = [
    "add_context_arguments",
    "context_lines",
    "replayable_chunks",
    "source_context",
    "verdict_json",
    "what_it_prints",
]

#: Lab records that can sit beside a return-path file, in the order they are looked for.
RECORDS = ("metadata.json", "record.json")
#: How much of a forward stream is read for its RAMBlock list (it comes first).
FWD_LIMIT = 4 << 20


def __dir__() -> list[str]:
    return list(__all__)


def add_context_arguments(p: argparse.ArgumentParser) -> None:
    """``--machine``, ``--capabilities``, ``--ram-blocks``, ``--no-record``."""
    g = p.add_argument_group(
        "source context",
        "what the source had; a verdict that depends on what is not given says what it "
        "assumed and what it would be otherwise. A lab record beside the file "
        "(metadata.json or record.json, and fwd.bin) supplies them when present.",
    )
    g.add_argument(
        "--machine",
        metavar="M",
        help="the source's machine type, e.g. pc-q35-10.0 (default: the release's newest)",
    )
    g.add_argument(
        "--capabilities",
        metavar="CAP[,CAP…]",
        help="migration capabilities that were on, in QEMU's names, e.g. switchover-ack "
        "(default: none, as in QEMU); '' for none",
    )
    g.add_argument(
        "--ram-blocks",
        metavar="IDSTR:SIZE[,…]",
        help="the source's RAMBlocks, e.g. pc.ram:128M,pc.bios:256K: enables QEMU's "
        "block-name, range and bitmap-size checks",
    )
    g.add_argument(
        "--no-record",
        action="store_true",
        help="ignore a lab record beside the file",
    )


def _record_beside(path: str) -> tuple[Path, dict[str, Any]] | None:
    if path == "-":
        return None
    here = Path(path).resolve().parent
    for name in RECORDS:
        rec_path = here / name
        if not rec_path.is_file():
            continue
        try:
            rec = json.loads(rec_path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and ("machine" in rec or "capabilities" in rec):
            return rec_path, rec
    return None


def _ram_from_forward(fwd: Path, release: str) -> dict[str, int] | None:
    """The RAMBlocks the forward stream announces (``RAM_SAVE_FLAG_MEM_SIZE``), if any."""
    try:
        reader = ForwardReader(release, pages=False)
        with open(fwd, "rb") as f:
            reader.receive_data(f.read(FWD_LIMIT))
        for ev in reader.events():
            if isinstance(ev, RamBlocks):
                return dict(ev.blocks)
    except (OSError, RemoteViolation, ValueError):
        return None
    return None


def source_context(args: argparse.Namespace, path: str) -> SourceContext:
    """The context from the flags, then a lab record beside ``path`` for what they leave open.

    :raises InputError: a malformed flag value.
    """
    machine = args.machine
    if machine is not None and (not machine.strip() or any(c.isspace() for c in machine)):
        raise InputError(f"--machine: {machine!r} is not a machine type name")
    caps = parse_capabilities(args.capabilities) if args.capabilities is not None else None
    ram = parse_ram_blocks(args.ram_blocks) if args.ram_blocks is not None else None
    origin = {
        k: f"--{k.replace('_', '-')}"
        for k, v in (("machine", machine), ("capabilities", caps), ("ram_blocks", ram))
        if v is not None
    }
    found = None if args.no_record else _record_beside(path)
    if found is not None:
        rec_path, rec = found
        where = str(rec_path)
        if machine is None and rec.get("machine"):
            machine, origin["machine"] = str(rec["machine"]), where
        if caps is None and isinstance(rec.get("capabilities"), list):
            caps, origin["capabilities"] = frozenset(map(str, rec["capabilities"])), where
        fwd = rec_path.parent / "fwd.bin"
        if ram is None and fwd.is_file():
            release = str((rec.get("src") or {}).get("release") or "")
            if release:
                ram = _ram_from_forward(fwd, release)
                if ram is not None:
                    origin["ram_blocks"] = str(fwd)
    return SourceContext(machine=machine, capabilities=caps, ram_blocks=ram, origin=origin)


def replayable_chunks(
    path: str, iter_chunks: Callable[[str], Iterable[bytes]]
) -> Callable[[], Iterable[bytes]]:
    """A function returning the stream's chunks from the start each time it is called:
    a file is read again; stdin is kept as it is read (the second pass is rare)."""
    if path != "-":
        return lambda: iter_chunks(path)
    kept: list[bytes] = []
    first = iter_chunks(path)
    calls = 0

    def keep() -> Iterator[bytes]:
        for chunk in first:
            kept.append(chunk)
            yield chunk

    def open_chunks() -> Iterable[bytes]:
        nonlocal calls
        calls += 1
        return keep() if calls == 1 else iter(kept)

    return open_chunks


def verdict_json(v: Any) -> dict[str, Any]:
    """The JSON fields every command gives one source's verdict (``check``, ``decode``)."""
    rej = v.rejection
    return {
        "verdict": v.verdict,
        "frames": v.frames,
        "offset": v.offset,
        "type": rej.message_type if rej else None,
        "error": v.qemu_error,
        # our words for the rule that fired: always there for a rejection, also where
        # QEMU's text is unknown or QEMU prints none ("error": null)
        "reason": rej.message if rej else None,
        "assumed": v.assumed,
        "alternatives": v.alternatives,
        "unchecked": v.unchecked,
    }


def what_it_prints(v: Any) -> str:
    """QEMU's text, or, where none is known, the rule that fired, said to be ours."""
    if v.qemu_error:
        return str(v.qemu_error)
    if v.rejection is not None:
        return f"(no QEMU text known for this rule; why: {v.rejection.message})"
    return ""


def context_lines(v: Any) -> list[str]:
    """``rejected, assuming …; accepted with …`` and the checks left out, as lines."""
    out = []
    if v.assumed:
        # alternatives with the same outcome share one clause
        groups: dict[tuple[Any, ...], list[str]] = {}
        for a in v.alternatives:
            key = (a["verdict"], a["offset"], a["error"])
            groups.setdefault(key, []).append(f"{a['with']} [{a['flags']}]")
        alts = "; ".join(
            f"{verdict}"
            + (f" at offset {offset}" if offset is not None else "")
            + (f" ({error})" if error else "")
            + " with "
            + " or ".join(labels)
            for (verdict, offset, error), labels in groups.items()
        )
        out.append(f"{v.verdict}, assuming {v.assumed}; {alts}")
    out += v.unchecked
    return out
