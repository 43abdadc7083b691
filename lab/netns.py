"""Two network namespaces joined by a veth pair, and a *silent* cut between them.

Why not the proxy's blackhole: a relay that stops forwarding is no partition for TCP — its own
kernel still ACKs data and answers keep-alive probes on both legs, so neither QEMU can ever
notice. Here each QEMU runs in its own network namespace (``ip netns``), the only path between
them is a veth pair, and a partition is an nftables ``netdev`` ingress chain with policy
``drop`` on both veth ends:

* nothing is answered: no RST, no FIN, no ICMP (verified by ``tests/lab/test_partition_netns.py``
  with a plain TCP pair and tcpdump on both ends);
* the routes stay (taking a veth link down also drops silently, but removes the local route,
  so a sender gets ``EHOSTUNREACH``/``ENETUNREACH`` from its own stack — not a partition);
* it heals by deleting the table: the connection carries on (no state was lost).

Addresses live only inside these namespaces (``10.231.0.1/30`` source, ``.2`` destination);
nothing is routed outside them. Each namespace has its own TCP sysctls (Linux gives a new
namespace the built-in defaults, not the host's values): :meth:`VethPair.sysctls` reads them
where the sockets live.

Cleanup: :class:`VethPair` is a context manager; leaving it (also on an exception) deletes both
namespaces, which deletes the veth pair and the nftables tables with them. Only names this
object created are ever deleted.
"""

from __future__ import annotations

import ctypes
import enum
import functools
import itertools
import logging
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from migcompat.lab._errors import LabError
from migcompat.lab.builds import QemuBuild

__all__ = [
    "NETNS_DIR",
    "NetnsBuild",
    "NetnsState",
    "SockInfo",
    "VethPair",
    "in_netns",
    "netns_unavailable",
    "parse_ss",
]


def __dir__() -> list[str]:
    return list(__all__)


_log = logging.getLogger("migcompat.lab.netns")

P = ParamSpec("P")
T = TypeVar("T")

#: Where ``ip netns add`` puts the namespace handles (iproute2's ``NETNS_RUN_DIR``).
NETNS_DIR = Path("/run/netns")

#: ``CLONE_NEWNET`` from ``<sched.h>`` (for ``setns(2)``; ``os.setns`` needs Python 3.12).
_CLONE_NEWNET = 0x40000000

#: nftables table holding the cut in each namespace.
_CUT_TABLE = "migcompat_cut"

_seq = itertools.count()


class NetnsState(enum.Enum):
    """Life of a :class:`VethPair`."""

    #: Created; no namespace yet.
    IDLE = "idle"
    #: Namespaces, veth and addresses up: packets flow.
    UP = "up"
    #: Both ingress chains drop everything (silent partition).
    CUT = "cut"
    #: Namespaces deleted.
    CLOSED = "closed"


def netns_unavailable() -> str | None:
    """Why a partition cannot be made here (``None`` when it can): root, ip, nft, netns."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} not found (Debian packages iproute2, nftables, util-linux)"
    name = f"mcgprobe{os.getpid() % 100000}"
    add = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if add.returncode != 0:
        return f"ip netns add failed: {add.stderr.strip()}"
    try:
        nft = subprocess.run(
            ["ip", "netns", "exec", name, "nft", "list", "tables"], capture_output=True, text=True
        )
        if nft.returncode != 0:
            return f"nft does not work in a namespace: {nft.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def _require(
    *allowed: NetnsState,
) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Guard a method: :class:`LabError` unless the pair is in one of ``allowed``."""

    def deco(fn: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            state = args[0].state  # type: ignore[attr-defined]
            if state not in allowed:
                want = "/".join(s.value for s in allowed)
                raise LabError(
                    f"{fn.__name__}() needs state {want}, the veth pair is {state.value}"
                )
            return fn(*args, **kwargs)

        return wrapper

    return deco


def _run(argv: list[str], *, input: str | None = None) -> str:
    """Run one iproute2/nft command; its own error text is kept verbatim on failure."""
    proc = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=30)
    if proc.returncode != 0:
        raise LabError(f"{' '.join(argv[:6])} failed", qemu_error=proc.stderr.strip() or None)
    return proc.stdout


@dataclass(frozen=True, slots=True)
class SockInfo:
    """One TCP socket as ``ss -tno`` shows it (the timer is the evidence we want).

    :param timer: ``keepalive``, ``on`` (retransmit), ``persist``, ``off``… or ``""``.
    :param timer_left_s: seconds until that timer fires.
    :param retrans: the ``N`` of ``timer:(…,…,N)``: unanswered probes or retransmissions.
    """

    state: str
    send_q: int
    recv_q: int
    local: str
    peer: str
    timer: str = ""
    timer_left_s: float | None = None
    retrans: int = 0

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_SS_LINE = re.compile(
    r"^(?P<state>\S+)\s+(?P<recvq>\d+)\s+(?P<sendq>\d+)\s+(?P<local>\S+)\s+(?P<peer>\S+)"
    r"(?:.*?timer:\((?P<timer>[^,]+),(?P<left>[^,]+),(?P<n>\d+)\))?"
)
# ss's print_ms_timer(): "119min", "1min2sec", "12sec", "3.792ms" (= 3 s 792 ms), "792ms".
_DURATION = re.compile(r"(?:(\d+)min)?(?:(\d+)sec)?(?:(\d+)\.(\d{3})ms)?(?:(\d+)ms)?")


def _seconds(text: str) -> float | None:
    """Seconds from ss's timer text (note ``S.MMMms`` means S seconds and MMM ms).

    >>> [_seconds(t) for t in ("119min", "1min2sec", "12sec", "3.792ms", "792ms", "x")]
    [7140.0, 62.0, 12.0, 3.792, 0.792, None]
    """
    m = _DURATION.fullmatch(text.strip())
    if not m or not any(m.groups()):
        return None
    minutes, sec, s2, ms2, ms = m.groups()
    secs = int(minutes or 0) * 60 + int(sec or 0) + int(s2 or 0)
    return round(secs + int(ms2 or 0) / 1000 + int(ms or 0) / 1000, 3)


def parse_ss(text: str) -> list[SockInfo]:
    """Parse ``ss -Htno`` output (one socket per line).

    >>> parse_ss("ESTAB 0 0 10.231.0.2:4444 10.231.0.1:5555 timer:(keepalive,4.2sec,0)")[0].timer
    'keepalive'
    >>> parse_ss("ESTAB 0 9 10.231.0.1:5 10.231.0.2:4 timer:(on,1min2sec,7)")[0].timer_left_s
    62.0
    """
    out = []
    for line in text.splitlines():
        m = _SS_LINE.match(line.strip())
        if not m or m["state"] in ("State", "Recv-Q"):
            continue
        out.append(
            SockInfo(
                state=m["state"], recv_q=int(m["recvq"]), send_q=int(m["sendq"]),
                local=m["local"], peer=m["peer"], timer=m["timer"] or "",
                timer_left_s=_seconds(m["left"]) if m["left"] else None,
                retrans=int(m["n"] or 0),
            )
        )  # fmt: skip
    return out


@dataclass(frozen=True)
class NetnsBuild(QemuBuild):
    """A :class:`QemuBuild` that runs inside network namespace ``netns``.

    ``nsenter`` execs without forking, so the PID the lab holds is still QEMU's own. QMP stays
    on a unix socket in the shared run dir (path sockets are not scoped by network namespace).
    """

    netns: str = ""

    def argv(self, *qemu_args: str) -> list[str]:
        return ["nsenter", f"--net={NETNS_DIR / self.netns}", "--", *super().argv(*qemu_args)]


def in_netns(build: QemuBuild, netns: str) -> NetnsBuild:
    """``build``, run inside ``netns``."""
    values = {f.name: getattr(build, f.name) for f in fields(build) if f.name != "netns"}
    return NetnsBuild(**values, netns=netns)


class VethPair:
    """Namespaces ``<tag>s`` (source, 10.231.0.1) and ``<tag>d`` (destination, 10.231.0.2).

    >>> VethPair(tag="mcgdoc").addr("dst")
    '10.231.0.2'
    """

    #: The /30 both ends share (inside our own namespaces only).
    PREFIX = "10.231.0."

    def __init__(self, tag: str | None = None) -> None:
        self.tag = tag or f"mcg{os.getpid() % 100000}x{next(_seq)}"
        self.ns = {"src": f"{self.tag}s", "dst": f"{self.tag}d"}
        self.dev = {"src": f"{self.tag}vs", "dst": f"{self.tag}vd"}
        if max(len(d) for d in self.dev.values()) > 15:
            raise LabError(f"tag {self.tag!r} too long for an interface name (15 bytes)")
        self.state = NetnsState.IDLE
        self.cut_at: float | None = None
        self.notes: list[dict[str, Any]] = []
        self._made: list[str] = []

    # ------------------------------------------------------------------
    # Section: Public interface

    def addr(self, side: str) -> str:
        """IPv4 address of ``side`` (``src``/``dst``)."""
        return self.PREFIX + ("1" if side == "src" else "2")

    def __enter__(self) -> VethPair:
        self.up()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @_require(NetnsState.IDLE)
    def up(self) -> None:
        """Make both namespaces, the veth pair and the addresses; undo everything on failure.

        :raises LabError: with iproute2's own error text.
        """
        try:
            for side in ("src", "dst"):
                _run(["ip", "netns", "add", self.ns[side]])
                self._made.append(self.ns[side])
            # Created inside the source namespace, the peer moved: nothing touches the host's
            # own interfaces even for a moment.
            src, dst = self.ns["src"], self.ns["dst"]
            _run(["ip", "-n", src, "link", "add", self.dev["src"], "type", "veth",
                  "peer", "name", self.dev["dst"], "netns", dst])  # fmt: skip
            for side in ("src", "dst"):
                ns, dev = self.ns[side], self.dev[side]
                _run(["ip", "-n", ns, "addr", "add", f"{self.addr(side)}/30", "dev", dev])
                _run(["ip", "-n", ns, "link", "set", dev, "up"])
                _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        except BaseException:
            self.close()
            raise
        self.state = NetnsState.UP

    def exec_prefix(self, side: str) -> list[str]:
        """argv prefix that runs a command inside ``side``'s namespace (no fork: same PID)."""
        return ["nsenter", f"--net={NETNS_DIR / self.ns[side]}", "--"]

    def build(self, build: QemuBuild, side: str) -> NetnsBuild:
        """``build`` run inside ``side``'s namespace."""
        return in_netns(build, self.ns[side])

    @_require(NetnsState.UP, NetnsState.CUT)
    def sysctls(self, side: str, keys: tuple[str, ...] | None = None) -> dict[str, int]:
        """TCP sysctls as ``side``'s sockets see them (per namespace since Linux 4.x/5.x)."""
        keys = keys or ("tcp_keepalive_time", "tcp_keepalive_intvl", "tcp_keepalive_probes",
                        "tcp_retries1", "tcp_retries2")  # fmt: skip
        paths = [f"/proc/sys/net/ipv4/{k}" for k in keys]
        out = _run([*self.exec_prefix(side), "cat", *paths]).split()
        return {k: int(v) for k, v in zip(keys, out, strict=True)}

    @_require(NetnsState.UP)
    def set_sysctl(self, side: str, key: str, value: int) -> None:
        """Set a ``net.ipv4`` sysctl in ``side``'s namespace only (e.g. ``tcp_retries2``).

        :raises LabError: an unknown key or a refused value (the kernel's error verbatim).
        """
        if not re.fullmatch(r"tcp_[a-z0-9_]+", key):
            raise LabError(f"sysctl {key!r}: only net.ipv4.tcp_* settings are supported")
        _run([*self.exec_prefix(side), "sh", "-c", 'printf "%s\\n" "$1" > "$2"', "sh",
              str(int(value)), f"/proc/sys/net/ipv4/{key}"])  # fmt: skip
        self.notes.append({"what": "sysctl", "side": side, key: int(value)})

    @_require(NetnsState.UP)
    def cut(self) -> float:
        """Drop everything arriving on both veth ends, silently; returns ``time.monotonic()``.

        Both tables are loaded before returning; the time is taken after the second one, and the
        spread between the two is kept in :attr:`notes`.
        """
        times = []
        for side in ("dst", "src"):
            rules = (
                f"table netdev {_CUT_TABLE} {{\n"
                f"  chain ingress {{\n"
                f'    type filter hook ingress device "{self.dev[side]}" priority -500;\n'
                f"    policy drop;\n"
                f"    counter\n"
                f"  }}\n"
                f"}}\n"
            )
            _run([*self.exec_prefix(side), "nft", "-f", "-"], input=rules)
            times.append(time.monotonic())
        self.state = NetnsState.CUT
        self.cut_at = times[-1]
        self.notes.append({"what": "cut", "spread_s": round(times[1] - times[0], 4)})
        return self.cut_at

    @_require(NetnsState.CUT)
    def heal(self) -> None:
        """Remove the cut: the same TCP connections carry on."""
        for side in ("src", "dst"):
            _run([*self.exec_prefix(side), "nft", "delete", "table", "netdev", _CUT_TABLE])
        self.state = NetnsState.UP
        self.notes.append({"what": "heal"})

    @_require(NetnsState.CUT)
    def dropped(self, side: str) -> int:
        """Packets dropped so far at ``side``'s ingress (the chain's counter)."""
        text = _run([*self.exec_prefix(side), "nft", "list", "table", "netdev", _CUT_TABLE])
        m = re.search(r"counter packets (\d+)", text)
        return int(m.group(1)) if m else 0

    @_require(NetnsState.UP, NetnsState.CUT)
    def sockets(self, side: str, port: int | None = None) -> list[SockInfo]:
        """TCP sockets of ``side``'s namespace (``ss -Htno``), optionally those on ``port``."""
        argv = [*self.exec_prefix(side), "ss", "-Htno"]
        if port is not None:
            argv += [f"( sport = :{port} or dport = :{port} )"]
        return parse_ss(_run(argv))

    @_require(NetnsState.UP, NetnsState.CUT)
    def socket(self, side: str, family: int = socket.AF_INET,
               type: int = socket.SOCK_STREAM) -> socket.socket:  # fmt: skip
        """A socket created inside ``side``'s namespace (for tests: a plain TCP pair).

        ``setns(2)`` switches only the calling thread, so a short-lived thread does it and
        hands the socket back; the socket stays in that namespace for life.
        """
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open(NETNS_DIR / self.ns[side], os.O_RDONLY)
                try:
                    if libc.setns(fd, _CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns failed")
                finally:
                    os.close(fd)
                box["sock"] = socket.socket(family, type)
            except BaseException as exc:  # handed to the caller's thread
                box["exc"] = exc

        t = threading.Thread(target=work, name=f"setns-{side}")
        t.start()
        t.join()
        if "exc" in box:
            raise LabError(f"cannot make a socket in {self.ns[side]}", exc=box["exc"])
        return box["sock"]

    def close(self) -> None:
        """Delete the namespaces this object made (and so the veth and tables). Idempotent."""
        for ns in reversed(self._made):
            proc = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True)
            if proc.returncode != 0 and (NETNS_DIR / ns).exists():
                _log.warning("ip netns del %s: %s", ns, proc.stderr.strip())
        self._made.clear()
        self.state = NetnsState.CLOSED
