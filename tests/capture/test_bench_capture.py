"""The capture benchmark's generator writes a pcap that ``migcompat capture`` decodes whole."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from migcompat.capture import CaptureOptions, decode_capture, summarize
from migcompat.protocol import parse_release

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_capture.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_capture", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_capture"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_generated_postcopy_capture_decodes(tmp_path: Path) -> None:
    gen = _bench().generate_capture(str(tmp_path / "c.pcap"), 1.0, seed=3)
    assert 0.7e6 < gen.file_bytes < 1.5e6 and gen.req_pages and gen.req_pages_id
    rep = decode_capture(gen.path, CaptureOptions(source=parse_release("10.0")))
    s = summarize(rep, 60.0)
    assert s["problems"] == [] and s["packets"] == gen.packets
    (c,) = s["connections"]
    assert c["role"] == "main" and c["holes"] == [] and c["retransmitted"] == 0
    assert c["bytes"] == {"fwd": gen.fwd_bytes, "rp": gen.rp_bytes}
    rp = c["return_path"]
    assert rp["verdict"] == "accepted"
    assert rp["counts"] == {
        "MIG_RP_MSG_PONG": gen.pongs,
        "MIG_RP_MSG_REQ_PAGES_ID": gen.req_pages_id,
        "MIG_RP_MSG_REQ_PAGES": gen.req_pages,
        "MIG_RP_MSG_SHUT": 1,
    }
    assert c["forward"]["pages_walked"] == gen.pages_walked
    assert c["forward"]["decoded_to"] == gen.fwd_bytes  # QEMU_VM_EOF is the last byte
    (m,) = s["migrations"]
    pr = m["page_requests"]
    assert pr["requests"] == gen.req_pages + gen.req_pages_id
    assert pr["count"] == pr["requests"] - gen.requests_in_flight
    assert pr["unmatched_already_sent"] == gen.requests_in_flight
    assert [x["state"] for x in m["states"]] == [
        "setup", "precopy", "postcopy-listen", "postcopy-active", "completed",
    ]  # fmt: skip
    assert m["commands"]["MIG_CMD_POSTCOPY_RUN"] == 1


def test_naive_baseline_does_the_work(tmp_path: Path) -> None:
    """The benchmark's naive loop reads the whole capture: it counts the same frames."""
    bench = _bench()
    gen = bench.generate_capture(str(tmp_path / "c.pcap"), 1.0, seed=4)
    counts = bench.naive_loop(gen.path)
    assert counts == {
        "1": 1, "2": gen.pongs, "3": gen.req_pages_id, "4": gen.req_pages,
    }  # fmt: skip


def test_device_state_benchmark_stream_is_delimited_and_decoded() -> None:
    from migcompat.protocol import DeviceState, ForwardReader, ForwardStop

    data = _bench().device_state_stream(devices=3, pages=16)
    for fields in (False, True):
        r = ForwardReader("10.0", decode_fields=fields)
        r.receive_data(data)
        r.receive_data(b"")
        evs = list(r.events())
        dev = [e for e in evs if isinstance(e, DeviceState)]
        assert [d.idstr for d in dev] == ["dev0", "dev1", "dev2"]
        assert not [e for e in evs if isinstance(e, ForwardStop)]
        assert (dev[0].fields is not None) is fields
