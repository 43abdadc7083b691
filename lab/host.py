"""What the host (or the network namespace this process runs in) is set to.

compat's predictions are pure and take these values as arguments; reading them is I/O,
so it lives here and the CLI passes the result in.
"""

from __future__ import annotations

import os
from pathlib import Path

from migcompat.compat import LINUX_TCP_DEFAULTS

__all__ = ["host_info", "read_tcp_sysctls"]


def __dir__() -> list[str]:
    return list(__all__)


def read_tcp_sysctls(base: Path = Path("/proc/sys/net/ipv4")) -> dict[str, int]:
    """The ``net.ipv4`` TCP sysctls the predictions use, as this kernel has them.

    Only keys of :data:`migcompat.compat.LINUX_TCP_DEFAULTS`; an unreadable or garbled one
    is left out (the prediction then uses Linux's default).
    """
    out: dict[str, int] = {}
    for key in LINUX_TCP_DEFAULTS:
        try:
            out[key] = int((Path(base) / key).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return out


def host_info() -> dict[str, str]:
    """What a bug report says about the host: kernel release, its build string, architecture."""
    u = os.uname()
    return {"kernel": u.release, "kernel_version": u.version, "machine": u.machine}
