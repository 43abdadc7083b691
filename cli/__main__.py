"""``python -m migcompat.cli``, the same as ``python -m migcompat``."""

import sys

from ._main import main

if __name__ == "__main__":
    sys.exit(main())
