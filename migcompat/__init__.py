"""qemu-migcompat: QEMU live-migration return path, release by release.

Each import name lives in the folder it names (``pyproject.toml``'s ``package-dir``):

* ``migcompat`` — ``migcompat/`` (this package: the version, ``python -m migcompat``)
* ``migcompat.protocol`` — ``protocol/``: bytes in, typed events out (sans-IO)
* ``migcompat.compat`` — ``compat/``: machine types, compat properties, verdicts (pure)
* ``migcompat.capture`` — ``capture/``: pcap/pcapng captures of real migrations
* ``migcompat.lab`` — ``lab/``: real QEMU builds, runs, the proxy, the pytest plugin
* ``migcompat.cli`` — ``cli/``: the command line (``migcompat …``)

Importing this package imports none of them.
"""

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    #: The distribution's version, written once in ``pyproject.toml``.
    __version__: str = version("qemu-migcompat")
except PackageNotFoundError:  # a checkout on sys.path without an install
    __version__ = "0+unknown"


def __dir__() -> list[str]:
    return list(__all__)
