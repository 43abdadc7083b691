"""Input and output helpers shared by the subcommands (the CLI's only I/O).

Reading a raw byte stream from a path or ``-`` (stdin) in chunks, so memory stays
flat on long streams; printing JSON lines and rich tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

from migcompat.compat import LINUX_TCP_DEFAULTS, StrategyError
from migcompat.protocol import ENGINES, InputError, Release, parse_release

__all__ = [
    "CHUNK",
    "add_engine_argument",
    "console",
    "iter_chunks",
    "open_check",
    "parse_releases",
    "print_json",
    "sysctl_overrides",
]

CHUNK = 1 << 20


def __dir__() -> list[str]:
    return list(__all__)


def open_check(path: str) -> None:
    """Fail early, with a clear message, on a path that cannot be read."""
    if path == "-":
        return
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    if os.path.isdir(path):
        raise InputError(f"{path}: is a directory, expected a file of raw return-path bytes")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied")


#: Files at least this large show a progress bar (on a terminal).
PROGRESS_MIN = 32 << 20


def iter_chunks(path: str, size: int = CHUNK) -> Iterator[bytes]:
    """Yield the bytes of ``path`` (``-`` = stdin) in chunks; progress on large files."""
    open_check(path)
    if path == "-":
        stream = sys.stdin.buffer
        while chunk := stream.read(size):
            yield chunk
        return
    try:
        total = os.path.getsize(path)
        with open(path, "rb") as f:
            if total < PROGRESS_MIN or not sys.stderr.isatty():
                while chunk := f.read(size):
                    yield chunk
                return
            from rich.progress import Progress

            with Progress(console=_stderr_console(), transient=True) as bar:
                task = bar.add_task(os.path.basename(path), total=total)
                while chunk := f.read(size):
                    bar.advance(task, len(chunk))
                    yield chunk
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
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False)


def add_engine_argument(p: argparse.ArgumentParser) -> None:
    """``--engine``, shared by the commands that decode return-path bytes."""
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default="fast",
        help="decoder: fast (default), model (the source-parser model itself) or "
        "construct (the declarative grammar, the reference; stricter on one RECV_BITMAP "
        "case QEMU accepts, see docs/performance.md)",
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
