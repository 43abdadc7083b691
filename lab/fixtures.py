"""Turn a run's output folder into a small committed fixture (``fixtures/captures/<name>/``).

Kept: the whole return path (``rp.bin``, as the source received it, injections included; and
``rp.1.bin`` after a recovery), the forward stream truncated (``fwd.bin``, 256 KiB), the pcap
shrunk so it stays small, and ``metadata.json`` with what was observed. The pcap keeps every
packet; forward-direction packets past the first ``fwd_keep`` payload bytes keep only their
headers (``caplen < len``, as a snaplen would), so TCP sequence numbers still add up.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from migcompat.lab._errors import LabError

__all__ = ["FWD_KEEP", "save_fixture", "shrink_pcap"]


def __dir__() -> list[str]:
    return list(__all__)


#: Forward-stream bytes kept in fixtures (the start: QEVM header, config, first sections).
FWD_KEEP = 256 * 1024

_METADATA_KEYS = (
    "scenario", "src", "dst", "machine", "capabilities", "parameters", "statuses",
    "error_desc", "runstates", "final_migrate", "split_brain", "killed", "step_errors", "steps",
    "events", "serial_tail", "duration", "timed_out", "dst_parameters",
    "src_parameters", "migrate_parameters",
)  # fmt: skip


def shrink_pcap(src: Path, dst: Path, proxy_ports: list[int], fwd_keep: int = FWD_KEEP) -> dict:
    """Copy ``src`` to ``dst``, cutting forward payloads past ``fwd_keep`` bytes to headers."""
    import dpkt

    kept = truncated = fwd_seen = 0
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        reader = dpkt.pcap.Reader(fin)
        writer = dpkt.pcap.Writer(fout, snaplen=reader.snaplen, linktype=reader.datalink())
        for ts, buf in reader:
            try:
                eth = dpkt.ethernet.Ethernet(buf)
                ip = eth.data
                tcp = ip.data
                is_fwd = isinstance(tcp, dpkt.tcp.TCP) and tcp.dport in proxy_ports
                payload = len(tcp.data) if isinstance(tcp, dpkt.tcp.TCP) else 0
            except (dpkt.UnpackError, AttributeError):
                is_fwd, payload = False, 0
            if is_fwd and payload and fwd_seen >= fwd_keep:
                header_len = len(buf) - payload
                writer.writepkt(buf[:header_len], ts=ts)  # dpkt records caplen=len here...
                truncated += 1
            else:
                writer.writepkt(buf, ts=ts)
                kept += 1
            if is_fwd:
                fwd_seen += payload
    _fix_orig_lengths(src, dst)
    return {"packets_whole": kept, "packets_headers_only": truncated, "fwd_payload": fwd_seen}


def _fix_orig_lengths(src: Path, dst: Path) -> None:
    """...so patch each record's ``orig_len`` back to the original packet length."""
    import struct

    with open(src, "rb") as f:
        data_in = f.read()
    out = bytearray(Path(dst).read_bytes())
    endian = "<" if data_in[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    pin, pout = 24, 24
    while pin + 16 <= len(data_in) and pout + 16 <= len(out):
        _ts1, _ts2, incl_in, orig_in = struct.unpack_from(endian + "IIII", data_in, pin)
        _t1, _t2, incl_out, _orig_out = struct.unpack_from(endian + "IIII", out, pout)
        struct.pack_into(endian + "I", out, pout + 12, orig_in)
        pin += 16 + incl_in
        pout += 16 + incl_out
    Path(dst).write_bytes(bytes(out))


def save_fixture(run_out: Path, fixture_dir: Path) -> dict[str, Any]:
    """Write ``fixture_dir`` from a run output folder (one holding ``record.json``).

    :returns: the metadata written.
    :raises LabError: the folder is not a run output.
    """
    try:
        rec = json.loads((run_out / "record.json").read_text())
    except (OSError, ValueError) as exc:
        raise LabError(f"{run_out} holds no run record", exc=exc) from exc
    fixture_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for name in ("rp.bin", "rp.1.bin", "chunks.jsonl"):
        if (run_out / name).exists():
            shutil.copyfile(run_out / name, fixture_dir / name)
            files[name] = (
                "return path as the source received it"
                if name != "chunks.jsonl"
                else "timestamped chunk index (t, conn, dir, offset, len)"
            )
    for name in ("fwd.bin", "fwd.1.bin"):
        if (run_out / name).exists():
            data = (run_out / name).read_bytes()[:FWD_KEEP]
            (fixture_dir / name).write_bytes(data)
            files[name] = f"forward stream, first {len(data)} bytes"
    pcap_info = None
    if (run_out / "capture.pcap").exists():
        pcap_info = shrink_pcap(
            run_out / "capture.pcap", fixture_dir / "capture.pcap", rec["proxy"].get("ports", [])
        )
        files["capture.pcap"] = (
            "tcpdump -i lo of the source<->proxy leg; forward payload past "
            f"{FWD_KEEP} bytes cut to headers (orig_len kept)"
        )
    meta = {k: rec.get(k) for k in _METADATA_KEYS}
    conns = rec["proxy"].get("connections", [])
    meta["return_path"] = {
        "frames": [
            {k: f[k] for k in ("conn", "src_offset", "size", "type_id", "name", "t")}
            for f in rec["proxy"].get("frames", [])
        ],
        "injections": rec["proxy"].get("injections", []),
        "connections": [
            {k: c.get(k) for k in ("index", "fwd_bytes", "rp_bytes_from_dst", "rp_bytes_to_src")}
            for c in conns
        ],
        "framing": rec["proxy"].get("reader"),
        "proxy_ports": rec["proxy"].get("ports"),
        "notes": rec["proxy"].get("notes"),
    }
    meta["stderr"] = {
        side: [s["line"] for s in rec.get("stderr", {}).get(side, []) if s["stream"] == "stderr"]
        for side in ("src", "dst")
    }
    meta["pcap"] = pcap_info
    meta["files"] = files
    (fixture_dir / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta
