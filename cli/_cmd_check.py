"""``migcompat check``: does each source release accept this return-path stream?"""

from __future__ import annotations

import argparse
from typing import Any

from migcompat.protocol import check_in_context

from ._context import (
    add_context_arguments,
    context_lines,
    replayable_chunks,
    source_context,
    verdict_json,
    what_it_prints,
)
from ._io import (
    add_engine_argument,
    add_format_argument,
    iter_chunks,
    open_check,
    output_format,
    parse_releases,
    print_json,
    print_rows,
)

__all__ = ["register"]

_VERDICT_STYLE = {"accepted": "green", "rejected": "bold red", "truncated": "yellow"}


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
    add_format_argument(p)
    add_engine_argument(p)
    add_context_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    releases = parse_releases(args.against)
    open_check(args.path)
    ctx = source_context(args, args.path)
    verdicts = check_in_context(
        releases, replayable_chunks(args.path, iter_chunks), ctx, engine=args.engine
    )
    fmt = output_format(args)
    if fmt == "json":
        for v in verdicts:
            print_json({"source": str(v.release), **verdict_json(v), "context": ctx.to_json()})
    else:
        # Consecutive releases that read the stream identically share one row.
        rows: list[tuple[list[str], tuple[str, ...]]] = []
        for v in verdicts:
            where = "" if v.offset is None else str(v.offset)
            key = (v.verdict, str(v.frames), where, what_it_prints(v), *context_lines(v))
            if rows and rows[-1][1] == key:
                rows[-1][0].append(str(v.release))
            else:
                rows.append(([str(v.release)], key))
        labels = [n[0] if len(n) == 1 else f"{n[0]} … {n[-1]}" for n, _ in rows]
        print_rows(
            ("source", "verdict", "frames read", "offset", "what the source prints"),
            [(label, *key[:4]) for label, (_, key) in zip(labels, rows, strict=True)],
            fmt=fmt,
            title="return-path conformance",
            styles={"verdict": _VERDICT_STYLE.get},
        )
        # plain lines under the rows: never wrapped, whatever the width
        if ctx.origin:
            print("context: " + "; ".join(f"{k} from {w}" for k, w in ctx.origin.items()))
        for label, (_, key) in zip(labels, rows, strict=True):
            for line in key[4:]:
                print(f"{label}: {line}")
    return 1 if any(v.verdict == "rejected" for v in verdicts) else 0
