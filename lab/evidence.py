"""Who sent the KEEPALIVE frames of a run, and when (from a run folder or a fixture).

A patched destination's keepalives are only evidence if they came from QEMU itself: the
proxy records every injection it made (``injections``), so a type-8 frame in ``rp.bin`` at
an offset no injection wrote was written by the destination. Times come from
``chunks.jsonl`` (the proxy's clock, the run's clock): a frame is stamped with the time
the chunk holding its last byte was delivered to the source.
"""

from __future__ import annotations

import json
import struct
from itertools import pairwise
from pathlib import Path
from typing import Any

from migcompat.lab._errors import LabError

__all__ = ["keepalive_evidence", "rp_frames"]


def __dir__() -> list[str]:
    return list(__all__)


#: ``MIG_RP_MSG_RECV_BITMAP``: its header is followed by a be64 size, the bitmap and a be64
#: end mark (the only frame whose bytes outrun its header's length).
_RECV_BITMAP = 5


def _load(folder: Path) -> dict[str, Any]:
    for name in ("record.json", "metadata.json"):
        try:
            return json.loads((folder / name).read_text())
        except FileNotFoundError:
            continue
        except ValueError as exc:
            raise LabError(f"{folder / name}: not JSON", exc=exc) from exc
    raise LabError(f"{folder} holds no record.json or metadata.json")


def _chunks(folder: Path) -> list[dict[str, Any]]:
    """Connection 0's return-path chunks: ``rp`` (relayed from QEMU) and ``inject`` (ours)."""
    try:
        lines = (folder / "chunks.jsonl").read_text().splitlines()
    except OSError:
        return []
    return [
        c for c in map(json.loads, lines) if c.get("dir") in ("rp", "inject") and c.get("conn") == 0
    ]


def rp_frames(folder: Path) -> list[dict[str, Any]]:
    """Header walk of ``rp.bin`` (connection 0): ``offset, size, type_id, t, via``
    (``via``: ``rp`` relayed from the destination, ``inject`` written by the proxy)."""
    try:
        data = (folder / "rp.bin").read_bytes()
    except OSError as exc:
        raise LabError(f"{folder}: no rp.bin", exc=exc) from exc
    chunks = _chunks(folder)
    out = []
    pos = 0
    while len(data) - pos >= 4:
        type_id, length = struct.unpack_from(">HH", data, pos)
        size = 4 + length
        if type_id == _RECV_BITMAP and len(data) - pos >= size + 8:
            (blob,) = struct.unpack_from(">Q", data, pos + size)
            size += 8 + blob + 8
        if len(data) - pos < size:
            break
        end = pos + size - 1
        chunk = next((c for c in chunks if c["offset"] <= end < c["offset"] + c["len"]), {})
        out.append(
            {
                "offset": pos,
                "size": size,
                "type_id": type_id,
                "t": chunk.get("t"),
                "via": chunk.get("dir"),
            }
        )
        pos += size
    return out


def keepalive_evidence(folder: str | Path, type_id: int = 8) -> dict[str, Any]:
    """Type-``type_id`` frames of a run: how many, from QEMU or injected, first one's time.

    ``first_after_postcopy_active_s`` counts from the destination's ``postcopy-active``
    (the fault thread, which sends keepalives, runs from then on).
    """
    folder = Path(folder)
    meta = _load(folder)
    frames = rp_frames(folder)
    inj = (meta.get("proxy") or meta.get("return_path") or {}).get("injections", [])
    injected = {i.get("src_offset", i.get("offset")) for i in inj}
    ka = [f for f in frames if f["type_id"] == type_id]
    own = [f for f in ka if f["offset"] not in injected and f["via"] != "inject"]
    statuses = meta.get("statuses", {})
    pa = next((s["t"] for s in statuses.get("dst", []) if s["status"] == "postcopy-active"), None)
    times = [f["t"] for f in own if f["t"] is not None]
    params = (meta.get("migrate_parameters") or {}).get("dst", {})
    return {
        "type_id": type_id,
        "frames": len(ka),
        "from_qemu": len(own),
        "injections": len(inj),
        "dst_period_ms": params.get("postcopy-rp-keepalive-period"),
        "dst_postcopy_active_t": pa,
        "first_t": times[0] if times else None,
        "first_after_postcopy_active_s": round(times[0] - pa, 3) if times and pa else None,
        "intervals_s": [round(b - a, 3) for a, b in pairwise(times)],
        "rp_frames": len(frames),
    }
