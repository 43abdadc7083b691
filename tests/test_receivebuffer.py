"""The one receive buffer every reader keeps its input in, and the handler table the fast
path derives its rules from."""

from __future__ import annotations

import pytest

from migcompat.protocol import FastReader, ForwardReader, Reader, build_frame
from migcompat.protocol._fast import fast_plan
from migcompat.protocol._reader import ALWAYS, HANDLERS, Handler
from migcompat.protocol._receivebuffer import COMPACT_AFTER, ReceiveBuffer


def test_compaction_drops_consumed_bytes_and_keeps_offsets() -> None:
    b = ReceiveBuffer()
    b.feed(bytes(range(256)) * (COMPACT_AFTER // 128))
    b.consume(COMPACT_AFTER + 10)
    before = b.offset
    b.feed(b"tail")
    assert b.base == COMPACT_AFTER + 10 and b.pos == 0  # consumed bytes dropped
    assert b.offset == before and b.end == 2 * COMPACT_AFTER + 4
    assert b.peek(1) == bytes([(COMPACT_AFTER + 10) % 256])
    assert b.span(before - 5, before + 2) == b.peek(2)  # clipped to what is still held


def test_snapshot_keeps_its_bytes_through_compaction() -> None:
    b = ReceiveBuffer()
    b.feed(bytes(COMPACT_AFTER) + b"ABCDEFGH" + bytes(COMPACT_AFTER))
    b.consume(COMPACT_AFTER)
    snap = b.snapshot()
    assert b.take(4) == b"ABCD"
    b.consume(COMPACT_AFTER)
    b.feed(b"more")
    assert b.base <= snap  # pinned: nothing from the snapshot on was dropped
    b.restore(snap)
    assert b.offset == snap and b.take(8) == b"ABCDEFGH"
    b.drop_snapshot()
    b.consume(b.available - 4)
    b.feed(b"x")
    assert b.base > snap  # no longer pinned
    with pytest.raises(ValueError, match="not the newest"):
        b.restore(snap)


def test_receive_rules_are_one_for_every_reader() -> None:
    for reader in (Reader("10.0"), FastReader("10.0"), ForwardReader("10.0")):
        reader.receive_data(b"")
        with pytest.raises(ValueError, match="after EOF"):
            reader.receive_data(b"\x00")


def test_fast_path_follows_the_handler_table(monkeypatch: pytest.MonkeyPatch) -> None:
    pong = build_frame("10.0", "PONG", value=5) * 4
    fast_plan.cache_clear()
    assert "PONG" in fast_plan("10.0").names
    # A rule added to the model's table takes PONG off the fast path, with no other edit.
    table = {**HANDLERS, "PONG": Handler("_layout", ALWAYS)}
    monkeypatch.setattr("migcompat.protocol._reader.HANDLERS", table)
    fast_plan.cache_clear()
    try:
        assert "PONG" not in fast_plan("10.0").names
        fast, model = FastReader("10.0"), Reader("10.0")
        for r in (fast, model):
            r.receive_data(pong)
        assert list(fast.events()) == list(model.events())
    finally:
        fast_plan.cache_clear()
