"""``migcompat catalog``: the return-path message table of a release, and what changed."""

from __future__ import annotations

import argparse
from typing import Any

from migcompat.protocol import (
    Release,
    RpCatalog,
    catalog,
    known_releases,
    parse_release,
    stream_catalog,
)

from ._io import add_format_argument, console, output_format, print_json, print_rows

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "catalog",
        help="the return-path message table of a release, or what changed between two",
        description=(
            "Show the return-path messages a source release knows (id, QEMU name, payload "
            "length, first release, MIG_RP_MSG_MAX, error texts), or diff two releases. "
            "Releases may carry an overlay: 11.1+keepalive."
        ),
    )
    p.add_argument("--release", metavar="REL", help="release (default: newest in the catalog)")
    p.add_argument("--diff", nargs=2, metavar=("A", "B"), help="what changed from A to B")
    p.add_argument("--errors", action="store_true", help="also list the error texts")
    p.add_argument(
        "--commands",
        action="store_true",
        help="the forward stream instead: QEVM header, section types, MIG_CMD_* table",
    )
    p.add_argument("--list", action="store_true", help="list every release line and its MAX")
    p.add_argument("--json", action="store_true", help="JSON output")
    add_format_argument(p)
    p.set_defaults(func=run)


def as_json(cat: RpCatalog) -> dict[str, Any]:
    return {
        "release": str(cat.release),
        "line": str(cat.line),
        "basis": cat.basis,
        "max": cat.max,
        "buffer_size": cat.buffer_size,
        "overlay": cat.overlay.name if cat.overlay else None,
        "messages": [
            {
                "id": m.id,
                "name": m.name,
                "length": m.length,
                "since": str(m.since) if not m.overlay else None,
                "overlay": m.overlay,
            }
            for m in cat.messages
        ],
        "errors": dict(cat.errors),
        "provenance": list(cat.provenance),
    }


def diff(a: RpCatalog, b: RpCatalog) -> dict[str, Any]:
    ida = {m.id: m for m in a.messages}
    idb = {m.id: m for m in b.messages}
    changes: list[dict[str, Any]] = []
    for i in sorted(set(ida) | set(idb)):
        ma, mb = ida.get(i), idb.get(i)
        if ma is None and mb is not None:
            changes.append({"id": i, "change": "added", "name": mb.name, "length": mb.length})
        elif mb is None and ma is not None:
            changes.append({"id": i, "change": "removed", "name": ma.name, "length": ma.length})
        elif ma is not None and mb is not None and (ma.name, ma.length) != (mb.name, mb.length):
            changes.append(
                {
                    "id": i,
                    "change": "changed",
                    "from": {"name": ma.name, "length": ma.length},
                    "to": {"name": mb.name, "length": mb.length},
                }
            )
    errors = {
        k: {"from": a.errors.get(k), "to": b.errors.get(k)}
        for k in sorted(set(a.errors) | set(b.errors))
        if a.errors.get(k) != b.errors.get(k)
    }
    return {
        "from": str(a.release),
        "to": str(b.release),
        "max": {"from": a.max, "to": b.max},
        "messages": changes,
        "errors": errors,
    }


def run(args: argparse.Namespace) -> int:
    con = console()
    fmt = output_format(args)
    args.json = fmt == "json"
    if args.list:
        cats = [catalog(r) for r in known_releases()]
        if args.json:
            for c in cats:
                print_json({"release": str(c.line), "max": c.max, "basis": c.basis})
            return 0
        print_rows(
            ("release", "MIG_RP_MSG_MAX", "newest id", "error style", "basis"),
            [(c.line, c.max, c.messages[-1].name, c.error_call, c.basis) for c in cats],
            fmt=fmt,
            title="release lines in the catalog",
        )
        return 0
    if args.diff:
        a, b = (catalog(parse_release(x)) for x in args.diff)
        d = diff(a, b)
        if args.json:
            print_json(d)
            return 0
        con.print(f"[bold]{a.release} → {b.release}[/]: MIG_RP_MSG_MAX {a.max} → {b.max}")
        if not d["messages"]:
            con.print("  no message ids added, removed or changed")
        for ch in d["messages"]:
            if ch["change"] == "changed":
                con.print(f"  ~ {ch['id']}: {ch['from']} → {ch['to']}")
            else:
                sign = "+" if ch["change"] == "added" else "-"
                length = "variable" if ch["length"] is None else ch["length"]
                con.print(f"  {sign} {ch['id']}: {ch['name']} (length {length})")
        for key, e in d["errors"].items():
            con.print(f"  error text [italic]{key}[/]:\n    - {e['from']!r}\n    + {e['to']!r}")
        return 0
    rel = parse_release(args.release) if args.release else known_releases()[-1]
    if args.commands:
        return show_commands(rel, fmt=fmt)
    cat = catalog(rel)
    if args.json:
        print_json(as_json(cat))
        return 0
    title = f"return-path messages of a {cat.release} source (line {cat.line}, {cat.basis})"
    rows: list[tuple[object, ...]] = []
    for m in cat.messages:
        length = "variable" if m.length is None else str(m.length)
        since = f"{m.overlay} proposal" if m.overlay else str(m.since)
        rows.append((m.id, m.name, length if m.id else "(always rejected)", since))
    rows.append((cat.max, "MIG_RP_MSG_MAX", "", ""))
    print_rows(("id", "name", "payload length", "since"), rows, fmt=fmt, title=title)
    con.print(
        f"Types >= {cat.max} and type 0 are rejected: "
        f"{cat.format_error('invalid_type', cat.max, 0)!r}",
        markup=False,
    )
    if args.errors:
        print_rows(
            ("key", "format (C printf, as QEMU prints)"),
            list(cat.errors.items()),
            fmt=fmt,
            title="error texts",
        )
    return 0


def show_commands(rel: Release, *, fmt: str) -> int:
    """The forward stream's header, section types and ``MIG_CMD_*`` table of a release."""
    sc = stream_catalog(rel)
    if fmt == "json":
        print_json(
            {
                "release": str(sc.release),
                "magic": sc.magic,
                "version": sc.version,
                "section_types": dict(sc.section_types),
                "commands": [
                    {"id": c.id, "name": c.name, "length": c.length, "since": str(c.since)}
                    for c in sc.commands
                ],
                "max": sc.max,
            }
        )
        return 0
    print(f"stream header: magic 0x{sc.magic:08X} (QEVM), version {sc.version}")
    print_rows(
        ("byte", "name"),
        [
            (f"0x{value:02x}", name)
            for name, value in sorted(sc.section_types.items(), key=lambda kv: kv[1])
        ],
        fmt=fmt,
        title="section types",
    )
    rows: list[tuple[object, ...]] = []
    for c in sc.commands:
        length = "variable" if c.length is None else str(c.length)
        rows.append((c.id, c.name, length if c.id else "(always rejected)", c.since))
    rows.append((sc.max, "MIG_CMD_MAX", "", ""))
    print_rows(
        ("id", "name", "argument length", "since"),
        rows,
        fmt=fmt,
        title=f"MIG_CMD_* of {sc.release} (QEMU_VM_COMMAND)",
    )
    return 0
