"""qemu-migcompat: QEMU live-migration return path, release by release.

The import namespace is ``migcompat``; its subpackages live in the repository's
top-level folders (``protocol/``, ``compat/``, ``lab/``, ``capture/``) and this
package (``cli/``) holds the thin command line.
"""

from migcompat.protocol._errors import MigcompatError

__all__ = ["MigcompatError", "__version__"]

__version__ = "0.1.0"


def __dir__() -> list[str]:
    return list(__all__)
