"""``migcompat machine``: machine types and their effective compat properties, per release."""

from __future__ import annotations

import argparse
from typing import Any

from migcompat.compat import (
    EffectiveProperty,
    compat_table,
    diff_machines,
    effective_properties,
)
from migcompat.protocol import Release

from ._io import add_format_argument, console, output_format, print_json, print_rows

__all__ = ["register"]


def __dir__() -> list[str]:
    return list(__all__)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "machine",
        help="machine types and their effective compat properties, per QEMU release",
        description=(
            "Every compat property a machine type carries in a QEMU release (from the "
            "extracted hw_compat/pc_compat arrays, with the array and source line each came "
            "from), what differs between two machine types, and which types a release "
            "registers. Aliases (q35, pc, virt, pseries, s390-ccw-virtio) are resolved."
        ),
    )
    msub = p.add_subparsers(dest="machine_command", metavar="ACTION", required=True)
    rel_help = "QEMU release with an extracted compat table (default: the newest)"

    show = msub.add_parser("show", help="effective compat properties of one machine type")
    show.add_argument("machine", metavar="MACHINE")
    show.add_argument("--release", metavar="REL", help=rel_help)
    show.add_argument("--driver", metavar="D", help="only properties of this driver")
    show.add_argument("--json", action="store_true", help="JSON output")
    add_format_argument(show)
    show.set_defaults(func=run_show)

    diff = msub.add_parser("diff", help="compat properties that differ between two types")
    diff.add_argument("a", metavar="A")
    diff.add_argument("b", metavar="B")
    diff.add_argument("--release", metavar="REL", help=rel_help)
    diff.add_argument("--json", action="store_true", help="JSON output")
    add_format_argument(diff)
    diff.set_defaults(func=run_diff)

    lst = msub.add_parser("list", help="versioned machine types a release registers")
    lst.add_argument("--release", metavar="REL", help=rel_help)
    lst.add_argument("--family", metavar="F", help="only this family (pc-q35, virt, ...)")
    lst.add_argument(
        "--all",
        action="store_true",
        help="also types defined in the sources but not registered (too old)",
    )
    lst.add_argument("--json", action="store_true", help="JSON output")
    add_format_argument(lst)
    lst.set_defaults(func=run_list)


def _header(table: Any, requested: str, info: Any) -> str:
    alias = f" (alias {requested})" if requested != info.name else ""
    dep = " — deprecated" if info.deprecated else ""
    return (
        f"{info.name}{alias} in QEMU {table.qemu_version}{dep}: "
        f"{len(info.arrays)} arrays, defined at {info.file}:{info.line}"
    )


def run_show(args: argparse.Namespace) -> int:
    table = compat_table(args.release)
    info, props = effective_properties(
        args.machine, args.release or table.release, driver=args.driver
    )
    fmt = output_format(args)
    if fmt == "json":
        print_json(
            {
                "release": str(table.qemu_version),
                "machine": info.name,
                "overlay": Release(args.release).overlay if args.release else None,
                "requested": args.machine,
                "deprecated": info.deprecated,
                "deprecation_reason": info.deprecation_reason,
                "arrays": list(info.arrays),
                "source": dict(table.source),
                "properties": [p.to_json() for p in props],
            }
        )
        return 0
    con = console()
    con.print(_header(table, args.machine, info), markup=False)
    con.print(
        "arrays, in the order class_init adds them (later overrides earlier): "
        + ", ".join(info.arrays),
        markup=False,
    )
    if args.driver and not props:
        con.print(
            f"no compat property of driver {args.driver} is set on {info.name}: its defaults apply",
            markup=False,
        )
        return 0
    rows = [
        (p.driver, p.property, p.value + (" (optional)" if p.optional else ""),
         p.array + (f" (over {', '.join(o.array + '=' + o.value for o in p.overrides)})"
                    if p.overrides else ""), p.provenance)
        for p in props
    ]  # fmt: skip
    print_rows(
        ("driver", "property", "value", "from", "source"), rows, fmt=fmt, prose=("from", "source")
    )
    return 0


def _pj(p: EffectiveProperty | None) -> dict[str, Any] | None:
    return p.to_json() if p is not None else None


def run_diff(args: argparse.Namespace) -> int:
    table = compat_table(args.release)
    d = diff_machines(args.a, args.b, table.release)
    fmt = output_format(args)
    if fmt == "json":
        print_json(
            {
                "release": str(table.qemu_version),
                "a": d.a.name,
                "b": d.b.name,
                "only_a": [p.to_json() for p in d.only_a],
                "only_b": [p.to_json() for p in d.only_b],
                "changed": [{"a": _pj(x), "b": _pj(y)} for x, y in d.changed],
            }
        )
        return 0
    con = console()
    con.print(f"QEMU {table.qemu_version}: {d.a.name} vs {d.b.name}", markup=False)
    rows: list[tuple[str, str, str, str]] = []
    for p in d.only_a:
        rows.append((p.driver, p.property, f"{p.value} ({p.array})", "(default)"))
    for p in d.only_b:
        rows.append((p.driver, p.property, "(default)", f"{p.value} ({p.array})"))
    for x, y in d.changed:
        rows.append((x.driver, x.property, f"{x.value} ({x.array})", f"{y.value} ({y.array})"))
    print_rows(("driver", "property", d.a.name, d.b.name), sorted(rows), fmt=fmt)
    if not rows:
        con.print("no compat property differs")
    return 0


def run_list(args: argparse.Namespace) -> int:
    table = compat_table(args.release)
    fams = [args.family] if args.family else sorted(table.by_family)
    items = []
    for fam in fams:
        for m in table.by_family.get(fam, ()):
            if m.registered or args.all:
                items.append(m)
    if args.family and not items:
        from migcompat.compat import UnknownMachine

        raise UnknownMachine(
            f"no machine family {args.family!r} in QEMU {table.release} "
            f"(families: {', '.join(sorted(table.by_family))})"
        )
    aliases = {v: k for k, v in table.aliases.items()}
    fmt = output_format(args)
    if fmt == "json":
        print_json(
            {
                "release": str(table.qemu_version),
                "source": dict(table.source),
                "aliases": dict(table.aliases),
                "machines": [
                    {
                        "name": m.name,
                        "family": m.family,
                        "version": str(m.version),
                        "registered": m.registered,
                        "deprecated": m.deprecated,
                        "alias": aliases.get(m.name),
                        "is_default": m.is_default,
                        "provenance": f"{m.file}:{m.line}",
                    }
                    for m in items
                ],
            }
        )
        return 0
    rows = []
    for m in items:
        state = (
            "not registered" if not m.registered else "deprecated" if m.deprecated else "supported"
        )
        rows.append((m.family, m.name, aliases.get(m.name, ""), state, f"{m.file}:{m.line}"))
    print_rows(
        ("family", "machine", "alias", "state", "defined at"),
        rows,
        fmt=fmt,
        title=f"QEMU {table.qemu_version} versioned machine types",
    )
    return 0
