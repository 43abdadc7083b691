"""``migcompat capture``: decode a migration from a pcap/pcapng capture or a lab recording."""

from __future__ import annotations

import argparse
import os
import string
import sys
from typing import Any

from migcompat.protocol import InputError, catalog, parse_release

from ._io import print_json

__all__ = ["register"]


def __dir__() -> list[str]:
    return list(__all__)


#: Files larger than this get a progress bar (on a terminal).
PROGRESS_THRESHOLD = 32 << 20


def register(sub: Any) -> None:
    p = sub.add_parser(
        "capture",
        help="decode a migration from a pcap/pcapng capture (both directions, timeline, summary)",
        description=(
            "Find QEMU migration connections in a pcap or pcapng capture (or a lab recording "
            "folder with chunks.jsonl), reassemble both TCP directions, decode the forward "
            "stream's header, sections and MIG_CMD commands and every return-path frame as "
            "the source release reads it, and correlate them (PING→PONG, RECV_BITMAP, "
            "POSTCOPY_RESUME→RESUME_ACK, page-request latency, 10.2+'s postcopy-device "
            "PING/PONG 0x42 and the split-brain boundary), in time order. Without a release, "
            "the source's is bounded from the wire (machine type, MIG_CMD_* first releases, "
            "postcopy-device) and the newest inside the bound reads the return path. "
            "Exit 0: decoded; 1: the source (or a release inside the bound, or a "
            "--check-against release) rejects a return path; 2: bad input (not a capture, "
            "an unknown release, a filter matching nothing, or a damaged capture: what could "
            "be read is decoded, the problems go to stderr)."
        ),
    )
    p.add_argument(
        "path",
        help="pcap/pcapng file, '-' for stdin, a lab recording folder, or a migration file "
        '(raw forward stream, as `migrate "exec:cat > mig.bin"` writes it)',
    )
    p.add_argument(
        "--source",
        default="auto",
        metavar="REL|auto",
        help="source release; auto (default): a lab run's metadata.json/record.json beside "
        "the capture if any, else bounded from the wire (read as the newest inside the bound)",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON object per event")
    p.add_argument("--summary", action="store_true", help="only the summary")
    p.add_argument(
        "--check-against",
        nargs="+",
        default=[],
        metavar="REL",
        help="also run each return path through these source releases (or 'all')",
    )
    p.add_argument(
        "--keepalive-period",
        type=float,
        default=60000.0,
        metavar="MS",
        help="keepalive period for the silence analysis (default 60000 ms)",
    )
    p.add_argument("--plot", metavar="FILE.png", help="draw frames, silences and latencies")
    p.add_argument("--port", type=int, help="only connections with this TCP port")
    p.add_argument(
        "--connection",
        metavar="ID",
        help="only this connection: c0, 0, or CLIENT-SERVER as printed",
    )
    p.add_argument("--pages", action="store_true", help="list every RAM page walked (large output)")
    p.add_argument(
        "--skip-packaged",
        action="store_true",
        help="skip MIG_CMD_PACKAGED bodies instead of descending into them",
    )
    p.add_argument(
        "--devices",
        action="store_true",
        help="only the device sections, each with its decoded fields (implies --fields)",
    )
    p.add_argument(
        "--fields",
        action="store_true",
        help="decode device-section fields (with the stream's vmdesc) into the records; off by "
        "default: delimiting alone is faster",
    )
    p.add_argument(
        "--dump-vmstate",
        metavar="FILE.json",
        help="`qemu-system-x86_64 -machine M -dump-vmstate FILE` of the source binary: names "
        "and delimits device sections inside MIG_CMD_PACKAGED (postcopy has no vmdesc)",
    )
    p.set_defaults(func=run)


def _releases(values: list[str]) -> tuple[Any, ...]:
    from ._io import parse_releases

    out: list[Any] = []
    for v in values:
        out.extend(parse_releases(v))
    return tuple(out)


def _fields_text(rec: Any) -> str:
    parts = []
    for k, v in rec.fields.items():
        if v is None or v == {} or v == [] or (k == "depth" and v == 0):
            continue
        if rec.kind in ("rp-frame", "rp-unread") and k in ("type", "length"):
            continue
        if isinstance(v, int) and k in ("start", "addr", "end_mark"):
            parts.append(f"{k}=0x{v:x}")
        elif isinstance(v, str) and len(v) > 64 and all(c in string.hexdigits for c in v):
            # a payload in hex: its head and size (the whole bytes are in --json); names,
            # QEMU texts and RAMBlock lists are never cut
            parts.append(f"{k}={v[:64]}…({len(v) // 2} bytes)")
        else:
            parts.append(f"{k}={v}")
    return " ".join(parts)


_LABELS = {
    "connection": "connection {}",
    "hole": "HOLE ({})",
    "fwd-stop": "FORWARD DECODE STOPS",
    "fwd-violation": "FORWARD REJECTED",
    "rp-violation": "RETURN PATH REJECTED",
    "rp-unread": "unread by source: {}",
    "rp-end": "return path ends ({})",
    "fwd-end": "forward stream ends ({})",
    "resync": "resync: {}",
    "page-served": "requested page sent",
    "page": "page {}",
    "ram-blocks": "RAM blocks",
    "header": "QEVM header",
    "note": "note: {}",
    "postcopy-device": "POSTCOPY-DEVICE {}",
    "split-brain": "SPLIT-BRAIN BOUNDARY",
    "release": "release bound: {}",
}


def _line(rec: Any) -> str:
    conn = rec.conn or "-"
    d = rec.dir or ""
    name = str(rec.name).removeprefix("MIG_RP_MSG_")
    label = _LABELS.get(rec.kind, "{}").format(name)
    off = "" if rec.offset is None else f"@{rec.offset}"
    return f"{rec.t:>11.6f}  {conn:>3} {d:3}  {label:28} {off:>10}  {_fields_text(rec)}"


def run(args: argparse.Namespace) -> int:
    from migcompat.capture import CaptureOptions, decode_capture, sniff_format, summarize

    path = args.path
    sniff_format(path)  # a clear error before anything else
    dump = _read_dump(args.dump_vmstate) if args.dump_vmstate else None
    source = None
    if args.source != "auto":
        source = parse_release(args.source)
        catalog(source)
    if args.keepalive_period <= 0:
        raise InputError("--keepalive-period must be positive (milliseconds)")
    period = args.keepalive_period / 1000.0
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise InputError(
                "--plot needs matplotlib: pip install 'qemu-migcompat[plot]'"
            ) from None
    options = CaptureOptions(
        source=source,
        port=args.port,
        connection=args.connection,
        check_against=_releases(args.check_against),
        keepalive_period=period,
        pages=args.pages,
        descend_packaged=not args.skip_packaged,
        decode_fields=args.fields or args.devices,
        dump=dump,
    )
    options.validate()  # every release named, before any output
    frames: list[tuple[float, str, str]] = []
    out = sys.stdout

    def on_record(rec: Any) -> None:
        if args.plot and rec.kind == "rp-frame":
            frames.append((rec.t, rec.conn, rec.name))
        if args.summary:
            return
        if args.devices and rec.kind not in ("device", "fwd-stop", "fwd-violation"):
            return
        if args.devices and not args.json:
            out.write(_device_text(rec))
            return
        if args.json:
            print_json(rec.to_json())
        else:
            out.write(_line(rec) + "\n")

    progress, done = _progress(path)
    try:
        report = decode_capture(path, options, on_record, progress)
    finally:
        done()
    if report.unmatched_filter:
        raise InputError(report.unmatched_filter)
    summary = summarize(report, period)
    if args.json:
        print_json(
            {
                "t": None,
                "conn": None,
                "dir": None,
                "kind": "summary",
                "name": "summary",
                "offset": None,
                "fields": summary,
            }
        )
    else:
        if not args.summary:
            out.write("\n")
        _print_summary(summary)
    if args.plot:
        from migcompat.capture import plot_capture

        plot_capture(report, frames, args.plot, period)
        if not args.json:
            out.write(f"plot written to {args.plot}\n")
    for prob in report.problems:
        print(f"migcompat capture: problem: {prob}", file=sys.stderr)
    if report.damaged:
        return 2
    return 1 if report.rejected else 0


def _read_dump(path: str) -> Any:
    from migcompat.protocol import parse_dump_vmstate

    try:
        with open(path, "rb") as f:
            return parse_dump_vmstate(f.read())
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from None


def _value_text(v: Any) -> str:
    if isinstance(v, dict) and set(v) == {"raw"}:
        raw = v["raw"]
        return f"raw {raw[:48]}…({len(raw) // 2} bytes)" if len(raw) > 48 else f"raw {raw}"
    if isinstance(v, list) and v and not isinstance(v[0], dict | list):
        text = ", ".join(_value_text(x) for x in v[:16])
        return f"[{text}{', …' if len(v) > 16 else ''}] ({len(v)})"
    return str(v)


def _field_lines(fields: dict[str, Any], indent: str) -> list[str]:
    lines = []
    for k, v in fields.items():
        if isinstance(v, dict) and set(v) != {"raw"}:
            lines.append(f"{indent}{k}:")
            lines += _field_lines(v, indent + "  ")
        elif isinstance(v, list) and v and isinstance(v[0], dict) and set(v[0]) != {"raw"}:
            for i, item in enumerate(v):
                lines.append(f"{indent}{k}[{i}]:")
                lines += _field_lines(item, indent + "  ")
        else:
            lines.append(f"{indent}{k} = {_value_text(v)}")
    return lines


def _device_text(rec: Any) -> str:
    """The ``--devices`` view of one record: the section, then its fields indented."""
    if rec.kind != "device":
        return f"{rec.conn or '-'} @{rec.offset}  {_line(rec).split('  ', 2)[-1].strip()}\n"
    head = (
        f"{rec.conn or '-'} @{rec.offset}  section {rec.section_id} {rec.name} "
        f"(instance {rec.instance_id}, version {rec.version_id}): {rec.size} bytes, "
        f"delimited by {rec.delimited_by}"
    )
    if rec.device_type:
        head += f", {rec.device_type}"
    if rec.depth:
        head += " (inside PACKAGED)"
    lines = [head]
    if rec.values is not None:
        lines += _field_lines(rec.values, "    ")
    return "\n".join(lines) + "\n"


def _progress(path: str) -> tuple[Any, Any]:
    try:
        size = os.path.getsize(path) if os.path.isfile(path) else 0
    except OSError:
        size = 0
    if size < PROGRESS_THRESHOLD or not sys.stderr.isatty():
        return None, lambda: None
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    prog = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    prog.start()
    task = prog.add_task(os.path.basename(path), total=size)

    def update(pos: int) -> None:
        prog.update(task, completed=pos)

    return update, prog.stop


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f} ms"


def _print_summary(s: dict[str, Any]) -> None:
    w = sys.stdout.write
    w(f"capture {s['path']} ({s['input']}): {s['packets']} records, {s['duration_s']:.3f} s\n")
    w(f"source release {s['source']} ({s['source_basis']})")
    if s["metadata_source"] and not s["source_basis"].endswith(".json"):
        w(f"; the lab's record says {s['metadata_source']}")
    w("\n")
    b = s["release_bound"]
    if b:
        w(f"  bound from the wire: {b['text']}; read as {b['read_as']}")
        g = b["given"]
        if g is None:
            w(" (the newest release inside the bound)\n" if b["low"] != b["high"] else "\n")
        elif g["inside_bound"]:
            w(f" ({g['basis']}, inside the bound)\n")
        else:
            w(f" ({g['basis']}) — OUTSIDE the bound: the wire contradicts it\n")
        for e in b["evidence"]:
            side = f"≥ {e['low']}" if e["low"] else f"≤ {e['high']}"
            w(f"    {e['t']:.3f} s  {e['what']} ⇒ {side}\n")
        for conn, diff in b["ambiguous"].items():
            w(f"  still ambiguous on {conn}: inside the bound, {'; '.join(diff)}\n")
    for c in s["connections"]:
        w(f"\n{c['id']} {c['client']} → {c['server']}: {c['role']}")
        if c["migration"] is not None:
            w(f" (migration #{c['migration']})")
        w(f"; {c['bytes']['fwd']} bytes forward, {c['bytes']['rp']} bytes back")
        if c["closed"] is not None:
            w(f"; closed at {c['closed']:.3f} s ({c['closed_how']})")
        w("\n")
        tcp = [
            f"{c[k]} {k.replace('_', '-')}"
            for k in ("retransmitted", "out_of_order", "overlaps")
            if c[k]
        ]
        if tcp:
            w(f"  TCP: {', '.join(tcp)}\n")
        for h in c["holes"][:10]:
            w(
                f"  hole: {h['dir']} offset {h['offset']}, {h['length']} bytes missing "
                f"({h['reason']}, from packet {h['packet']} at {h['t']:.3f} s)\n"
            )
        if len(c["holes"]) > 10:
            w(f"  … {len(c['holes']) - 10} more holes\n")
        fwd = c.get("forward")
        if fwd:
            cmds = ", ".join(f"{k.removeprefix('MIG_CMD_')}×{v}" for k, v in fwd["counts"].items())
            w(f"  forward: {cmds or 'nothing decoded'}; {fwd['pages_walked']} pages walked\n")
            if fwd["resyncs"]:
                w(f"  forward decode re-synced {fwd['resyncs']} time(s) after holes\n")
            if fwd["end"]:
                w(f"  forward decode {fwd['end']}\n")
        rp = c.get("return_path")
        if rp:
            counts = ", ".join(
                f"{k.removeprefix('MIG_RP_MSG_')}×{v}"
                for k, v in sorted(rp["counts"].items(), key=lambda kv: -kv[1])
            )
            w(f"  return path: {rp['frames']} frames ({counts or 'none'}); {rp['verdict']}")
            w(f" — {rp['error']}\n" if rp["error"] else "\n")
            if rp["resyncs"]:
                w(f"  re-synced {rp['resyncs']} time(s) after holes\n")
            gaps = rp["longest_silences"]
            if gaps:
                w(
                    "  longest silences: "
                    + ", ".join(f"{g['seconds']:.3f} s from {g['start']:.3f} s" for g in gaps[:3])
                    + "\n"
                )
            k = rp["keepalive"]
            w(
                f"  keepalive: with P = {k['period_s']:g} s the destination would have sent "
                f"{k['would_send']} keepalives during this capture; longest silence "
                f"{k['longest_silence_s'] or 0:.3f} s"
            )
            if k["first_detection"] is not None:
                w(
                    f"; the first silence longer than P would be noticed at "
                    f"{k['first_detection']:.3f} s"
                )
            w("\n")
            for rel, v in rp["checks"].items():
                extra = f" at offset {v['offset']}" if v["offset"] is not None else ""
                err = f": {v['error']}" if v["error"] else ""
                w(f"  check against {rel}: {v['verdict']}{extra} ({v['frames']} frames){err}\n")
    for m in s["migrations"]:
        w(
            f"\nmigration #{m['index']} ({m['machine_type'] or 'machine type not seen'}), "
            f"connections {', '.join(m['connections'])}\n"
        )
        if m["states"]:
            w(
                "  states: "
                + " → ".join(f"{x['state']} ({x['t']:.3f} s)" for x in m["states"])
                + "\n"
            )
        pp = m["ping_pong"]
        if pp["count"] or pp["unanswered"] or pp["pong_without_ping"]:
            w(
                f"  PING→PONG: {pp['count']} matched, p50 {_ms(pp['p50_ms'])}, max "
                f"{_ms(pp['max_ms'])}; {pp['unanswered']} unanswered; "
                f"{pp['pong_without_ping']} PONG(s) whose PING was not seen\n"
            )
        if m["recv_bitmap"]:
            w(
                f"  RECV_BITMAP: {len(m['recv_bitmap'])} blocks answered, max "
                f"{max(x['ms'] for x in m['recv_bitmap']):.3f} ms\n"
            )
        if m["resume_ack"]:
            acks = ", ".join(f"{x:.3f} ms" for x in m["resume_ack"])
            w(f"  POSTCOPY_RESUME→RESUME_ACK: {acks}\n")
        pr = m["page_requests"]
        if pr["requests"]:
            w(f"  page requests: {pr['requests']}, matched {pr['count']}")
            if pr["count"]:
                w(f": p50 {_ms(pr['p50_ms'])}, p99 {_ms(pr['p99_ms'])}, max {_ms(pr['max_ms'])}")
            if pr["unmatched_already_sent"]:
                w(
                    f"; {pr['unmatched_already_sent']} of the {pr['unmatched']} unmatched had "
                    "already been sent when asked for (in flight)"
                )
            if pr.get("why_unmatched"):
                w(f" ({pr['why_unmatched']})")
            w("\n")
        pd = m["postcopy_device"]
        if pd["ping_t"] is not None or pd["pong_t"] is not None:
            ping = "not in the capture" if pd["ping_t"] is None else f"at {pd['ping_t']:.3f} s"
            pong = "not in the capture" if pd["pong_t"] is None else f"at {pd['pong_t']:.3f} s"
            w(f"  postcopy-device (10.2+): PING 0x42 {ping}, PONG 0x42 {pong}")
            if pd["pong_read_by_source"] is False:
                w(" (on the wire after the source stopped reading)")
            w("\n")
        if m["rejected"]:
            r = m["rejected"]
            w(
                f"  source rejected the return path at {r['t']:.3f} s (offset {r['offset']}): "
                f"{r['error']}\n"
            )
        if m["split_brain"]:
            w(f"  SPLIT-BRAIN BOUNDARY: {m['split_brain']}\n")
        for note in m["wire_notes"]:
            w(f"  wire: {note}\n")
    if s["problems"]:
        w(f"{len(s['problems'])} problem(s) with the input (on stderr)\n")
