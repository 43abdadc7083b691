"""The committed real captures: complete, small, and decoded frame for frame by the protocol core.

The golden values are what the proxy's live framing saw (``metadata.json``); where we injected
bytes, the core must reject them at the injection offset with the very text the real source
printed (7.2: stderr, ``RP: `` prefix; 8.2 and later: ``error-desc``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "captures"
CAPTURES = sorted(p for p in FIXTURES.glob("*") if (p / "metadata.json").is_file())


def _meta(path: Path) -> dict:
    return json.loads((path / "metadata.json").read_text())


def test_there_are_captures():
    names = {p.name for p in CAPTURES}
    assert {"plain-7.2", "plain-10.0", "plain-11.1", "inject-8-7.2", "inject-7-7.2"} <= names
    assert any(n.startswith("recover-") for n in names)


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.name)
def test_capture_is_complete_and_small(capture: Path):
    meta = _meta(capture)
    for key in ("src", "dst", "machine", "capabilities", "scenario", "statuses", "stderr"):
        assert key in meta, key
    assert meta["src"]["version_text"].startswith("QEMU emulator version ")
    assert (capture / "rp.bin").is_file()
    total = sum(f.stat().st_size for f in capture.iterdir())
    assert total < 2 * 1024 * 1024
    for conn in meta["return_path"]["connections"]:
        suffix = "" if conn["index"] == 0 else f".{conn['index']}"
        assert (capture / f"rp{suffix}.bin").stat().st_size == conn["rp_bytes_to_src"]


def _decode(release: str, data: bytes):
    from migcompat.protocol import NEED_DATA, Reader, RemoteViolation, parse_release

    reader = Reader(parse_release(release))
    reader.receive_data(data)
    reader.receive_data(b"")
    frames, violation = [], None
    for _ in range(len(data) + 2):  # bounded: a sentinel may repeat forever
        try:
            ev = reader.next_event()
        except RemoteViolation as exc:
            violation = exc
            break
        if ev is NEED_DATA or not hasattr(ev, "size"):
            break
        frames.append((ev.offset, ev.size, ev.name))
    return frames, violation


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.name)
def test_core_decodes_capture_frame_for_frame(capture: Path):
    pytest.importorskip("migcompat.protocol._reader")
    meta = _meta(capture)
    release = meta["src"].get("protocol_release") or meta["src"]["release"]
    injections = {i["conn"]: i for i in meta["return_path"]["injections"]}
    for conn in meta["return_path"]["connections"]:
        idx = conn["index"]
        data = (capture / ("rp.bin" if idx == 0 else f"rp.{idx}.bin")).read_bytes()
        frames, violation = _decode(release, data)
        seen = [
            (f["src_offset"], f["size"], f["name"])
            for f in meta["return_path"]["frames"]
            if f["conn"] == idx
        ]
        inj = injections.get(idx)
        if inj is None and violation is not None:
            # nothing injected, yet the source stopped: a frame the destination itself sent
            # (a patched destination's KEEPALIVE), rejected by the real source with this text
            assert f"qemu-system-x86_64: {violation.qemu_error}" in meta["stderr"]["src"]
            assert frames == seen[: len(frames)]
            continue
        if inj is None:
            assert violation is None
            # after SHUT the source reads no more; the core stops there too
            assert frames == seen[: len(frames)]
            assert len(frames) == len(seen)
            continue
        # the source reads up to our frame and rejects it, like the real one did
        assert violation is not None
        assert violation.offset == inj["src_offset"]
        assert frames == [f for f in seen if f[0] < inj["src_offset"]]
        if meta["error_desc"].get("src"):
            assert violation.qemu_error == meta["error_desc"]["src"]
        assert f"qemu-system-x86_64: {violation.qemu_error}" in meta["stderr"]["src"]
