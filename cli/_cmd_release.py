"""``migcompat release``: which release line a version string users have resolves to."""

from __future__ import annotations

import argparse
from typing import Any

from migcompat.protocol import catalog, parse_release, resolve_line

from ._io import print_json

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "release",
        help="resolve a version string (7.2.22, a Debian version, `--version` output) to a line",
        description=(
            "Resolve what users have — 7.2.22, 1:10.0.13+ds-0+deb13u1, the first line of "
            "`qemu-system-x86_64 --version`, a development tree 8.0.50 — to the release "
            "line whose protocol it speaks."
        ),
    )
    p.add_argument("version", nargs="+", help="version strings")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for text in args.version:
        rel = parse_release(text)
        line = resolve_line(rel)
        cat = catalog(rel)
        if args.json:
            print_json({"input": text, "release": str(rel), "line": str(line), "rp_max": cat.max})
        else:
            dev = " (development tree of the next line)" if rel.is_development else ""
            print(f"{text!r} → {rel} → line {line}{dev}; MIG_RP_MSG_MAX {cat.max}")
    return 0
