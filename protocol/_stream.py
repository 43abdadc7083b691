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

from ._catalog import catalog
from ._context import SourceContext, assumptions_text, context_alternatives
from ._errors import RemoteViolation
from ._events import EndOfStream, Event, Message, RawMessage, Shut
from ._reader import Reader
from ._releases import Release
from ._sentinels import NEED_DATA, STOPPED

__all__ = ["ENGINES", "StreamVerdict", "check_in_context", "check_stream"]


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
    #: The source context the verdict was reached in (``None``: the readers' defaults).
    context: SourceContext | None = None
    #: What :func:`check_in_context` had to assume, in words, when the verdict depends on it.
    assumed: str | None = None
    #: The verdicts under the other contexts it could be (:func:`check_in_context`).
    alternatives: list[dict[str, Any]] = field(default_factory=list)
    #: Checks not applied for want of context ("RAMBlocks unknown: …").
    unchecked: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """``rejected``, ``truncated`` (the stream ends inside a frame) or ``accepted``."""
        if self.rejection is not None:
            return "rejected"
        if self.end is not None and self.end.truncated:
            return "truncated"
        return "accepted"

    @property
    def offset(self) -> int | None:
        """Where the verdict was decided: the rejected or cut-short frame, else ``None``."""
        if self.rejection is not None:
            return self.rejection.offset
        if self.end is not None and self.end.truncated:
            return self.end.offset
        return None

    @property
    def qemu_error(self) -> str | None:
        """The text the source prints about this stream, if any."""
        if self.rejection is not None:
            return self.rejection.qemu_error
        if self.shut is not None and self.shut.sibling_error:
            # The bytes are well-formed; the source still reports the destination's failure.
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
    context: SourceContext | Sequence[SourceContext] | None = None,
) -> list[StreamVerdict]:
    """Feed ``chunks`` to one reader per source release, in one pass.

    :param on_event: called with (index into ``releases``, event) as events appear,
        so long streams can be printed as they decode without being kept.
    :param engine: ``fast`` (the fast path, same events), ``model`` (the source-parser
        model itself) or ``construct`` (frames decoded by the construct grammar).
    :param context: the source's context (machine type, capabilities, RAMBlocks), one
        for all releases or one per release; ``None``: each reader's defaults.
    """
    reader_class = _reader_class(engine)
    if context is None or isinstance(context, SourceContext):
        contexts: list[SourceContext | None] = [context] * len(releases)
    else:
        contexts = list(context)
        if len(contexts) != len(releases):
            raise ValueError("one context per release")
    readers = [
        reader_class(r, **(c.reader_options() if c is not None else {}))
        for r, c in zip(releases, contexts, strict=True)
    ]
    verdicts = [
        StreamVerdict(release=r.release, context=c) for r, c in zip(readers, contexts, strict=True)
    ]
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


#: Messages whose RAM rules (block names, ranges, bitmap sizes) need the source's RAMBlocks.
_RAM_MESSAGES = ("MIG_RP_MSG_REQ_PAGES", "MIG_RP_MSG_REQ_PAGES_ID", "MIG_RP_MSG_RECV_BITMAP")


def _depends_on_acks(v: StreamVerdict) -> bool:
    """The verdict involves a SWITCHOVER_ACK the release may count."""
    ack = catalog(v.release).by_name.get("MIG_RP_MSG_SWITCHOVER_ACK")
    if ack is None:
        return False
    rej = v.rejection
    return v.counts.get(ack.name, 0) > 0 or (rej is not None and rej.message_type == ack.id)


def _summary(v: StreamVerdict) -> dict[str, Any]:
    return {
        "verdict": v.verdict,
        "frames": v.frames,
        "offset": v.offset,
        "error": v.qemu_error,
        "reason": v.rejection.message if v.rejection is not None else None,
    }


def check_in_context(
    releases: Sequence[Release | str],
    open_chunks: Callable[[], Iterable[bytes]],
    context: SourceContext,
    *,
    engine: str = "fast",
    on_event: Callable[[int, Event], None] | None = None,
) -> list[StreamVerdict]:
    """:func:`check_stream` in ``context``, saying what each verdict assumed.

    Where a verdict depends on context ``context`` does not have (today: the
    SWITCHOVER_ACK rule of 11.1+, on the machine type and ``switchover-ack``), the
    stream is read again under each other context it could be and
    :attr:`StreamVerdict.alternatives` holds those verdicts that differ;
    :attr:`StreamVerdict.assumed` says what was assumed. Checks skipped for want of
    RAMBlocks are listed in :attr:`StreamVerdict.unchecked`.

    :param open_chunks: returns the stream's chunks from the start, each time it is
        called (a second pass happens only when some verdict depends on the context).
    """
    verdicts = check_stream(releases, open_chunks(), on_event, engine=engine, context=context)
    again: list[tuple[int, Any]] = []
    for i, v in enumerate(verdicts):
        if context.ram_blocks is None and any(v.counts.get(n) for n in _RAM_MESSAGES):
            v.unchecked.append(
                "RAMBlocks unknown: page-request block names and ranges, and bitmap sizes, "
                "were not checked (give --ram-blocks IDSTR:SIZE,…)"
            )
        if _depends_on_acks(v):
            again += [(i, alt) for alt in context_alternatives(v.release, context)]
    if again:
        others = check_stream(
            [verdicts[i].release for i, _ in again],
            open_chunks(),
            engine=engine,
            context=[alt.context for _, alt in again],
        )
        for (i, alt), w in zip(again, others, strict=True):
            v = verdicts[i]
            if _summary(w) == _summary(v):
                continue
            v.assumed = assumptions_text(v.release, context)
            v.alternatives.append({"with": alt.label, "flags": alt.context.flags(), **_summary(w)})
    return verdicts
