"""``migcompat check``: does each source release accept this return-path stream?"""

from __future__ import annotations

import argparse
from typing import Any

from migcompat.protocol import check_stream

from ._io import (
    add_engine_argument,
    console,
    iter_chunks,
    open_check,
    parse_releases,
    print_json,
)

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "check",
        help="conformance: which source releases accept a return-path stream",
        description=(
            "Run a raw return-path stream (e.g. captured from a patched destination) through "
            "the reader of each source release: accepted, or the first rejection with its "
            "offset and the exact text that source prints. Exit 0: all accept; 1: some "
            "reject; 2: bad input or usage."
        ),
    )
    p.add_argument("path", help="file of raw return-path bytes, or - for stdin")
    p.add_argument(
        "--against",
        required=True,
        metavar="REL[,REL…]|all",
        help="source releases to check against, or 'all' release lines in the catalog",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per source release")
    add_engine_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    releases = parse_releases(args.against)
    open_check(args.path)
    verdicts = check_stream(releases, iter_chunks(args.path), engine=args.engine)
    if args.json:
        for v in verdicts:
            rej = v.rejection
            print_json(
                {
                    "source": str(v.release),
                    "verdict": v.verdict,
                    "frames": v.frames,
                    "offset": rej.offset
                    if rej
                    else (v.end.offset if v.end and v.end.truncated else None),
                    "type": rej.message_type if rej else None,
                    "error": v.qemu_error,
                }
            )
    else:
        from rich.table import Table

        table = Table(title="return-path conformance", title_justify="left")
        for col in ("source", "verdict", "frames read", "offset", "what the source prints"):
            table.add_column(col, overflow="fold")
        # Consecutive releases that read the stream identically share one row.
        rows: list[tuple[list[str], tuple[str, str, str, str]]] = []
        for v in verdicts:
            rej = v.rejection
            where = rej.offset if rej else (v.end.offset if v.end and v.end.truncated else "")
            key = (v.verdict, str(v.frames), str(where), v.qemu_error or "")
            if rows and rows[-1][1] == key:
                rows[-1][0].append(str(v.release))
            else:
                rows.append(([str(v.release)], key))
        for names, (verdict, frames, where, text) in rows:
            style = {"accepted": "green", "rejected": "bold red", "truncated": "yellow"}[verdict]
            label = names[0] if len(names) == 1 else f"{names[0]} … {names[-1]}"
            table.add_row(label, f"[{style}]{verdict}[/]", frames, where, text)
        console().print(table)
    return 1 if any(v.verdict == "rejected" for v in verdicts) else 0
