"""``python -m migcompat``: the command line (:mod:`migcompat.cli`)."""

import sys

from migcompat.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
