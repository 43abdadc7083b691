"""``migcompat`` / ``python -m migcompat``: the thin command line's dispatcher.

Each subcommand lives in its own ``_cmd_<name>.py`` module with a
``register(subparsers)`` function that adds its parser and sets ``func``
(``func(args) -> int`` returns the exit code). Only :class:`MigcompatError`
is caught here; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from migcompat import __version__
from migcompat.protocol import MigcompatError

# Order is the order of `migcompat --help`.
SUBCOMMAND_MODULES = (
    "decode",
    "check",
    "catalog",
    "release",
    "machine",
    "keepalive",
    "lab",
    "capture",
    "matrix",
    "fuzz",
    "partition",
    "bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="migcompat",
        description=(
            "QEMU live-migration return path, release by release: decode and check "
            "return-path bytes against any source release, look up the message catalog "
            "and machine-type compat properties, decide whether a destination may send "
            "KEEPALIVE, and run it all against real QEMU."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__package__}._cmd_{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__package__}._cmd_{name}":
                continue  # subcommand not part of this build
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except MigcompatError as exc:
        print(f"migcompat {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"migcompat {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `migcompat decode big | head`: the reader went away; that is not an error.
        sys.stderr.close()
        return 0
