"""Compat tables extracted from QEMU trees (``compat/data/compat-<VERSION>.json``).

Each file is written by ``tools/extract_compat.py`` from one (Debian-patched) QEMU source
tree and carries provenance (file:line) for every row plus the tarball's sha256. They are
loaded once, validated as a whole (every problem reported together in an
``ExceptionGroup``) and exposed read-only: the tables are data, and
the code only reads them.
"""

from __future__ import annotations

import builtins
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache, total_ordering
from importlib import resources
from types import MappingProxyType
from typing import Any

from migcompat.protocol import CatalogError, InputError, InvalidRelease, Release

__all__ = [
    "CompatEntry",
    "CompatTable",
    "MachineInfo",
    "MachineType",
    "UnknownMachine",
    "compat_releases",
    "compat_table",
    "parse_machine",
]


def __dir__() -> list[str]:
    return list(__all__)


class UnknownMachine(InputError):
    """A machine type that the asked release does not register (or no such name at all)."""


_MACHINE_RE = re.compile(r"(?P<family>[a-z][a-z0-9-]*?)-(?P<ver>\d+\.\d+(?:\.\d+)?)")


@total_ordering
class MachineType:
    """A versioned machine type name such as ``pc-q35-9.2`` (immutable, ordered per family).

    >>> MachineType("pc-q35-9.2").family, str(MachineType("pc-q35-9.2").version)
    ('pc-q35', '9.2')
    >>> MachineType("pc-q35-4.0.1") > MachineType("pc-q35-4.0")
    True
    >>> MachineType("virt-10.0").line
    Release('10.0')
    """

    __slots__ = ("_hash", "family", "name", "version")
    _hash: int

    family: str
    name: str
    version: Release

    def __init__(self, name: str) -> None:
        if not isinstance(name, str):
            raise InputError(f"machine type must be a string, not {type(name).__name__}")
        m = _MACHINE_RE.fullmatch(name.strip())
        if not m:
            raise InputError(
                f"{name!r} is not a versioned machine type (expected e.g. pc-q35-9.2); "
                "aliases such as q35 are resolved per release"
            )
        object.__setattr__(self, "name", name.strip())
        object.__setattr__(self, "family", m.group("family"))
        object.__setattr__(self, "version", Release(m.group("ver")))
        object.__setattr__(self, "_hash", hash(self.name))

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError("MachineType is immutable")

    @property
    def line(self) -> Release:
        """The QEMU release line that introduced this machine type (``X.Y``)."""
        return self.version.line

    def _key(self) -> tuple[str, Release]:
        return (self.family, self.version)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MachineType):
            return NotImplemented
        return self.name == other.name

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, MachineType):
            return NotImplemented
        return self._key() < other._key()

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"MachineType({self.name!r})"


def parse_machine(name: str) -> MachineType:
    """Alias for :class:`MachineType` (as ``parse_release`` is for ``Release``)."""
    return MachineType(name)


@dataclass(frozen=True, slots=True)
class CompatEntry:
    """One ``{ driver, property, value [, .optional] }`` row of a GlobalProperty array."""

    driver: str
    property: str
    value: str
    optional: bool
    array: str
    file: str
    line: int

    # ``builtins.``: the field ``property`` above shadows the name for type checkers.
    @builtins.property
    def key(self) -> tuple[str, str]:
        return (self.driver, self.property)

    @builtins.property
    def provenance(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass(frozen=True, slots=True)
class MachineInfo:
    """A machine type as one release's board file defines it (after running class_init)."""

    name: str
    board: str
    family: str
    version: Release | None
    registered: bool
    deprecated: bool
    deprecation_reason: str | None
    alias: str | None
    is_default: bool
    arrays: tuple[str, ...]
    options_chain: tuple[str, ...]
    file: str
    line: int


@dataclass(frozen=True, slots=True)
class CompatTable:
    """Everything extracted from one QEMU tree."""

    qemu_version: Release
    release: Release
    source: Mapping[str, Any]
    arrays: Mapping[str, tuple[CompatEntry, ...]]
    array_info: Mapping[str, Mapping[str, Any]]
    machines: Mapping[str, MachineInfo]
    aliases: Mapping[str, str]
    migration_properties: Mapping[str, Mapping[str, Any]]
    socket_keepalive: Mapping[str, Any]
    lifecycle: Mapping[str, Any] | None
    filename: str
    by_family: Mapping[str, tuple[MachineInfo, ...]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        fam: dict[str, list[MachineInfo]] = {}
        for m in self.machines.values():
            if m.version is not None:
                fam.setdefault(m.family, []).append(m)
        object.__setattr__(
            self,
            "by_family",
            MappingProxyType(
                {k: tuple(sorted(v, key=lambda m: m.version)) for k, v in fam.items()}
            ),
        )

    def registered(self, family: str | None = None) -> tuple[MachineInfo, ...]:
        """Registered versioned machine types (of one family), oldest first."""
        fams = [family] if family else sorted(self.by_family)
        return tuple(m for f in fams for m in self.by_family.get(f, ()) if m.registered)

    def lifecycle_state(self, version: Release, qemu: Release) -> str | None:
        """``supported``/``deprecated``/``deleted`` for machine ``version`` in QEMU ``qemu``.

        Evaluates the versioned-machine lifecycle of this table's ``boards.h``
        (``MACHINE_VER_DEPRECATION_MAJOR``/``_DELETION_MAJOR``: a type is deprecated or
        deleted once it is that many major releases old, same minor or older) for
        another QEMU version, e.g. a newer build whose sources were not extracted.
        None when this release has no such rule. Development snapshots (micro >= 50)
        are not modelled.
        """
        if not self.lifecycle:
            return None

        def expired(cutoff: int) -> bool:
            d = qemu.major - version.major
            return d > cutoff or (d == cutoff and qemu.minor - version.minor >= 0)

        if expired(int(self.lifecycle["deletion_major"])):
            return "deleted"
        if expired(int(self.lifecycle["deprecation_major"])):
            return "deprecated"
        return "supported"

    def resolve(self, name: str) -> MachineInfo:
        """The machine type ``name`` names in this release (aliases resolved).

        :raises UnknownMachine: with a sentence saying what this release registers instead.
        """
        target = self.aliases.get(name, name)
        info = self.machines.get(target)
        if info is not None and info.registered:
            return info
        try:
            mt = MachineType(name)
        except InputError:
            known = ", ".join(sorted(self.aliases))
            raise UnknownMachine(
                f"{name!r} is not a machine type QEMU {self.release} registers (aliases: {known})"
            ) from None
        regs = self.registered(mt.family)
        if not regs:
            fams = ", ".join(sorted(self.by_family))
            raise UnknownMachine(
                f"no machine family {mt.family!r} in QEMU {self.release} (families read: {fams})"
            )
        oldest, newest = regs[0], regs[-1]
        if info is not None and not info.registered:
            why = (
                f"{name} is defined in {info.file}:{info.line} but not registered by "
                f"{self.release} (too old: deleted by the versioned-machine lifecycle); "
                f"oldest is {oldest.version}"
            )
        elif mt.version > newest.version:
            why = (
                f"{name} is not registered by {self.release}; newest is {newest.version}: "
                "a QEMU cannot run a machine type newer than itself"
            )
        elif mt.version < oldest.version:
            why = f"{name} is not registered by {self.release}; oldest is {oldest.version}"
        else:
            why = f"{name} is not registered by {self.release} (no such version of {mt.family})"
        raise UnknownMachine(why)


def _load_one(name: str, data: Mapping[str, Any], problems: list[Exception]) -> CompatTable:
    arrays: dict[str, tuple[CompatEntry, ...]] = {}
    info: dict[str, Mapping[str, Any]] = {}
    for group in ("compat_arrays", "default_arrays"):
        for aname, arr in data.get(group, {}).items():
            rows = []
            for e in arr["entries"]:
                if not all(isinstance(e.get(k), str) for k in ("driver", "property", "value")):
                    problems.append(
                        CatalogError(
                            f"{name}: {aname} line {e.get('line')}: "
                            "unresolved driver/property/value"
                        )
                    )
                    continue
                rows.append(
                    CompatEntry(
                        e["driver"],
                        e["property"],
                        e["value"],
                        bool(e.get("optional")),
                        aname,
                        arr["file"],
                        e["line"],
                    )
                )
            arrays[aname] = tuple(rows)
            info[aname] = MappingProxyType(
                {k: v for k, v in arr.items() if k != "entries"} | {"group": group}
            )
    machines: dict[str, MachineInfo] = {}
    for mname, m in data.get("machines", {}).items():
        for a in m["compat_arrays"]:
            if a not in arrays:
                problems.append(CatalogError(f"{name}: {mname} adds unknown array {a}"))
        machines[mname] = MachineInfo(
            name=mname,
            board=m["board"],
            family=m["family"],
            version=Release(m["version"]) if m.get("version") else None,
            registered=bool(m["registered"]),
            deprecated=bool(m["deprecated"]),
            deprecation_reason=m.get("deprecation_reason"),
            alias=m.get("alias"),
            is_default=bool(m.get("is_default")),
            arrays=tuple(m["compat_arrays"]),
            options_chain=tuple(m.get("options_chain", ())),
            file=m["file"],
            line=m["line"],
        )
    for alias, target in data.get("aliases", {}).items():
        if target not in machines:
            problems.append(CatalogError(f"{name}: alias {alias} -> unknown {target}"))
    qv = Release(data["qemu_version"])
    return CompatTable(
        qemu_version=qv,
        release=qv.line,
        source=MappingProxyType(dict(data["source"])),
        arrays=MappingProxyType(arrays),
        array_info=MappingProxyType(info),
        machines=MappingProxyType(machines),
        aliases=MappingProxyType(dict(data["aliases"])),
        migration_properties=MappingProxyType(
            {k: MappingProxyType(v) for k, v in data["migration_properties"].items()}
        ),
        socket_keepalive=MappingProxyType(dict(data.get("socket_keepalive", {}))),
        lifecycle=data.get("machine_lifecycle"),
        filename=name,
    )


@cache
def _tables() -> Mapping[Release, CompatTable]:
    problems: list[Exception] = []
    out: dict[Release, CompatTable] = {}
    folder = resources.files("migcompat.compat") / "data"
    for item in sorted(folder.iterdir(), key=lambda p: p.name):
        if not re.fullmatch(r"compat-\d+\.\d+\.\d+\.json", item.name):
            continue
        try:
            data = json.loads(item.read_text(encoding="utf-8"))
        except ValueError as exc:
            problems.append(CatalogError(f"{item.name}: {exc}"))
            continue
        if data.get("schema") != 1:
            problems.append(CatalogError(f"{item.name}: schema {data.get('schema')!r} is not 1"))
            continue
        table = _load_one(item.name, data, problems)
        prev = out.get(table.release)
        if prev is None or table.qemu_version > prev.qemu_version:
            out[table.release] = table  # newest build of a line represents it
    if problems:
        raise ExceptionGroup("the compat tables are inconsistent", problems)
    return MappingProxyType(dict(sorted(out.items())))


def compat_releases() -> tuple[Release, ...]:
    """Release lines with an extracted compat table, oldest first."""
    return tuple(_tables())


def compat_table(release: Release | str | None = None) -> CompatTable:
    """The compat table of a release line (default: the newest extracted).

    :raises InputError: when no tree of that line was extracted.
    """
    tables = _tables()
    if release is None:
        return tables[list(tables)[-1]]
    try:
        rel = release if isinstance(release, Release) else Release(str(release))
    except InvalidRelease:
        raise
    line = rel.line
    if line in tables:
        return tables[line]
    have = ", ".join(str(t.qemu_version) for t in tables.values())
    raise InputError(
        f"no compat table for QEMU {line}: its sources were not extracted (have {have}); "
        "extract one with tools/extract_compat.py of the qemu-migcompat repository (not "
        "installed by pip) from a source tree of that release"
    )
