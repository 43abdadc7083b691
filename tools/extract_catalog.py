#!/usr/bin/env python3
"""Extract QEMU's return-path facts from source trees and build the message catalog.

Two subcommands:

``extract --qemu-src DIR [--label TEXT] [--dl DIR] [-o FILE]``
    Reads one QEMU source tree (only ``VERSION``, ``migration/`` and ``include/`` are
    needed) and writes ``protocol/data/extracted/qemu-<VERSION>.json``: the return-path
    message enum and ``rp_cmd_args[]`` table, ``MIG_RP_MSG_MAX``, the parser's buffer
    size, whether it checks the file error right after the frame header, the exact error
    formats of the source-side parser and its handlers, the ``MIG_CMD_*`` enum and
    ``mig_cmd_args[]`` table, the ``QEVM`` magic/version and the section type bytes.
    Every value carries a ``file:line`` provenance.  ``--dl`` names the directory holding
    the Debian ``.dsc`` and ``.orig`` tarball the tree was unpacked from (default: the
    sibling ``dl-<suffix>`` of a ``qemu-<suffix>`` tree); its sha256 is recorded.

``build [--extracted DIR] [--history FILE] -o FILE``
    Combines every extraction with ``protocol/data/history.json`` (curated historical
    facts, each with provenance) into ``protocol/data/catalog.json`` for every release
    line 2.5 … 11.1.  Lines with a tree use it (``"basis": "extracted"``); the others are
    derived (``"basis": "history"``) from the nearest extracted tree at or after the line
    (the newest tree for lines after it) minus the ids history says came later, plus the
    history renames, length changes and error-format eras.  History is cross-checked
    against every tree first; all disagreements are reported together.  A message's
    ``since`` is the first release line in which its id exists (a rename keeps it).
    ``resume_ack_value``/``recv_bitmap_ending`` are null where their message is absent.

Format normalisation (stated once, applied everywhere): C string literals are
concatenated; ``<inttypes.h>`` macros are replaced by their glibc LP64 expansion
(``PRIx64``/``PRIxPTR`` → ``lx``, ``PRIu64`` → ``lu``, ``PRId64`` → ``ld``,
``PRIx32`` → ``x``, ``PRIu32`` → ``u``, ``PRId32`` → ``d``); other macros such as
``RAM_ADDR_FMT`` are expanded from the tree's own ``#define`` (all definitions must
agree); a ``%s`` whose argument is ``__func__`` is replaced by the enclosing function's
name.  The result is exactly what glibc's printf would be given on x86-64/aarch64.

Rerunning on a newer QEMU
-------------------------
1. Enable source packages: add ``deb-src http://deb.debian.org/debian sid main`` (or the
   suite you want) to ``/etc/apt/sources.list.d/`` and run ``apt-get update``.
2. ``mkdir dl-X && cd dl-X && apt-get source -d qemu=<version>`` (download only), then
   ``mkdir ../qemu-X && tar -xf qemu_*.orig.tar.* -C ../qemu-X --strip-components=1
   --wildcards '*/VERSION' '*/migration/*' '*/include/*' '*/qapi/*'``.
3. ``python tools/extract_catalog.py extract --qemu-src qemu-X --label "Debian <suite>
   qemu=<version>, upstream .orig"`` (writes ``protocol/data/extracted/qemu-<VERSION>.json``).
4. Add any new facts (new ids, their first release, format changes) to
   ``protocol/data/history.json`` with provenance; ``build`` fails, listing every
   disagreement, until history and the trees agree.
5. ``python tools/extract_catalog.py build -o protocol/data/catalog.json`` and run
   ``pytest tests/test_catalog_extract.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "protocol" / "data"
EXTRACTED = DATA / "extracted"
HISTORY = DATA / "history.json"
CATALOG = DATA / "catalog.json"
SCHEMA = 1

#: glibc LP64 expansions of the ``<inttypes.h>`` macros QEMU uses in its formats.
PRI_MACROS: Mapping[str, str] = {
    "PRIx64": "lx",
    "PRIX64": "lX",
    "PRIu64": "lu",
    "PRId64": "ld",
    "PRIi64": "li",
    "PRIxPTR": "lx",
    "PRIuPTR": "lu",
    "PRIx32": "x",
    "PRIX32": "X",
    "PRIu32": "u",
    "PRId32": "d",
    "PRIi32": "i",
}

#: Error keys: (key, function that raises it, text that identifies the call).
#: The identifying text is matched against the resolved format; it is a fact read
#: from QEMU (see the script docstring), not a copy of its code.
ERROR_KEYS: Sequence[tuple[str, str, str]] = (
    ("invalid_type", "source_return_path_thread", "Received invalid message"),
    ("bad_length", "source_return_path_thread", "incorrect length"),
    ("short_read", "source_return_path_thread", "Failed reading data"),
    ("shut_error", "source_return_path_thread", "Sibling indicated error"),
    ("req_pages_id_length", "source_return_path_thread", "Req_Page_id with length"),
    ("recv_bitmap_no_name", "source_return_path_thread", "missing block name"),
    ("recv_bitmap_bad_block", "migrate_handle_rp_recv_bitmap", "invalid block name"),
    ("recv_bitmap_state", "ram_dirty_bitmap_reload", "incorrect state"),
    ("recv_bitmap_size_mismatch", "ram_dirty_bitmap_reload", "bitmap size mismatch"),
    ("recv_bitmap_read_failed", "ram_dirty_bitmap_reload", "read bitmap failed"),
    ("recv_bitmap_end_mark", "ram_dirty_bitmap_reload", "end mark incorrect"),
    ("resume_ack_value", "migrate_handle_rp_resume_ack", "illegal resume_ack value"),
    ("req_pages_misaligned", "migrate_handle_rp_req_pages", "Misaligned page request"),
    ("req_pages_no_previous_block", "ram_save_queue_pages", "no previous block"),
    ("req_pages_no_block", "ram_save_queue_pages", "no block '"),
    ("req_pages_overrun", "ram_save_queue_pages", "request overrun"),
)

ERROR_CALLS = ("error_report", "error_setg")


class ExtractError(Exception):
    """A tree does not look the way the extractor expects."""


class HistoryError(Exception):
    """History and the extracted trees disagree (one entry per disagreement)."""


# ---------------------------------------------------------------------------
# C-lite scanning


@dataclass(frozen=True, slots=True)
class Source:
    """One C file: original text, comment-free text (same offsets) and its path."""

    rel: str
    text: str
    code: str

    def line(self, offset: int) -> int:
        """1-based line number of ``offset``."""
        return self.text.count("\n", 0, offset) + 1

    def where(self, offset: int) -> str:
        """``file:line`` of ``offset``."""
        return f"{self.rel}:{self.line(offset)}"


def strip_comments(text: str) -> str:
    """Blank out C comments, keeping every offset and newline (strings are kept)."""
    out = list(text)
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in "\"'":
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            i = j + 1
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
            for k in range(i, end):
                if out[k] != "\n":
                    out[k] = " "
            i = end
        elif text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
            for k in range(i, end):
                out[k] = " "
            i = end
        else:
            i += 1
    return "".join(out)


def match_close(code: str, start: int) -> int:
    """Offset just past the bracket closing the one at ``start`` (skips literals)."""
    pairs = {"(": ")", "[": "]", "{": "}"}
    stack = [pairs[code[start]]]
    i = start + 1
    while i < len(code):
        c = code[i]
        if c in "\"'":
            j = i + 1
            while j < len(code) and code[j] != c:
                j += 2 if code[j] == "\\" else 1
            i = j + 1
            continue
        if c in pairs:
            stack.append(pairs[c])
        elif c in ")]}":
            if c != stack.pop():
                raise ExtractError(f"unbalanced {c!r} at offset {i}")
            if not stack:
                return i + 1
        i += 1
    raise ExtractError(f"no closing bracket for offset {start}")


def split_top(code: str, sep: str = ",") -> list[tuple[int, str]]:
    """Split ``code`` at top-level ``sep``; returns (offset, piece) pairs."""
    pieces: list[tuple[int, str]] = []
    depth, i, begin = 0, 0, 0
    while i < len(code):
        c = code[i]
        if c in "\"'":
            j = i + 1
            while j < len(code) and code[j] != c:
                j += 2 if code[j] == "\\" else 1
            i = j + 1
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == sep and depth == 0:
            pieces.append((begin, code[begin:i]))
            begin = i + 1
        i += 1
    pieces.append((begin, code[begin:]))
    return pieces


_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'", "r": "\r", "0": "\0"}


def c_string(literal: str) -> str:
    """Decode the body of one C string literal (without quotes)."""
    out, i = [], 0
    while i < len(literal):
        c = literal[i]
        if c == "\\":
            nxt = literal[i + 1]
            if nxt not in _ESCAPES:
                raise ExtractError(f"unsupported escape \\{nxt} in {literal!r}")
            out.append(_ESCAPES[nxt])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


_TOKEN = re.compile(r'"((?:\\.|[^"\\])*)"|([A-Za-z_]\w*)|(\S)')


def parse_int(expr: str) -> int:
    """Evaluate a C integer constant such as ``(0x0123456789abcdefULL)`` or ``-1``."""
    e = expr.strip()
    while e.startswith("(") and e.endswith(")"):
        e = e[1:-1].strip()
    m = re.fullmatch(r"(-?)\s*(0[xX][0-9a-fA-F]+|\d+)[uUlL]*", e)
    if not m:
        raise ExtractError(f"not an integer constant: {expr!r}")
    value = int(m.group(2), 0)
    return -value if m.group(1) else value


_SIZEOF = {"uint8_t": 1, "uint16_t": 2, "uint32_t": 4, "uint64_t": 8}


def parse_len(expr: str) -> int:
    """Evaluate a table ``.len`` value: an integer or ``sizeof(uintN_t)``."""
    m = re.fullmatch(r"\s*sizeof\s*\(\s*(\w+)\s*\)\s*", expr)
    if m:
        if m.group(1) not in _SIZEOF:
            raise ExtractError(f"unknown sizeof type in {expr!r}")
        return _SIZEOF[m.group(1)]
    return parse_int(expr)


# ---------------------------------------------------------------------------
# The tree


class Tree:
    """A QEMU source tree (possibly a partial extract)."""

    SEARCH_DIRS = ("migration", "include")

    def __init__(self, root: Path) -> None:
        self.root = root
        version_file = root / "VERSION"
        if not version_file.is_file():
            raise ExtractError(f"{root}: no VERSION file, not a QEMU tree")
        self.version = version_file.read_text().strip()
        self._cache: dict[str, Source] = {}

    @property
    def line(self) -> str:
        """Release line ``X.Y`` of this tree."""
        major, minor = self.version.split(".")[:2]
        return f"{int(major)}.{int(minor)}"

    def source(self, rel: str) -> Source | None:
        """The file ``rel`` (relative to the tree), or None if absent."""
        if rel not in self._cache:
            path = self.root / rel
            if not path.is_file():
                return None
            text = path.read_text(encoding="utf-8", errors="surrogateescape")
            self._cache[rel] = Source(rel, text, strip_comments(text))
        return self._cache[rel]

    def all_sources(self) -> Iterator[Source]:
        """Every .c/.h file under the search directories, in a stable order."""
        for d in self.SEARCH_DIRS:
            base = self.root / d
            if not base.is_dir():
                continue
            for path in sorted(base.rglob("*")):
                if path.suffix in (".c", ".h") and path.is_file():
                    src = self.source(path.relative_to(self.root).as_posix())
                    if src is not None:
                        yield src

    def locate(self, pattern: re.Pattern[str], candidates: Iterable[str], what: str) -> Source:
        """First candidate file whose code matches; else the single matching file."""
        for rel in candidates:
            src = self.source(rel)
            if src is not None and pattern.search(src.code):
                return src
        found = [s for s in self.all_sources() if pattern.search(s.code)]
        if len(found) != 1:
            names = ", ".join(s.rel for s in found) or "no file"
            raise ExtractError(f"{self.root}: {what}: expected one file, found {names}")
        return found[0]


def find_enum(tree: Tree, name: str, candidates: Sequence[str]) -> list[tuple[str, int, str]]:
    """Members of ``enum name`` as (member, value, file:line)."""
    pat = re.compile(rf"\benum\s+{name}\s*\{{")
    src = tree.locate(pat, candidates, f"enum {name}")
    m = pat.search(src.code)
    assert m is not None
    open_at = m.end() - 1
    body_end = match_close(src.code, open_at) - 1
    members: list[tuple[str, int, str]] = []
    value = -1
    for off, piece in split_top(src.code[open_at + 1 : body_end]):
        if not piece.strip():
            continue
        mm = re.fullmatch(r"\s*([A-Za-z_]\w*)\s*(?:=\s*(.+?))?\s*", piece, re.S)
        if not mm:
            raise ExtractError(f"{src.rel}: cannot parse enum member {piece!r}")
        value = parse_int(mm.group(2)) if mm.group(2) else value + 1
        at = open_at + 1 + off + mm.start(1)
        members.append((mm.group(1), value, src.where(at)))
    return members


def find_table(tree: Tree, name: str, candidates: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Designated initialisers ``[ENUM] = { .len = …, .name = "…" }`` of ``name[]``."""
    pat = re.compile(rf"\b{name}\s*\[\s*\]\s*=\s*\{{")
    src = tree.locate(pat, candidates, f"table {name}[]")
    m = pat.search(src.code)
    assert m is not None
    open_at = m.end() - 1
    body = src.code[open_at + 1 : match_close(src.code, open_at) - 1]
    table: dict[str, dict[str, Any]] = {}
    for em in re.finditer(r"\[\s*(\w+)\s*\]\s*=\s*\{([^{}]*)\}", body):
        fields = em.group(2)
        lm = re.search(r"\.len\s*=\s*([^,]+?)\s*(?:,|$)", fields, re.S)
        nm = re.search(r'\.name\s*=\s*"((?:\\.|[^"\\])*)"', fields)
        if not lm or not nm:
            raise ExtractError(f"{src.rel}: cannot parse {name}[] entry {em.group(0)!r}")
        table[em.group(1)] = {
            "len": parse_len(lm.group(1)),
            "name": c_string(nm.group(1)),
            "where": src.where(open_at + 1 + em.start()),
        }
    if not table:
        raise ExtractError(f"{src.rel}: {name}[] has no entries")
    return table


def find_defines(tree: Tree, name: str, candidates: Sequence[str]) -> list[tuple[str, str]]:
    """All ``#define name VALUE`` as (value text, file:line); candidates first."""
    pat = re.compile(rf"(?m)^[ \t]*#[ \t]*define[ \t]+{name}[ \t]+(.*?)[ \t]*$")
    seen: set[str] = set()
    found: list[tuple[str, str]] = []
    for rel in candidates:
        src = tree.source(rel)
        if src is None:
            continue
        seen.add(rel)
        found += [(m.group(1), src.where(m.start(1))) for m in pat.finditer(src.code)]
    if found:
        return found
    for src in tree.all_sources():
        if src.rel not in seen:
            found += [(m.group(1), src.where(m.start(1))) for m in pat.finditer(src.code)]
    return found


def define_int(tree: Tree, name: str, candidates: Sequence[str]) -> tuple[int, str]:
    """Integer value and provenance of a ``#define`` that must be unique."""
    defs = find_defines(tree, name, candidates)
    values = {parse_int(v) for v, _ in defs}
    if len(values) != 1:
        raise ExtractError(f"{tree.root}: #define {name}: expected one value, got {defs}")
    return values.pop(), defs[0][1]


@dataclass(frozen=True, slots=True)
class Function:
    """A function definition: its source, name and body span (braces included)."""

    src: Source
    name: str
    start: int
    end: int

    @property
    def body(self) -> str:
        """Comment-free body text."""
        return self.src.code[self.start : self.end]


def find_function(tree: Tree, name: str, candidates: Sequence[str]) -> Function | None:
    """The definition of ``name`` (a name followed by a parameter list and ``{``)."""
    pat = re.compile(rf"\b{name}\s*\(")
    files = [tree.source(rel) for rel in candidates]
    for src in [s for s in files if s is not None] + list(tree.all_sources()):
        for m in pat.finditer(src.code):
            close = match_close(src.code, m.end() - 1)
            rest = src.code[close:]
            brace = len(rest) - len(rest.lstrip())
            if rest[brace : brace + 1] == "{":
                start = close + brace
                return Function(src, name, start, match_close(src.code, start))
    return None


# ---------------------------------------------------------------------------
# Formats


class FormatResolver:
    """Turns the argument tokens of an error call into the exact printf format."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self._macro_cache: dict[str, str] = {}

    def macro(self, name: str) -> str:
        """Expansion of a string macro: PRI* from glibc, others from the tree."""
        if name in PRI_MACROS:
            return PRI_MACROS[name]
        if name not in self._macro_cache:
            defs = find_defines(self.tree, name, ())
            values = {self.tokens_to_str(v) for v, _ in defs}
            if len(values) != 1:
                raise ExtractError(f"{self.tree.root}: macro {name}: {defs} do not agree")
            self._macro_cache[name] = values.pop()
        return self._macro_cache[name]

    def tokens_to_str(self, expr: str) -> str:
        """Concatenate string literals and string macros of ``expr``."""
        out: list[str] = []
        for lit, ident, other in _TOKEN.findall(expr):
            if other:
                raise ExtractError(f"unexpected {other!r} in format {expr!r}")
            out.append(self.macro(ident) if ident else c_string(lit))
        return "".join(out)


_CONV = re.compile(r"%[-+ 0#]*\d*(?:\.\d+)?(?:hh|h|ll|l|z|j|t|L)?[diouxXsc%]")


def conversions(fmt: str) -> list[str]:
    """The printf conversions of ``fmt`` (``%%`` excluded), in order."""
    return [c for c in _CONV.findall(fmt) if c != "%%"]


def resolve_call(resolver: FormatResolver, fn: Function, call: str, args: str) -> str:
    """The exact format of one error call, ``__func__`` resolved."""
    pieces = [p for _, p in split_top(args)]
    fmt_index = 1 if call == "error_setg" else 0
    fmt = resolver.tokens_to_str(pieces[fmt_index])
    varargs = [p.strip() for p in pieces[fmt_index + 1 :]]
    out: list[str] = []
    pos, arg = 0, 0
    for m in _CONV.finditer(fmt):
        if m.group(0) == "%%":
            continue
        out.append(fmt[pos : m.start()])
        spec = m.group(0)
        if spec == "%s" and arg < len(varargs) and varargs[arg] == "__func__":
            spec = fn.name
        out.append(spec)
        pos = m.end()
        arg += 1
    out.append(fmt[pos:])
    if arg != len(varargs):
        raise ExtractError(
            f"{fn.src.rel}: {call} in {fn.name}: {arg} conversions, {len(varargs)} arguments"
        )
    return "".join(out)


def error_calls(resolver: FormatResolver, fn: Function) -> list[tuple[str, str, str]]:
    """Every (call, resolved format, file:line) of error_report/error_setg in ``fn``."""
    found = []
    pat = re.compile(r"\b(" + "|".join(ERROR_CALLS) + r")\s*\(")
    for m in pat.finditer(fn.body):
        open_at = fn.start + m.end() - 1
        close = match_close(fn.src.code, open_at)
        args = fn.src.code[open_at + 1 : close - 1]
        fmt = resolve_call(resolver, fn, m.group(1), args)
        found.append((m.group(1), fmt, fn.src.where(fn.start + m.start())))
    return found


# ---------------------------------------------------------------------------
# Extraction


MIGRATION_C = ("migration/migration.c",)
SAVEVM_FILES = (
    "migration/savevm.c",
    "migration/savevm.h",
    "include/sysemu/sysemu.h",
    "include/migration/migration.h",
)
STREAM_HEADERS = ("migration/savevm.h", "include/migration/migration.h", "include/sysemu/sysemu.h")
ERROR_FILES = ("migration/migration.c", "migration/ram.c")


def message_list(
    members: list[tuple[str, int, str]], table: Mapping[str, Mapping[str, Any]], max_name: str
) -> tuple[list[dict[str, Any]], int]:
    """Messages (MAX excluded) with table names/lengths, and the MAX value."""
    messages: list[dict[str, Any]] = []
    max_value = None
    for name, value, where in members:
        if name == max_name:
            max_value = value
            continue
        entry = table.get(name)
        # An id without a table entry is a zero-initialised slot: len 0, name NULL.
        length = entry["len"] if entry else 0
        messages.append(
            {
                "id": value,
                "name": name,
                "table_name": entry["name"] if entry else None,
                "length": None if length == -1 else length,
                "provenance": where,
                "table_provenance": entry["where"] if entry else None,
            }
        )
    if max_value is None:
        raise ExtractError(f"enum has no {max_name}")
    return messages, max_value


def rp_thread_facts(tree: Tree, fn: Function) -> tuple[int, bool]:
    """Buffer size and whether the file error is checked right after the header."""
    body = fn.body
    bm = re.search(r"\buint8_t\s+buf\s*\[\s*(\w+)\s*\]", body)
    if not bm:
        raise ExtractError(f"{tree.root}: no 'uint8_t buf[...]' in {fn.name}")
    size_text = bm.group(1)
    if not size_text.isdigit():
        cm = re.search(rf"\bconst\s+\w+\s+{size_text}\s*=\s*(\w+)\s*;", body)
        if not cm:
            raise ExtractError(f"{tree.root}: cannot resolve buffer size {size_text}")
        size_text = cm.group(1)
    reads = [m.end() for m in re.finditer(r"\bqemu_get_be16\s*\(", body)]
    if len(reads) < 2:
        raise ExtractError(f"{tree.root}: {fn.name} does not read a two-field header")
    after = body[body.index(";", reads[1]) + 1 :]
    checks = re.match(r"\s*if\s*\(\s*qemu_file_get_error\s*\(", after) is not None
    return parse_int(size_text), checks


def switchover_ack_accounting(fn: Function) -> str:
    """How the RP thread takes MIG_RP_MSG_SWITCHOVER_ACK.

    ``none`` (no such case), ``flag`` (8.1+: sets ``switchover_acked``) or
    ``counted`` (the source counts ACKs devices requested and fails on one too many).
    """
    body = fn.body
    case = re.search(
        r"case\s+MIG_RP_MSG_SWITCHOVER_ACK\s*:(.*?)(?:\bcase\b|\bdefault\s*:)", body, re.S
    )
    if case is None:
        return "none"
    if re.search(r"switchover_acked\s*=\s*true", case.group(1)):
        return "flag"
    return "counted"


def extract_errors(tree: Tree) -> tuple[dict[str, dict[str, str]], str]:
    """The error formats of the RP parser and handlers, and the call it uses."""
    resolver = FormatResolver(tree)
    calls: dict[str, list[tuple[str, str, str]]] = {}
    errors: dict[str, dict[str, str]] = {}
    error_call = None
    for key, func, anchor in ERROR_KEYS:
        if func not in calls:
            fn = find_function(tree, func, ERROR_FILES)
            calls[func] = error_calls(resolver, fn) if fn else []
        hits = [c for c in calls[func] if anchor in c[1]]
        if len(hits) > 1:
            raise ExtractError(f"{tree.root}: {key}: {len(hits)} calls match {anchor!r}")
        if hits:
            call, fmt, where = hits[0]
            errors[key] = {"format": fmt, "call": call, "provenance": where}
            if key == "invalid_type":
                error_call = call
    if error_call is None:
        raise ExtractError(f"{tree.root}: no invalid-message error in the RP thread")
    return errors, error_call


def source_info(tree: Tree, dl: Path | None) -> dict[str, str] | None:
    """Debian source package, .orig tarball name and sha256 for the tree."""
    if dl is None:
        suffix = tree.root.name.removeprefix("qemu-")
        dl = tree.root.parent / f"dl-{suffix}"
    if not dl.is_dir():
        return None
    dscs = sorted(dl.glob("*.dsc"))
    origs = sorted(dl.glob("*.orig.tar.*"))
    if len(dscs) != 1 or len(origs) != 1:
        raise ExtractError(f"{dl}: expected one .dsc and one .orig tarball")
    dsc = dscs[0].read_text(encoding="utf-8", errors="replace")
    fields = dict(re.findall(r"(?m)^(Source|Version):\s*(\S+)", dsc))
    digest = hashlib.sha256(origs[0].read_bytes()).hexdigest()
    listed = re.search(rf"(?m)^\s*([0-9a-f]{{64}})\s+\d+\s+{re.escape(origs[0].name)}\s*$", dsc)
    if listed and listed.group(1) != digest:
        raise ExtractError(f"{origs[0]}: sha256 {digest} differs from the .dsc")
    return {
        "debian_source": f"{fields.get('Source', 'qemu')}={fields['Version']}",
        "orig_tarball": origs[0].name,
        "sha256": digest,
    }


def extract(root: Path, label: str | None, dl: Path | None) -> dict[str, Any]:
    """Everything the catalog needs from one tree."""
    tree = Tree(root)
    rp_members = find_enum(tree, "mig_rp_message_type", MIGRATION_C)
    rp_table = find_table(tree, "rp_cmd_args", MIGRATION_C)
    rp_messages, rp_max = message_list(rp_members, rp_table, "MIG_RP_MSG_MAX")
    thread = find_function(tree, "source_return_path_thread", MIGRATION_C)
    if thread is None:
        raise ExtractError(f"{root}: no source_return_path_thread")
    buffer_size, file_check = rp_thread_facts(tree, thread)
    errors, error_call = extract_errors(tree)
    resume = find_defines(tree, "MIGRATION_RESUME_ACK_VALUE", ("migration/migration.h",))
    ending = find_defines(tree, "RAMBLOCK_RECV_BITMAP_ENDING", ("migration/ram.c",))
    cmd_members = find_enum(tree, "qemu_vm_cmd", SAVEVM_FILES)
    cmd_table = find_table(tree, "mig_cmd_args", SAVEVM_FILES)
    cmd_messages, cmd_max = message_list(cmd_members, cmd_table, "MIG_CMD_MAX")
    magic, magic_where = define_int(tree, "QEMU_VM_FILE_MAGIC", STREAM_HEADERS)
    version, version_where = define_int(tree, "QEMU_VM_FILE_VERSION", STREAM_HEADERS)
    return {
        "schema": SCHEMA,
        "qemu_version": tree.version,
        "label": label if label is not None else root.name,
        "source": source_info(tree, dl),
        "rp": {
            "messages": rp_messages,
            "max": rp_max,
            "max_provenance": next(w for n, _, w in rp_members if n == "MIG_RP_MSG_MAX"),
            "buffer_size": buffer_size,
            "file_error_check": file_check,
            "switchover_ack_accounting": switchover_ack_accounting(thread),
            "thread_provenance": thread.src.where(thread.start),
            "error_call": error_call,
            "errors": errors,
            "resume_ack_value": parse_int(resume[0][0]) if resume else None,
            "resume_ack_value_provenance": resume[0][1] if resume else None,
            "recv_bitmap_ending": parse_int(ending[0][0]) if ending else None,
            "recv_bitmap_ending_provenance": ending[0][1] if ending else None,
        },
        "mig_cmds": {
            "messages": cmd_messages,
            "max": cmd_max,
            "max_provenance": next(w for n, _, w in cmd_members if n == "MIG_CMD_MAX"),
        },
        "qevm": {
            "magic": magic,
            "version": version,
            "provenance": f"{magic_where}; {version_where}",
        },
        "section_types": section_types(tree),
    }


def section_types(tree: Tree) -> dict[str, Any]:
    """The contiguous ``#define QEMU_VM_*`` block that starts at QEMU_VM_EOF."""
    defs = find_defines(tree, "QEMU_VM_EOF", STREAM_HEADERS)
    if len(defs) != 1:
        raise ExtractError(f"{tree.root}: QEMU_VM_EOF defined {len(defs)} times")
    rel, line = defs[0][1].rsplit(":", 1)
    src = tree.source(rel)
    assert src is not None
    lines = src.code.splitlines()
    types: dict[str, Any] = {}
    for text in lines[int(line) - 1 :]:
        m = re.match(r"\s*#\s*define\s+(QEMU_VM_\w+)\s+(\S+)\s*$", text)
        if not m:
            break
        types[m.group(1)] = parse_int(m.group(2))
    types["provenance"] = defs[0][1]
    return types


def dump(data: Any) -> str:
    """Stable JSON text (2-space indent, trailing newline)."""
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------------------
# Build


def line_key(line: str) -> tuple[int, int]:
    """Sort key of a release line ``X.Y``."""
    major, minor = line.split(".")
    return int(major), int(minor)


def in_span(line: str, span: Mapping[str, Any]) -> bool:
    """Whether ``line`` lies in ``span`` (``from`` inclusive, optional ``to`` inclusive)."""
    k = line_key(line)
    if k < line_key(span["from"]):
        return False
    return "to" not in span or k <= line_key(span["to"])


def load_extracted(directory: Path) -> dict[str, dict[str, Any]]:
    """Extractions keyed by release line (one tree per line)."""
    result: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("qemu-*.json")):
        data = json.loads(path.read_text())
        major, minor = data["qemu_version"].split(".")[:2]
        line = f"{int(major)}.{int(minor)}"
        if line in result:
            raise HistoryError(f"two extracted trees for {line}: {path.name}")
        data["_path"] = path
        result[line] = data
    return result


class Builder:
    """Cross-checks history with the trees, then builds the catalog."""

    def __init__(self, trees: Mapping[str, Mapping[str, Any]], history: Mapping[str, Any]):
        self.trees = trees
        self.history = history
        self.lines: list[str] = list(history["release_lines"])
        self.problems: list[str] = []
        self.by_version = {t["qemu_version"]: t for t in trees.values()}

    # -- helpers --------------------------------------------------------

    def tree_format(self, version: str, key: str) -> str | None:
        """The format of ``key`` in the extracted tree ``version``."""
        tree = self.by_version.get(version)
        if tree is None:
            self.problems.append(f"history names tree {version}, which is not extracted")
            return None
        entry = tree["rp"]["errors"].get(key)
        if entry is None:
            self.problems.append(f"history takes {key} from tree {version}, which lacks it")
            return None
        return entry["format"]

    def era_format(self, key: str, era: Mapping[str, Any]) -> str | None:
        """The format an era assigns (literal or taken from a named tree)."""
        if "format" in era:
            return era["format"]
        return self.tree_format(era["same_as_tree"], key)

    def era_for(self, eras: Sequence[Mapping[str, Any]], line: str) -> Mapping[str, Any] | None:
        """The era covering ``line`` (None if none)."""
        hits = [e for e in eras if in_span(line, e)]
        return hits[0] if hits else None

    def names_in(self, table: str, line: str) -> dict[str, str]:
        """History's current name → canonical (first) name for ``table`` at ``line``."""
        names: dict[str, str] = {}
        for name, fact in self.history[table]["messages"].items():
            if line_key(fact["since"]) <= line_key(line):
                names[name] = name
        for ren in self.history[table].get("renames", ()):
            if line_key(ren["since"]) <= line_key(line) and ren["from_name"] in names:
                del names[ren["from_name"]]
                names[ren["to_name"]] = ren["from_name"]
        return names

    # -- checks ---------------------------------------------------------

    def check(self) -> None:
        """Record every disagreement between history and the trees."""
        for line in self.lines:
            for eras_name, eras in self.property_eras():
                if sum(in_span(line, e) for e in eras) != 1:
                    self.problems.append(f"{line}: rp.{eras_name} has no single era")
            for key, eras in self.history["rp"]["errors"].items():
                if sum(in_span(line, e) for e in eras) > 1:
                    self.problems.append(f"{line}: error {key} has overlapping eras")
        for line, tree in self.trees.items():
            if line not in self.lines:
                self.problems.append(f"tree {tree['qemu_version']}: {line} not a release line")
            self.check_messages(line, tree, "rp")
            self.check_messages(line, tree, "mig_cmds")
            self.check_properties(line, tree)
            self.check_errors(line, tree)
        stream = {dump(self.stream_facts(t)) for t in self.trees.values()}
        if len(stream) > 1:
            self.problems.append(
                "QEVM magic/version or section types differ between trees, "
                "but history says they never changed"
            )
        for key, eras in self.history["rp"]["errors"].items():
            for era in eras:
                tree_v = era.get("same_as_tree")
                if tree_v and tree_v in self.by_version:
                    tree_line = self.line_of(tree_v)
                    if not in_span(tree_line, era):
                        self.problems.append(
                            f"{key}: era {era['from']}… takes its format "
                            f"from {tree_v}, outside the era"
                        )
        self.check_overlays()

    def line_of(self, version: str) -> str:
        """Release line of an extracted tree version."""
        major, minor = version.split(".")[:2]
        return f"{int(major)}.{int(minor)}"

    def property_eras(self) -> Iterator[tuple[str, Sequence[Mapping[str, Any]]]]:
        """The (name, eras) pairs of scalar RP properties."""
        yield from self.history["rp"]["properties"].items()

    def check_messages(self, line: str, tree: Mapping[str, Any], table: str) -> None:
        """Presence in a tree ⇔ since ≤ tree; renames and length changes agree."""
        version = tree["qemu_version"]
        expected = self.names_in(table, line)
        present = {m["name"]: m for m in tree[table]["messages"]}
        all_names = set(self.history[table]["messages"]) | {
            r["to_name"] for r in self.history[table].get("renames", ())
        }
        for name in present:
            if name not in all_names:
                self.problems.append(f"{version}: {name} is in the tree but not in history")
            elif name not in expected:
                self.problems.append(
                    f"{version}: {name} is in the tree, so its since must be "
                    f"<= {line} (history disagrees)"
                )
        for name in expected:
            if name not in present:
                self.problems.append(
                    f"{version}: {name} is absent from the tree, so its since "
                    f"must be > {line} (history disagrees)"
                )
        for change in self.history[table].get("length_changes", ()):
            m = present.get(change["name"])
            if m is not None and in_span(line, change) and m["length"] != change["length"]:
                self.problems.append(
                    f"{version}: {change['name']} length {m['length']}, "
                    f"history says {change['length']}"
                )

    def check_properties(self, line: str, tree: Mapping[str, Any]) -> None:
        """buffer_size, file_error_check and error_call of the tree match history."""
        for name, eras in self.property_eras():
            era = self.era_for(eras, line)
            if era is not None and tree["rp"][name] != era["value"]:
                self.problems.append(
                    f"{tree['qemu_version']}: rp.{name} is "
                    f"{tree['rp'][name]!r}, history says {era['value']!r}"
                )

    def check_errors(self, line: str, tree: Mapping[str, Any]) -> None:
        """Error keys present and formats equal to what history assigns to the tree."""
        version = tree["qemu_version"]
        have = tree["rp"]["errors"]
        for key, eras in self.history["rp"]["errors"].items():
            era = self.era_for(eras, line)
            if era is None:
                if key in have:
                    self.problems.append(f"{version}: has {key}, history says it is absent")
                continue
            if key not in have:
                self.problems.append(f"{version}: lacks {key}, history says it exists")
                continue
            want = self.era_format(key, era)
            if want is not None and have[key]["format"] != want:
                self.problems.append(
                    f"{version}: {key} is {have[key]['format']!r}, history says {want!r}"
                )
        for key in have:
            if key not in self.history["rp"]["errors"]:
                self.problems.append(f"{version}: {key} has no history")

    def check_overlays(self) -> None:
        """Overlay ids continue the base MAX of the newest release."""
        newest = max(self.trees, key=line_key)
        for name, o in self.history.get("overlays", {}).items():
            if o["base_rp_max"] != self.trees[newest]["rp"]["max"]:
                self.problems.append(
                    f"overlay {name}: base_rp_max {o['base_rp_max']} != "
                    f"MAX {self.trees[newest]['rp']['max']} of {newest}"
                )
            ids = [m["id"] for m in o["rp_add"]]
            if ids != list(range(o["base_rp_max"], o["base_rp_max"] + len(ids))):
                self.problems.append(f"overlay {name}: ids {ids} do not continue MAX")

    # -- build ----------------------------------------------------------

    @staticmethod
    def stream_facts(tree: Mapping[str, Any]) -> dict[str, Any]:
        """QEVM and section types without provenance."""
        qevm = {k: v for k, v in tree["qevm"].items() if k != "provenance"}
        types = {k: v for k, v in tree["section_types"].items() if k != "provenance"}
        return {"qevm": qevm, "section_types": types}

    def base_for(self, line: str) -> str:
        """Tree line a derived release starts from: nearest at/after it, else newest."""
        later = [t for t in self.trees if line_key(t) >= line_key(line)]
        return min(later, key=line_key) if later else max(self.trees, key=line_key)

    def messages(self, line: str, base: Mapping[str, Any], table: str) -> tuple[list, int, list]:
        """A table's messages at ``line`` derived from ``base``; returns facts used."""
        names = self.names_in(table, line)
        canonical = {v: k for k, v in names.items()}
        renames_to = {r["to_name"]: r["from_name"] for r in self.history[table].get("renames", ())}
        facts: list[str] = []
        out = []
        for m in base[table]["messages"]:
            canon = renames_to.get(m["name"], m["name"])
            if canon not in canonical:
                facts.append(f"{table}.{canon} since {self.since(table, canon)}")
                continue
            name = canonical[canon]
            if name != m["name"]:
                facts.append(f"{table} rename {m['name']} -> {name}")
            length = m["length"]
            for change in self.history[table].get("length_changes", ()):
                if change["name"] == canon and in_span(line, change):
                    length = change["length"]
                    span = f"{change['from']}..{change['to']}"
                    facts.append(f"{table}.{canon} length {length} in {span}")
            out.append(
                {
                    "id": m["id"],
                    "name": name,
                    "table_name": m["table_name"],
                    "length": length,
                    "since": self.since(table, canon),
                }
            )
        ids = [m["id"] for m in out]
        if ids != list(range(len(ids))):
            self.problems.append(
                f"{line}: {table} ids {ids} are not contiguous after "
                "removing later messages; history needs explicit ids"
            )
        return out, len(out), facts

    def since(self, table: str, canon: str) -> str:
        """First release of a (canonical) message name."""
        return self.history[table]["messages"][canon]["since"]

    def errors_at(self, line: str) -> dict[str, str]:
        """Error formats history assigns to ``line``."""
        result: dict[str, str] = {}
        for key, eras in self.history["rp"]["errors"].items():
            era = self.era_for(eras, line)
            if era is not None:
                fmt = self.era_format(key, era)
                if fmt is not None:
                    result[key] = fmt
        return result

    def release(self, line: str) -> dict[str, Any]:
        """One release entry of the catalog."""
        extracted = line in self.trees
        base_line = line if extracted else self.base_for(line)
        base = self.trees[base_line]
        rp_msgs, rp_max, rp_facts = self.messages(line, base, "rp")
        cmd_msgs, cmd_max, cmd_facts = self.messages(line, base, "mig_cmds")
        names = {m["name"] for m in rp_msgs}
        constants = {}
        for key, fact in self.history["rp"]["constants"].items():
            constants[key] = base["rp"][key] if fact["with_message"] in names else None
        # named as package resources: the same files in a checkout and once installed
        rel_path = f"migcompat.protocol data/extracted/{base['_path'].name}"
        if extracted:
            errors = {k: v["format"] for k, v in base["rp"]["errors"].items()}
            props = {p: base["rp"][p] for p, _ in self.property_eras()}
            provenance = [
                f"extracted: {rel_path} (QEMU {base['qemu_version']}, {base['label']})",
                "since: migcompat.protocol data/history.json rp/mig_cmds messages",
            ]
        else:
            errors = self.errors_at(line)
            props = {}
            for p, eras in self.property_eras():
                era = self.era_for(eras, line)
                props[p] = era["value"] if era else None
            provenance = [
                f"derived from {rel_path} (QEMU {base['qemu_version']}) and "
                "migcompat.protocol data/history.json",
                *rp_facts,
                *cmd_facts,
                "since: migcompat.protocol data/history.json rp/mig_cmds messages",
                "errors/properties: history.json eras covering " + line,
            ]
        provenance += self.history.get("release_notes", {}).get(line, [])
        entry: dict[str, Any] = {
            "basis": "extracted" if extracted else "history",
            "provenance": provenance,
        }
        if not extracted:
            entry["derived_from"] = {"tree": base["qemu_version"], "facts": rp_facts + cmd_facts}
        entry["rp"] = {
            "messages": rp_msgs,
            "max": rp_max,
            "buffer_size": props["buffer_size"],
            "file_error_check": props["file_error_check"],
            "switchover_ack_accounting": props["switchover_ack_accounting"],
            "error_call": props["error_call"],
            "errors": errors,
            **constants,
        }
        entry["mig_cmds"] = {"messages": cmd_msgs, "max": cmd_max}
        stream = self.stream_facts(base)
        entry["qevm"] = stream["qevm"]
        entry["section_types"] = stream["section_types"]
        if extracted and rp_max != base["rp"]["max"]:
            self.problems.append(f"{line}: rp MAX {base['rp']['max']} != {rp_max} ids")
        if extracted and cmd_max != base["mig_cmds"]["max"]:
            self.problems.append(f"{line}: MIG_CMD_MAX {base['mig_cmds']['max']} != {cmd_max}")
        return entry

    def build(self) -> dict[str, Any]:
        """The whole catalog; raises HistoryError listing every problem."""
        self.check()
        releases = {line: self.release(line) for line in self.lines}
        if self.problems:
            raise HistoryError(
                "history and the extracted trees disagree:\n  - " + "\n  - ".join(self.problems)
            )
        sources = {}
        for line in sorted(self.trees, key=line_key):
            t = self.trees[line]
            src = t["source"] or {}
            sources[line] = {
                "qemu_version": t["qemu_version"],
                "extracted": t["_path"].relative_to(REPO).as_posix(),
                "debian_source": src.get("debian_source"),
                "orig_tarball": src.get("orig_tarball"),
                "sha256": src.get("sha256"),
            }
        overlays = {}
        for name, o in self.history.get("overlays", {}).items():
            overlays[name] = {k: v for k, v in o.items() if not k.startswith("_")}
        return {
            "schema": SCHEMA,
            "generated_by": "tools/extract_catalog.py build",
            "sources": sources,
            "releases": releases,
            "overlays": overlays,
        }


def build(extracted: Path, history_path: Path) -> dict[str, Any]:
    """Load inputs and build the catalog."""
    history = json.loads(history_path.read_text())
    if history.get("schema") != SCHEMA:
        raise HistoryError(f"{history_path}: schema is not {SCHEMA}")
    trees = load_extracted(extracted)
    if not trees:
        raise HistoryError(f"{extracted}: no extracted trees")
    return Builder(trees, history).build()


# ---------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("extract", help="extract one QEMU source tree")
    ex.add_argument("--qemu-src", type=Path, required=True)
    ex.add_argument("--label")
    ex.add_argument("--dl", type=Path, help="directory with the .dsc and .orig tarball")
    ex.add_argument("-o", "--output", type=Path)
    bu = sub.add_parser("build", help="build protocol/data/catalog.json")
    bu.add_argument("--extracted", type=Path, default=EXTRACTED)
    bu.add_argument("--history", type=Path, default=HISTORY)
    bu.add_argument("-o", "--output", type=Path, default=CATALOG)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "extract":
            data = extract(args.qemu_src, args.label, args.dl)
            out = args.output or EXTRACTED / f"qemu-{data['qemu_version']}.json"
        else:
            data = build(args.extracted, args.history)
            out = args.output
    except (ExtractError, HistoryError) as exc:
        print(f"extract_catalog: {exc}", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dump(data))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
