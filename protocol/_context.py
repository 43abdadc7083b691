"""What a source knows beyond the return-path bytes, and which verdicts depend on it.

Three things change what a source accepts: its machine type and the ``switchover-ack``
capability (whether and how an 11.1+ source counts SWITCHOVER_ACKs:
:func:`~migcompat.protocol.switchover_acks_expected`), and its RAMBlocks (block names,
page ranges, bitmap sizes). A :class:`SourceContext` holds what is known of them; what
is not known is *assumed*, and :func:`context_alternatives` names the other contexts
under which a verdict could differ, so that callers can say "rejected, assuming …;
accepted with …".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ._catalog import catalog, known_releases
from ._errors import InputError
from ._reader import first_counted_line, legacy_switchover_ack
from ._releases import Release

__all__ = ["SourceContext", "context_alternatives", "parse_capabilities", "parse_ram_blocks"]


def __dir__() -> list[str]:
    return list(__all__)


#: QEMU capability names are lower-case words joined by ``-`` (QAPI MigrationCapability).
_CAPABILITY = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")

_SIZE = re.compile(r"^(\d+)([KMGT]i?B?|B)?$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass(frozen=True, slots=True)
class SourceContext:
    """The source's context as far as it is known (``None``: not known, assumed).

    :param machine: the machine type (``pc-q35-10.0``); unknown: the release's own
        newest one, what ``-machine q35`` gives.
    :param capabilities: migration capabilities that are on (QEMU's names); unknown:
        none, QEMU's default.
    :param ram_blocks: idstr → used length in bytes; unknown: RAM checks not applied.
    :param origin: where each known field came from (``--machine``, a metadata file).
    """

    machine: str | None = None
    capabilities: frozenset[str] | None = None
    ram_blocks: Mapping[str, int] | None = None
    origin: Mapping[str, str] = field(default_factory=dict)

    @property
    def switchover_ack(self) -> bool:
        return "switchover-ack" in (self.capabilities or ())

    def reader_options(self) -> dict[str, Any]:
        """Keyword arguments for :class:`~migcompat.protocol.Reader` (and the other engines)."""
        return {
            "machine": self.machine,
            "switchover_ack_capability": self.switchover_ack,
            "ram_blocks": dict(self.ram_blocks) if self.ram_blocks is not None else None,
        }

    def flags(self) -> str:
        """The context as command-line options."""
        out = []
        if self.machine is not None:
            out.append(f"--machine {self.machine}")
        if self.capabilities:
            out.append(f"--capabilities {','.join(sorted(self.capabilities))}")
        if self.ram_blocks:
            out.append("--ram-blocks " + ",".join(f"{k}:{v}" for k, v in self.ram_blocks.items()))
        return " ".join(out)

    def to_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "capabilities": sorted(self.capabilities) if self.capabilities is not None else None,
            "ram_blocks": dict(self.ram_blocks) if self.ram_blocks is not None else None,
            "from": dict(self.origin),
        }


def parse_capabilities(text: str) -> frozenset[str]:
    """``switchover-ack,postcopy-ram`` → a set of QEMU capability names (``""``: none).

    :raises InputError: a name that is not written as QEMU writes capability names.
    """
    names = [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        if not _CAPABILITY.match(n):
            hint = f" (QEMU writes it {n.lower().replace('_', '-')!r})" if "_" in n else ""
            raise InputError(f"--capabilities: {n!r} is not a QEMU capability name{hint}")
    return frozenset(names)


def parse_ram_blocks(text: str) -> dict[str, int]:
    """``pc.ram:128M,pc.bios:256K`` (or bytes, or ``0x…``) → idstr → used length.

    :raises InputError: a malformed item, a size that is not whole 4 KiB pages, a repeat.
    """
    out: dict[str, int] = {}
    for item in (i for i in text.split(",") if i.strip()):
        name, sep, size_text = item.strip().rpartition(":")
        if not sep or not name:
            raise InputError(f"--ram-blocks: {item!r} is not IDSTR:SIZE (e.g. pc.ram:128M)")
        size_text = size_text.strip()
        if size_text.lower().startswith("0x"):
            try:
                size = int(size_text, 16)
            except ValueError:
                raise InputError(f"--ram-blocks: {size_text!r} is not a size") from None
        else:
            m = _SIZE.match(size_text)
            if m is None:
                raise InputError(
                    f"--ram-blocks: {size_text!r} is not a size (bytes, or 128M, 256K, 4G)"
                )
            size = int(m.group(1)) * _UNITS[(m.group(2) or "")[:1].upper()]
        if size <= 0:
            raise InputError(f"--ram-blocks: {name}: the size must be positive")
        if name in out:
            raise InputError(f"--ram-blocks: {name!r} given twice")
        out[name] = size
    if not out:
        raise InputError("--ram-blocks: no block given (e.g. pc.ram:128M)")
    return out


def _older_machine(release: Release) -> str | None:
    """A machine type older than the first counting line (``pc-q35-11.0``)."""
    first = first_counted_line()
    older = [r for r in known_releases() if first is not None and r < first]
    return f"pc-q35-{older[-1]}" if older else None


@dataclass(frozen=True, slots=True)
class Alternative:
    """Another context a verdict was checked under, and why it is worth a look."""

    context: SourceContext
    #: What changes, in words: "a machine type older than 11.1 with switchover-ack".
    label: str


def context_alternatives(release: Release | str, ctx: SourceContext) -> list[Alternative]:
    """Contexts, differing from ``ctx`` only in what it does not know, under which the
    release's SWITCHOVER_ACK rule differs (empty: the verdict cannot depend on them)."""
    cat = catalog(release)
    if cat.switchover_ack_accounting != "counted":
        return []
    first = first_counted_line()
    out: list[Alternative] = []
    if ctx.machine is None:
        older = _older_machine(cat.release)
        if older is None:
            return []
        caps = [ctx.capabilities] if ctx.capabilities is not None else [
            frozenset({"switchover-ack"}), frozenset()
        ]  # fmt: skip
        for c in caps:
            with_cap = "switchover-ack" in c
            out.append(
                Alternative(
                    replace(ctx, machine=older, capabilities=c),
                    f"a machine type older than {first} (e.g. {older}) "
                    + ("with switchover-ack" if with_cap else "without switchover-ack"),
                )
            )
    elif ctx.capabilities is None and legacy_switchover_ack(cat.release, ctx.machine):
        out.append(
            Alternative(
                replace(ctx, capabilities=frozenset({"switchover-ack"})),
                f"switchover-ack on ({ctx.machine} is older than {first})",
            )
        )
    return out


def assumptions_text(release: Release | str, ctx: SourceContext) -> str:
    """What the verdict of ``release`` assumed about the switchover-ack context."""
    cat = catalog(release)
    first = first_counted_line()
    parts = []
    if ctx.machine is None:
        parts.append(f"a machine type {first} or newer (the {cat.release.line} default)")
    if ctx.capabilities is None and (
        ctx.machine is None or legacy_switchover_ack(cat.release, ctx.machine)
    ):
        parts.append("no switchover-ack")
    parts.append("no device requesting an ACK")
    return ", ".join(parts)
