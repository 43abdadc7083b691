"""The source release, bounded from what the wire shows (sans-IO: evidence in, bound out).

A capture does not say which QEMU sent it, but parts of the forward stream and of the
destination's answers are only possible from some releases on, or only absent before:

* ``QEMU_VM_CONFIGURATION`` names the machine type: a source cannot run a machine type
  newer than itself (``pc-q35-10.0`` ⇒ source ≥ 10.0);
* each ``MIG_CMD_*`` has a first release in the catalog (``SWITCHOVER_START`` ⇒ ≥ 10.0);
* since 10.2 a postcopy source sends ``PING 0x42`` just before the run command and waits
  for ``PONG 0x42`` in its ``postcopy-device`` state: a ``PING``/``PONG 0x42`` ⇒ ≥ 10.2,
  and a destination asking for pages (postcopy running) on a return path seen whole from
  its first byte with no ``PONG 0x42`` before ⇒ ≤ the last line before 10.2.

Section versions would bound it further, but the catalog holds no per-release device
versions, so they are not used. The bound is what is reported (``≥ 10.0 and ≤ 10.1``,
with the evidence); the return path is read as the newest release inside it, and the
releases inside it that read it differently are named (still ambiguous).
"""

from __future__ import annotations

import msgspec

from migcompat.protocol import Release, known_releases, machine_version, stream_catalog

__all__ = ["POSTCOPY_DEVICE_PING", "POSTCOPY_DEVICE_SINCE", "Evidence", "ReleaseBound"]


def __dir__() -> list[str]:
    return list(__all__)


#: The PING value of 10.2+'s postcopy-device handshake (seen on real 11.1.3 captures:
#: PONG 1, 2, 4, 3, 0x42, then page requests; no compat property gates it in 10.2.2's
#: hw_compat tables, so every machine type sends it).
POSTCOPY_DEVICE_PING = 0x42
POSTCOPY_DEVICE_SINCE = Release("10.2")


class Evidence(msgspec.Struct, frozen=True, kw_only=True):
    """One fact from the wire and the bound it implies."""

    t: float
    what: str
    low: str | None = None
    high: str | None = None

    def text(self) -> str:
        side = (f"≥ {self.low}" if self.low else "") + (f"≤ {self.high}" if self.high else "")
        return f"{self.what} ⇒ {side}"


class ReleaseBound:
    """The release lines a source can be, narrowed as evidence arrives."""

    def __init__(self) -> None:
        self.lines = known_releases()
        self.low: Release = self.lines[0]
        self.high: Release = self.lines[-1]
        self.evidence: list[Evidence] = []
        self.contradiction: str | None = None
        cat = stream_catalog(self.lines[-1])
        self._cmd_since = {m.name: m.since for m in cat.commands}

    # -- evidence --------------------------------------------------------------------
    def _add(self, ev: Evidence) -> bool:
        low = Release(ev.low) if ev.low else None
        high = Release(ev.high) if ev.high else None
        new_low = max(self.low, low) if low else self.low
        new_high = min(self.high, high) if high else self.high
        if (new_low, new_high) == (self.low, self.high):
            return False
        if new_low > new_high:
            self.contradiction = f"{ev.text()} contradicts the bound ≥ {self.low} ≤ {self.high}"
            return False
        self.low, self.high = new_low, new_high
        self.evidence.append(ev)
        return True

    def machine(self, t: float, machine: str) -> Evidence | None:
        v = machine_version(machine)
        if v is None:
            return None
        floor = max((r for r in self.lines if r <= v), default=None)
        if floor is None:
            return None
        ev = Evidence(t=t, what=f"machine type {machine}", low=str(floor))
        if v > self.lines[-1]:
            self.contradiction = f"machine type {machine} is newer than every known release"
        return ev if self._add(ev) else None

    def command(self, t: float, name: str) -> Evidence | None:
        since = self._cmd_since.get(name)
        if since is None or since <= self.lines[0]:
            return None
        ev = Evidence(t=t, what=name, low=str(since))
        return ev if self._add(ev) else None

    def device_ping(self, t: float, where: str) -> Evidence | None:
        ev = Evidence(t=t, what=f"{where} 0x42 (postcopy-device)", low=str(POSTCOPY_DEVICE_SINCE))
        return ev if self._add(ev) else None

    def no_device_ping(self, t: float) -> Evidence | None:
        before = max(r for r in self.lines if r < POSTCOPY_DEVICE_SINCE)
        ev = Evidence(
            t=t,
            what="page requests (postcopy running) with no PONG 0x42 before them",
            high=str(before),
        )
        return ev if self._add(ev) else None

    # -- reading ---------------------------------------------------------------------
    def candidates(self) -> tuple[Release, ...]:
        return tuple(r for r in self.lines if self.low <= r <= self.high)

    def contains(self, release: Release) -> bool:
        return self.low <= release <= self.high

    @property
    def exact(self) -> bool:
        return self.low == self.high

    def text(self) -> str:
        if self.exact:
            return f"source {self.low}"
        return f"source ≥ {self.low} and ≤ {self.high}"

    def basis(self) -> str:
        """``stream: consistent with A … B (evidence; …)``."""
        span = str(self.low) if self.exact else f"{self.low} … {self.high}"
        why = "; ".join(e.text() for e in self.evidence) or "no evidence on the wire"
        out = f"stream: consistent with {span} ({why})"
        if self.contradiction:
            out += f"; {self.contradiction}"
        return out
