"""The protocol core against what real QEMU did: every committed lab capture.

Each ``fixtures/captures/<run>/`` holds the return path exactly as the real source
received it (``rp.bin``, ``rp.1.bin`` after a reconnect) and what that source
printed (stderr lines, ``error-desc``). The model must reject a stream iff the
real source's reader did, at the frame it stopped at, with its text byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from migcompat.protocol import RemoteViolation, check_stream, parse_release, resolve_line

CAPTURES = Path(__file__).resolve().parents[1] / "fixtures" / "captures"
RUNS = sorted(p.parent for p in CAPTURES.glob("*/metadata.json"))
INJECTIONS = [
    r
    for r in RUNS
    if (json.loads((r / "metadata.json").read_text()).get("scenario") or {}).get("frame_hex")
]
# Texts the source's return-path reader prints on bytes it rejects (all releases).
READER_MARKERS = ("Received invalid message", "withincorrect length", "Req_Page_id with length")


def streams(run: Path) -> list[Path]:
    return sorted(run.glob("rp*.bin"))


@pytest.mark.skipif(not RUNS, reason="no lab captures committed under fixtures/captures/")
@pytest.mark.parametrize("run", RUNS, ids=lambda p: p.name)
def test_model_agrees_with_the_real_source(run: Path) -> None:
    meta = json.loads((run / "metadata.json").read_text())
    src = parse_release(meta["src"]["version_text"])
    if meta["src"].get("key"):
        # a `migcompat lab build` (maybe patched): its return path is what its own source's
        # enum says (protocol_release, e.g. 10.0.13+keepalive), on the line its banner names
        built = parse_release(meta["src"]["protocol_release"])
        assert resolve_line(built) == resolve_line(src)
        src = built
    else:
        assert resolve_line(src) == parse_release(meta["src"]["release"])
    stderr = [line.removeprefix("qemu-system-x86_64: ") for line in meta["stderr"].get("src", [])]
    error_desc = (meta.get("error_desc") or {}).get("src")
    observed = [s for s in stderr if any(m in s for m in READER_MARKERS)]
    rejections: list[RemoteViolation] = []
    for rp in streams(run):
        (verdict,) = check_stream([src], [rp.read_bytes()])
        if verdict.rejection is not None:
            rejections.append(verdict.rejection)
    if not observed:
        assert rejections == [], f"model rejects what {src} accepted: {rejections}"
        return
    assert [r.qemu_error for r in rejections] == observed
    if error_desc and any(m in error_desc for m in READER_MARKERS):
        # 8.2+: error_setg; the same text is what query-migrate reports as error-desc.
        assert rejections[0].qemu_error == error_desc


@pytest.mark.skipif(not INJECTIONS, reason="no injection runs under fixtures/captures/")
@pytest.mark.parametrize("run", INJECTIONS, ids=lambda p: p.name)
def test_injected_frame_is_where_the_source_stopped(run: Path) -> None:
    meta = json.loads((run / "metadata.json").read_text())
    frame_hex = meta["scenario"]["frame_hex"]
    src = parse_release(meta["src"]["version_text"])
    data = (run / "rp.bin").read_bytes()
    (verdict,) = check_stream([src], [data])
    frame = bytes.fromhex(frame_hex)
    if verdict.rejection is None:
        pytest.skip(f"{src} accepts the injected frame")
    at = verdict.rejection.offset
    assert data[at : at + len(frame)] == frame
