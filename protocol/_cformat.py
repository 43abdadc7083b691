"""C ``printf`` formatting, enough to reproduce QEMU's error texts byte for byte.

The catalog keeps QEMU's formats as extracted (``0x%04x``, ``%zu``, ``%"PRIx64"``
normalised to ``%lx``); this turns one plus its arguments into the text QEMU
prints. Unsigned conversions wrap negative values the way C does for the
argument's width (``(size_t)-1`` prints ``18446744073709551615``).
"""

from __future__ import annotations

import re

__all__ = ["c_conversions", "c_format"]


def __dir__() -> list[str]:
    return list(__all__)


_SPEC = re.compile(
    r"%(?P<flags>[-+ 0#]*)(?P<width>\d*)(?:\.(?P<prec>\d+))?"
    r"(?P<length>hh|h|ll|l|z|j|t|L)?(?P<conv>[diouxXsc%])"
)
_WIDTH_BITS = {None: 32, "hh": 8, "h": 16, "l": 64, "ll": 64, "z": 64, "j": 64, "t": 64, "L": 64}


def c_format(fmt: str, *args: object) -> str:
    """Format ``args`` with the C format ``fmt``.

    >>> c_format("Received invalid message 0x%04x length 0x%04x", 8, 0)
    'Received invalid message 0x0008 length 0x0000'
    >>> c_format("length %d expecting %zu", 5, -1)
    'length 5 expecting 18446744073709551615'
    """
    values = list(args)
    out: list[str] = []
    pos = 0
    for m in _SPEC.finditer(fmt):
        out.append(fmt[pos : m.start()])
        pos = m.end()
        conv = m.group("conv")
        if conv == "%":
            out.append("%")
            continue
        if not values:
            raise ValueError(f"too few arguments for {fmt!r}")
        value = values.pop(0)
        flags, width, prec = m.group("flags"), m.group("width"), m.group("prec")
        pyspec = "%" + flags + width + (f".{prec}" if prec is not None else "")
        if conv in "uxXo":
            bits = _WIDTH_BITS[m.group("length")]
            assert isinstance(value, int)
            value &= (1 << bits) - 1
            out.append((pyspec + ("d" if conv == "u" else conv)) % value)
        elif conv in "di":
            assert isinstance(value, int)
            bits = _WIDTH_BITS[m.group("length")]
            value &= (1 << bits) - 1
            if value >= 1 << (bits - 1):
                value -= 1 << bits
            out.append((pyspec + "d") % value)
        elif conv == "c":
            out.append((pyspec + "c") % value)
        else:
            out.append((pyspec + "s") % value)
    out.append(fmt[pos:])
    if values:
        raise ValueError(f"too many arguments for {fmt!r}")
    return "".join(out)


def c_conversions(fmt: str) -> int:
    """How many arguments ``fmt`` consumes."""
    return sum(1 for m in _SPEC.finditer(fmt) if m.group("conv") != "%")
