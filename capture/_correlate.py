"""One migration's correlator: forward commands and pages against return-path frames.

Sans-IO: methods take a time and what was decoded, update the counters and return what
the timeline should say (latencies, round trips); nothing here reads a file or prints.

What the wire can show is bytes in both directions; what it cannot show is either
side's QMP state. States here are *inferred* from bytes (``postcopy-paused`` means: the
main channel closed after postcopy had started, before completion — the source may as
well have ``failed`` and resumed the guest); :attr:`Migration.wire_notes` says so.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

from ._release import POSTCOPY_DEVICE_PING

__all__ = ["Migration"]


def __dir__() -> list[str]:
    return list(__all__)


@dataclass(slots=True)
class Migration:
    """A migration: one QEVM main channel plus its resumed main channels and side channels."""

    index: int
    machine_type: str | None = None
    connections: list[str] = field(default_factory=list)
    states: list[tuple[float, str]] = field(default_factory=list)
    commands: Counter[str] = field(default_factory=Counter)
    sections: dict[int, str] = field(default_factory=dict)
    pings: dict[int, deque[float]] = field(default_factory=dict)
    ping_rtts: list[float] = field(default_factory=list)
    unanswered_pings: int = 0
    #: PONGs whose PING was not seen (it fell in a hole or an undelimited package).
    orphan_pongs: int = 0
    bitmaps: dict[str, deque[float]] = field(default_factory=dict)
    bitmap_pairs: list[tuple[str, float]] = field(default_factory=list)
    resume_ts: deque[float] = field(default_factory=deque)
    resume_pairs: list[float] = field(default_factory=list)
    requests: dict[tuple[str, int], deque[tuple[float, bool]]] = field(default_factory=dict)
    #: One bit per target page seen on the forward stream, per block (grows on demand).
    seen: dict[str, bytearray] = field(default_factory=dict)
    request_count: int = 0
    page_latencies: list[float] = field(default_factory=list)
    pages_walked: int = 0
    #: The source's RAMBlocks (idstr → used length), from ``RAM_SAVE_FLAG_MEM_SIZE``.
    ram_blocks: dict[str, int] = field(default_factory=dict)
    #: Stream time after which forward pages could not be seen (a hole, a stop).
    fwd_blind_from: float | None = None
    fwd_holes: int = 0
    postcopy: bool = False
    done: bool = False
    #: 10.2+ postcopy-device: when PING 0x42 went out, when PONG 0x42 came back (the
    #: destination has loaded the device state) and whether the source read it.
    device_ping_ts: float | None = None
    device_pong_ts: float | None = None
    device_pong_read: bool = False
    #: The source rejected a return-path frame (time, stream offset, text).
    rejected: tuple[float, int, str] | None = None
    split_brain: str | None = None
    #: When a main channel closed before completion (postcopy running or not).
    closed_early: tuple[float, bool] | None = None

    # -- pages --------------------------------------------------------------------------
    def mark_seen(self, block: str, addr: int) -> None:
        bits = self.seen.get(block)
        if bits is None:
            bits = self.seen[block] = bytearray()
        i = addr >> 12
        if (i >> 3) >= len(bits):
            bits.extend(bytes((i >> 3) + 1 - len(bits) + 4096))
        bits[i >> 3] |= 1 << (i & 7)

    def was_seen(self, block: str, addr: int) -> bool:
        bits = self.seen.get(block)
        i = addr >> 12
        return bits is not None and (i >> 3) < len(bits) and bool(bits[i >> 3] & (1 << (i & 7)))

    def page(self, ts: float, block: str, addr: int) -> float | None:
        """A page on the forward stream; the latency if a request was waiting for it."""
        self.pages_walked += 1
        self.mark_seen(block, addr)
        if not self.requests:
            return None
        waiting = self.requests.get((block, addr))
        if not waiting:
            return None
        t_req, _ = waiting.popleft()
        if not waiting:
            del self.requests[(block, addr)]
        lat = ts - t_req
        self.page_latencies.append(lat)
        return lat

    def request(self, ts: float, block: str | None, start: int) -> bool:
        """A page request; True when it is the first sign that postcopy runs."""
        self.request_count += 1
        first = not self.postcopy
        if first:
            # Page requests come only from a destination running in postcopy.
            self.postcopy = True
            if not any(st == "postcopy-active" for _, st in self.states):
                self.state(ts, "postcopy-active")
        if block is not None:
            # A page the forward stream already carried was in flight when the
            # destination asked: no later copy may come, so it stays unmatched.
            self.requests.setdefault((block, start), deque()).append(
                (ts, self.was_seen(block, start))
            )
        return first

    # -- states ---------------------------------------------------------------------------
    def state(self, ts: float, name: str) -> None:
        if not self.states or self.states[-1][1] != name:
            self.states.append((ts, name))

    def command(self, ts: float, short: str, fields: dict[str, object], length: int) -> None:
        if short == "PING":
            value = int(fields["value"])  # type: ignore[call-overload]
            self.pings.setdefault(value, deque()).append(ts)
            if value == POSTCOPY_DEVICE_PING:
                self.device_ping_ts = ts
                self.state(ts, "postcopy-device")
        elif short == "RECV_BITMAP":
            self.bitmaps.setdefault(str(fields.get("block_name", "")), deque()).append(ts)
            self.state(ts, "postcopy-recover")
        elif short == "POSTCOPY_RESUME":
            self.resume_ts.append(ts)
        elif short == "POSTCOPY_ADVISE":
            fields["postcopy_ram"] = length == 16
        elif short == "POSTCOPY_LISTEN":
            self.state(ts, "postcopy-listen")
        elif short == "POSTCOPY_RUN":
            self.postcopy = True
            self.state(ts, "postcopy-active")
        elif short == "SWITCHOVER_START":
            self.state(ts, "device")

    def pong(self, ts: float, value: int, read: bool = True) -> float | None:
        """A PONG (``read``: the source read it); the round trip if its PING was seen."""
        if value == POSTCOPY_DEVICE_PING and self.device_pong_ts is None:
            self.device_pong_ts = ts
            self.device_pong_read = read
        if not read:
            return None
        sent = self.pings.get(value)
        if sent:
            rtt = ts - sent.popleft()
            self.ping_rtts.append(rtt)
            return rtt
        self.orphan_pongs += 1
        return None

    def bitmap(self, ts: float, block: str) -> float | None:
        sent = self.bitmaps.get(block)
        if sent:
            lat = ts - sent.popleft()
            self.bitmap_pairs.append((block, lat))
            return lat
        return None

    def resume_ack(self, ts: float) -> float | None:
        lat = None
        if self.resume_ts:
            lat = ts - self.resume_ts.popleft()
            self.resume_pairs.append(lat)
        self.state(ts, "postcopy-active")
        return lat

    def shut(self, ts: float, sibling_error: int) -> None:
        self.state(ts, "completed" if sibling_error == 0 else "failed")
        self.done = True

    def eof(self, ts: float) -> None:
        self.state(ts, "completed")
        self.done = True

    def rejection(self, ts: float, offset: int, text: str) -> str | None:
        """The source rejected a frame; the split-brain boundary it crossed, if any."""
        if self.rejected is None:
            self.rejected = (ts, offset, text)
        if self.device_pong_ts is not None and self.split_brain is None:
            self.split_brain = (
                "the source rejected a return-path frame after PONG 0x42 (the destination "
                "had loaded the device state and may run the guest): a source that resumes "
                "the guest now risks split brain"
            )
            return self.split_brain
        return None

    def unread_device_pong(self) -> str | None:
        """PONG 0x42 on the wire after the source stopped reading (it never saw it)."""
        if self.split_brain is None and self.rejected is not None:
            self.split_brain = (
                "the destination sent PONG 0x42 (device state loaded) after the frame the "
                "source rejected: the source, stopped in postcopy-device, cannot know the "
                "destination may already run the guest; resuming it risks split brain"
            )
            return self.split_brain
        return None

    def close(self, ts: float) -> None:
        if self.done:
            return
        self.state(ts, "postcopy-paused" if self.postcopy else "connection-lost")
        if self.closed_early is None:
            self.closed_early = (ts, self.postcopy)

    @property
    def wire_notes(self) -> list[str]:
        """What the bytes cannot tell (QMP states, the other side's view)."""
        if self.closed_early is None or self.done:
            return []
        if self.closed_early[1]:
            return [
                "main channel closed during postcopy before completion: shown as "
                "postcopy-paused, but a pcap sees bytes, not QMP states — the source may "
                "have failed (and resumed the guest) while the destination completed"
            ]
        return ["main channel closed before completion (the QMP states are not on the wire)"]
