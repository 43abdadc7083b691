"""The per-release message catalog: data generated from QEMU's sources, loaded once.

``protocol/data/catalog.json`` is written by ``tools/extract_catalog.py build``
from extracted QEMU trees plus a small file of dated history facts; every row
carries its provenance. Nothing here is typed by hand: the construct grammar,
the source-parser model, the fast path and the hypothesis strategies are all
derived from these objects.

``MIGCOMPAT_CATALOG=/path/to/catalog.json`` swaps in another catalog, e.g. one
built from a patched QEMU tree by a developer adding a return-path message.
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ._cformat import c_format
from ._errors import CatalogError, InvalidRelease
from ._releases import Release

__all__ = [
    "MessageSpec",
    "MigRpMessageType",  # noqa: F822 - generated from the data on first use (__getattr__)
    "Overlay",
    "RpCatalog",
    "StreamCatalog",
    "catalog",
    "known_releases",
    "overlays",
    "resolve_line",
    "stream_catalog",
]


def __dir__() -> list[str]:
    return list(__all__)


@dataclass(frozen=True, slots=True)
class MessageSpec:
    """One row of QEMU's ``rp_cmd_args[]`` (or ``mig_cmd_args[]``)."""

    id: int
    #: QEMU's enum name, e.g. ``MIG_RP_MSG_REQ_PAGES_ID``.
    name: str
    #: The ``.name`` QEMU prints in its length error, e.g. ``REQ_PAGES_ID``;
    #: ``None`` where the table has no entry for the id (printed as ``(null)``).
    table_name: str | None
    #: Fixed payload length; ``None`` where QEMU's table says -1 (variable).
    length: int | None
    #: First release line that has this id.
    since: Release
    #: Set for ids that only an overlay (an unmerged proposal) adds.
    overlay: str | None = None

    @property
    def short_name(self) -> str:
        """The enum name without QEMU's prefix (``REQ_PAGES_ID``), the key of payload layouts."""
        return self.name.removeprefix("MIG_RP_MSG_").removeprefix("MIG_CMD_")


@dataclass(frozen=True, slots=True)
class Overlay:
    """A proposed protocol change that never landed, applied on top of a release."""

    name: str
    title: str
    status: str
    base_rp_max: int
    rp_add: tuple[MessageSpec, ...]
    parameter: Mapping[str, Any]
    provenance: tuple[str, ...]
    raw: Mapping[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class RpCatalog:
    """What one source release's return-path reader knows (``source_return_path_thread``)."""

    release: Release
    line: Release
    messages: tuple[MessageSpec, ...]
    #: ``MIG_RP_MSG_MAX``: every type ``>=`` this (and 0) is "Received invalid message".
    max: int
    #: The reader's stack buffer (``uint8_t buf[512]``): longer frames are rejected.
    buffer_size: int
    #: Whether the thread checks the file error right after the header (3.0+);
    #: older ones read zeros at EOF and report an invalid message 0x0000.
    file_error_check: bool
    #: How MIG_RP_MSG_SWITCHOVER_ACK is taken: ``none`` (no such message), ``flag``
    #: (8.1+: sets switchover_acked) or ``counted`` (11.1+: one ACK per device
    #: request, one too many fails the migration; older machine types keep ``flag``
    #: through the ``switchover-ack-legacy`` compat property).
    switchover_ack_accounting: str
    error_call: str
    errors: Mapping[str, str]
    resume_ack_value: int
    recv_bitmap_ending: int
    basis: str
    provenance: tuple[str, ...]
    overlay: Overlay | None = None
    by_id: Mapping[int, MessageSpec] = field(init=False, repr=False, compare=False)
    by_name: Mapping[str, MessageSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_id", MappingProxyType({m.id: m for m in self.messages}))
        object.__setattr__(self, "by_name", MappingProxyType({m.name: m for m in self.messages}))

    def knows(self, type_id: int) -> bool:
        """True when the source dispatches ``type_id`` (not 0, below ``MIG_RP_MSG_MAX``)."""
        return 0 < type_id < self.max

    def format_error(self, key: str, *args: object) -> str:
        """The exact text this release prints for error ``key`` with ``args``."""
        try:
            fmt = self.errors[key]
        except KeyError:
            raise CatalogError(f"{self.release} has no error text {key!r} in the catalog") from None
        return c_format(fmt, *args)

    def printed_name(self, spec: MessageSpec) -> str:
        """``rp_cmd_args[type].name`` as ``%s`` prints it (glibc prints NULL as ``(null)``)."""
        return "(null)" if spec.table_name is None else spec.table_name

    def printed_length(self, spec: MessageSpec) -> int:
        """``(size_t)rp_cmd_args[type].len`` as the length error prints it."""
        return -1 if spec.length is None else spec.length


@dataclass(frozen=True, slots=True)
class StreamCatalog:
    """The forward (source-to-destination) stream of one release: QEVM header and commands."""

    release: Release
    magic: int
    version: int
    section_types: Mapping[str, int]
    commands: tuple[MessageSpec, ...]
    max: int
    by_id: Mapping[int, MessageSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_id", MappingProxyType({m.id: m for m in self.commands}))


# -- loading -------------------------------------------------------------------


def _catalog_path() -> Path | None:
    override = os.environ.get("MIGCOMPAT_CATALOG")
    return Path(override) if override else None


@cache
def _raw() -> Mapping[str, Any]:
    override = _catalog_path()
    try:
        if override is not None:
            text = override.read_text(encoding="utf-8")
        else:
            text = (resources.files("migcompat.protocol") / "data" / "catalog.json").read_text(
                encoding="utf-8"
            )
        data = json.loads(text)
    except (OSError, ValueError) as exc:
        raise CatalogError(f"cannot load the message catalog: {exc}") from exc
    if data.get("schema") != 1:
        raise CatalogError(f"catalog schema {data.get('schema')!r} is not 1")
    _validate(data)
    validated: Mapping[str, Any] = data
    return validated


def _validate(data: Mapping[str, Any]) -> None:
    """Check the whole catalog, reporting every problem together."""
    problems: list[Exception] = []
    for line, entry in data["releases"].items():
        rp = entry["rp"]
        ids = [m["id"] for m in rp["messages"]]
        if ids != list(range(len(ids))):
            problems.append(CatalogError(f"{line}: rp ids are not contiguous from 0: {ids}"))
        if rp["max"] != len(ids):
            problems.append(CatalogError(f"{line}: MIG_RP_MSG_MAX {rp['max']} != {len(ids)} ids"))
        for key in ("invalid_type", "bad_length", "short_read"):
            if key not in rp["errors"]:
                problems.append(CatalogError(f"{line}: no {key!r} error text"))
    if problems:
        raise ExceptionGroup("the message catalog is inconsistent", problems)


@cache
def known_releases() -> tuple[Release, ...]:
    """Every release line the catalog covers, oldest first."""
    return tuple(sorted(Release(k) for k in _raw()["releases"]))


@cache
def overlays() -> Mapping[str, Overlay]:
    """The unmerged proposals a user may apply to a release (``11.1+keepalive``)."""
    out = {}
    for name, o in _raw().get("overlays", {}).items():
        adds = tuple(
            MessageSpec(
                id=m["id"],
                name=m["name"],
                table_name=m["table_name"],
                length=m["length"],
                since=Release("0.0"),
                overlay=name,
            )
            for m in o["rp_add"]
        )
        out[name] = Overlay(
            name=name,
            title=o.get("title", name),
            status=o.get("status", "never merged"),
            base_rp_max=o["base_rp_max"],
            rp_add=adds,
            parameter=MappingProxyType(dict(o.get("parameter", {}))),
            provenance=tuple(o.get("provenance", ())),
            raw=MappingProxyType(dict(o)),
        )
    return MappingProxyType(out)


def resolve_line(release: Release | str) -> Release:
    """The catalog's release line for a release, build, package version or dev tree."""
    rel = release if isinstance(release, Release) else Release(release)
    lines = known_releases()
    line = rel.line
    if rel.is_development:
        newer = [x for x in lines if x > line]
        if not newer:
            raise InvalidRelease(
                str(rel),
                f"a development tree after {lines[-1]}, the newest line in the catalog; "
                "regenerate the catalog with tools/extract_catalog.py of the qemu-migcompat "
                "repository (not installed by pip) from its sources, or point "
                "MIGCOMPAT_CATALOG at a catalog that has it",
            )
        line = newer[0]
    if line not in lines:
        if line < lines[0]:
            raise InvalidRelease(str(rel), f"QEMU has a return path only from {lines[0]}")
        if line > lines[-1]:
            raise InvalidRelease(
                str(rel),
                f"newer than {lines[-1]}, the newest line in the catalog; "
                "regenerate the catalog with tools/extract_catalog.py of the qemu-migcompat "
                "repository (not installed by pip) from its sources, or point "
                "MIGCOMPAT_CATALOG at a catalog that has it",
            )
        raise InvalidRelease(str(rel), "no such QEMU release line")
    return line


def _spec(m: Mapping[str, Any]) -> MessageSpec:
    return MessageSpec(
        id=m["id"],
        name=m["name"],
        table_name=m["table_name"],
        length=m["length"],
        since=Release(m["since"]),
    )


def _entry(release: Release | str) -> tuple[Release, Release, Mapping[str, Any]]:
    """``release`` as a :class:`Release`, the line whose data applies, and that data."""
    rel = release if isinstance(release, Release) else Release(release)
    line = resolve_line(rel)
    return rel, line, _raw()["releases"][str(line)]


@cache
def catalog(release: Release | str) -> RpCatalog:
    """The return-path catalog of a source release (with its overlay applied, if any)."""
    rel, line, entry = _entry(release)
    rp = entry["rp"]
    messages = tuple(_spec(m) for m in rp["messages"])
    overlay = None
    rp_max = rp["max"]
    if rel.overlay:
        known = overlays()
        if rel.overlay not in known:
            raise InvalidRelease(
                str(rel), f"unknown overlay; known: {', '.join(sorted(known)) or 'none'}"
            )
        overlay = known[rel.overlay]
        if rp_max != overlay.base_rp_max:
            raise InvalidRelease(
                str(rel),
                f"the {overlay.name} proposal applies to releases whose MIG_RP_MSG_MAX is "
                f"{overlay.base_rp_max}; {line} has {rp_max}",
            )
        messages = messages + tuple(
            MessageSpec(m.id, m.name, m.table_name, m.length, line, overlay.name)
            for m in overlay.rp_add
        )
        rp_max = max(m.id for m in messages) + 1
    return RpCatalog(
        release=rel,
        line=line,
        messages=messages,
        max=rp_max,
        buffer_size=rp["buffer_size"],
        file_error_check=rp["file_error_check"],
        switchover_ack_accounting=rp.get("switchover_ack_accounting", "flag"),
        error_call=rp["error_call"],
        errors=MappingProxyType(dict(rp["errors"])),
        resume_ack_value=rp["resume_ack_value"],
        recv_bitmap_ending=rp["recv_bitmap_ending"],
        basis=entry.get("basis", "?"),
        provenance=tuple(entry.get("provenance", ())),
        overlay=overlay,
    )


@cache
def stream_catalog(release: Release | str) -> StreamCatalog:
    """The forward stream's header, section types and ``MIG_CMD_*`` table of a release."""
    rel, _line, entry = _entry(release)
    cmds = entry["mig_cmds"]
    return StreamCatalog(
        release=rel,
        magic=entry["qevm"]["magic"],
        version=entry["qevm"]["version"],
        section_types=MappingProxyType(
            {k: v for k, v in entry["section_types"].items() if isinstance(v, int)}
        ),
        commands=tuple(_spec(m) for m in cmds["messages"]),
        max=cmds["max"],
    )


def _all_rp_names() -> dict[str, int]:
    names: dict[str, int] = {}
    for entry in _raw()["releases"].values():
        for m in entry["rp"]["messages"]:
            names.setdefault(m["name"], m["id"])
    for o in overlays().values():
        for m in o.rp_add:
            names.setdefault(m.name, m.id)
    return dict(sorted(names.items(), key=lambda kv: kv[1]))


def __getattr__(name: str) -> Any:
    # The id enum is generated from the data on first use, so that importing
    # the package never reads the catalog and a broken catalog fails loudly
    # where it is used.
    if name == "MigRpMessageType":
        # Members come from the data, so no checker can list them.
        enum_cls = enum.IntEnum("MigRpMessageType", _all_rp_names())  # type: ignore[misc]
        enum_cls.__doc__ = "Every return-path message id any release or overlay defines."
        globals()["MigRpMessageType"] = enum_cls
        return enum_cls
    raise AttributeError(name)
