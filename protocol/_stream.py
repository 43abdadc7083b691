"""Whole-stream verdicts: run one or many source readers over the same bytes.

Still sans-IO: callers hand in an iterable of byte chunks (a file, stdin, a
reassembled TCP stream) and get, per source release, every event and the
outcome — accepted, rejected at an offset with QEMU's exact text, or cut short.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._errors import RemoteViolation
from ._events import EndOfStream, Event, Message, RawMessage, Shut
from ._reader import Reader
from ._releases import Release
from ._sentinels import NEED_DATA, STOPPED

__all__ = ["ENGINES", "StreamVerdict", "check_stream"]


def __dir__() -> list[str]:
    return list(__all__)


@dataclass(slots=True)
class StreamVerdict:
    """What one source release makes of a whole return-path stream."""

    release: Release
    frames: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    rejection: RemoteViolation | None = None
    end: EndOfStream | None = None
    #: Set when the source stopped reading after a SHUT; bytes after it stay unread.
    shut: Shut | None = None
    unread: int = 0
    total_bytes: int = 0

    @property
    def verdict(self) -> str:
        """``rejected``, ``truncated`` (the stream ends inside a frame) or ``accepted``."""
        if self.rejection is not None:
            return "rejected"
        if self.end is not None and self.end.truncated:
            return "truncated"
        return "accepted"

    @property
    def qemu_error(self) -> str | None:
        """The text the source prints about this stream, if any."""
        if self.rejection is not None:
            return self.rejection.qemu_error
        if self.shut is not None and self.shut.sibling_error:
            # The bytes are well-formed; the source still reports the destination's failure.
            from ._catalog import catalog

            return catalog(self.release).format_error("shut_error", self.shut.sibling_error)
        return self.end.qemu_error if self.end is not None else None


#: ``engine`` → reader class: the fast path (default), the model, the construct reference.
ENGINES = ("fast", "model", "construct")


def _reader_class(engine: str) -> Callable[[Release | str], Any]:
    if engine == "fast":
        from ._fast import FastReader

        return FastReader
    if engine == "construct":
        from ._construct_engine import ConstructReader

        return ConstructReader
    if engine == "model":
        return Reader
    raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")


def _tally(v: StreamVerdict, batch: list[Event]) -> None:
    """Count a batch of events into ``v``, class by class (one C-level pass over the batch)."""
    for cls, n in Counter(map(type, batch)).items():
        last = next(ev for ev in reversed(batch) if type(ev) is cls)
        if isinstance(last, EndOfStream):
            v.end = last
        elif isinstance(last, RawMessage):  # its name is per frame
            for ev in batch:
                if type(ev) is RawMessage:
                    v.counts[ev.name] += 1
            v.frames += n
        elif isinstance(last, Message):
            v.frames += n
            v.counts[last.name] += n
            if isinstance(last, Shut):
                v.shut = last


def check_stream(
    releases: Sequence[Release | str],
    chunks: Iterable[bytes],
    on_event: Callable[[int, Event], None] | None = None,
    *,
    engine: str = "fast",
) -> list[StreamVerdict]:
    """Feed ``chunks`` to one reader per source release, in one pass.

    :param on_event: called with (index into ``releases``, event) as events appear,
        so long streams can be printed as they decode without being kept.
    :param engine: ``fast`` (the fast path, same events), ``model`` (the source-parser
        model itself) or ``construct`` (frames decoded by the construct grammar).
    """
    reader_class = _reader_class(engine)
    readers = [reader_class(r) for r in releases]
    verdicts = [StreamVerdict(release=r.release) for r in readers]
    live = list(range(len(readers)))

    def drain(i: int) -> bool:
        reader, v = readers[i], verdicts[i]
        # Without a per-event callback, take the fast path's batches and count them whole.
        bulk = getattr(reader, "drain", None) if on_event is None else None
        while True:
            try:
                if bulk is not None:
                    batch = bulk()
                    if batch:
                        _tally(v, batch)
                        continue
                ev = reader.next_event()
            except RemoteViolation as exc:
                v.rejection = exc
                return False
            if ev is NEED_DATA:
                return True
            if ev is STOPPED:
                return False
            # One event: _tally's rules without a Counter per event (this is the hot path).
            if isinstance(ev, Message):
                v.frames += 1
                v.counts[ev.name] += 1
                if isinstance(ev, Shut):
                    v.shut = ev
            elif isinstance(ev, EndOfStream):
                v.end = ev
            if on_event is not None:
                on_event(i, ev)

    total = 0
    for chunk in chunks:
        if not chunk:
            continue
        total += len(chunk)
        for i in list(live):
            readers[i].receive_data(chunk)
            if not drain(i):
                live.remove(i)
        if not live:
            for chunk_rest in chunks:
                total += len(chunk_rest)
            break
    for i in live:
        readers[i].receive_data(b"")
        drain(i)
    for reader, v in zip(readers, verdicts, strict=True):
        v.total_bytes = total
        stop = v.rejection.stopped_at if v.rejection is not None else reader.offset
        v.unread = max(0, total - stop)
    return verdicts
