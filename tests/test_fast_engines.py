"""The engines behind ``--engine`` and ``migcompat bench``: same verdicts, and the bench runs.

No timed assertions: the benchmark's numbers are printed, never checked.
"""

from __future__ import annotations

import json
import struct

import pytest

from migcompat.cli import main
from migcompat.protocol import (
    ENGINES,
    ConstructReader,
    RemoteViolation,
    build_frame,
    catalog,
    check_stream,
)

ENDING = catalog("10.0").recv_bitmap_ending
GOOD = (
    build_frame("10.0", "REQ_PAGES_ID", start=0, len=4096, idstr="pc.ram")
    + build_frame("10.0", "REQ_PAGES", start=4096, len=4096) * 50
    + build_frame("10.0", "RECV_BITMAP", block_name="pc.ram", bitmap=bytes(16))
    + build_frame("10.0", "PONG", value=3)
)
STREAMS = {
    "accepted": GOOD,
    "rejected": GOOD + struct.pack(">HH", 9, 0) + GOOD,
    "truncated": GOOD + GOOD[:7],
    "shut": GOOD + build_frame("10.0", "SHUT", sibling_error=1) + GOOD,
}


def summary(v: object) -> tuple[object, ...]:
    rej = v.rejection  # type: ignore[attr-defined]
    return (
        v.verdict,  # type: ignore[attr-defined]
        v.frames,  # type: ignore[attr-defined]
        dict(v.counts),  # type: ignore[attr-defined]
        v.qemu_error,  # type: ignore[attr-defined]
        v.unread,  # type: ignore[attr-defined]
        rej.offset if rej else None,
        v.end,  # type: ignore[attr-defined]
    )


@pytest.mark.parametrize("name", list(STREAMS))
def test_check_stream_engines_agree(name: str) -> None:
    data = STREAMS[name]
    chunks = [data[i : i + 37] for i in range(0, len(data), 37)]
    seen: dict[str, list[object]] = {}
    results = {}
    for engine in ENGINES:
        seen[engine] = []
        (v,) = check_stream(
            ["10.0"], iter(chunks), lambda _, ev, e=engine: seen[e].append(ev), engine=engine
        )
        results[engine] = summary(v)
    assert results["fast"] == results["model"] == results["construct"]
    assert seen["fast"] == seen["model"] == seen["construct"]


def test_unknown_engine() -> None:
    with pytest.raises(ValueError, match="engine must be one of"):
        check_stream(["10.0"], [GOOD], engine="turbo")


def test_construct_engine_is_stricter_on_a_name_past_the_frame() -> None:
    lying = (
        struct.pack(">HHB", 5, 1, 20) + struct.pack(">Q", 8) + bytes(8) + struct.pack(">Q", ENDING)
    )
    (model,) = check_stream(["10.0"], [GOOD + lying], engine="model")
    (ref,) = check_stream(["10.0"], [GOOD + lying], engine="construct")
    assert model.verdict == "accepted"
    assert ref.verdict == "rejected" and ref.qemu_error is None
    assert "construct grammar rejects" in str(ref.rejection)
    r = ConstructReader("10.0")
    r.receive_data(lying)
    with pytest.raises(RemoteViolation) as first:
        r.next_event()
    with pytest.raises(RemoteViolation) as again:
        r.next_event()
    assert again.value is first.value and r.stopped


@pytest.mark.parametrize("engine", ENGINES)
def test_cli_engine_option(
    engine: str, tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "rp.bin"  # type: ignore[operator]
    path.write_bytes(STREAMS["rejected"])
    assert main(["decode", str(path), "--source", "10.0", "--engine", engine, "--json"]) == 1
    decoded = capsys.readouterr().out
    assert main(["check", str(path), "--against", "7.2,10.0", "--engine", engine, "--json"]) == 1
    checked = capsys.readouterr().out
    assert main(["decode", str(path), "--source", "10.0", "--json"]) == 1
    assert capsys.readouterr().out == decoded
    assert main(["check", str(path), "--against", "7.2,10.0", "--json"]) == 1
    assert capsys.readouterr().out == checked


def test_bench_runs_and_reports_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bench", "--frames", "3000", "--slow-frames", "300", "--repeat", "1", "--json"]
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["ratios"]) >= {"fast/handwritten", "fast/construct", "fast/construct-compiled"}
    assert res["results"]["fast"]["frames"] == res["results"]["handwritten"]["frames"] == 3000
    assert res["cpu"] and res["memory"]["fast_peak_traced_bytes"] > 0
