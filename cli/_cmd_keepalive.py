"""``migcompat keepalive``: may the destination send KEEPALIVE to the source; TCP keep-alive."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from migcompat.compat import decide_keepalive, tcp_keepalive
from migcompat.lab import read_tcp_sysctls
from migcompat.protocol import InputError

from ._io import console, print_json

__all__ = ["register"]


def __dir__() -> list[str]:
    return list(__all__)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "keepalive",
        help="would the destination send KEEPALIVE, would the source take it; TCP keep-alive",
        description=(
            "Decide, with the chain of facts, whether a destination carrying the (never "
            "merged) return-path keepalive proposal would send MIG_RP_MSG_KEEPALIVE for this "
            "machine type, whether the source's return-path reader knows that type, and what "
            "real sources did when it did not (lab observations). Also: which side may enable "
            "TCP keep-alive on the migration socket, the URI, and the detection bound. "
            "Exit 0 safe, 1 unsafe, 2 bad input."
        ),
    )
    p.add_argument(
        "--source",
        metavar="REL",
        help="source release (7.2.22, 10.0, 11.1+keepalive...); omit if unknown",
    )
    p.add_argument("--destination", metavar="REL", help="destination release (required)")
    p.add_argument("--machine", metavar="M", help="machine type or alias (required)")
    p.add_argument(
        "--period",
        metavar="MS",
        type=_period,
        help="explicit postcopy-rp-keepalive-period (ms) on the destination",
    )
    p.add_argument(
        "--proposal",
        choices=["keepalive"],
        help="apply the keepalive proposal (overlay) to the destination",
    )
    p.add_argument("--idle", type=int, default=5, metavar="S", help="keep-alive-idle (s)")
    p.add_argument("--interval", type=int, default=2, metavar="S", help="keep-alive-interval (s)")
    p.add_argument("--count", type=int, default=3, metavar="N", help="keep-alive-count")
    p.add_argument("--json", action="store_true", help="JSON output")
    g = p.add_argument_group(
        "the compat hunk",
        "--compat-patch --release REL writes (stdout) the one-hunk patch adding "
        '{ "migration", "postcopy-rp-keepalive-period", "0" } to the hw_compat array '
        "of the release before REL, for that release's hw/core/machine.c: from --source-tree, "
        "else from the Debian source the lab fetches for the suite shipping REL (root).",
    )
    g.add_argument("--compat-patch", action="store_true", help="write the compat hunk")
    g.add_argument("--release", metavar="REL", help="release of the tree (10.0, 10.0.13)")
    g.add_argument("--source-tree", type=Path, metavar="DIR", help="a QEMU source tree")
    p.set_defaults(func=run)


def _period(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer number of ms: {text!r}") from None


def _compat_patch(args: argparse.Namespace) -> int:
    from migcompat.compat import MACHINE_C, compat_patch

    if not args.release:
        raise InputError("--compat-patch needs --release REL (the release of the tree)")
    if args.source_tree is not None:
        tree = args.source_tree
    else:
        from migcompat.lab import suite_for
        from migcompat.lab.build import source_tree

        tree = source_tree(suite_for(args.release))
    try:
        text = (tree / MACHINE_C).read_text()
    except OSError as exc:
        raise InputError(
            f"{tree / MACHINE_C}: cannot read it ({exc.strerror or exc}): "
            "--source-tree wants the top of a QEMU source tree"
        ) from None
    sys.stdout.write(compat_patch(text, args.release))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.compat_patch:
        return _compat_patch(args)
    if not args.destination or not args.machine:
        raise InputError("--destination and --machine are required (or use --compat-patch)")
    if args.period is not None and args.period < 0:
        raise InputError(f"--period {args.period}: the parameter is a uint32")
    d = decide_keepalive(
        args.source, args.destination, args.machine, args.period, args.proposal, tcp=False
    )
    tcp = tcp_keepalive(
        d.source,
        d.destination.line,
        args.idle,
        args.interval,
        args.count,
        source_at_least=d.source_bound,
        sysctls=read_tcp_sysctls(),
    )
    if args.json:
        out = d.to_json()
        out["tcp_keepalive"] = tcp.to_json()
        print_json(out)
        return d.exit_code
    con = console()
    style = "green" if d.safe else "bold red"
    con.print(
        f"[{style}]{d.verdict.upper()}[/]: destination {d.destination}, "
        f"source {d.source or f'unknown (>= {d.source_bound})'}, machine {d.machine}"
    )
    period = "n/a (no such parameter)" if d.period is None else f"{d.period} ms"
    con.print(
        f"effective {d.parameter}: {period} ({d.period_origin}"
        + (f", from {d.period_array}" if d.period_array else "")
        + ")"
    )
    con.print(
        f"destination sends KEEPALIVE: {'yes' if d.sends_keepalive else 'no'}; "
        f"source knows type {d.keepalive_type}: "
        f"{'unknown' if d.source_knows is None else 'yes' if d.source_knows else 'no'}"
    )
    con.print("why:")
    for f in d.facts:
        con.print(f"  - {f.text}" + (f"  [dim]({f.source})[/]" if f.source else ""))
    if not d.safe:
        if d.source_error:
            con.print(f"the source's reader reports: {d.source_error}")
        con.print("what the source does (lab observations):")
        for o in d.observed:
            con.print(f"  - {o.summary()}")
        for m in d.not_observed:
            con.print(f"  - {m}")
    con.print("TCP keep-alive (what QEMU merged instead):")
    for side in (tcp.source, tcp.destination):
        con.print(
            f"  {side.role} {side.release or 'unknown'}: "
            + (f"URI {side.uri}" if side.uri else "cannot enable keep-alive")
            + (
                f"; detects a silent partition within {side.detection_bound_s} s"
                if side.detection_bound_s is not None
                else ""
            )
        )
        for f in side.facts:
            con.print(f"    - {f.text}" + (f"  [dim]({f.source})[/]" if f.source else ""))
    return d.exit_code
