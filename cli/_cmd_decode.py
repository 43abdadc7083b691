"""``migcompat decode``: a raw return-path stream, frame by frame, as one source reads it."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from migcompat.protocol import (
    EndOfStream,
    Event,
    Message,
    StreamVerdict,
    catalog,
    check_in_context,
    parse_release,
)

from ._context import (
    add_context_arguments,
    context_lines,
    replayable_chunks,
    source_context,
    verdict_json,
)
from ._io import add_engine_argument, iter_chunks, open_check, print_json

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "decode",
        help="decode a raw return-path byte stream as a given source release reads it",
        description=(
            "Decode a raw destination-to-source (return-path) byte stream frame by frame, "
            "exactly as the source release's reader does, and show where and with which "
            "text that source would reject it. Exit 0: accepted; 1: the source rejects "
            "it; 2: bad input."
        ),
    )
    p.add_argument("path", help="file of raw return-path bytes, or - for stdin")
    p.add_argument(
        "--source",
        required=True,
        metavar="REL",
        help="source release: 7.2, 7.2.22, 1:10.0.13+ds-0+deb13u1, 11.1+keepalive, ...",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON object per line")
    out.add_argument("--summary", action="store_true", help="only per-type counts and the verdict")
    add_engine_argument(p)
    add_context_arguments(p)
    p.set_defaults(func=run)


def frame_record(ev: Message) -> dict[str, Any]:
    return {
        "offset": ev.offset,
        "type": ev.type_id,
        "name": ev.name,
        "length": ev.length,
        "fields": ev.payload_fields(),
        "verdict": "accepted",
        "error": None,
    }


def _fields_text(fields: dict[str, Any]) -> str:
    parts = []
    for k, v in fields.items():
        if isinstance(v, int) and k in ("start", "end_mark"):
            parts.append(f"{k}=0x{v:x}")
        elif isinstance(v, str) and len(v) > 48:
            parts.append(f"{k}={v[:48]}…({len(v) // 2} bytes)")
        else:
            parts.append(f"{k}={v}")
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    release = parse_release(args.source)
    catalog(release)  # resolve now: a bad release fails before any output
    open_check(args.path)
    ctx = source_context(args, args.path)
    out = sys.stdout
    # Printed with the first line of output, so that stdin that turns out to be a
    # capture (checked on its first chunk) fails before anything is printed.
    header = [not args.json and not args.summary]

    def print_header() -> None:
        if header[0]:
            header[0] = False
            out.write(f"{'offset':>10}  {'type':6}  {'name':26} {'length':>6}  fields\n")

    def on_event(_: int, ev: Event) -> None:
        if args.summary:
            return
        if isinstance(ev, Message):
            if args.json:
                print_json(frame_record(ev))
            else:
                print_header()
                out.write(
                    f"{ev.offset:>10}  0x{ev.type_id:04x}  {ev.name:26} {ev.length:>6}  "
                    f"{_fields_text(ev.payload_fields())}\n"
                )
        elif isinstance(ev, EndOfStream) and ev.truncated:
            if args.json:
                print_json(
                    {
                        "offset": ev.offset,
                        "type": None,
                        "name": None,
                        "length": None,
                        "fields": {"partial_bytes": ev.partial, "reason": ev.reason},
                        "verdict": "truncated",
                        "error": ev.qemu_error,
                    }
                )

    # --summary counts as check does: no per-event callback, the fast path's batches
    (verdict,) = check_in_context(
        [release],
        replayable_chunks(args.path, iter_chunks),
        ctx,
        engine=args.engine,
        on_event=None if args.summary else on_event,
    )
    print_header()
    report(verdict, as_json=args.json, summary=args.summary)
    return 1 if verdict.verdict == "rejected" else 0


def report(v: StreamVerdict, *, as_json: bool, summary: bool) -> None:
    rej = v.rejection
    if as_json:
        extra = verdict_json(v)
        if rej is not None:
            print_json(
                {
                    "offset": rej.offset,
                    "type": rej.message_type,
                    "name": None,
                    "length": None,
                    "fields": None,
                    "verdict": "rejected",
                    "error": rej.qemu_error,
                    "reason": rej.message,
                    "assumed": v.assumed,
                    "alternatives": v.alternatives,
                }
            )
        if summary:
            print_json(
                {
                    "source": str(v.release),
                    "frames": v.frames,
                    "counts": dict(v.counts),
                    "verdict": v.verdict,
                    "error": v.qemu_error,
                    "offset": rej.offset if rej else None,
                    "unread": v.unread,
                    "reason": extra["reason"],
                    "assumed": v.assumed,
                    "alternatives": v.alternatives,
                    "unchecked": v.unchecked,
                    "context": v.context.to_json() if v.context is not None else None,
                }
            )
        return
    w = sys.stdout.write
    if summary:
        w(f"source {v.release}: {v.frames} frames, {v.total_bytes} bytes\n")
        for name, n in sorted(v.counts.items(), key=lambda kv: -kv[1]):
            w(f"  {name:28} {n:>10}\n")
    if rej is not None:
        w(f"REJECTED by {v.release} at offset {rej.offset}: {rej.message}\n")
        if rej.qemu_error:
            w(f"  {v.release} prints: {rej.qemu_error}\n")
        else:
            w("  no QEMU text known for this rule (the reason above is ours)\n")
        if v.unread:
            w(f"  the source never reads the {v.unread} bytes after offset {rej.stopped_at}\n")
    elif v.shut is not None:
        w(
            f"source {v.release} stops reading after SHUT (sibling_error={v.shut.sibling_error})"
            f" at offset {v.shut.offset}"
            + (f"; {v.unread} bytes after it are never read" if v.unread else "")
            + "\n"
        )
        if v.shut.sibling_error:
            text = catalog(v.release).format_error("shut_error", v.shut.sibling_error)
            w(f"  {v.release} prints: {text}\n")
    elif v.end is not None and v.end.truncated:
        w(
            f"stream ends inside a frame at offset {v.end.offset} "
            f"({v.end.partial} bytes of it present)\n"
        )
        if v.end.qemu_error:
            w(f"  {v.release} prints: {v.end.qemu_error}\n")
    else:
        w(f"accepted by {v.release}: {v.frames} frames\n")
    for line in context_lines(v):
        w(f"  {line}\n")
