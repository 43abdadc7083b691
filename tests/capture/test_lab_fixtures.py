"""Golden decodes of the lab's real captures (``fixtures/captures/<name>/``).

Each fixture is decoded twice — from its pcap and from its raw recording
(``rp.bin``/``fwd.bin``/``chunks.jsonl``) — and compared with
``tests/capture/golden/<name>.json``; the return-path frames must also equal
the ones the lab's proxy saw (``metadata.json``), whatever the golden says.
A golden records the digest of the recording it was made from: a re-recorded
fixture skips its golden comparison until it is regenerated with
``MIGCOMPAT_UPDATE_GOLDEN=1 pytest tests/capture/test_lab_fixtures.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from migcompat.capture import CaptureOptions, Record, decode_capture

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures" / "captures"
GOLDEN = Path(__file__).with_name("golden")
NAMES = sorted(p.name for p in FIXTURES.glob("*") if (p / "capture.pcap").exists())


def essence(path: Path) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    frames: list[tuple[str, str]] = []

    def on(rec: Record) -> None:
        if rec.kind == "rp-frame":
            frames.append((rec.conn, rec.name))

    rep = decode_capture(str(path), CaptureOptions(), on)
    out = {
        "source": str(rep.source),
        "source_basis": rep.source_basis,
        "problems": rep.problems,
        "connections": [
            {
                "id": c.id,
                "role": c.role,
                "rp_counts": dict(sorted(c.rp_counts.items())),
                "rp_verdict": c.rp_verdict,
                "rp_error": c.rp_error,
                "fwd_counts": dict(sorted(c.fwd_counts.items())),
                "holes": [(h["dir"], h["offset"], h["length"], h["reason"]) for h in c.holes],
            }
            for c in rep.connections.values()
        ],
        "migrations": [
            {
                "machine_type": m.machine_type,
                "states": [s for _, s in sorted(m.states, key=lambda x: x[0])],
                "commands": dict(sorted(m.commands.items())),
                "pings_answered": len(m.ping_rtts),
                "page_requests": m.request_count,
                "pages_matched": len(m.page_latencies),
                "recv_bitmap": [b for b, _ in m.bitmap_pairs],
                "resume_acks": len(m.resume_pairs),
            }
            for m in rep.migrations
        ],
    }
    return json.loads(json.dumps(out)), frames


def _digest(path: Path) -> str:
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    h = hashlib.sha256()
    for f in files:
        if f.suffix in (".pcap", ".bin", ".jsonl"):
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


@pytest.mark.skipif(not NAMES, reason="no lab captures under fixtures/captures")
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["pcap", "raw"])
def test_lab_capture(name: str, kind: str) -> None:
    folder = FIXTURES / name
    if kind == "raw" and not (folder / "chunks.jsonl").exists():
        pytest.skip("no raw recording")
    path = folder / "capture.pcap" if kind == "pcap" else folder
    got, frames = essence(path)
    # Checked against what the lab observed, whatever the golden says.
    meta = json.loads((folder / "metadata.json").read_text())
    injected = [i["src_offset"] for i in meta["return_path"].get("injections") or []]
    # The proxy frames the destination's bytes; the source reads them plus any frame the
    # lab injected, and stops at the first it rejects: compare up to the injection.
    seen = [
        (f"c{f['conn']}", f["name"])
        for f in meta["return_path"]["frames"]
        if not injected or f["conn"] != 0 or f["src_offset"] < injected[0]
    ]
    if kind == "raw":
        assert frames[: len(seen)] == seen
    else:
        assert [n for _, n in frames[: len(seen)]] == [n for _, n in seen]
    if injected:
        assert got["connections"][0]["rp_verdict"] in ("rejected", "accepted")
        assert len(frames) <= len(seen) + 1 or got["connections"][0]["rp_verdict"] == "accepted"
    else:
        assert len(frames) == len(seen)
    assert got["migrations"][0]["machine_type"] == meta["machine"]
    assert got["connections"][0]["role"] == "main"
    if (meta.get("final_migrate") or {}).get("src", {}).get("status") == "completed":
        assert "completed" in got["migrations"][0]["states"]
    # Golden decode, tied to the exact recording (the lab re-records fixtures).
    golden = GOLDEN / f"{name}.{kind}.json"
    digest = _digest(path)
    if os.environ.get("MIGCOMPAT_UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(json.dumps({"fixture_sha256": digest, **got}, indent=1) + "\n")
    if not golden.exists():
        pytest.skip(f"no golden for {name}: MIGCOMPAT_UPDATE_GOLDEN=1 pytest {__file__}")
    want = json.loads(golden.read_text())
    if want.pop("fixture_sha256", None) != digest:
        pytest.skip(f"{name} was re-recorded since its golden: MIGCOMPAT_UPDATE_GOLDEN=1")
    assert got == want


REAL_CASES = sorted(
    p.parent
    for p in (ROOT / "fixtures" / "fuzz" / "real").glob("*/case.json")
    if (p.parent / "capture.pcap").exists()
)


@pytest.mark.skipif(not REAL_CASES, reason="no fuzz cases replayed against real QEMU")
@pytest.mark.parametrize("case", REAL_CASES, ids=lambda p: p.name)
def test_fuzz_case_replayed_on_real_qemu(case: Path) -> None:
    """The capture decode (RAM checks from the forward stream's MEM_SIZE) agrees with
    what the real source did with the fuzzed frames."""
    meta = json.loads((case / "case.json").read_text())
    recs: list[Record] = []
    rep = decode_capture(str(case / "capture.pcap"), CaptureOptions(), recs.append)
    info = rep.connections["c0"]
    assert info.rp_verdict == meta["real"]["verdict"]
    if meta["real"]["verdict"] == "rejected":
        (bad,) = [r for r in recs if r.kind == "rp-violation"]
        assert bad.offset == meta["model"]["offset"]
        assert info.rp_error == meta["model"]["error"]
