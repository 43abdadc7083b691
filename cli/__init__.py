"""The command line, ``migcompat`` (import name ``migcompat.cli``).

Each subcommand is a ``_cmd_<name>.py`` module that parses its arguments, makes one
library call and prints; :func:`main` (in ``_main.py``) dispatches to them.
"""

from ._main import build_parser, main

__all__ = ["build_parser", "main"]


def __dir__() -> list[str]:
    return list(__all__)
