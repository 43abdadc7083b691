"""One return path read by one or more source releases, incrementally.

Each reading is a :class:`Reading`: the protocol's :class:`~migcompat.protocol.FastReader`
and its :class:`~migcompat.protocol.StreamVerdict` (the same verdict ``check_stream``
gives for a whole stream), fed piece by piece as the capture is reassembled.

:class:`ReturnPath` holds the *candidates* (every release line the source can still be;
one when the release is known) and the ``--check-against`` releases. The newest
candidate is the *primary*: its events become the timeline. Candidates re-sync after a
hole (at the first later piece that is whole frames from its first byte to its last —
QEMU flushes each return-path message on its own), by feeding that piece to a fresh
reader once and keeping its events (no second decode). Checks stop at a hole
(``incomplete``). After the primary rejects a frame, later whole-frame pieces are still
read, as frames the source never read (the destination's side of the story).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from migcompat.protocol import (
    EndOfStream,
    Event,
    FastReader,
    Message,
    RamBlock,
    Release,
    RemoteViolation,
    Shut,
    StreamVerdict,
)

__all__ = ["Reading", "ReturnPath", "try_sync"]


def __dir__() -> list[str]:
    return list(__all__)


def _tally(v: StreamVerdict, events: Iterable[Event]) -> None:
    for ev in events:
        if isinstance(ev, Message):
            v.frames += 1
            v.counts[ev.name] += 1
            if isinstance(ev, Shut):
                v.shut = ev
        elif isinstance(ev, EndOfStream):
            v.end = ev


def _drain(reader: FastReader) -> tuple[list[Event], RemoteViolation | None]:
    out: list[Event] = []
    try:
        while True:
            batch = reader.drain()
            if not batch:
                return out, None
            out += batch
    except RemoteViolation as exc:
        return out, exc


def try_sync(release: Release, data: bytes) -> tuple[FastReader, list[Event]] | None:
    """A fresh reader and its events if ``data`` is whole frames from first byte to last.

    The bytes continue a return path (after a hole): a block was named before them, so a
    REQ_PAGES without a REQ_PAGES_ID is a frame here (``req_pages_block``).
    """
    rd = FastReader(release, req_pages_block="")
    rd.receive_data(data)
    events, exc = _drain(rd)
    if exc is not None or rd.buffered or not any(isinstance(e, Message) for e in events):
        return None
    return rd, events


class Reading:
    """One release's reading of the stream: reader + verdict (+ where it went blind)."""

    __slots__ = ("base", "hole_at", "reader", "release", "verdict")

    def __init__(self, release: Release) -> None:
        self.release = release
        self.reader: FastReader | None = FastReader(release)
        self.verdict = StreamVerdict(release=release)
        self.base = 0
        #: Where a hole made this reading stop (checks) or wait for a sync point.
        self.hole_at: int | None = None

    @property
    def state(self) -> str:
        """``accepted``/``rejected``/``truncated`` (protocol's words), ``incomplete``."""
        if self.verdict.rejection is None and self.hole_at is not None and self.reader is None:
            return "incomplete"
        return self.verdict.verdict

    def feed(self, data: bytes) -> tuple[list[Event], RemoteViolation | None]:
        rd = self.reader
        if rd is None or self.verdict.rejection is not None:
            return [], None
        rd.receive_data(data)
        events, exc = _drain(rd)
        _tally(self.verdict, events)
        if exc is not None:
            self.verdict.rejection = exc
        return events, exc

    def summary(self) -> dict[str, object]:
        v = self.verdict
        rej = v.rejection
        offset: int | None
        error: str | None
        if rej is not None:
            offset, error = self.base + rej.offset, rej.qemu_error
        elif self.state == "incomplete":
            offset, error = self.hole_at, None
        elif v.end is not None and v.end.truncated:
            offset, error = self.base + v.end.offset, v.end.qemu_error
        else:
            offset, error = None, None
        return {"verdict": self.state, "frames": v.frames, "offset": offset, "error": error}


class ReturnPath:
    """The candidates' and checks' readings of one return path."""

    def __init__(self, candidates: Iterable[Release], checks: Iterable[Release]) -> None:
        self.candidates: dict[Release, Reading] = {r: Reading(r) for r in candidates}
        self.checks: dict[Release, Reading] = {r: Reading(r) for r in checks}
        self.waiting_sync = False
        self.resyncs = 0
        #: Set once a page request was read: RAM checks can no longer start cleanly.
        self.req_seen = False
        self.last_block: str | None = None
        #: Every byte of this return path so far was captured (no hole, not mid-stream).
        self.whole = True
        self.unread: FastReader | None = None
        self.unread_base = 0
        self._ram: dict[str, RamBlock] | None = None
        self._machine: str | None = None

    @property
    def primary(self) -> Reading:
        return self.candidates[max(self.candidates)]

    def readers(self) -> Iterable[Reading]:
        yield from self.candidates.values()
        yield from self.checks.values()

    # -- context ---------------------------------------------------------------------
    def apply_ram(self, blocks: Mapping[str, int]) -> None:
        """The source's RAMBlocks (forward MEM_SIZE), for QEMU's block and range checks.

        Only before the first page request (so that "the last block named" is known) and
        never to a reader re-synced after a hole.
        """
        if self.req_seen:
            return
        self._ram = {k: RamBlock(k, v) for k, v in blocks.items()}  # converted once
        for r in self.readers():
            if r.reader is not None and r.base == 0 and r.reader.ram_blocks is None:
                r.reader.ram_blocks = self._ram

    def apply_machine(self, machine: str) -> None:
        """11.1+ sources take the legacy SWITCHOVER_ACK on older machine types."""
        self._machine = machine
        for r in self.readers():
            if r.reader is not None:
                r.reader.set_machine(machine)

    def prune(self, allowed: Iterable[Release]) -> Reading | None:
        """Keep the candidates in ``allowed``; the old primary if the primary changed."""
        keep = set(allowed)
        old = self.primary
        left = {r: x for r, x in self.candidates.items() if r in keep}
        if not left:
            return None
        self.candidates = left
        return old if self.primary is not old else None

    # -- bytes -------------------------------------------------------------------------
    def hole(self, offset: int) -> None:
        self.whole = False
        for r in self.checks.values():
            r.reader, r.hole_at = None, offset
        if self.primary.verdict.rejection is not None:
            self.unread = None
            return
        for r in self.candidates.values():
            if r.verdict.rejection is None:
                r.reader, r.hole_at = None, offset
        self.waiting_sync = True

    def feed(self, offset: int, data: bytes) -> tuple[list[Event], RemoteViolation | None, str]:
        """The primary's events and rejection for ``data`` at stream ``offset``; and
        ``""``, ``"re-synced"`` or ``"skipped"`` (waiting for a sync point after a hole)."""
        for r in self.checks.values():
            r.feed(data)
        prim = self.primary
        how = ""
        if self.waiting_sync:
            got = None
            for r in self.candidates.values():
                if r.reader is not None or r.verdict.rejection is not None:
                    continue
                s = try_sync(r.release, data)
                if s is None:
                    continue
                r.reader, r.base, r.hole_at = s[0], offset, None
                if self._machine:
                    r.reader.set_machine(self._machine)
                _tally(r.verdict, s[1])
                if r is prim:
                    got = s[1]
            if got is None:
                return [], None, "skipped"
            self.waiting_sync = False
            self.resyncs += 1
            return got, None, "re-synced"
        events: list[Event] = []
        exc: RemoteViolation | None = None
        for r in self.candidates.values():
            ev, ex = r.feed(data)
            if r is prim:
                events, exc = ev, ex
        return events, exc, how

    def feed_unread(self, offset: int, data: bytes) -> list[Event]:
        """Frames on the wire after the primary stopped reading (whole-frame pieces)."""
        prim = self.primary.release
        if self.unread is None:
            s = try_sync(prim, data)
            if s is None:
                return []
            self.unread, self.unread_base = s[0], offset
            return s[1]
        self.unread.receive_data(data)
        events, exc = _drain(self.unread)
        if exc is not None:
            self.unread = None
        return events

    def finish(self) -> list[Event]:
        """End of the capture: ``b""`` to every live reader; the primary's last events."""
        out: list[Event] = []
        prim = self.primary
        for r in self.readers():
            if r.reader is None or r.verdict.rejection is not None:
                continue
            r.reader.receive_data(b"")
            ev, _ = _drain(r.reader)
            _tally(r.verdict, ev)
            if r is prim:
                out = ev
        return out

    def disagreements(self) -> list[str]:
        """Candidates whose reading differs from the primary's (the bound is ambiguous)."""
        p = self.primary
        out = []
        for r in self.candidates.values():
            if r is p:
                continue
            if (r.state, r.verdict.frames) != (p.state, p.verdict.frames):
                s = r.summary()
                at = f" at offset {s['offset']}" if s["offset"] is not None else ""
                out.append(f"{r.release} {s['verdict']}{at} ({s['frames']} frames)")
        return out
