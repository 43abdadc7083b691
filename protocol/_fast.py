"""The fast decoding path: bulk-decodes runs of well-formed frames, the model does the rest.

Theory of operation
-------------------
:class:`FastReader` has :class:`~migcompat.protocol.Reader`'s interface and owns
one. Its events are the model's events, value for value; it only skips the
model's per-frame interpretation where that interpretation cannot matter:

* A *plan* per source release is generated from the catalog and the payload
  layouts (never typed by hand): for every message with a fixed length and a
  layout of plain ``be32``/``be64`` fields (or no layout: a raw payload), the
  exact 4 header bytes it must start with, a precomputed ``struct.Struct`` of
  its payload and a generated function that turns ``k`` such frames into ``k``
  typed events; for a layout ending in a ``pstr8`` whose handler only requires
  ``length == fixed part + 1 + n`` (REQ_PAGES_ID), a generated one-frame decoder.
* Strategy: at a frame boundary the next header is looked up in the plan. A run
  of frames with the *same* header is measured in bulk (4 strided byte slices,
  ``lstrip`` counts the leading equal bytes), decoded with one ``iter_unpack``
  and built in one generated loop. A header the plan does not know (an invalid
  type or length, SHUT, RESUME_ACK, RECV_BITMAP, any frame with RAM checks), a
  cut-short frame, end of stream: the fast path stops *before* that frame and the
  model reads it, with all of its rules, texts and positions.
* QEMU's 512-byte stack buffer (which RECV_BITMAP reads stale bytes from) is kept
  exact: every bulk step records, per payload length, the last frame of that
  length, and before the model reads anything those payloads are written into the
  model's buffer in stream order, exactly as the model would have written them.

Events are built by the generated code calling the event class (a
``msgspec.Struct``: its constructor is C code, and ``gc=False`` keeps millions
of them out of the garbage collector's way; numbers in docs/performance.md).

Which frames the model must read comes from the model's own handler table
(``HANDLERS`` in ``_reader.py``, through :func:`model_reads`): a rule added there
applies here with no edit. The hypothesis properties in
``tests/property/test_fast_equivalence.py`` compare the two readers on arbitrary
and mutated streams. The fast path moves the model's read position and stack
buffer only through the model's :meth:`~Reader.skip_frames`,
:meth:`~Reader.snapshot` and :meth:`~Reader.restore`.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from operator import itemgetter, length_hint
from typing import Any

from ._catalog import MessageSpec, RpCatalog, catalog
from ._errors import RemoteViolation
from ._events import EVENT_TYPES, Event, EventSource, RawMessage
from ._layouts import FIELD_SIZES, PAYLOAD_LAYOUTS
from ._reader import (
    ALWAYS,
    HANDLERS,
    RamBlock,
    Reader,
    ReaderSnapshot,
    as_ram_blocks,
    event_class,
    model_reads,
)
from ._releases import Release
from ._sentinels import NEED_DATA, STOPPED

__all__ = ["FastReader", "fast_plan"]


def __dir__() -> list[str]:
    return list(__all__)


#: Messages the model reads in every context (derived from its handler table).
_HANDLER_RULES = frozenset(name for name, h in HANDLERS.items() if h.when == ALWAYS)
#: Events made per fill for ``next_event()``: bounds the memory a huge buffered input
#: pins at once, and what ``_unread_pending`` re-reads when context is set midway.
MAX_BATCH = 512
#: Frames examined per bulk step when measuring a run of equal headers (first, at most).
_MIN_WINDOW = 64
_WINDOW = 1024

_STRUCT_CODES = {"be32": "I", "be64": "Q"}
_U32 = struct.Struct(">I").unpack_from


# -- plans: generated from the catalog and the layouts ----------------------------------


@dataclass(frozen=True, slots=True)
class _Run:
    """Bulk decoder of frames that all start with one 4-byte header."""

    header: bytes
    size: int
    length: int
    #: ``run(data, pos, k, offset, out)`` appends ``k`` events to ``out``.
    run: Callable[..., None]
    #: The header as 4 one-byte strings, for ``lstrip``.
    header_bytes: tuple[bytes, bytes, bytes, bytes]


@dataclass(frozen=True, slots=True)
class FastPlan:
    """What the fast path of one source release decodes itself (everything else: the model)."""

    release: Release
    #: be32 of the header (type << 16 | length) → bulk decoder.
    runs: Mapping[int, _Run]
    #: type id → one-frame decoder ``(data, pos, end, offset, out) -> next pos | -1``.
    tails: Mapping[int, Callable[..., int]]
    #: Table names decoded by the fast path, for docs and tests.
    names: tuple[str, ...]
    #: The generated source, for reading and debugging.
    source: str


#: Frames built per iteration of a generated bulk loop (fewer loop and unpack steps per frame).
_UNROLL = 8


def _make(spec: MessageSpec, off: str, length: str, size: str, extra: list[str]) -> str:
    """The constructor call of one event of ``spec`` (``extra``: ``field=value`` items)."""
    items = [
        "release=rel",
        f"offset={off}",
        f"type_id={spec.id}",
        f"length={length}",
        f"size={size}",
        *extra,
    ]
    return f"CLS({', '.join(items)})"


def _gen_run(spec: MessageSpec, ns: dict[str, Any]) -> str | None:
    """Source of the bulk decoder of ``spec``, or ``None`` if the model must read it.

    ``run_<id>(data, pos, k, off0, out)`` appends the events of the ``k`` frames at
    ``data[pos:]`` (stream offset ``off0``) to ``out``.
    """
    name, length = spec.short_name, spec.length
    assert length is not None
    cls = event_class(spec)
    size = 4 + length
    sid = spec.id
    head = [
        f"def run_{sid}(data, pos, k, off0, out):",
        f"    CLS = CLS_{sid}",
        "    rel = REL",
        "    ap = out.append",
    ]
    if cls is RawMessage:
        ns[f"NAME_{sid}"] = name
        make = _make(
            spec,
            "off",
            str(length),
            str(size),
            [f"short_name=NAME_{sid}", f"payload=bytes(data[p + 4:p + {size}])"],
        )
        loop = [
            f"    for p, off in zip(range(pos, pos + k * {size}, {size}), "
            f"range(off0, off0 + k * {size}, {size})):",
            f"        ap({make})",
        ]
    else:
        layout = PAYLOAD_LAYOUTS[name]
        if any(kind not in _STRUCT_CODES for _, kind in layout):
            return None
        fixed = sum(FIELD_SIZES[kind] for _, kind in layout)
        if fixed > length:
            return None  # the model's unpack fails; let it
        if not layout:
            loop = [
                f"    for off in range(off0, off0 + k * {size}, {size}):",
                f"        ap({_make(spec, 'off', str(length), str(size), [])})",
            ]
        else:
            one = ">4x" + "".join(_STRUCT_CODES[kind] for _, kind in layout) + f"{length - fixed}x"
            ns[f"UNPACK_{sid}"] = struct.Struct(one).iter_unpack
            ns[f"UNPACK{_UNROLL}_{sid}"] = struct.Struct(">" + one[1:] * _UNROLL).iter_unpack
            u, block = _UNROLL, _UNROLL * size
            # _UNROLL frames per iteration, then the rest one by one.
            targets = ", ".join(f"v{i}_{field}" for i in range(u) for field, _ in layout)
            unrolled = [
                _make(
                    spec,
                    f"off + {i * size}" if i else "off",
                    str(length),
                    str(size),
                    [f"{field}=v{i}_{field}" for field, _ in layout],
                )
                for i in range(u)
            ]
            names = ", ".join(f"v_{field}" for field, _ in layout)
            single = _make(
                spec, "off", str(length), str(size), [f"{field}=v_{field}" for field, _ in layout]
            )
            loop = [
                f"    n = k // {u} * {block}",
                "    if n:",
                "        off = off0",
                f"        for ({targets},) in UNPACK{u}_{sid}(data[pos:pos + n]):",
                "            out.extend((",
                *(f"                {call}," for call in unrolled),
                "            ))",
                f"            off += {block}",
                "        pos += n",
                "        off0 += n",
                f"    for off, ({names},) in zip(range(off0, off0 + k % {u} * {size}, {size}), "
                f"UNPACK_{sid}(data[pos:pos + k % {u} * {size}])):",
                f"        ap({single})",
            ]
    ns[f"CLS_{sid}"] = cls
    return "\n".join([*head, *loop]) + "\n"


def _gen_tail(spec: MessageSpec, cat: RpCatalog, ns: dict[str, Any]) -> str | None:
    """Source of the one-frame decoder of a layout ending in ``pstr8`` (REQ_PAGES_ID)."""
    layout = PAYLOAD_LAYOUTS[spec.short_name]
    if spec.length is not None or not layout or layout[-1][1] != "pstr8":
        return None
    head_fields = layout[:-1]
    if any(kind not in _STRUCT_CODES for _, kind in head_fields):
        return None
    tail_field = layout[-1][0]
    fixed = sum(FIELD_SIZES[kind] for _, kind in head_fields)
    fmt = ">" + "".join(_STRUCT_CODES[k] for _, k in head_fields) + "B"
    ns[f"PREFIX_{spec.id}"] = struct.Struct(fmt).unpack_from
    ns[f"CLS_{spec.id}"] = EVENT_TYPES[spec.short_name]
    names = [f"v_{field}" for field, _ in head_fields]
    make = _make(
        spec,
        "off",
        "length",
        "4 + length",
        [
            *(f"{field}=v_{field}" for field, _ in head_fields),
            f"{tail_field}=data[pos + {4 + fixed + 1}:pos + 4 + length].decode('latin-1')",
        ],
    )
    lines = [
        f"def tail_{spec.id}(data, pos, end, off, out, CLS=CLS_{spec.id}, rel=REL):",
        "    length = data[pos + 2] << 8 | data[pos + 3]",
        # migration.c: expected_len = 12 + 1 + buf[12] (the idstr length byte);
        # the header check allows up to the stack buffer.
        f"    if length < {fixed + 1} or length > {cat.buffer_size} or end - pos < 4 + length:",
        "        return -1",
        f"    {', '.join([*names, 'n'])} = PREFIX_{spec.id}(data, pos + 4)",
        f"    if length != {fixed + 1} + n:",
        "        return -1",
        f"    out.append({make})",
        "    return pos + 4 + length",
    ]
    return "\n".join(lines) + "\n"


@cache
def fast_plan(
    release: Release | str, *, ram_checks: bool = False, stateful_switchover_ack: bool = True
) -> FastPlan:
    """The fast path of ``release``'s source, generated from its catalog and the layouts.

    :param ram_checks: the reader knows the source's RAMBlocks, so the page-request
        handlers have rules that depend on state; leave those messages to the model.
    :param stateful_switchover_ack: where the release counts SWITCHOVER_ACKs (11.1+,
        not in legacy mode), leave them to the model too.
    """
    cat = catalog(release)
    counted = stateful_switchover_ack and cat.switchover_ack_accounting == "counted"
    ns: dict[str, Any] = {"REL": cat.release, "__builtins__": __builtins__}
    sources: list[str] = []
    runs: dict[int, tuple[bytes, int, int, str]] = {}
    tails: dict[int, str] = {}
    names: list[str] = []
    for spec in cat.messages:
        name = spec.short_name
        if not spec.id or model_reads(name, ram_checks=ram_checks, counted=counted):
            continue
        if spec.length is not None:
            if spec.length > cat.buffer_size:
                continue  # every such frame is rejected by the header check
            src = _gen_run(spec, ns)
            if src is not None:
                header = struct.pack(">HH", spec.id, spec.length)
                key = int.from_bytes(header, "big")
                runs[key] = (header, 4 + spec.length, spec.length, f"run_{spec.id}")
                sources.append(src)
                names.append(name)
        elif name in PAYLOAD_LAYOUTS and event_class(spec) is not RawMessage:
            src = _gen_tail(spec, cat, ns)
            if src is not None:
                tails[spec.id] = f"tail_{spec.id}"
                sources.append(src)
                names.append(name)
    source = "\n".join(sources)
    # Generated from the catalog and layouts only: no user input reaches this source.
    exec(compile(source, f"<fast path of {cat.release}>", "exec"), ns)
    return FastPlan(
        release=cat.release,
        runs={
            key: _Run(
                header=h,
                size=size,
                length=length,
                run=ns[fn],
                header_bytes=(h[0:1], h[1:2], h[2:3], h[3:4]),
            )
            for key, (h, size, length, fn) in runs.items()
        },
        tails={t: ns[fn] for t, fn in tails.items()},
        names=tuple(names),
        source=source,
    )


# -- the reader ------------------------------------------------------------------------


class FastReader(EventSource):
    """:class:`~migcompat.protocol.Reader`'s interface and events, decoded in bulk.

    Parameters as :class:`~migcompat.protocol.Reader`. Everything the fast path
    does not decode itself (see the module docstring) is read by an internal
    ``Reader``, so rejections, end of stream and their texts are the model's own.
    """

    _reads_ahead = True

    def __init__(self, release: Release | str, **options: Any) -> None:
        self._model = Reader(release, **options)
        # The model's receive buffer (one object for the model's lifetime), read in place.
        self._buf = self._model.buffer
        self.catalog: RpCatalog = self._model.catalog
        self.release: Release = self._model.release
        self._plan = self._plan_for_model()
        # Decoded by the fast path, not yet returned (what is left in ``_ready``, an
        # iterator over ``_batch``); the model's read position is already after them.
        # A list iterator, so that ``events()`` hands them out with ``yield from`` (C
        # speed), each one as the consumer asks, and none is lost if it stops early.
        self._batch: list[Event] = []
        self._ready: Iterator[Event] = iter(self._batch)
        self._win = _MIN_WINDOW
        #: The last fill into ``_batch``: the model's snapshot before it and its event
        #: count, so that context set midway can re-read what is pending.
        self._last_fill: tuple[ReaderSnapshot, int] | None = None
        # REQ_PAGES before any REQ_PAGES_ID is the model's to reject ("no previous block").
        cat = self.catalog
        req = cat.by_name.get("MIG_RP_MSG_REQ_PAGES")
        rid = cat.by_name.get("MIG_RP_MSG_REQ_PAGES_ID")
        self._req_pages_key = (req.id << 16 | (req.length or 0)) if req else None
        self._req_pages_id_type = rid.id if rid else None

    # -- public interface (Reader's) ------------------------------------------------------
    @property
    def ram_blocks(self) -> dict[str, RamBlock] | None:
        return self._model.ram_blocks

    @ram_blocks.setter
    def ram_blocks(self, blocks: Mapping[str, RamBlock | int] | None) -> None:
        """Set the source's RAMBlocks midway, as on :class:`Reader` (a capture learns them
        from the forward stream): frames not yet returned are read with them."""
        self._unread_pending()
        self._model.ram_blocks = as_ram_blocks(blocks)
        self._plan = self._plan_for_model()

    def set_machine(self, machine: str) -> None:
        """As :meth:`Reader.set_machine`. Only counted SWITCHOVER_ACKs depend on it, and
        the model reads those itself, so no decoded frame is affected."""
        self._model.set_machine(machine)

    @property
    def target_page_size(self) -> int:
        return self._model.target_page_size

    @property
    def host_page_size(self) -> int:
        return self._model.host_page_size

    @property
    def max_bitmap_size(self) -> int:
        return self._model.max_bitmap_size

    @property
    def offset(self) -> int:
        """Stream offset of the next unread byte, as the caller has seen events so far."""
        n = length_hint(self._ready)
        return self._batch[-n].offset if n else self._model.offset

    @property
    def stopped(self) -> bool:
        return not length_hint(self._ready) and self._model.stopped

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as events."""
        return self._model.buffered + (self._model.offset - self.offset)

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the wire; ``b""`` means the connection ended."""
        self._model.receive_data(data)

    def next_event(self) -> Event | type[NEED_DATA] | type[STOPPED]:
        """As :meth:`Reader.next_event`.

        :raises RemoteViolation: the source rejects the bytes (sticky, like the model).
        """
        ev = next(self._ready, None)
        if ev is not None:
            return ev
        got = self._advance()
        return next(self._ready) if got is None else got

    def drain(self) -> list[Event]:
        """Every event available now, as one list (the bulk form of :meth:`events`).

        A rejection after some events is raised by the *next* call (the model's
        violation is sticky), so no decoded event is lost.

        :raises RemoteViolation: the source rejects the bytes and no event precedes it.
        """
        out = list(self._ready)
        model = self._model
        model.drop_snapshot()  # nothing is pending: no re-read will need the last fill's bytes
        while True:
            if model.at_frame_boundary:
                before = len(out)
                # All of them end up in one list anyway: no batch limit here.
                self._fill(out, budget=1 << 30)
                if len(out) > before:
                    continue
            try:
                ev = model.next_event()
            except RemoteViolation:
                if out:
                    return out
                raise
            if not isinstance(ev, Event):  # NEED_DATA or STOPPED
                return out
            out.append(ev)

    # -- machinery -----------------------------------------------------------------------
    def _advance(self) -> Event | type[NEED_DATA] | type[STOPPED] | None:
        """``None`` when ``_ready`` holds events (still, or a new batch), else the model's
        next event."""
        if length_hint(self._ready) or (self._model.at_frame_boundary and self._refill()):
            return None
        return self._model.next_event()

    def _plan_for_model(self) -> FastPlan:
        """The plan that leaves to the model every frame its current context has rules for."""
        m = self._model
        return fast_plan(
            self.release,
            ram_checks=m.ram_blocks is not None,
            # Whether the source counts them may change with set_machine: always the model's.
            stateful_switchover_ack=True,
        )

    def _unread_pending(self) -> None:
        """Give the events decoded but not yet returned back to the model, unread.

        They all come from the last fill into ``_batch``: the model is set back to
        where that fill began (its bytes and QEMU's stack buffer then) and reads the
        frames already returned again, so that it stands before the first pending one.
        """
        pending = length_hint(self._ready)
        if not pending:
            return
        assert self._last_fill is not None
        snap, made = self._last_fill
        m = self._model
        m.restore(snap)
        for _ in range(made - pending):
            ev = m.next_event()
            assert ev is not NEED_DATA and ev is not STOPPED, "re-read diverged"
        deque(self._ready, 0)  # exhausted: an events() loop over it moves on

    def _refill(self) -> bool:
        """Decode the next batch (at most :data:`MAX_BATCH`) into ``_batch``; any?"""
        batch: list[Event] = []
        self._fill(batch, keep=True)
        if not batch:
            return False
        self._batch, self._ready = batch, iter(batch)
        return True

    def _fill(self, out: list[Event], budget: int = MAX_BATCH, *, keep: bool = False) -> None:
        """Decode up to ``budget`` frames at the model's position; sync its stack buffer.

        ``keep``: remember what :meth:`_unread_pending` needs (fills into ``_batch``).
        """
        m = self._model
        rb = self._buf
        data = rb.data
        pos = start = rb.pos
        end = len(data)
        shift = rb.base  # stream offset of data[0]
        runs = self._plan.runs
        tails = self._plan.tails
        # (payload length, NUL written after it) -> payload position of the last such frame
        marks: dict[tuple[int, bool], int] = {}
        # The window: frames examined per step. It doubles while runs fill it (long runs
        # take few steps) and after a run ends it is set from that run's length, so a
        # stream of similar runs measures each in one step.
        win = self._win
        seen = 0  # frames of the current run decoded by earlier steps
        # REQ_PAGES waits for a REQ_PAGES_ID (the model's "no previous block" otherwise)
        named = m._block_named
        unnamed = None if named else self._req_pages_key
        while budget > 0 and end - pos >= 4:
            (key,) = _U32(data, pos)
            r = runs.get(key)
            if r is not None:
                if key == unnamed:
                    break
                size = r.size
                w = (end - pos) // size
                if w > budget:
                    w = budget
                if w > win:
                    w = win
                if w == 0:
                    break
                k = w
                if w > 1:
                    # Frames whose 4 header bytes all equal the run's: count the leading
                    # equal bytes of each header byte's column.
                    stop = pos + w * size
                    h0, h1, h2, h3 = r.header_bytes
                    k = w - max(
                        len(data[pos:stop:size].lstrip(h0)),
                        len(data[pos + 1 : stop : size].lstrip(h1)),
                        len(data[pos + 2 : stop : size].lstrip(h2)),
                        len(data[pos + 3 : stop : size].lstrip(h3)),
                    )
                    if k < w:
                        seen += k
                        win = min(_WINDOW, max(_MIN_WINDOW, 2 * seen))
                        seen = 0
                    else:
                        seen += k
                        if win < _WINDOW:
                            win *= 2
                r.run(data, pos, k, shift + pos, out)
                pos += k * size
                budget -= k
                marks[(r.length, False)] = pos - size + 4
                continue
            seen = 0
            tail = tails.get(key >> 16)
            if tail is None:
                break
            npos = tail(data, pos, end, shift + pos, out)
            if npos < 0:
                break
            if key >> 16 == self._req_pages_id_type:
                named, unnamed = True, None
            marks[(npos - pos - 4, True)] = pos + 4
            pos = npos
            budget -= 1
        self._win = win
        if pos == start:
            return
        if keep:
            self._last_fill = (m.snapshot(), len(out))
        # QEMU's stack buffer, as the model would have left it (stream order).
        m.skip_frames(
            pos,
            [(at, length, nul) for (length, nul), at in sorted(marks.items(), key=itemgetter(1))],
        )
        m._block_named = named
