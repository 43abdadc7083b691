"""The reference engine: every accepted frame decoded by the construct grammar.

``migcompat decode --engine construct`` and ``check_stream(..., engine="construct")``
use :class:`ConstructReader`. The declarative grammar (:func:`frame_grammar`) cannot
know QEMU's error texts, where the source stops reading, or what it does at end of
stream, so framing and verdicts come from the model :class:`Reader` running in
lockstep; the *values* of every accepted frame come from the grammar's parse of that
frame's bytes. Two outcomes are specific to this engine:

* the documented leniency: QEMU accepts a RECV_BITMAP whose name-length byte points
  past its frame (it reads stale bytes of its stack buffer); the grammar refuses it,
  and this engine raises a :class:`RemoteViolation` saying so (``qemu_error`` is
  ``None``: QEMU itself prints nothing);
* a frame both accept with different values would be a bug in one of them and
  raises ``AssertionError`` (the property tests show it does not happen).
"""

from __future__ import annotations

import io
from typing import Any

import construct as cs

from ._catalog import RpCatalog
from ._errors import RemoteViolation
from ._events import Event, EventSource, Message, RawMessage, RecvBitmap
from ._grammar import frame_grammar
from ._layouts import PAYLOAD_LAYOUTS
from ._reader import Reader, event_class
from ._releases import Release
from ._sentinels import NEED_DATA, STOPPED

__all__ = ["ConstructReader"]


def __dir__() -> list[str]:
    return list(__all__)


class ConstructReader(EventSource):
    """:class:`~migcompat.protocol.Reader`'s interface; frames decoded by the construct grammar.

    Parameters as :class:`~migcompat.protocol.Reader` (RAM checks are the model's).
    """

    def __init__(self, release: Release | str, **options: Any) -> None:
        self._model = Reader(release, **options)
        self.catalog: RpCatalog = self._model.catalog
        self.release: Release = self._model.release
        self._grammar = frame_grammar(self.release)
        self._error: RemoteViolation | None = None

    @property
    def offset(self) -> int:
        return self._model.offset

    @property
    def stopped(self) -> bool:
        return self._error is not None or self._model.stopped

    @property
    def buffered(self) -> int:
        return self._model.buffered

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the wire; ``b""`` means the connection ended."""
        self._model.receive_data(data)

    def next_event(self) -> Event | type[NEED_DATA] | type[STOPPED]:
        """As :meth:`Reader.next_event`, with the frame's values from the grammar.

        :raises RemoteViolation: the source rejects the bytes, or the grammar rejects
            a frame QEMU accepts (the documented leniency); sticky.
        """
        if self._error is not None:
            raise self._error
        m = self._model
        # The source's stream state before this frame: the grammar checks it too.
        state = {"acks_left": m.switchover_acks_pending, "block_named": m._block_named}
        ev = m.next_event()
        if not isinstance(ev, Message):
            return ev
        frame = m.buffer.span(ev.offset, ev.offset + ev.size)
        try:
            stream = io.BytesIO(frame)
            parsed = self._grammar.parse_stream(stream, **state)
            if stream.tell() != len(frame):  # pragma: no cover - framing always agrees
                raise cs.ConstructError(f"grammar read {stream.tell()} of {len(frame)} bytes")
        except cs.ConstructError as exc:
            self._error = RemoteViolation(
                f"the construct grammar rejects this {ev.name}, which the {self.release} "
                f"source accepts (the grammar is stricter than QEMU, which reads a "
                f"RECV_BITMAP name past its frame from its stack buffer): {exc}",
                offset=ev.offset,
                release=self.release,
                message_type=ev.type_id,
                data=frame[:64],
                caret=4,
                stopped_at=ev.offset + ev.size,
            )
            raise self._error from None
        got = self._event(ev, parsed)
        if got != ev:  # pragma: no cover - a bug in the grammar or the model
            raise AssertionError(f"grammar and model disagree:\n  grammar {got!r}\n  model {ev!r}")
        return got

    def _event(self, ev: Message, c: cs.Container) -> Message:
        """The typed event built from the grammar's parse ``c`` (position from the frame)."""
        spec = self.catalog.by_id[c.type]
        cls = event_class(spec)
        common: dict[str, Any] = {
            "release": self.release,
            "offset": ev.offset,
            "type_id": c.type,
            "length": c.length,
            "size": 4 + c.length + (16 + c.blob.bitmap_size if c.blob is not None else 0),
        }
        payload = c.payload
        if cls is RawMessage:
            return RawMessage(**common, short_name=spec.short_name, payload=payload.payload)
        fields = {name: payload[name] for name, _ in PAYLOAD_LAYOUTS[spec.short_name]}
        if cls is RecvBitmap:
            name = fields["block_name"]
            raw = name.encode("latin-1")
            return RecvBitmap(
                **common,
                # QEMU reads the name up to the NUL it writes after it.
                block_name=name.split("\0", 1)[0],
                payload=bytes([len(raw)]) + raw + payload.trailing,
                bitmap_size=c.blob.bitmap_size,
                bitmap=c.blob.bitmap,
                end_mark=c.blob.end_mark,
            )
        return cls(**common, **fields)
