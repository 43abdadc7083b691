"""The compat hunk the keepalive reviewers asked for, written for a given source tree.

"We'll need a compat property if going with this approach": the entry
``{ "migration", "postcopy-rp-keepalive-period", "0" }`` in the ``hw_compat`` array of the
release before the one the proposal lands in, so older machine types keep the period 0 (no
KEEPALIVE to a source that would reject it). Which array and which entry come from the same
place as every keepalive verdict (:func:`overlay_compat_entries`); the text around it comes
from the tree's own ``hw/core/machine.c``. Pure: text in, patch text out.
"""

from __future__ import annotations

import difflib
import re

from migcompat.protocol import InputError, Release

from ._properties import overlay_compat_entries

__all__ = ["MACHINE_C", "compat_patch"]


def __dir__() -> list[str]:
    return list(__all__)


#: Where QEMU defines the ``hw_compat_X_Y`` arrays.
MACHINE_C = "hw/core/machine.c"


def compat_patch(
    machine_c: str, release: Release | str, proposal: str = "keepalive", path: str = MACHINE_C
) -> str:
    """A one-hunk ``-p1`` patch adding the proposal's compat entry for ``release``'s tree.

    :param machine_c: the text of the tree's ``hw/core/machine.c``.
    :param release: the release the tree is (``10.0``, ``10.0.13``): the entry goes in the
        array of the release line before it (``hw_compat_9_2`` for 10.0).
    :raises InputError: the array is not in the text, or the entry is there already.

    >>> text = "GlobalProperty hw_compat_9_2[] = {\\n    { \\"a\\", \\"b\\", \\"c\\" },\\n};\\n"
    >>> print(compat_patch(text, "10.0"), end="")  # doctest: +NORMALIZE_WHITESPACE
    diff --git a/hw/core/machine.c b/hw/core/machine.c
    --- a/hw/core/machine.c
    +++ b/hw/core/machine.c
    @@ -1,3 +1,4 @@
     GlobalProperty hw_compat_9_2[] = {
         { "a", "b", "c" },
    +    { "migration", "postcopy-rp-keepalive-period", "0" },
     };
    """
    rel = Release(str(release))
    entries = overlay_compat_entries(rel.line.with_overlay(proposal))
    if not entries:
        raise InputError(f"the {proposal} proposal adds no compat entry")
    entry = entries[0]
    lines = machine_c.splitlines(keepends=True)
    decl = re.compile(rf"^\s*(?:const\s+)?GlobalProperty\s+{re.escape(entry.array)}\s*\[\]\s*=")
    start = next((i for i, line in enumerate(lines) if decl.match(line)), None)
    if start is None:
        have = sorted(
            set(re.findall(r"GlobalProperty\s+(hw_compat_\d+_\d+)\s*\[\]", machine_c)),
            key=lambda a: tuple(int(x) for x in a.split("_")[2:]),
        )
        raise InputError(
            f"{path} defines no {entry.array}[] (the array of the release before "
            f"{rel.line}); it has {', '.join(have[-3:]) or 'no hw_compat arrays'}: is it the "
            f"tree of {rel.line}?"
        )
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("};")), None
    )
    if end is None:
        raise InputError(f"{path}: {entry.array}[] has no closing '}};'")
    body = "".join(lines[start:end])
    if re.search(rf'"{re.escape(entry.driver)}"\s*,\s*"{re.escape(entry.property)}"', body):
        raise InputError(f"{path}: {entry.array}[] already has ({entry.driver}, {entry.property})")
    indent = next(
        (m.group(1) for line in lines[start + 1 : end] if (m := re.match(r"^(\s+)\{", line))),
        "    ",
    )
    new_line = f'{indent}{{ "{entry.driver}", "{entry.property}", "{entry.value}" }},\n'
    if end > 0 and not lines[end - 1].endswith("\n"):
        lines[end - 1] += "\n"
    new = [*lines[:end], new_line, *lines[end:]]
    diff = difflib.unified_diff(lines, new, f"a/{path}", f"b/{path}", n=3)
    return f"diff --git a/{path} b/{path}\n" + "".join(diff)
