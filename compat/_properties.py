"""Effective compat properties of a machine type, and the rule that produces them.

Theory of operation: a versioned machine's ``*_options`` function first calls the options
of the next newer version, then ``compat_props_add``s its own ``hw_compat_X_Y`` (and on
x86 ``pc_compat_X_Y``). So machine X.Y ends up with the arrays of X.Y and of every newer
versioned machine, newest first. QEMU applies ``compat_props`` as global properties in
list order, and a later global for the same driver+property overrides an earlier one, so
when two arrays set the same driver+property the *older* (lower version) array wins.

The extracted tables record the order QEMU really builds (the extractor interprets the
options functions); :func:`rule_arrays` states the rule independently, and the tests check
that both agree for every registered machine type of every extracted release.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from migcompat.protocol import InputError, Release, known_releases, overlays

from ._tables import CompatEntry, CompatTable, MachineInfo, compat_table

__all__ = [
    "EffectiveProperty",
    "MachineDiff",
    "diff_machines",
    "effective_properties",
    "overlay_compat_entries",
    "rule_arrays",
    "versioned_array",
]


def __dir__() -> list[str]:
    return list(__all__)


_ARRAY_RE = re.compile(r"(?P<kind>[a-z0-9]+)_compat_(?P<major>\d+)_(?P<minor>\d+)")


def versioned_array(name: str) -> tuple[str, Release] | None:
    """``hw_compat_9_2`` -> ``("hw", Release("9.2"))``; None for a family default array."""
    m = _ARRAY_RE.fullmatch(name)
    if not m:
        return None
    return m.group("kind"), Release(f"{m.group('major')}.{m.group('minor')}")


@dataclass(frozen=True, slots=True)
class EffectiveProperty(CompatEntry):
    """A compat property that is in force for a machine type, and where it came from."""

    #: Earlier entries for the same driver+property that this one overrode.
    overrides: tuple[CompatEntry, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "driver": self.driver,
            "property": self.property,
            "value": self.value,
            "optional": self.optional,
            "array": self.array,
            "provenance": self.provenance,
            "overrides": [
                {"array": e.array, "value": e.value, "provenance": e.provenance}
                for e in self.overrides
            ],
        }


def rule_arrays(version: Release, available: Sequence[str], kinds: Sequence[str]) -> list[str]:
    """The versioned arrays machine ``version`` carries by the rule, in the order added.

    :param version: the machine type's version (``X.Y``).
    :param available: array names that exist in the release (e.g. the table's arrays).
    :param kinds: which array kinds this family adds (``("hw", "pc")`` on x86, ``("hw",)``).
    :returns: for every version V >= ``version`` that has arrays, newest V first, the
        arrays of V in ``kinds`` order.
    """
    by_version: dict[Release, dict[str, str]] = {}
    for name in available:
        parsed = versioned_array(name)
        if parsed is None:
            continue
        kind, ver = parsed
        by_version.setdefault(ver, {})[kind] = name
    out: list[str] = []
    for ver in sorted(by_version, reverse=True):
        if ver < version.line:
            break
        for kind in kinds:
            if kind in by_version[ver]:
                out.append(by_version[ver][kind])
    return out


def _apply(table: CompatTable, arrays: Sequence[str]) -> dict[tuple[str, str], EffectiveProperty]:
    eff: dict[tuple[str, str], EffectiveProperty] = {}
    for aname in arrays:
        for e in table.arrays.get(aname, ()):
            prev = eff.get(e.key)
            over = (*prev.overrides, _entry_of(prev)) if prev else ()
            # a later global property overrides an earlier one (QEMU applies them in order)
            eff[e.key] = EffectiveProperty(
                e.driver, e.property, e.value, e.optional, e.array, e.file, e.line, over
            )
    return eff


def _entry_of(p: EffectiveProperty) -> CompatEntry:
    return CompatEntry(p.driver, p.property, p.value, p.optional, p.array, p.file, p.line)


def effective_properties(
    machine: str | MachineInfo,
    release: Release | str | None = None,
    *,
    driver: str | None = None,
    extra_arrays: Sequence[tuple[str, Sequence[CompatEntry]]] = (),
) -> tuple[MachineInfo, tuple[EffectiveProperty, ...]]:
    """Every compat property in force for ``machine`` in ``release``, sorted by driver.

    :param extra_arrays: arrays appended after the machine's own (an overlay's entries),
        as ``(array name, entries)``.
    :raises UnknownMachine: the release does not register that machine type.
    """
    table = compat_table(release)
    info = machine if isinstance(machine, MachineInfo) else table.resolve(machine)
    eff = _apply(table, info.arrays)
    rel = (
        None
        if release is None
        else (release if isinstance(release, Release) else Release(str(release)))
    )
    extra = list(extra_arrays)
    if rel is not None and rel.overlay:
        extra.append((rel.overlay, overlay_compat_entries(rel)))
    for _name, entries in extra:
        for e in entries:
            if versioned_array(e.array) and _machine_carries(info, e.array):
                prev = eff.get(e.key)
                over = (*prev.overrides, _entry_of(prev)) if prev else ()
                eff[e.key] = EffectiveProperty(
                    e.driver, e.property, e.value, e.optional, e.array, e.file, e.line, over
                )
    props = sorted(eff.values(), key=lambda p: (p.driver, p.property))
    if driver is not None:
        known = {e.driver for entries in table.arrays.values() for e in entries}
        known |= {e.driver for _name, entries in extra for e in entries}
        if driver not in known:
            near = sorted(d for d in known if driver.lower() in d.lower())
            raise InputError(
                f"no compat property of QEMU {table.qemu_version} names driver {driver!r}"
                + (f"; did you mean {', '.join(near[:5])}?" if near else "")
                + " (`migcompat machine show MACHINE` lists the drivers)"
            )
        props = [p for p in props if p.driver == driver]
    return info, tuple(props)


def overlay_compat_entries(release: Release | str) -> tuple[CompatEntry, ...]:
    """The compat entries an overlay adds when applied to ``release`` (``10.2+keepalive``).

    A new migration behaviour is switched off for older machine types by an entry in the
    ``hw_compat`` array of the release line before the one it lands in; the parameter's
    name comes from the protocol catalog's overlay spec.
    """
    rel = release if isinstance(release, Release) else Release(str(release))
    if rel.overlay is None:
        return ()
    spec = overlays().get(rel.overlay)
    if spec is None:
        raise InputError(f"unknown overlay {rel.overlay!r} (known: {', '.join(overlays())})")
    param = spec.parameter
    if not param.get("name"):
        return ()
    older = [x for x in known_releases() if x < rel.line]
    if not older:
        raise InputError(f"{rel}: no release line before {rel.line} to hold the compat entry")
    prev = older[-1]
    off = str(param.get("off", 0))
    return (
        CompatEntry(
            "migration",
            str(param["name"]),
            off,
            False,
            f"hw_compat_{prev.major}_{prev.minor}",
            f"overlay {spec.name} ({spec.raw.get('message_id', spec.title)})",
            0,
        ),
    )


def _machine_carries(info: MachineInfo, array: str) -> bool:
    parsed = versioned_array(array)
    if parsed is None or info.version is None:
        return False
    return parsed[1] >= info.version.line


@dataclass(frozen=True, slots=True)
class MachineDiff:
    """What differs between two machine types' effective compat properties."""

    a: MachineInfo
    b: MachineInfo
    only_a: tuple[EffectiveProperty, ...]
    only_b: tuple[EffectiveProperty, ...]
    changed: tuple[tuple[EffectiveProperty, EffectiveProperty], ...]


def diff_machines(a: str, b: str, release: Release | str | None = None) -> MachineDiff:
    """Compat properties set for one machine type and not the other, or to other values."""
    ia, pa = effective_properties(a, release)
    ib, pb = effective_properties(b, release)
    da = {(p.driver, p.property): p for p in pa}
    db = {(p.driver, p.property): p for p in pb}
    only_a = tuple(da[k] for k in sorted(da.keys() - db.keys()))
    only_b = tuple(db[k] for k in sorted(db.keys() - da.keys()))
    changed = tuple(
        (da[k], db[k]) for k in sorted(da.keys() & db.keys()) if da[k].value != db[k].value
    )
    return MachineDiff(ia, ib, only_a, only_b, changed)
