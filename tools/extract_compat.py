#!/usr/bin/env python3
"""Extract machine types, compat properties and migration-object defaults from a QEMU tree.

Usage::

    python tools/extract_compat.py --qemu-src /work/qemu-src/qemu-10.2.2 \\
        -o compat/data/compat-10.2.2.json

Strategy: rather than pattern-matching each release's macro style, this script runs a
small C preprocessor (object- and function-like macros, ``#``, ``##``, ``__VA_ARGS__``,
``#if``/``#ifdef`` with a fixed configuration) over the board files, expands every
top-level ``DEFINE_*MACHINE*`` invocation, and then *interprets* the generated
``class_init`` and the ``*_options`` functions it calls, statement by statement, the way
QEMU runs them: calls recurse, ``compat_props_add`` appends an array, assignments to
``->alias``/``->is_default``/``->deprecation_reason`` overwrite, ``if (cond)`` is evaluated
with ``QEMU_VERSION_*`` taken from the tree's VERSION file. So the 5.2-style
``DEFINE_Q35_MACHINE(v4_0, "pc-q35-4.0", NULL, opts)`` and the 10.x-style
``DEFINE_Q35_MACHINE(10, 1)`` (with its age-based ``MACHINE_VER_DELETION``) are read by the
same code, and a newer QEMU needs no change here as long as it keeps C syntax.

Only facts are taken from QEMU (names, values, line numbers); no QEMU code is copied.
The configuration used to resolve ``#ifdef`` is an x86_64/aarch64/ppc64/s390x *Linux* build
(``TARGET_X86_64``, ``CONFIG_LINUX``...), recorded in the output.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SCHEMA", "extract", "extract_behaviour", "main"]

SCHEMA = 1

#: Board files read, one per machine family (family key -> path in the tree).
FAMILY_FILES: dict[str, str] = {
    "pc-q35": "hw/i386/pc_q35.c",
    "pc-i440fx": "hw/i386/pc_piix.c",
    "virt": "hw/arm/virt.c",
    "pseries": "hw/ppc/spapr.c",
    "s390-ccw-virtio": "hw/s390x/s390-virtio-ccw.c",
}

#: Where the shared compat arrays live (array-name prefix -> path).
COMPAT_FILES: dict[str, str] = {"hw_compat": "hw/core/machine.c", "pc_compat": "hw/i386/pc.c"}

#: ``#ifdef`` names taken as defined: a 64-bit Linux host building every target we read.
CONFIG_DEFINES = frozenset(
    {
        "TARGET_X86_64",
        "TARGET_AARCH64",
        "TARGET_PPC64",
        "CONFIG_LINUX",
        "CONFIG_POSIX",
        "__linux__",
        "CONFIG_KVM",
        "CONFIG_TCG",
    }
)


def __dir__() -> list[str]:
    return list(__all__)


# ---------------------------------------------------------------------------------------
# Section: tokens
# ---------------------------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>[ \t\r\f\v]+)
  | (?P<nl>\n)
  | (?P<str>L?"(?:\\.|[^"\\\n])*")
  | (?P<chr>'(?:\\.|[^'\\\n])+')
  | (?P<num>\.?[0-9](?:[eEpP][+-]|[0-9A-Za-z_.])*)
  | (?P<id>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>\.\.\.|\#\#|->|<<=|>>=|&&|\|\||==|!=|>=|<=|<<|>>|\+\+|--|[-+*/%&|^]=|[^\s])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class Tok:
    """A C token; ``hide`` is the set of macros already expanded into it (no recursion)."""

    kind: str
    text: str
    line: int
    hide: frozenset[str] = frozenset()


def tokenize(text: str, line: int = 1) -> list[Tok]:
    """Tokens of ``text`` (no whitespace or newlines), each with its line number."""
    out: list[Tok] = []
    for m in _TOKEN_RE.finditer(text):
        kind = m.lastgroup or "punct"
        if kind == "nl":
            line += 1
            continue
        if kind == "ws":
            continue
        out.append(Tok(kind, m.group(), line))
    return out


def strip_comments(text: str) -> str:
    """Blank out comments but keep every newline, so line numbers stay true."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"' or c == "'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(text[i : j + 1])
            i = j + 1
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("".join(ch if ch == "\n" else " " for ch in text[i:j]))
            i = j
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def c_string_value(tok: str) -> str:
    """The value of a C string literal token (only the escapes QEMU's tables use)."""
    body = tok[1:-1] if not tok.startswith("L") else tok[2:-1]
    return bytes(body, "utf-8").decode("unicode_escape")


# ---------------------------------------------------------------------------------------
# Section: preprocessor
# ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class Macro:
    """One ``#define``: ``params`` is None for an object-like macro."""

    name: str
    params: list[str] | None
    variadic: str | None
    body: list[Tok]
    file: str
    line: int


@dataclass(slots=True)
class SourceFile:
    """A preprocessed file: active logical lines and the macros it defines."""

    path: str
    lines: list[tuple[int, str]] = field(default_factory=list)  # (first physical line, text)
    defines: list[tuple[str, str, int]] = field(default_factory=list)  # (name, rest, line)


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Join backslash continuations; yield (first line number, joined text)."""
    buf: list[str] = []
    start = 1
    for no, raw in enumerate(text.split("\n"), start=1):
        if not buf:
            start = no
        if raw.endswith("\\"):
            buf.append(raw[:-1])
            continue
        buf.append(raw)
        yield start, " ".join(buf) if len(buf) > 1 else buf[0]
        buf = []
    if buf:
        yield start, " ".join(buf)


def _eval_pp_condition(expr: str, macros: dict[str, Macro]) -> bool:
    """Evaluate an ``#if`` expression; unknown identifiers are 0, as in C."""
    expr = re.sub(
        r"defined\s*\(\s*(\w+)\s*\)|defined\s+(\w+)",
        lambda m: (
            "1"
            if (m.group(1) or m.group(2)) in macros or (m.group(1) or m.group(2)) in CONFIG_DEFINES
            else "0"
        ),
        expr,
    )
    toks = tokenize(expr)
    try:
        return bool(eval_c_expr(toks, macros, unknown_is_zero=True))
    except (ValueError, SyntaxError, ZeroDivisionError, TypeError):
        return False


def preprocess(path: Path, rel: str, macros: dict[str, Macro]) -> SourceFile:
    """Drop inactive ``#if`` branches, record ``#define``s into ``macros`` (first wins)."""
    text = strip_comments(path.read_text(encoding="utf-8", errors="replace"))
    sf = SourceFile(rel)
    stack: list[tuple[bool, bool]] = []  # (this branch active, some branch taken)

    def active() -> bool:
        return all(a for a, _ in stack)

    for line, logical in _logical_lines(text):
        s = logical.strip()
        m = re.match(r"#\s*(\w+)\s*(.*)$", s)
        if not m:
            if active():
                sf.lines.append((line, logical))
            continue
        directive, rest = m.group(1), m.group(2).strip()
        if directive in ("ifdef", "ifndef"):
            name = rest.split()[0] if rest else ""
            known = name in macros or name in CONFIG_DEFINES
            # A header guard (#ifndef FOO_H) must not hide the header from us.
            cond = known if directive == "ifdef" else (not known or name.endswith("_H"))
            stack.append((cond, cond))
        elif directive == "if":
            cond = active() and _eval_pp_condition(rest, macros)
            stack.append((cond, cond))
        elif directive == "elif":
            if stack:
                _, taken = stack[-1]
                cond = (not taken) and _eval_pp_condition(rest, macros)
                stack[-1] = (cond, taken or cond)
        elif directive == "else":
            if stack:
                _, taken = stack[-1]
                stack[-1] = (not taken, True)
        elif directive == "endif":
            if stack:
                stack.pop()
        elif directive == "define" and active():
            dm = re.match(r"(\w+)(\([^)]*\))?\s*(.*)$", rest)
            if dm:
                name, params, body = dm.group(1), dm.group(2), dm.group(3)
                sf.defines.append((name, rest, line))
                if name not in macros:
                    macros[name] = _make_macro(name, params, body, rel, line)
        elif directive == "undef":
            pass  # keep first definition: we want the value the tables were compiled with
    return sf


def _make_macro(name: str, params: str | None, body: str, file: str, line: int) -> Macro:
    plist: list[str] | None = None
    variadic: str | None = None
    if params is not None:
        plist = [p.strip() for p in params[1:-1].split(",") if p.strip()]
        if plist and plist[-1].endswith("..."):
            last = plist.pop()
            variadic = last[:-3].strip() or "__VA_ARGS__"
    return Macro(name, plist, variadic, tokenize(body, line), file, line)


def _split_args(toks: list[Tok], i: int) -> tuple[list[list[Tok]], int]:
    """Arguments of a call whose ``(`` is at ``toks[i]``; returns (args, index after ``)``)."""
    depth = 0
    args: list[list[Tok]] = [[]]
    j = i
    while j < len(toks):
        t = toks[j]
        if t.text == "(":
            depth += 1
            if depth > 1:
                args[-1].append(t)
        elif t.text == ")":
            depth -= 1
            if depth == 0:
                return (args if args != [[]] else []), j + 1
            args[-1].append(t)
        elif t.text == "," and depth == 1:
            args.append([])
        else:
            args[-1].append(t)
        j += 1
    raise ValueError("unbalanced parentheses in macro call")


def _stringize(toks: list[Tok], line: int) -> Tok:
    text = " ".join(t.text for t in toks)
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    return Tok("str", f'"{text}"', line)


def expand(toks: list[Tok], macros: dict[str, Macro], depth: int = 0) -> list[Tok]:
    """Fully macro-expand a token list (rescanning results together with what follows)."""
    if depth > 200:
        raise ValueError("macro expansion too deep")
    out: list[Tok] = []
    work = list(toks)
    i = 0
    while i < len(work):
        t = work[i]
        mac = macros.get(t.text) if t.kind == "id" else None
        if mac is None or t.text in t.hide:
            out.append(t)
            i += 1
            continue
        hide = t.hide | {mac.name}
        if mac.params is None:
            body = [Tok(b.kind, b.text, t.line, hide) for b in _paste(mac.body)]
            work[i : i + 1] = body
            continue
        if i + 1 >= len(work) or work[i + 1].text != "(":
            out.append(t)
            i += 1
            continue
        args, end = _split_args(work, i + 1)
        body = _substitute(mac, args, macros, t.line, depth)
        work[i:end] = [Tok(b.kind, b.text, t.line, b.hide | hide) for b in body]
    return out


def _substitute(
    mac: Macro, args: list[list[Tok]], macros: dict[str, Macro], line: int, depth: int
) -> list[Tok]:
    names = list(mac.params or [])
    bind: dict[str, list[Tok]] = {}
    for k, name in enumerate(names):
        bind[name] = args[k] if k < len(args) else []
    if mac.variadic is not None:
        rest = args[len(names) :]
        va: list[Tok] = []
        for k, a in enumerate(rest):
            if k:
                va.append(Tok("punct", ",", line))
            va.extend(a)
        bind[mac.variadic] = va
    body = mac.body
    res: list[Tok] = []
    k = 0
    while k < len(body):
        b = body[k]
        if b.text == "#" and k + 1 < len(body) and body[k + 1].text in bind:
            res.append(_stringize(bind[body[k + 1].text], line))
            k += 2
            continue
        if b.kind == "id" and b.text in bind:
            pasted = (k > 0 and body[k - 1].text == "##") or (
                k + 1 < len(body) and body[k + 1].text == "##"
            )
            if pasted:
                res.extend(bind[b.text])
            else:
                res.extend(expand(bind[b.text], macros, depth + 1))
            k += 1
            continue
        res.append(b)
        k += 1
    return _paste(res)


def _paste(toks: list[Tok]) -> list[Tok]:
    """Apply ``##`` token pasting."""
    if not any(t.text == "##" for t in toks):
        return list(toks)
    out: list[Tok] = []
    k = 0
    while k < len(toks):
        t = toks[k]
        if t.text == "##" and out and k + 1 < len(toks):
            left = out.pop()
            new = tokenize(left.text + toks[k + 1].text, left.line)
            out.extend(Tok(n.kind, n.text, left.line, left.hide) for n in new)
            k += 2
            continue
        out.append(t)
        k += 1
    return out


def eval_c_expr(
    toks: list[Tok], macros: dict[str, Macro] | None = None, *, unknown_is_zero: bool = False
) -> Any:
    """Evaluate a constant C expression (ints, bools, strings, && || ! ?:) with Python."""
    if macros is not None:
        toks = expand(toks, macros)
    parts: list[str] = []
    for t in toks:
        if t.kind == "str":
            parts.append(repr(c_string_value(t.text)))
        elif t.kind == "num":
            txt = t.text.rstrip("uUlL")
            if re.fullmatch(r"0[0-7]+", txt):
                txt = "0o" + txt[1:]
            parts.append(txt)
        elif t.kind == "id":
            if t.text in ("true", "false"):
                parts.append("True" if t.text == "true" else "False")
            elif t.text == "NULL":
                parts.append("None")
            elif unknown_is_zero:
                parts.append("0")
            else:
                raise ValueError(f"unresolved identifier {t.text}")
        elif t.text == "&&":
            parts.append(" and ")
        elif t.text == "||":
            parts.append(" or ")
        elif t.text == "!":
            parts.append(" not ")
        elif t.text == "/":
            parts.append("//")
        elif t.text in ("?", ":"):
            raise ValueError("conditional operator not supported")
        else:
            parts.append(t.text)
    src = " ".join(parts)  # adjacent string literals concatenate in Python as in C
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        return eval(src, {"__builtins__": {}}, {})


def string_value(toks: list[Tok], macros: dict[str, Macro]) -> str | None:
    """Value of a string-valued C expression: concatenated literals, or NULL -> None."""
    toks = expand(toks, macros)
    toks = [t for t in toks if t.text not in ("(", ")")]
    if len(toks) == 1 and toks[0].text == "NULL":
        return None
    if not toks or any(t.kind != "str" for t in toks):
        raise ValueError("not a string expression: " + " ".join(t.text for t in toks))
    return "".join(c_string_value(t.text) for t in toks)


# ---------------------------------------------------------------------------------------
# Section: top-level structure (functions, arrays, machine definitions)
# ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class Function:
    """A function definition: parameter names and body tokens (between the braces)."""

    name: str
    params: list[str]
    body: list[Tok]
    file: str
    line: int


def _match_brace(toks: list[Tok], i: int, open_: str = "{", close: str = "}") -> int:
    depth = 0
    for j in range(i, len(toks)):
        if toks[j].text == open_:
            depth += 1
        elif toks[j].text == close:
            depth -= 1
            if depth == 0:
                return j
    raise ValueError(f"unbalanced {open_}{close} from line {toks[i].line}")


def find_functions(toks: list[Tok], file: str) -> dict[str, Function]:
    """Function definitions at brace depth 0: ``name ( params ) {``."""
    funcs: dict[str, Function] = {}
    i = 0
    while i < len(toks):
        t = toks[i]
        if t.text == "{":
            prev = toks[i - 1] if i else None
            if prev is not None and prev.text == ")":
                # walk back to the matching "(" and the name before it
                depth = 0
                j = i - 1
                while j >= 0:
                    if toks[j].text == ")":
                        depth += 1
                    elif toks[j].text == "(":
                        depth -= 1
                        if depth == 0:
                            break
                    j -= 1
                if j > 0 and toks[j - 1].kind == "id":
                    name_tok = toks[j - 1]
                    params = _param_names(toks[j + 1 : i - 1])
                    end = _match_brace(toks, i)
                    funcs[name_tok.text] = Function(
                        name_tok.text, params, toks[i + 1 : end], file, name_tok.line
                    )
                    i = end + 1
                    continue
            i = _match_brace(toks, i) + 1
            continue
        i += 1
    return funcs


def _param_names(toks: list[Tok]) -> list[str]:
    names: list[str] = []
    cur: list[Tok] = []
    for t in [*toks, Tok("punct", ",", 0)]:
        if t.text == ",":
            ids = [c.text for c in cur if c.kind == "id" and c.text not in ("const", "void")]
            if ids and len(ids) > 1:
                names.append(ids[-1])
            cur = []
        else:
            cur.append(t)
    return names


_ARRAY_RE = re.compile(r"(?:static\s+)?(?:const\s+)?GlobalProperty\s+(\w+)\s*\[\s*\]\s*=")


def find_global_property_arrays(sf: SourceFile, macros: dict[str, Macro]) -> dict[str, dict]:
    """Every ``GlobalProperty NAME[] = { {driver, prop, value[, .optional = true]}, ... }``.

    File-scope arrays keep their name; a ``static GlobalProperty compat[]`` declared inside
    a function (s390x declares one per version) is keyed ``compat@<function>``.
    """
    toks = _tokens_of_lines(sf.lines)
    arrays = _arrays_in(toks, macros, sf.path, scope=None, top_level_only=True)
    for fn in find_functions(toks, sf.path).values():
        arrays.update(_arrays_in(fn.body, macros, sf.path, scope=fn.name))
    return arrays


def _arrays_in(
    toks: list[Tok],
    macros: dict[str, Macro],
    path: str,
    scope: str | None,
    top_level_only: bool = False,
) -> dict[str, dict]:
    arrays: dict[str, dict] = {}
    depth = 0
    i = 0
    while i < len(toks):
        t = toks[i]
        if t.text == "{":
            depth += 1
        elif t.text == "}":
            depth -= 1
        elif (
            t.text == "GlobalProperty"
            and i + 4 < len(toks)
            and toks[i + 1].kind == "id"
            and toks[i + 2].text == "["
            and toks[i + 3].text == "]"
            and toks[i + 4].text == "="
            and not (top_level_only and depth)
        ):
            name_tok = toks[i + 1]
            start = i + 5
            end = _match_brace(toks, start)
            entries = _parse_entries(toks[start + 1 : end], macros, path)
            key = name_tok.text if scope is None else f"{name_tok.text}@{scope}"
            arrays[key] = {"file": path, "line": name_tok.line, "entries": entries}
            i = end + 1
            continue
        i += 1
    return arrays


def _tokens_of_lines(lines: Iterable[tuple[int, str]]) -> list[Tok]:
    toks: list[Tok] = []
    for no, txt in lines:
        toks.extend(tokenize(txt, no))
    return toks


def _parse_entries(toks: list[Tok], macros: dict[str, Macro], file: str) -> list[dict]:
    entries: list[dict] = []
    i = 0
    while i < len(toks):
        if toks[i].text != "{":
            i += 1
            continue
        end = _match_brace(toks, i)
        inner = toks[i + 1 : end]
        fields: list[list[Tok]] = [[]]
        depth = 0
        for t in inner:
            if t.text in "([{":
                depth += 1
            elif t.text in ")]}":
                depth -= 1
            if t.text == "," and depth == 0:
                fields.append([])
            else:
                fields[-1].append(t)
        fields = [f for f in fields if f]
        positional = [f for f in fields if not (f[0].text == "." and len(f) > 2)]
        named = {f[1].text: f[3:] for f in fields if f[0].text == "." and len(f) > 2}
        names = ("driver", "property", "value")
        got: dict[str, Any] = {}
        for key, ftoks in zip(names, positional, strict=False):
            got[key] = ftoks
        for key in names:
            if key in named:
                got[key] = named[key]
        entry: dict[str, Any] = {"line": toks[i].line}
        for key in names:
            ftoks = got.get(key, [])
            entry[key] = string_value(ftoks, macros)
            raw = " ".join(t.text for t in ftoks)
            if any(t.kind == "id" for t in ftoks):
                entry[f"{key}_expr"] = raw
        opt = named.get("optional")
        entry["optional"] = bool(eval_c_expr(opt, macros)) if opt else False
        entries.append(entry)
        i = end + 1
    return entries


# ---------------------------------------------------------------------------------------
# Section: interpreting machine class_init / options functions
# ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class MachineState:
    """What running a machine's class_init leaves in the MachineClass fields we track."""

    compat: list[dict] = field(default_factory=list)  # {"array", "file", "line"}
    alias: str | None = None
    is_default: bool = False
    deprecation_reason: str | None = None
    chain: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _statements(toks: list[Tok]) -> Iterator[tuple[str, list[Tok], list[Tok], list[Tok]]]:
    """Split a body into ("if", cond, then, else) / ("do", body, [], []) / ("stmt", toks...)."""
    i = 0
    n = len(toks)
    while i < n:
        t = toks[i]
        if t.text == ";":
            i += 1
            continue
        if t.text == "{":
            end = _match_brace(toks, i)
            yield ("block", toks[i + 1 : end], [], [])
            i = end + 1
            continue
        if t.text == "if" and i + 1 < n and toks[i + 1].text == "(":
            cend = _match_brace(toks, i + 1, "(", ")")
            cond = toks[i + 2 : cend]
            then, j = _one_statement(toks, cend + 1)
            els: list[Tok] = []
            if j < n and toks[j].text == "else":
                els, j = _one_statement(toks, j + 1)
            yield ("if", cond, then, els)
            i = j
            continue
        if t.text == "do" and i + 1 < n and toks[i + 1].text == "{":
            end = _match_brace(toks, i + 1)
            body = toks[i + 2 : end]
            j = end + 1
            if j < n and toks[j].text == "while":
                j = _match_brace(toks, j + 1, "(", ")") + 1
            yield ("block", body, [], [])
            i = j
            continue
        j = i
        depth = 0
        while j < n and not (toks[j].text == ";" and depth == 0):
            if toks[j].text in "({[":
                depth += 1
            elif toks[j].text in ")}]":
                depth -= 1
            j += 1
        yield ("stmt", toks[i:j], [], [])
        i = j + 1


def _one_statement(toks: list[Tok], i: int) -> tuple[list[Tok], int]:
    if i < len(toks) and toks[i].text == "{":
        end = _match_brace(toks, i)
        return toks[i + 1 : end], end + 1
    j = i
    depth = 0
    while j < len(toks) and not (toks[j].text == ";" and depth == 0):
        if toks[j].text in "({[":
            depth += 1
        elif toks[j].text in ")}]":
            depth -= 1
        j += 1
    return toks[i : j + 1], j + 1


class Interpreter:
    """Runs class_init/options bodies over the fields that matter for compat."""

    def __init__(
        self, funcs: dict[str, Function], macros: dict[str, Macro], local_arrays: Iterable[str] = ()
    ) -> None:
        self.funcs = funcs
        self.macros = macros
        self.local_arrays = frozenset(local_arrays)
        self.scope: list[str | None] = [None]

    def run(self, body: list[Tok], st: MachineState, depth: int = 0) -> bool:
        """Interpret ``body``; returns False when a ``return`` was executed."""
        if depth > 60:
            raise ValueError("options call chain too deep")
        body = expand(body, self.macros)
        for kind, a, b, c in _statements(body):
            if kind == "block":
                if not self.run(a, st, depth + 1):
                    return False
            elif kind == "if":
                try:
                    cond = bool(eval_c_expr(a))
                except (ValueError, SyntaxError, TypeError, NameError):
                    st.notes.append("unevaluated if (" + " ".join(t.text for t in a) + ")")
                    continue
                if not self.run(b if cond else c, st, depth + 1):
                    return False
            elif not self._stmt(a, st, depth):
                return False
        return True

    def _stmt(self, s: list[Tok], st: MachineState, depth: int) -> bool:
        if not s:
            return True
        if s[0].text == "return":
            return False
        texts = [t.text for t in s]
        if texts[0] == "compat_props_add" and len(s) > 4:
            args, _ = _split_args(s, 1)
            name = args[1][0].text if len(args) > 1 and args[1] else "?"
            local = f"{name}@{self.scope[-1]}"
            st.compat.append(
                {"array": local if local in self.local_arrays else name, "line": s[0].line}
            )
            return True
        if len(s) >= 4 and s[1].text == "->" and s[3].text == "=":
            fld, rhs = s[2].text, s[4:]
            if fld == "alias":
                st.alias = string_value(rhs, self.macros)
            elif fld == "is_default":
                st.is_default = bool(eval_c_expr(rhs))
            elif fld == "deprecation_reason":
                st.deprecation_reason = string_value(rhs, self.macros)
            return True
        if s[0].kind == "id" and len(s) > 1 and s[1].text == "(" and s[0].text in self.funcs:
            fn = self.funcs[s[0].text]
            st.chain.append(fn.name)
            self.scope.append(fn.name)
            try:
                self.run(fn.body, st, depth + 1)
            finally:
                self.scope.pop()
        return True


# ---------------------------------------------------------------------------------------
# Section: machine families
# ---------------------------------------------------------------------------------------

_VERSION_IN_NAME = re.compile(r"^(?P<prefix>.+?)-(?P<ver>\d+\.\d+(?:\.\d+)?)$")


def extract_family(
    root: Path, family: str, rel: str, macros: dict[str, Macro], machine_suffix: str
) -> tuple[dict[str, dict], dict[str, dict]]:
    """Machine types a board file registers (name -> facts) and its local compat arrays."""
    local = dict(macros)
    sf = preprocess(root / rel, rel, local)
    toks = _tokens_of_lines(sf.lines)
    funcs = find_functions(toks, rel)
    arrays = find_global_property_arrays(sf, local)
    machines: dict[str, dict] = {}
    # top-level DEFINE_*MACHINE* invocations, outside any function or initializer
    i = 0
    depth = 0
    while i < len(toks):
        t = toks[i]
        if t.text == "{":
            depth += 1
        elif t.text == "}":
            depth -= 1
        elif (
            depth == 0
            and t.kind == "id"
            and re.fullmatch(r"DEFINE_\w*MACHINE\w*", t.text)
            and t.text in local
            and i + 1 < len(toks)
            and toks[i + 1].text == "("
        ):
            _, end = _split_args(toks, i + 1)
            expansion = expand(toks[i:end], local)
            for m in _machines_in_expansion(
                expansion,
                funcs,
                local,
                rel,
                t.line,
                machine_suffix,
                [a for a in arrays if "@" in a],
            ):
                machines[m["name"]] = m
            i = end
            continue
        i += 1
    for name, m in machines.items():
        m["board"] = family
        vm = _VERSION_IN_NAME.match(name)
        m["family"] = (
            family if vm and vm.group("prefix") == family else (vm.group("prefix") if vm else name)
        )
        m["version"] = vm.group("ver") if vm else None
    return machines, arrays


def _machines_in_expansion(
    exp: list[Tok],
    funcs: dict[str, Function],
    macros: dict[str, Macro],
    rel: str,
    line: int,
    machine_suffix: str,
    local_arrays: Iterable[str] = (),
) -> Iterator[dict]:
    local_funcs = dict(funcs)
    local_funcs.update(find_functions(exp, rel))
    # TypeInfo initialisers: "= { .name = X, ..., .class_init = F, ... }"
    for k in range(len(exp) - 3):
        if exp[k].text == "." and exp[k + 1].text == "name" and exp[k + 2].text == "=":
            j = k + 3
            depth = 0
            while j < len(exp) and not (depth == 0 and exp[j].text in (",", "}")):
                depth += exp[j].text in "(["
                depth -= exp[j].text in ")]"
                j += 1
            qom_name = string_value(exp[k + 3 : j], macros)
            if qom_name is None:
                continue
            name = qom_name.removesuffix(machine_suffix)
            init_fn = None
            for q in range(j, min(len(exp) - 2, j + 60)):
                if exp[q].text == "." and exp[q + 1].text == "class_init":
                    init_fn = exp[q + 3].text
                    break
                if exp[q].text == "}":
                    break
            st = MachineState()
            interp = Interpreter(local_funcs, macros, local_arrays)
            if init_fn and init_fn in local_funcs:
                interp.scope.append(init_fn)
                interp.run(local_funcs[init_fn].body, st)
            else:
                st.notes.append(f"class_init {init_fn!r} not found")
            registered = True
            # the register function generated alongside: it "return"s before registering
            # when MACHINE_VER_DELETION decides the type is too old
            for fn in find_functions(exp, rel).values():
                if any(t.text.startswith("type_register") for t in fn.body):
                    reg = MachineState()
                    registered = Interpreter({}, macros).run(fn.body, reg)
                    st.notes.extend(f"register: {n}" for n in reg.notes)
            yield {
                "name": name,
                "qom_type": qom_name,
                "file": rel,
                "line": line,
                "registered": registered,
                "deprecated": st.deprecation_reason is not None,
                "deprecation_reason": st.deprecation_reason,
                "alias": st.alias,
                "is_default": st.is_default,
                "compat_arrays": [c["array"] for c in st.compat],
                "options_chain": st.chain,
                **({"notes": st.notes} if st.notes else {}),
            }


# ---------------------------------------------------------------------------------------
# Section: migration object properties
# ---------------------------------------------------------------------------------------

_PROP_KIND = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT64": "int64",
    "SIZE": "size",
    "STRING": "str",
    "INT32": "int32",
}


def extract_migration_properties(root: Path, macros: dict[str, Macro]) -> dict[str, dict]:
    """``migration_properties[]``: each property, its kind, type and default."""
    for rel in ("migration/options.c", "migration/migration.c"):
        p = root / rel
        if not p.exists():
            continue
        local = dict(macros)
        sf = preprocess(p, rel, local)
        toks = _tokens_of_lines(sf.lines)
        for i, t in enumerate(toks):
            if (
                t.text == "migration_properties"
                and i + 3 < len(toks)
                and toks[i + 1].text == "["
                and toks[i + 3].text == "="
            ):
                start = i + 4
                end = _match_brace(toks, start)
                return _migration_props(
                    toks[start + 1 : end],
                    local,
                    rel,
                    _conditions(root / rel),
                    qapi_enum_constants(root),
                )
    raise SystemExit("migration_properties[] not found")


def _camel_to_upper(name: str) -> str:
    """QAPI's C enum prefix for a type name (``ZeroPageDetection`` -> ``ZERO_PAGE_DETECTION``)."""
    # a new word starts at a capital followed by a lower-case letter, or after a digit;
    # so ``MultiFDCompression`` -> ``MULTIFD_COMPRESSION`` as QEMU's generated C names it
    out = []
    for i, ch in enumerate(name):
        if (
            ch.isupper()
            and i > 0
            and name[i - 1] != "_"
            and ((i + 1 < len(name) and name[i + 1].islower()) or name[i - 1].isdigit())
        ):
            out.append("_")
        out.append(ch)
    return "".join(out).upper()


def _qapi_exprs(path: Path) -> Iterator[dict[str, Any]]:
    """The top-level expressions of a QAPI schema file (Python literals between comments)."""
    text = "\n".join(
        ln for ln in path.read_text(errors="replace").split("\n") if not ln.lstrip().startswith("#")
    )
    depth = 0
    start = None
    for i, ch in enumerate(text):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0 and start is not None:
                try:
                    expr = ast.literal_eval(text[start : i + 1])
                except (ValueError, SyntaxError):
                    continue
                if isinstance(expr, dict):
                    yield expr


def qapi_enum_constants(root: Path) -> dict[str, str]:
    """C constant -> QAPI member name for every enum in qapi/*.json (for enum defaults)."""
    consts: dict[str, str] = {}
    for path in sorted((root / "qapi").glob("*.json")):
        for expr in _qapi_exprs(path):
            if "enum" not in expr:
                continue
            prefix = expr.get("prefix") or _camel_to_upper(expr["enum"])
            for member in expr.get("data", []):
                name = member["name"] if isinstance(member, dict) else member
                consts[f"{prefix}_{name.upper().replace('-', '_')}"] = name
    return consts


def _conditions(path: Path) -> dict[int, str]:
    """Line -> enclosing ``#if`` text, to record properties that depend on the build."""
    cond: dict[int, str] = {}
    stack: list[str] = []
    for no, raw in enumerate(path.read_text(errors="replace").split("\n"), start=1):
        s = raw.strip()
        m = re.match(r"#\s*(if|ifdef|ifndef|else|endif)\b\s*(.*)", s)
        if m:
            d = m.group(1)
            if d in ("if", "ifdef", "ifndef"):
                stack.append(f"#{d} {m.group(2)}".strip())
            elif d == "else" and stack:
                stack[-1] = stack[-1] + " (else)"
            elif d == "endif" and stack:
                stack.pop()
        elif stack:
            cond[no] = " && ".join(stack)
    return cond


def _migration_props(
    toks: list[Tok],
    macros: dict[str, Macro],
    rel: str,
    conds: dict[int, str],
    enums: dict[str, str],
) -> dict[str, dict]:
    props: dict[str, dict] = {}
    i = 0
    while i < len(toks):
        t = toks[i]
        if t.kind == "id" and t.text.startswith("DEFINE_PROP") and toks[i + 1].text == "(":
            args, end = _split_args(toks, i + 1)
            if not args:  # DEFINE_PROP_END_OF_LIST()
                i = end
                continue
            name = string_value(args[0], macros)
            macro = t.text
            qmp: str | None = None
            if macro == "DEFINE_PROP_MIG_CAP":
                kind, typ, default_toks = "capability", "bool", None
                default: Any = False
                expr = "false"
                cap = expand(args[1], macros) if len(args) > 1 else []
                qmp = enums.get(cap[0].text) if len(cap) == 1 else None
            else:
                fld = " ".join(x.text for x in args[2]) if len(args) > 2 else ""
                kind = "parameter" if fld.startswith("parameters") else "state"
                if kind == "parameter":
                    # the QMP name is the MigrationParameters member the field stores
                    qmp = fld.split(".", 1)[1].strip().replace("_", "-")
                suffix = macro.removeprefix("DEFINE_PROP_")
                typ = _PROP_KIND.get(suffix, suffix.lower())
                default_toks = args[3] if len(args) > 3 else None
                expr = " ".join(x.text for x in default_toks) if default_toks else ""
                default = None
                if default_toks:
                    try:
                        default = eval_c_expr(default_toks, macros)
                    except (ValueError, SyntaxError, TypeError, NameError):
                        exp = expand(default_toks, macros)
                        if len(exp) == 1 and exp[0].text in enums:
                            default = enums[exp[0].text]  # QAPI enum constant -> its name
            entry: dict[str, Any] = {
                "kind": kind,
                "type": typ,
                "default": default,
                "default_expr": expr,
                "macro": macro,
                "qmp": qmp,
                "file": rel,
                "line": t.line,
            }
            if t.line in conds:
                entry["condition"] = conds[t.line]
            props[name or "?"] = entry
            i = end
            continue
        i += 1
    return props


# ---------------------------------------------------------------------------------------
# Section: TCP keep-alive evidence (qapi/sockets.json, util/qemu-sockets.c)
# ---------------------------------------------------------------------------------------

_KEEPALIVE_MEMBERS = ("keep-alive", "keep-alive-count", "keep-alive-idle", "keep-alive-interval")


def extract_socket_keepalive(root: Path) -> dict[str, Any]:
    """Which keep-alive members InetSocketAddress has, since when, and the passive-side rule."""
    out: dict[str, Any] = {"members": {}, "passive": {}}
    qapi = root / "qapi/sockets.json"
    if qapi.exists():
        lines = qapi.read_text().split("\n")
        in_inet = False
        doc_since: dict[str, tuple[str | None, int]] = {}
        doc_text: dict[str, tuple[str, str | None]] = {}
        for no, line in enumerate(lines, start=1):
            if (
                re.match(r"#\s*@InetSocketAddress:", line)
                or "'struct': 'InetSocketAddress'" in line
            ):
                in_inet = True
            elif (
                in_inet
                and re.match(r"#\s*@\w+SocketAddress\w*:", line)
                and "InetSocketAddress:" not in line
            ):
                in_inet = False
            m = re.match(r"#\s*@([\w-]+):", line)
            if in_inet and m and m.group(1) in _KEEPALIVE_MEMBERS:
                doc = [line]
                for k in range(no, min(len(lines), no + 10)):
                    if re.match(r"#\s*(@[\w-]+:|$)", lines[k]):
                        break
                    doc.append(lines[k])
                text = " ".join(d.lstrip("#").strip() for d in doc)
                sm = re.search(r"[Ss]ince:?\s*(\d+\.\d+)", text)
                lm = re.search(r"listening sockets until (\d+\.\d+)", text)
                doc_since[m.group(1)] = (sm.group(1) if sm else None, no)
                doc_text[m.group(1)] = (text, lm.group(1) if lm else None)
            dm = re.search(r"'\*?(keep-alive[\w-]*)':\s*(\{[^}]*\}|'\w+')", line)
            if dm and dm.group(1) in _KEEPALIVE_MEMBERS:
                cond = re.search(r"'if':\s*'(\w+)'", dm.group(2))
                typ = re.search(r"'type':\s*'(\w+)'", dm.group(2)) or re.match(
                    r"'(\w+)'", dm.group(2)
                )
                since, docline = doc_since.get(dm.group(1), (None, None))
                out["members"][dm.group(1)] = {
                    "type": typ.group(1) if typ else None,
                    "if": cond.group(1) if cond else None,
                    "since": since,
                    "file": "qapi/sockets.json",
                    "line": no,
                    "doc_line": docline,
                    "doc": doc_text.get(dm.group(1), ("", None))[0],
                    "listening_since": doc_text.get(dm.group(1), ("", None))[1],
                }
    sock = root / "util/qemu-sockets.c"
    if sock.exists():
        text = sock.read_text(errors="replace").split("\n")
        for no, line in enumerate(text, start=1):
            if "for passive" in line and "keep-alive" in line:
                stmt = " ".join(text[no - 1 : no + 2]).split(";")[0]
                msg = "".join(
                    c_string_value(f'"{lit}"') for lit in re.findall(r'"((?:\\.|[^"\\])*)"', stmt)
                )
                out["passive"] = {
                    "keep_alive_refused": True,
                    "file": "util/qemu-sockets.c",
                    "line": no,
                    "error": msg,
                }
        if not out["passive"]:
            # Which function sets SO_KEEPALIVE, and is it called on the listening path?
            starts = [
                (no, m.group(1))
                for no, line in enumerate(text, start=1)
                if (m := re.match(r"^(?:static\s+)?[\w\s\*]+?\b(\w+)\s*\(", line))
                and not line.startswith((" ", "\t", "#"))
            ]

            def owner(lineno: int) -> str | None:
                name = None
                for no, fn in starts:
                    if no <= lineno:
                        name = fn
                return name

            setter = next(
                (
                    owner(no)
                    for no, line in enumerate(text, start=1)
                    if "SO_KEEPALIVE" in line and "setsockopt" in line
                ),
                None,
            )
            callers = sorted(
                {
                    (owner(no) or "?", no)
                    for no, line in enumerate(text, start=1)
                    if setter and re.search(rf"\b{setter}\s*\(", line) and owner(no) != setter
                },
                key=lambda x: x[1],
            )
            listen = [(fn, no) for fn, no in callers if "listen" in fn]
            out["passive"] = {
                "keep_alive_refused": False,
                "honoured": bool(listen),
                "setter": setter,
                "callers": [
                    {"function": fn, "file": "util/qemu-sockets.c", "line": no}
                    for fn, no in callers
                ],
            }
        uri: dict[str, int] = {}
        for no, line in enumerate(text, start=1):
            for lit in re.findall(r'"(,?keep-alive[\w-]*)"', line):
                uri.setdefault(lit.lstrip(","), no)
        # option names the URI parser (inet_parse) accepts after "host:port,"
        out["uri_options"] = {k: {"file": "util/qemu-sockets.c", "line": v} for k, v in uri.items()}
        for no, line in enumerate(text, start=1):
            for opt in ("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT", "SO_KEEPALIVE"):
                if re.search(rf"\b{opt}\b", line) and "setsockopt" in "".join(
                    text[max(0, no - 3) : no + 2]
                ):
                    out.setdefault("sockopts", {}).setdefault(
                        opt, {"file": "util/qemu-sockets.c", "line": no}
                    )
    mig = root / "qapi/migration.json"
    if mig.exists():
        lines = mig.read_text().split("\n")
        # the structured alternative to a URI: migrate/migrate-incoming "channels"
        # (a list of MigrationChannel, whose addr is a SocketAddress with keep-alive knobs)
        for no, line in enumerate(lines, start=1):
            if re.match(r"#\s*@MigrationChannel:", line):
                for k in range(no, min(len(lines), no + 40)):
                    sm = re.match(r"#\s*Since:\s*(\d+\.\d+)", lines[k])
                    if sm:
                        out["channels"] = {
                            "since": sm.group(1),
                            "file": "qapi/migration.json",
                            "line": no,
                        }
                        break
                break
    return out


# ---------------------------------------------------------------------------------------
# Section: driver
# ---------------------------------------------------------------------------------------


def _source_identity(root: Path) -> dict[str, Any]:
    """The orig tarball next to the tree (``dl-<ver>/``): file name, sha256, Debian version."""
    ident: dict[str, Any] = {"tree": root.name}
    dl = root.parent / ("dl-" + root.name.removeprefix("qemu-").removeprefix("deb-"))
    tars = sorted(dl.glob("*.orig.tar.*")) if dl.is_dir() else []
    if tars:
        h = hashlib.sha256()
        with tars[0].open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        ident["tarball"] = tars[0].name
        ident["sha256"] = h.hexdigest()
    series = root / "debian/patches/series"
    if (root / ".pc").is_dir() and series.exists():
        # dpkg-source -x applied Debian's patches: the binary is built from this tree
        debs = sorted(dl.glob("*.debian.tar.*")) if dl.is_dir() else []
        ident["debian_patches_applied"] = [
            ln.split()[0]
            for ln in series.read_text().splitlines()
            if ln.strip() and not ln.startswith("#")
        ]
        if debs:
            ident["debian_tarball"] = debs[0].name
            ident["debian_sha256"] = hashlib.sha256(debs[0].read_bytes()).hexdigest()
    dscs = sorted(dl.glob("*.dsc")) if dl.is_dir() else []
    if dscs:
        m = re.search(r"^Version:\s*(\S+)", dscs[0].read_text(errors="replace"), re.M)
        if m:
            ident["debian_version"] = m.group(1)
    return ident


def load_header_macros(root: Path) -> dict[str, Macro]:
    """Macros from include/, hw/ and migration/ headers, target/*/cpu-qom.h, and VERSION."""
    macros: dict[str, Macro] = {}
    version = (root / "VERSION").read_text().strip()
    parts = [*(int(x) for x in version.split(".")[:3]), 0, 0][:3]
    for name, val in zip(
        ("QEMU_VERSION_MAJOR", "QEMU_VERSION_MINOR", "QEMU_VERSION_MICRO"), parts, strict=True
    ):
        macros[name] = Macro(name, None, None, [Tok("num", str(val), 0)], "VERSION", 1)
    # headers that define the helpers board files rely on come first, so a same-named
    # macro elsewhere does not shadow them
    first = [
        "include/qemu/compiler.h",
        "include/hw/boards.h",
        "include/hw/qdev-core.h",
        "include/hw/qdev-properties.h",
    ]
    paths = [root / p for p in first if (root / p).exists()]
    paths += sorted(p for p in (root / "include").rglob("*.h") if p not in paths)
    paths += sorted((root / "hw").rglob("*.h")) if (root / "hw").is_dir() else []
    paths += sorted((root / "migration").glob("*.h")) if (root / "migration").is_dir() else []
    paths += sorted((root / "target").glob("*/cpu-qom.h")) if (root / "target").is_dir() else []
    for p in paths:
        preprocess(p, str(p.relative_to(root)), macros)
    return macros


def extract(root: Path) -> dict[str, Any]:
    """Everything this project needs from one QEMU tree, as a JSON-ready dict."""
    root = root.resolve()
    version = (root / "VERSION").read_text().strip()
    macros = load_header_macros(root)
    suffix = string_value([Tok("id", "TYPE_MACHINE_SUFFIX", 0)], macros) or "-machine"

    compat_arrays: dict[str, dict] = {}
    for prefix, rel in COMPAT_FILES.items():
        local = dict(macros)
        sf = preprocess(root / rel, rel, local)
        for name, arr in find_global_property_arrays(sf, local).items():
            m = re.fullmatch(rf"{prefix}_(\d+)_(\d+)", name)
            if m:
                arr["kind"] = prefix.removesuffix("_compat")
                arr["version"] = f"{m.group(1)}.{m.group(2)}"
                compat_arrays[name] = arr

    machines: dict[str, dict] = {}
    default_arrays: dict[str, dict] = {}
    for family, rel in FAMILY_FILES.items():
        if not (root / rel).exists():
            continue
        fam_machines, arrays = extract_family(root, family, rel, macros, suffix)
        machines.update(fam_machines)
        for name, arr in arrays.items():
            if name not in compat_arrays:
                default_arrays[name] = arr
    for m in machines.values():
        unknown = [
            a for a in m["compat_arrays"] if a not in compat_arrays and a not in default_arrays
        ]
        if unknown:
            m.setdefault("notes", []).append("arrays defined elsewhere: " + ", ".join(unknown))

    aliases = {m["alias"]: name for name, m in machines.items() if m["alias"] and m["registered"]}
    defaults = sorted(name for name, m in machines.items() if m["is_default"] and m["registered"])
    boards = macros.get("MACHINE_VER_DELETION_MAJOR")
    lifecycle = None
    if boards is not None:
        dep = macros["MACHINE_VER_DEPRECATION_MAJOR"]
        lifecycle = {
            "deprecation_major": int(dep.body[0].text),
            "deletion_major": int(boards.body[0].text),
            "file": boards.file,
            "line": boards.line,
        }
    return {
        "schema": SCHEMA,
        "generator": "tools/extract_compat.py",
        "qemu_version": version,
        "release": ".".join(version.split(".")[:2]),
        "source": _source_identity(root),
        "config_defines": sorted(CONFIG_DEFINES),
        "machine_lifecycle": lifecycle,
        "compat_arrays": dict(sorted(compat_arrays.items(), key=lambda kv: _arr_key(kv[0]))),
        "default_arrays": default_arrays,
        "machines": dict(sorted(machines.items())),
        "aliases": dict(sorted(aliases.items())),
        "default_machines": defaults,
        "migration_properties": extract_migration_properties(root, macros),
        "socket_keepalive": extract_socket_keepalive(root),
    }


def _arr_key(name: str) -> tuple[str, int, int]:
    m = re.fullmatch(r"(\w+?)_(\d+)_(\d+)", name)
    return (m.group(1), int(m.group(2)), int(m.group(3))) if m else (name, 0, 0)


def extract_behaviour(captures: Path) -> dict[str, Any]:
    """What sources really did when a return-path frame was injected (lab fixtures).

    Reads ``<captures>/*/metadata.json`` written by the lab (``migcompat lab``) and keeps,
    per run, only observed facts: final migration states, error-desc, stderr lines,
    run states, split brain. Nothing is inferred here; ``compat`` cites the fixture.
    """
    runs: list[dict[str, Any]] = []
    for meta in sorted(captures.glob("*/metadata.json")):
        d = json.loads(meta.read_text())
        sc = d.get("scenario", {})
        if sc.get("kind") != "inject" or not sc.get("frame_hex"):
            continue
        frame = bytes.fromhex(sc["frame_hex"])
        fm = d.get("final_migrate", {})
        runs.append(
            {
                "fixture": str(meta.parent.name),
                "path": f"fixtures/captures/{meta.parent.name}/metadata.json",
                "scenario": sc.get("name"),
                "trigger": sc.get("trigger"),
                "frame_hex": sc["frame_hex"],
                "type_id": int.from_bytes(frame[:2], "big"),
                "length": int.from_bytes(frame[2:4], "big"),
                "machine": d.get("machine"),
                "capabilities": d.get("capabilities", []),
                "src": {"release": d["src"]["release"], "version_text": d["src"]["version_text"]},
                "dst": {"release": d["dst"]["release"], "version_text": d["dst"]["version_text"]},
                "src_statuses": [x["status"] for x in d.get("statuses", {}).get("src", [])],
                "dst_statuses": [x["status"] for x in d.get("statuses", {}).get("dst", [])],
                "src_final": fm.get("src", {}).get("status"),
                "dst_final": fm.get("dst", {}).get("status"),
                "src_error_desc": d.get("error_desc", {}).get("src"),
                "dst_error_desc": d.get("error_desc", {}).get("dst"),
                "src_stderr": d.get("stderr", {}).get("src", []),
                "dst_stderr": d.get("stderr", {}).get("dst", []),
                "src_running": d.get("runstates", {}).get("src", {}).get("running"),
                "dst_running": d.get("runstates", {}).get("dst", {}).get("running"),
                "split_brain": d.get("split_brain"),
                "killed": d.get("killed", {}),
                "timed_out": d.get("timed_out"),
            }
        )
    return {
        "schema": SCHEMA,
        "generator": "tools/extract_compat.py --behaviour-from",
        "captures": str(captures),
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--qemu-src", type=Path, help="QEMU source tree")
    src.add_argument(
        "--behaviour-from",
        type=Path,
        metavar="CAPTURES",
        help="lab fixtures folder (fixtures/captures): write the observed "
        "outcomes of injected frames (compat/data/behaviour.json)",
    )
    ap.add_argument(
        "-o",
        "--output",
        type=Path,
        help="output JSON (default: stdout); conventionally compat/data/compat-<VERSION>.json",
    )
    args = ap.parse_args(argv)
    if args.behaviour_from is not None:
        data = extract_behaviour(args.behaviour_from)
        text = json.dumps(data, indent=1) + "\n"
        if args.output:
            args.output.write_text(text)
            print(f"{args.output}: {len(data['runs'])} injection runs", file=sys.stderr)
        else:
            sys.stdout.write(text)
        return 0
    if not (args.qemu_src / "VERSION").exists():
        print(f"extract_compat: {args.qemu_src} has no VERSION file", file=sys.stderr)
        return 2
    data = extract(args.qemu_src)
    text = json.dumps(data, indent=1, sort_keys=False) + "\n"
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        n = sum(1 for m in data["machines"].values() if m["registered"])
        print(
            f"{args.output}: {len(data['compat_arrays'])} compat arrays, "
            f"{n} registered machine types",
            file=sys.stderr,
        )
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
