"""Input and output helpers shared by the subcommands (the CLI's only I/O).

Reading a raw byte stream from a path or ``-`` (stdin) in chunks, so memory stays
flat on long streams; printing JSON lines, and rows (:func:`print_rows`): a table on a
terminal, plain lines in a pipe (``--format table|plain|json`` to choose). Nothing a user
copies or greps — QEMU's texts, URIs, cell ids, property and driver names — is ever
wrapped or cut: tables grow wider than the terminal rather than fold such a cell.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

from migcompat.compat import LINUX_TCP_DEFAULTS, StrategyError
from migcompat.protocol import ENGINES, InputError, Release, parse_release

__all__ = [
    "CHUNK",
    "FORMATS",
    "add_engine_argument",
    "add_format_argument",
    "console",
    "iter_chunks",
    "open_check",
    "output_format",
    "parse_releases",
    "print_json",
    "print_rows",
    "progress_wanted",
    "sysctl_overrides",
]

CHUNK = 1 << 20


def __dir__() -> list[str]:
    return list(__all__)


#: Leading bytes of capture files: pcap (either byte order, µs or ns) and pcapng.
CAPTURE_MAGICS = {
    b"\xd4\xc3\xb2\xa1": "pcap",
    b"\xa1\xb2\xc3\xd4": "pcap",
    b"\x4d\x3c\xb2\xa1": "pcap",
    b"\xa1\xb2\x3c\x4d": "pcap",
    b"\x0a\x0d\x0d\x0a": "pcapng",
}


def reject_capture(path: str, head: bytes) -> None:
    """A packet capture is not a raw return-path stream: say what to run instead."""
    kind = CAPTURE_MAGICS.get(bytes(head[:4]))
    if kind is not None:
        shown = "the input" if path == "-" else path
        raise InputError(
            f"{shown} is a {kind} capture, not raw return-path bytes: decode it with "
            f"`migcompat capture {path if path != '-' else 'FILE'}` (add --check-against "
            "REL to check its return path)"
        )


def open_check(path: str) -> None:
    """Fail early, with a clear message, on a path that cannot be read (or is a capture)."""
    if path == "-":
        return
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    if os.path.isdir(path):
        raise InputError(f"{path}: is a directory, expected a file of raw return-path bytes")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied")
    try:
        with open(path, "rb") as f:
            reject_capture(path, f.read(4))
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from None


#: Seconds of work after which reading shows a progress bar on stderr (on a terminal only).
PROGRESS_AFTER = 1.0


class _LateProgress:
    """A transient progress bar that appears only once the work has taken a second."""

    def __init__(self, label: str, total: int | None) -> None:
        self.label, self.total = label, total
        self.t0 = time.monotonic()
        self.done = 0
        self.bar: Any = None
        self.task: Any = None
        self.enabled = progress_wanted()

    def advance(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        if self.bar is None:
            if time.monotonic() - self.t0 < PROGRESS_AFTER:
                return
            from rich.progress import Progress

            self.bar = Progress(console=_stderr_console(), transient=True)
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=self.total)
        self.bar.update(self.task, completed=self.done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def iter_chunks(path: str, size: int = CHUNK) -> Iterator[bytes]:
    """Yield the bytes of ``path`` (``-`` = stdin) in chunks; a progress bar on stderr (on a
    terminal) once the work on them has taken more than a second."""
    open_check(path)
    if path == "-":
        stream = sys.stdin.buffer
        first = True
        bar = _LateProgress("stdin", None)
        try:
            while chunk := stream.read(size):
                if first:
                    reject_capture(path, chunk)
                    first = False
                yield chunk
                bar.advance(len(chunk))
        finally:
            bar.close()
        return
    try:
        total = os.path.getsize(path)
        with open(path, "rb") as f:
            bar = _LateProgress(os.path.basename(path), total)
            try:
                while chunk := f.read(size):
                    yield chunk
                    bar.advance(len(chunk))
            finally:
                bar.close()
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from None


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def parse_releases(text: str) -> list[Release]:
    """``7.2,10.0`` or ``all`` (every release line in the catalog)."""
    from migcompat.protocol import known_releases

    if text.strip() == "all":
        return list(known_releases())
    out = [parse_release(part) for part in text.split(",") if part.strip()]
    if not out:
        raise InputError("no release given")
    return out


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=False, separators=(",", ":")) + "\n")


def console() -> Any:
    """stdout as rich prints it: markup and colour on a terminal, lines never wrapped."""
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


#: ``--format`` values: a rich table, plain lines (one row a line), JSON (as ``--json``).
FORMATS = ("table", "plain", "json")


def add_format_argument(p: argparse.ArgumentParser) -> None:
    """``--format table|plain|json`` (default: a table on a terminal, plain lines otherwise)."""
    p.add_argument(
        "--format",
        choices=FORMATS,
        help="table (the default on a terminal), plain lines (the default in a pipe: "
        "nothing wrapped or cut) or json (as --json)",
    )


def output_format(args: argparse.Namespace) -> str:
    """What ``args`` ask for: ``json`` (``--json`` or ``--format json``), else the
    ``--format`` given, else ``table`` on a terminal and ``plain`` otherwise."""
    if getattr(args, "json", False):
        return "json"
    fmt = getattr(args, "format", None)
    if fmt:
        return str(fmt)
    return "table" if sys.stdout.isatty() else "plain"


def progress_wanted() -> bool:
    """Progress goes to stderr, and only when that is a terminal."""
    return sys.stderr.isatty()


def _cell(value: object) -> str:
    return "" if value is None else str(value)


def print_rows(
    columns: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    fmt: str,
    title: str | None = None,
    prose: Collection[str] = (),
    styles: Mapping[str, Callable[[str], str | None]] | None = None,
) -> None:
    """Print ``rows`` under ``columns`` as a table (``fmt`` ``table``) or plain lines.

    Plain: the title, a header line, then one line per row, columns padded to their
    widest cell and separated by two spaces (the last one unpadded): no cell is ever
    wrapped or cut. Table: a rich table on stdout; only the ``prose`` columns may wrap,
    every other cell stays whole on its line, and the table is wider than the terminal
    when it has to be. ``styles``: column → function of a cell's text giving a rich style.
    ``json`` prints one object per row (column → cell).
    """
    text_rows = [[_cell(v) for v in row] for row in rows]
    if fmt == "json":
        for row in text_rows:
            print_json(dict(zip(columns, row, strict=True)))
        return
    if fmt != "table":
        out = sys.stdout
        if title:
            out.write(f"{title}\n")
        widths = [max([len(c), *(len(r[i]) for r in text_rows)]) for i, c in enumerate(columns)]
        for row in [list(columns), *text_rows]:
            line = "  ".join(v.ljust(w) for v, w in zip(row[:-1], widths, strict=False))
            out.write((f"{line}  {row[-1]}" if len(row) > 1 else row[-1]).rstrip() + "\n")
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left")
    whole = 0  # width the unwrappable columns need
    for i, name in enumerate(columns):
        widest = max([len(name), *(len(r[i]) for r in text_rows)])
        if name in prose:
            table.add_column(name, overflow="fold", min_width=min(widest, 24))
            whole += min(widest, 24)
        else:
            table.add_column(name, no_wrap=True, min_width=widest)
            whole += widest
    styles = styles or {}
    for row in text_rows:
        cells = []
        for name, value in zip(columns, row, strict=True):
            style = styles[name](value) if name in styles else None
            cells.append(Text(value, style=style or ""))
        table.add_row(*cells)
    con = Console(highlight=False)
    need = whole + 3 * len(columns) + 1  # cell padding and borders
    if con.width < need:
        con = Console(highlight=False, width=need)
    con.print(table)


def add_engine_argument(p: argparse.ArgumentParser) -> None:
    """``--engine``, shared by the commands that decode return-path bytes."""
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default="fast",
        help="decoder: fast (default), model (the source-parser model itself) or "
        "construct (the declarative grammar, the reference; stricter than QEMU on one "
        "case: a RECV_BITMAP whose name length points past its frame)",
    )


def sysctl_overrides(items: list[str] | None) -> dict[str, int]:
    """``--sysctl KEY=VALUE`` items of ``lab run`` as ``{KEY: VALUE}`` (non-negative integers;
    KEY a ``/proc/sys/net/ipv4`` name of :data:`~migcompat.compat.LINUX_TCP_DEFAULTS`)."""
    overrides: dict[str, int] = {}
    for item in items or []:
        key, sep, val = item.partition("=")
        if not sep or key.strip() not in LINUX_TCP_DEFAULTS or not val.strip().isdigit():
            raise StrategyError(
                f"--sysctl {item!r}: expected KEY=VALUE, KEY one of "
                + ", ".join(LINUX_TCP_DEFAULTS)
                + ", VALUE a non-negative integer"
            )
        overrides[key.strip()] = int(val)
    return overrides
