"""Hypothesis strategies for return-path frames of any release or overlay (public).

For QEMU developers writing a new return-path message and for this project's
own property tests and ``migcompat fuzz``. Everything is derived from the
catalog, so a catalog built from a patched QEMU (``MIGCOMPAT_CATALOG``) gets
strategies for its new messages with no code change.

Each strategy draws a :class:`FrameSample`: the bytes, and what the source of
that release does with them, worked out *independently of the reader* from the
catalog and QEMU's handler order — accepted or not, the exact text it prints,
the offset of the frame it rejects and the stream position where it stops
reading. :func:`check_sample` is the oracle: it runs
:class:`~migcompat.protocol.Reader` over a sample and asserts all of that.

What there is:

* :func:`valid_frames` — every message the release dispatches, well formed
  (with ``ram=`` a RAMBlock context: page requests inside real blocks, bitmaps of
  the right size);
* :func:`invalid_frames` — one class of bad frame per name in
  :data:`INVALID_KINDS` (see :func:`kinds_for`). Kinds in :data:`RAM_KINDS` need
  the source's RAMBlocks; without ``ram=`` they are drawn only when asked for by
  name (with :data:`DEFAULT_RAM`), so by default every prediction holds for a
  plain ``Reader(release)``; samples always carry the RAM context they assume;
* :func:`lenient_frames` — frames QEMU accepts though no sender would build
  them (a RECV_BITMAP name length pointing past the frame);
* :func:`frames`, :func:`streams` — the above mixed, and whole streams of valid
  frames ending in a bad frame, a cut frame or a SHUT with garbage after it;
* :func:`mutated_streams` — raw bytes: streams with bytes overwritten, inserted,
  deleted, spliced headers (no prediction; for differential properties);
* :func:`max_rule_cases` — (accepted prefix, type, length) for the MAX rule;
* :func:`releases`, :func:`all_releases`, :func:`ram_blocks`, and the oracles
  :func:`check_sample`,
  :func:`check_max_rule`, :func:`check_stop_position`,
  :func:`check_grammar_agrees`, :func:`check_chunking`.

Example::

    from hypothesis import given
    from migcompat.protocol import strategies as rps

    @given(rps.streams("11.1+keepalive"))
    def test_my_parser(sample):
        ...  # sample.data, sample.accepted, sample.qemu_error, sample.offset

``hypothesis`` is a dependency of qemu-migcompat (installed with it).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

import construct as cs
from hypothesis import settings
from hypothesis import strategies as st

from ._catalog import MessageSpec, RpCatalog, catalog, known_releases
from ._catalog import overlays as all_overlays
from ._errors import RemoteViolation
from ._events import EndOfStream, Message, RecvBitmap, Shut
from ._grammar import build_frame, frame_grammar
from ._layouts import PAYLOAD_LAYOUTS
from ._reader import Reader, switchover_acks_expected
from ._releases import Release
from ._sentinels import NEED_DATA, STOPPED

__all__ = [
    "DEFAULT_RAM",
    "INVALID_KINDS",
    "RAM_KINDS",
    "SETTINGS",
    "FrameSample",
    "all_releases",
    "check_chunking",
    "check_grammar_agrees",
    "check_max_rule",
    "check_sample",
    "check_stop_position",
    "frames",
    "invalid_frames",
    "kinds_for",
    "lenient_frames",
    "max_rule_cases",
    "mutated_streams",
    "ram_blocks",
    "releases",
    "streams",
    "valid_frames",
]


def __dir__() -> list[str]:
    return list(__all__)


#: One settings profile for every property test of the project.
SETTINGS = settings(max_examples=150, deadline=None)

#: The classes of invalid frame :func:`invalid_frames` draws from (``truncated``
#: is not rejected: the stream ends inside a valid frame).
INVALID_KINDS = (
    "type-max",
    "type-above-max",
    "type-zero",
    "wrong-fixed-length",
    "too-long",
    "req-pages-id-bad-idstr-length",
    "recv-bitmap-no-name",
    "recv-bitmap-bad-size",
    "recv-bitmap-bad-end-mark",
    "recv-bitmap-bad-block",
    "resume-ack-bad-value",
    "req-pages-misaligned",
    "req-pages-no-block",
    "req-pages-overrun",
    "req-pages-no-previous-block",
    "switchover-ack-unrequested",
    "truncated",
)

#: Kinds whose rejection needs the source's RAMBlocks (``Reader(ram_blocks=…)``):
#: samples of these kinds always carry a RAM context (``DEFAULT_RAM`` unless given).
RAM_KINDS = frozenset(
    {
        "recv-bitmap-bad-size",
        "recv-bitmap-bad-block",
        "req-pages-misaligned",
        "req-pages-no-block",
        "req-pages-overrun",
    }
)

#: A small RAM context: idstr → used length (bytes). Bitmaps stay a few bytes long.
DEFAULT_RAM: Mapping[str, int] = {"pc.ram": 2 << 20, "pc.bios": 256 << 10}

_PAGE = 4096  # the Reader's default host and target page size
_Ram = tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class FrameSample:
    """Bytes of one frame (or a stream) and what the source release makes of them.

    The predictions are derived from the catalog and QEMU's handler order, not
    from the reader, so :func:`check_sample` is a real cross-check.
    """

    release: Release
    data: bytes
    kind: str
    #: The source dispatches every frame (``False``: it rejects one and stops).
    accepted: bool
    #: Catalog error key of the text the source prints, when it prints one.
    error_key: str | None = None
    #: The stream ends inside a frame (no rejection; ``offset`` is where that frame starts).
    truncated: bool = False
    #: The exact text the source prints (rejection, or a SHUT carrying an error).
    qemu_error: str | None = None
    #: Stream offset of the rejected (or cut-short) frame; ``None`` when there is none.
    offset: int | None = None
    #: Stream position where the source stops reading (``None``: it reads everything).
    stopped_at: int | None = None
    #: Messages the source dispatches (before the rejection, if any).
    frames: int = 1
    #: RAMBlock context (idstr, used length) the prediction assumes; ``None``: unknown RAM.
    ram: _Ram | None = None

    @property
    def ram_blocks(self) -> dict[str, int] | None:
        """The RAM context as ``Reader(ram_blocks=…)`` takes it."""
        return None if self.ram is None else dict(self.ram)

    def reader(self) -> Reader:
        """A fresh reader for this sample's release and RAM context."""
        return Reader(self.release, ram_blocks=self.ram_blocks)

    def to_json(self) -> dict[str, object]:
        """A JSON-able dict (bytes as hex); :meth:`from_json` reverses it."""
        return {
            "release": str(self.release),
            "data": self.data.hex(),
            "kind": self.kind,
            "accepted": self.accepted,
            "error_key": self.error_key,
            "truncated": self.truncated,
            "qemu_error": self.qemu_error,
            "offset": self.offset,
            "stopped_at": self.stopped_at,
            "frames": self.frames,
            "ram": [list(b) for b in self.ram] if self.ram is not None else None,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> FrameSample:
        ram = obj.get("ram")
        return cls(
            release=Release(str(obj["release"])),
            data=bytes.fromhex(str(obj["data"])),
            kind=str(obj["kind"]),
            accepted=bool(obj["accepted"]),
            error_key=obj.get("error_key"),
            truncated=bool(obj.get("truncated", False)),
            qemu_error=obj.get("qemu_error"),
            offset=obj.get("offset"),
            stopped_at=obj.get("stopped_at"),
            frames=int(obj.get("frames", 1)),
            ram=tuple((str(n), int(s)) for n, s in ram) if ram is not None else None,
        )


def _shifted(s: FrameSample, by: int, frames: int) -> FrameSample:
    return replace(
        s,
        offset=None if s.offset is None else s.offset + by,
        stopped_at=None if s.stopped_at is None else s.stopped_at + by,
        frames=s.frames + frames,
    )


# -- releases and RAM ----------------------------------------------------------


@cache
def all_releases(*, overlays: bool = True) -> tuple[Release, ...]:
    """Every release line in the catalog, plus every overlay that applies to one."""
    out: list[Release] = list(known_releases())
    if overlays:
        for name, o in all_overlays().items():
            lines = [r for r in known_releases() if catalog(r).max == o.base_rp_max]
            out += [r.with_overlay(name) for r in lines]
    return tuple(out)


def releases(*, overlays: bool = True) -> st.SearchStrategy[Release]:
    """Every release line in the catalog, plus every overlay that applies to it."""
    return st.sampled_from(all_releases(overlays=overlays))


def _rel(release: Release | str) -> Release:
    return catalog(release).release


def ram_blocks(max_blocks: int = 3, max_pages: int = 512) -> st.SearchStrategy[dict[str, int]]:
    """Small RAM contexts: printable idstrs → used lengths (whole 4 KiB pages)."""
    names = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=24)
    sizes = st.integers(1, max_pages).map(lambda n: n * _PAGE)
    return st.dictionaries(names, sizes, min_size=1, max_size=max_blocks)


def _ram_tuple(ram: Mapping[str, int] | None) -> _Ram | None:
    return None if ram is None else tuple(sorted(ram.items()))


def _bitmap_size(used_length: int) -> int:
    """ram.c ``ram_dirty_bitmap_reload``: nbits = used_length >> TARGET_PAGE_BITS;
    local_size = ROUND_UP(DIV_ROUND_UP(nbits, 8), 8) — written out here, not taken from
    the reader's :class:`RamBlock`, so that the two are checked against each other."""
    nbits = used_length >> 12
    div_round_up = (nbits + 8 - 1) // 8
    return (div_round_up + 8 - 1) // 8 * 8


def _filler(n: int) -> st.SearchStrategy[bytes]:
    """``n`` bytes, cheaply: a short random pattern repeated (bitmaps can be KiBs)."""
    if n <= 64:
        return st.binary(min_size=n, max_size=n)
    return st.binary(min_size=1, max_size=16).map(lambda p: (p * (n // len(p) + 1))[:n])


# -- valid frames --------------------------------------------------------------


def _pstr(max_len: int = 255) -> st.SearchStrategy[str]:
    return st.binary(max_size=max_len).map(lambda b: b.decode("latin-1"))


def _page_range(used: int) -> st.SearchStrategy[tuple[int, int]]:
    """(start, len) of whole pages inside a block of ``used`` bytes."""
    pages = used // _PAGE
    return st.integers(0, pages - 1).flatmap(
        lambda first: st.integers(1, pages - first).map(lambda n: (first * _PAGE, n * _PAGE))
    )


def _message(cat: RpCatalog, spec: MessageSpec, ram: _Ram | None) -> st.SearchStrategy[FrameSample]:
    name = spec.short_name
    layout = PAYLOAD_LAYOUTS.get(name)
    rel = cat.release

    def sample(data: bytes, frames: int = 1, qemu_error: str | None = None) -> FrameSample:
        stop = len(data) if name == "SHUT" else None
        return FrameSample(
            rel,
            data,
            f"valid:{name}",
            True,
            error_key="shut_error" if qemu_error else None,
            qemu_error=qemu_error,
            stopped_at=stop,
            frames=frames,
            ram=ram,
        )

    if layout is None:
        size = st.just(spec.length) if spec.length is not None else st.integers(0, cat.buffer_size)
        return size.flatmap(
            lambda n: st.binary(min_size=n, max_size=n).map(
                lambda p: sample(build_frame(rel, name, payload=p))
            )
        )
    if name == "SHUT":
        # QEMU prints "Sibling indicated error %d" for a non-zero value and stops either way.
        return st.integers(0, 2**32 - 1).map(
            lambda v: sample(
                build_frame(rel, name, sibling_error=v),
                qemu_error=cat.format_error("shut_error", v)
                if v and "shut_error" in cat.errors
                else None,
            )
        )
    if name == "RECV_BITMAP":
        if ram is not None:
            return st.sampled_from(ram).flatmap(
                lambda b: _filler(_bitmap_size(b[1])).map(
                    lambda bm: sample(build_frame(rel, name, block_name=b[0], bitmap=bm))
                )
            )
        return st.builds(
            lambda n, bm: sample(build_frame(rel, name, block_name=n, bitmap=bm)),
            # QEMU NUL-terminates the name: a NUL inside it would change what it reads.
            st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=64),
            st.binary(max_size=256),
        )
    if ram is not None and name == "REQ_PAGES_ID":
        return st.sampled_from(ram).flatmap(
            lambda b: _page_range(b[1]).map(
                lambda r: sample(build_frame(rel, name, start=r[0], len=r[1], idstr=b[0]))
            )
        )
    if ram is None and name == "REQ_PAGES":
        # REQ_PAGES reuses the last block a REQ_PAGES_ID named (none: "no previous
        # block", RAM known or not): send the pair.
        return st.tuples(
            _pstr(), st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1),
            st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1),
        ).map(
            lambda t: sample(
                build_frame(rel, "REQ_PAGES_ID", start=t[1], len=t[2], idstr=t[0])
                + build_frame(rel, name, start=t[3], len=t[4]),
                frames=2,
            )
        )  # fmt: skip
    if ram is not None and name == "REQ_PAGES":
        # REQ_PAGES reuses the last block a REQ_PAGES_ID named: send the pair.
        return st.sampled_from(ram).flatmap(
            lambda b: st.tuples(_page_range(b[1]), _page_range(b[1])).map(
                lambda rr: sample(
                    build_frame(rel, "REQ_PAGES_ID", start=rr[0][0], len=rr[0][1], idstr=b[0])
                    + build_frame(rel, name, start=rr[1][0], len=rr[1][1]),
                    frames=2,
                )
            )
        )
    kw: dict[str, st.SearchStrategy[object]] = {}
    for field_name, kind in layout:
        if kind == "be32":
            kw[field_name] = st.integers(0, 2**32 - 1)
        elif kind == "be64":
            kw[field_name] = st.integers(0, 2**64 - 1)
        else:
            kw[field_name] = _pstr()
    if name == "RESUME_ACK":
        kw["value"] = st.just(cat.resume_ack_value)
    return st.fixed_dictionaries(kw).map(lambda f: sample(build_frame(rel, name, **f)))


def valid_frames(
    release: Release | str, *, shut: bool = True, ram: Mapping[str, int] | None = None
) -> st.SearchStrategy[FrameSample]:
    """Any well-formed frame the source of ``release`` dispatches.

    :param shut: include SHUT (it ends the source's reading).
    :param ram: a RAM context (idstr → used length): page requests then fall
        inside those blocks and RECV_BITMAP blobs have their exact size. Without
        it the reader checks neither, and neither does this strategy.
    """
    cat = catalog(release)
    r = _ram_tuple(ram)
    specs = [
        m
        for m in cat.messages
        if m.id
        and (shut or m.short_name != "SHUT")
        # 11.1+ takes a SWITCHOVER_ACK only when a device requested one; a plain
        # Reader models a guest without such devices (kind "switchover-ack-unrequested").
        and not (m.short_name == "SWITCHOVER_ACK" and cat.switchover_ack_accounting == "counted")
    ]
    return st.one_of(*[_message(cat, m, r) for m in specs])


def lenient_frames(release: Release | str) -> st.SearchStrategy[FrameSample]:
    """Frames QEMU dispatches though no destination builds them (no RAM context).

    A RECV_BITMAP whose name length byte points past the frame: QEMU NUL-terminates
    at ``buf[buf[0] + 1]`` in its 512-byte stack buffer and reads the name from
    whatever is there. Stale bytes only matter with a RAM context, so these
    samples carry none; the construct grammar refuses them (documented).
    """
    cat = catalog(release)
    spec = cat.by_name.get("MIG_RP_MSG_RECV_BITMAP")
    if spec is None:
        return st.nothing()

    def build(name_len: int, body: bytes, blob: bytes) -> FrameSample:
        payload = bytes([name_len]) + body
        head = struct.pack(">HH", spec.id, len(payload)) + payload
        tail = struct.pack(">Q", len(blob)) + blob + struct.pack(">Q", cat.recv_bitmap_ending)
        return FrameSample(cat.release, head + tail, "lenient:RECV_BITMAP", True)

    return (
        st.tuples(st.integers(1, 255), st.binary(max_size=32), st.binary(max_size=32))
        .filter(lambda t: t[0] + 1 > 1 + len(t[1]))
        .map(lambda t: build(*t))
    )


# -- invalid frames --------------------------------------------------------------


def kinds_for(release: Release | str, *, ram: bool = True) -> tuple[str, ...]:
    """The :data:`INVALID_KINDS` that ``release`` has messages for (``ram``: incl. RAM_KINDS)."""
    cat = catalog(release)
    names = {m.short_name for m in cat.messages}
    needs = {
        "recv-bitmap": "RECV_BITMAP",
        "resume-ack": "RESUME_ACK",
        "req-pages-id": "REQ_PAGES_ID",
        "req-pages": "REQ_PAGES",
    }
    out = []
    for kind in INVALID_KINDS:
        if kind in RAM_KINDS and not ram:
            continue
        prefix = next((p for p in sorted(needs, key=len, reverse=True) if kind.startswith(p)), None)
        if prefix is not None and needs[prefix] not in names:
            continue
        if kind == "switchover-ack-unrequested" and cat.switchover_ack_accounting != "counted":
            continue
        out.append(kind)
    return tuple(out)


def invalid_frames(
    release: Release | str,
    kind: str | None = None,
    *,
    ram: Mapping[str, int] | None = None,
) -> st.SearchStrategy[FrameSample]:
    """A frame the source of ``release`` rejects (or, for ``truncated``, that is cut short).

    :param kind: one of :func:`kinds_for` (default: any of them; without ``ram``, any
        but :data:`RAM_KINDS`).
    :param ram: the RAM context. A kind in :data:`RAM_KINDS` asked for explicitly without
        one uses :data:`DEFAULT_RAM`; the sample carries its context either way.
    :raises ValueError: ``kind`` is unknown or the release has no message for it.
    """
    cat = catalog(release)
    allowed = kinds_for(release)
    if kind is not None and kind not in allowed:
        raise ValueError(
            f"{kind!r} is not an invalid-frame kind of {cat.release}; known: {', '.join(allowed)}"
        )
    r = _ram_tuple(ram)
    # Without a RAM context, only kinds a plain Reader(release) rejects: every sample's
    # prediction then holds for callers that ignore ``sample.ram``.
    kinds = [kind] if kind else list(kinds_for(release, ram=r is not None))
    return st.one_of(*[_invalid(cat, k, r) for k in kinds])


def _hdr(t: int, n: int) -> bytes:
    return struct.pack(">HH", t, n)


def _recv_bitmap_head(release: Release, name: str) -> bytes:
    """A RECV_BITMAP frame alone, without the blob that follows it on the wire."""
    return build_frame(release, "RECV_BITMAP", block_name=name)[: 4 + 1 + len(name)]


def _invalid(cat: RpCatalog, kind: str, ram: _Ram | None) -> st.SearchStrategy[FrameSample]:
    rel = cat.release
    if kind in RAM_KINDS and ram is None:
        ram = _ram_tuple(DEFAULT_RAM)
    by_table = {m.short_name: m for m in cat.messages}

    def rej(data: bytes, key: str, *args: object, stop: int) -> FrameSample:
        return FrameSample(
            rel,
            data,
            kind,
            False,
            key,
            qemu_error=cat.format_error(key, *args),
            offset=0,
            stopped_at=stop,
            frames=0,
            ram=ram,
        )

    def bad_type(t: int, n: int) -> FrameSample:
        return rej(_hdr(t, n), "invalid_type", t, n, stop=4)

    def bad_length(m: MessageSpec, n: int, tail: bytes = b"") -> FrameSample:
        # QEMU stops after the header: whatever follows stays unread.
        return rej(
            _hdr(m.id, n) + tail,
            "bad_length",
            cat.printed_name(m),
            m.id,
            n,
            cat.printed_length(m),
            stop=4,
        )

    lengths = st.integers(0, 0xFFFF)
    if kind == "type-max":
        return lengths.map(lambda n: bad_type(cat.max, n))
    if kind == "type-above-max":
        return st.builds(bad_type, st.integers(cat.max + 1, 0xFFFF), lengths)
    if kind == "type-zero":
        return lengths.map(lambda n: bad_type(0, n))
    if kind == "wrong-fixed-length":
        fixed = [m for m in cat.messages if m.id and m.length is not None]
        return st.sampled_from(fixed).flatmap(
            lambda m: st.tuples(
                lengths.filter(lambda n: n != m.length), st.binary(max_size=16)
            ).map(lambda t: bad_length(m, t[0], t[1]))
        )
    if kind == "too-long":
        var = [m for m in cat.messages if m.id and m.length is None]
        return st.sampled_from(var).flatmap(
            lambda m: st.integers(cat.buffer_size + 1, 0xFFFF).map(lambda n: bad_length(m, n))
        )
    if kind == "req-pages-id-bad-idstr-length":
        m = by_table["REQ_PAGES_ID"]

        def bad(n_len: int, idlen: int, body: bytes) -> bytes:
            payload = (body + bytes(n_len))[:n_len]
            if n_len >= 13:
                payload = payload[:12] + bytes([idlen]) + payload[13:]
            return _hdr(m.id, n_len) + payload

        def predict(d: bytes) -> FrameSample:
            n_len = len(d) - 4
            # migration.c: expected_len = 12 + 1 (+ buf[12] once the header is there)
            expected = 13 + d[4 + 12] if n_len >= 13 else 13
            return rej(d, "req_pages_id_length", n_len, expected, stop=len(d))

        return (
            st.builds(
                bad, st.integers(0, cat.buffer_size), st.integers(0, 255), st.binary(max_size=64)
            )
            .filter(lambda d: len(d) - 4 < 13 or len(d) - 4 != 13 + d[4 + 12])
            .map(predict)
        )
    if kind == "recv-bitmap-no-name":
        m = by_table["RECV_BITMAP"]
        return st.just(rej(_hdr(m.id, 0), "recv_bitmap_no_name", stop=4))
    if kind == "recv-bitmap-bad-size":
        assert ram is not None

        def bad_size(block: tuple[str, int], size: int) -> FrameSample:
            head = _recv_bitmap_head(rel, block[0])
            expected = _bitmap_size(block[1])
            # Nothing after the size is read: no bitmap, however large the size says.
            return rej(
                head + struct.pack(">Q", size),
                "recv_bitmap_size_mismatch",
                block[0],
                size,
                expected,
                stop=len(head) + 8,
            )

        sizes = st.one_of(
            st.integers(0, 2**64 - 1),
            st.sampled_from([0, 8, 2**63, 2**64 - 1, 256 << 20, (256 << 20) + 8]),
        )
        return st.sampled_from(ram).flatmap(
            lambda b: sizes.filter(lambda s: s != _bitmap_size(b[1])).map(lambda s: bad_size(b, s))
        )
    if kind == "recv-bitmap-bad-end-mark":

        def bad_end(name: str, bitmap: bytes, v: int) -> FrameSample:
            good = build_frame(rel, "RECV_BITMAP", block_name=name, bitmap=bitmap)
            data = good[:-8] + struct.pack(">Q", v)
            return rej(data, "recv_bitmap_end_mark", name, v, stop=len(data))

        marks = st.integers(0, 2**64 - 1).filter(lambda v: v != cat.recv_bitmap_ending)
        if ram is not None:
            return st.sampled_from(ram).flatmap(
                lambda b: st.tuples(_filler(_bitmap_size(b[1])), marks).map(
                    lambda t: bad_end(b[0], t[0], t[1])
                )
            )
        names = st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=32)
        return st.builds(bad_end, names, st.binary(max_size=64), marks)
    if kind == "recv-bitmap-bad-block":
        assert ram is not None
        known = {n for n, _ in ram}
        names = st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=64).filter(
            lambda n: n not in known
        )
        return names.map(
            lambda n: (lambda d: rej(d, "recv_bitmap_bad_block", n, stop=len(d)))(
                _recv_bitmap_head(rel, n)
            )
        )
    if kind == "switchover-ack-unrequested":
        m = by_table["SWITCHOVER_ACK"]
        return st.just(rej(_hdr(m.id, 0), "switchover_ack_underflow", stop=4))
    if kind == "resume-ack-bad-value":
        m = by_table["RESUME_ACK"]
        return (
            st.integers(0, 2**32 - 1)
            .filter(lambda v: v != cat.resume_ack_value)
            .map(lambda v: rej(_hdr(m.id, 4) + struct.pack(">I", v), "resume_ack_value", v, stop=8))
        )
    if kind in ("req-pages-misaligned", "req-pages-no-block", "req-pages-overrun"):
        assert ram is not None
        return _bad_page_request(cat, kind, ram, rej)
    if kind == "req-pages-no-previous-block":
        # Only as a stream's first page request: afterwards a block has been named.
        return st.builds(
            lambda s, n: rej(
                build_frame(rel, "REQ_PAGES", start=s * _PAGE, len=n * _PAGE),
                "req_pages_no_previous_block",
                stop=16,
            ),
            st.integers(0, 2**40),
            st.integers(0, 2**20 - 1),
        )
    if kind == "truncated":
        return (
            valid_frames(rel, ram=dict(ram) if ram else None)
            .filter(lambda s: s.frames == 1)
            .flatmap(
                lambda s: st.integers(1, len(s.data) - 1).map(
                    lambda cut: FrameSample(
                        rel,
                        s.data[:cut],
                        kind,
                        True,
                        None,
                        truncated=True,
                        offset=0,
                        frames=0,
                        ram=ram,
                    )
                )
            )
        )
    raise ValueError(f"unknown invalid-frame kind {kind!r}")


def _bad_page_request(
    cat: RpCatalog, kind: str, ram: _Ram, rej: Callable[..., FrameSample]
) -> st.SearchStrategy[FrameSample]:
    """REQ_PAGES(_ID) failing QEMU's checks, in its order: alignment, block, range."""
    rel = cat.release
    u32, u64 = st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)
    known = {n for n, _ in ram}

    def frame(start: int, ln: int, name: str | None) -> bytes:
        if name is None:
            return build_frame(rel, "REQ_PAGES", start=start, len=ln)
        return build_frame(rel, "REQ_PAGES_ID", start=start, len=ln, idstr=name)

    if kind == "req-pages-misaligned":
        # Checked before the block is looked up: any name (or none) will do.
        names = st.one_of(st.none(), st.sampled_from(sorted(known)), _pstr(32))
        return (
            st.tuples(u64, u32, names)
            .filter(lambda t: t[0] % _PAGE or t[1] % _PAGE)
            .map(
                lambda t: (lambda d: rej(d, "req_pages_misaligned", t[0], t[1], stop=len(d)))(
                    frame(*t)
                )
            )
        )
    aligned64 = st.integers(0, 2**52 - 1).map(lambda p: p * _PAGE)
    aligned32 = st.integers(0, 2**20 - 1).map(lambda p: p * _PAGE)
    if kind == "req-pages-no-block":
        names = st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=40).filter(
            lambda n: n not in known
        )
        return st.tuples(aligned64, aligned32, names).map(
            lambda t: (lambda d: rej(d, "req_pages_no_block", t[2], stop=len(d)))(frame(*t))
        )

    # req-pages-overrun: ram_addr_t arithmetic, start + len - 1 outside the block
    def overrun(block: tuple[str, int], start: int, ln: int) -> FrameSample:
        d = frame(start, ln, block[0])
        return rej(d, "req_pages_overrun", start, ln, block[1], stop=len(d))

    return st.sampled_from(ram).flatmap(
        lambda b: (
            st.tuples(aligned64, aligned32)
            .filter(lambda t: (t[0] + t[1] - 1) % 2**64 >= b[1])
            .map(lambda t: overrun(b, *t))
        )
    )


# -- mixes and streams -------------------------------------------------------------


def frames(
    release: Release | str, *, ram: Mapping[str, int] | None = None
) -> st.SearchStrategy[FrameSample]:
    """Valid, lenient and invalid frames of ``release``, mixed."""
    parts = [valid_frames(release, ram=ram), invalid_frames(release, ram=ram)]
    if ram is None:
        parts.append(lenient_frames(release))
    return st.one_of(*parts)


def _shut_tail(
    release: Release | str, ram: Mapping[str, int] | None
) -> st.SearchStrategy[FrameSample]:
    """A SHUT, then bytes the source never reads."""
    cat = catalog(release)
    spec = cat.by_name.get("MIG_RP_MSG_SHUT")
    if spec is None:
        return st.nothing()
    shut = _message(cat, spec, _ram_tuple(ram))
    return st.tuples(shut, st.binary(max_size=24)).map(
        lambda t: replace(t[0], data=t[0].data + t[1], kind="shut+garbage")
    )


def streams(
    release: Release | str,
    *,
    max_frames: int = 12,
    invalid: bool = True,
    ram: Mapping[str, int] | None = None,
) -> st.SearchStrategy[FrameSample]:
    """Whole streams: valid frames, then nothing, one bad or cut frame, or a SHUT.

    Predictions are shifted to stream positions (``offset``, ``stopped_at``,
    ``frames``). With ``ram`` every frame uses that RAM context and the tail may be
    any kind but ``req-pages-no-previous-block``; without it, RAM kinds are left out.
    """
    rel = _rel(release)
    r = _ram_tuple(ram)
    body = st.lists(valid_frames(rel, shut=False, ram=ram), max_size=max_frames)
    tails: list[st.SearchStrategy[FrameSample | None]] = [st.none(), _shut_tail(rel, ram)]
    if invalid:
        kinds = [k for k in kinds_for(rel, ram=r is not None) if k != "req-pages-no-previous-block"]
        tails.append(st.one_of(*[_invalid(catalog(rel), k, r) for k in kinds]))
        if r is None:
            tails.append(lenient_frames(rel))

    def join(parts: list[FrameSample], last: FrameSample | None) -> FrameSample:
        data = b"".join(p.data for p in parts)
        n = sum(p.frames for p in parts)
        if last is None:
            return FrameSample(rel, data, "stream", True, frames=n, ram=r)
        return replace(
            _shifted(last, len(data), n), data=data + last.data, kind=f"stream+{last.kind}", ram=r
        )

    return st.builds(join, body, st.one_of(*tails))


def max_rule_cases(release: Release | str) -> st.SearchStrategy[tuple[bytes, int, int]]:
    """(accepted prefix, type, length) for :func:`check_max_rule`: any be16 type and length,
    the boundaries (0, MAX - 1, MAX, MAX + 1, 0xFFFF) drawn often."""
    cat = catalog(release)
    prefix = st.lists(valid_frames(release, shut=False), max_size=4).map(
        lambda ps: b"".join(p.data for p in ps)
    )
    edges = sorted({0, 1, cat.max - 1, cat.max, cat.max + 1, 0xFFFE, 0xFFFF})
    types = st.one_of(st.sampled_from(edges), st.integers(0, 0xFFFF))
    lengths = st.one_of(
        st.sampled_from([0, 4, 12, 13, cat.buffer_size, cat.buffer_size + 1, 0xFFFF]),
        st.integers(0, 0xFFFF),
    )
    return st.tuples(prefix, types, lengths)


def _mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    b = bytearray(data)
    for op, pos, val in edits:
        at = pos % (len(b) + 1)
        if op == 0 and b:
            b[pos % len(b)] = val
        elif op == 1:
            b.insert(at, val)
        elif op == 2 and b:
            del b[pos % len(b)]
        elif op == 3:
            # splice a header: type = val, length = pos (often a boundary value)
            b[at:at] = struct.pack(">HH", val, pos & 0xFFFF)
        elif op == 4:
            del b[at:]
    return bytes(b)


def mutated_streams(
    release: Release | str, *, max_frames: int = 4, ram: Mapping[str, int] | None = None
) -> st.SearchStrategy[bytes]:
    """Raw bytes near the protocol: streams with a few bytes set, inserted, deleted,
    a header spliced in, or cut; plus plain random bytes."""
    edits = st.lists(
        st.tuples(st.integers(0, 4), st.integers(0, 0xFFFF), st.integers(0, 255)), max_size=4
    )
    return st.one_of(
        st.binary(max_size=96),
        st.builds(
            lambda s, e: _mutate(s.data, e),
            streams(release, max_frames=max_frames, ram=ram),
            edits,
        ),
    )


# -- oracles ----------------------------------------------------------------------


def _drain(r: Reader) -> tuple[list[Message], EndOfStream | None, RemoteViolation | None]:
    messages: list[Message] = []
    end: EndOfStream | None = None
    try:
        while True:
            ev = r.next_event()
            if ev is NEED_DATA or ev is STOPPED:
                return messages, end, None
            if isinstance(ev, Message):
                messages.append(ev)
            elif isinstance(ev, EndOfStream):
                end = ev
            else:  # pragma: no cover - the reader has no other events
                raise AssertionError(f"unexpected event {ev!r}")
    except RemoteViolation as exc:
        return messages, end, exc


def check_sample(sample: FrameSample) -> None:
    """Assert the reader does to ``sample.data`` exactly what the sample predicts.

    Verdict, number of messages and their offsets, the exact QEMU text, the
    rejected frame's offset, and where the source stops reading.
    """
    r = sample.reader()
    if sample.data:
        r.receive_data(sample.data)
    r.receive_data(b"")
    messages, end, exc = _drain(r)
    at = 0
    for ev in messages:
        assert ev.offset == at, f"message at {ev.offset}, expected {at}"
        at += ev.size
    assert len(messages) == sample.frames, f"{len(messages)} messages, expected {sample.frames}"
    if not sample.accepted:
        assert exc is not None, f"accepted, expected {sample.qemu_error!r}"
        assert exc.qemu_error == sample.qemu_error, f"{exc.qemu_error!r} != {sample.qemu_error!r}"
        assert exc.offset == sample.offset == at, (
            f"rejected at {exc.offset}, expected {sample.offset}"
        )
        assert exc.stopped_at == sample.stopped_at, (
            f"stopped at {exc.stopped_at}, expected {sample.stopped_at}"
        )
        return
    assert exc is None, f"rejected: {exc}"
    if sample.truncated:
        assert end is not None and end.truncated and end.offset == sample.offset, f"end: {end!r}"
        return
    if sample.stopped_at is not None:  # a SHUT ended the reading
        assert isinstance(messages[-1], Shut)
        assert r.offset == sample.stopped_at, f"read up to {r.offset}, expected {sample.stopped_at}"
        if sample.qemu_error is not None:
            cat = catalog(sample.release)
            text = cat.format_error("shut_error", messages[-1].sibling_error)
            assert text == sample.qemu_error
        return
    assert end is not None and not end.truncated, f"end: {end!r}"
    assert r.offset == len(sample.data)


def check_max_rule(release: Release | str, prefix: bytes, type_id: int, length: int) -> None:
    """After the accepted ``prefix``, a header (type, length): type 0 or >= MAX is rejected
    right there with the release's exact text; any other type never with that text."""
    cat = catalog(release)
    data = prefix + struct.pack(">HH", type_id, length) + bytes(min(length, 600))
    r = Reader(cat.release)
    r.receive_data(data)
    messages, _, exc = _drain(r)
    text = cat.format_error("invalid_type", type_id, length)
    if type_id == 0 or type_id >= cat.max:
        assert exc is not None, f"type 0x{type_id:04x} accepted by {cat.release}"
        assert exc.qemu_error == text, f"{exc.qemu_error!r} != {text!r}"
        assert exc.offset == len(prefix) and exc.stopped_at == len(prefix) + 4
        assert sum(m.size for m in messages) == len(prefix)
    else:
        assert exc is None or exc.qemu_error != text, f"type 0x{type_id:04x} called invalid"
        spec = cat.by_id[type_id]
        if (spec.length is not None and length != spec.length) or length > cat.buffer_size:
            assert exc is not None and exc.offset == len(prefix)
            assert exc.qemu_error == cat.format_error(
                "bad_length", cat.printed_name(spec), type_id, length, cat.printed_length(spec)
            )


def _outcome(
    release: Release, data: bytes, ram: Mapping[str, int] | None, eof: bool
) -> tuple[list[Message], tuple[Any, ...]]:
    r = Reader(release, ram_blocks=ram)
    if data:
        r.receive_data(data)
    if eof:
        r.receive_data(b"")
    messages, end, exc = _drain(r)
    if exc is not None:
        return messages, ("violation", exc.offset, exc.stopped_at, exc.qemu_error, exc.message)
    return messages, ("end", end) if end is not None else ("open", r.offset)


def check_stop_position(
    release: Release | str, data: bytes, ram: Mapping[str, int] | None = None
) -> None:
    """The first rejection's offset is where QEMU stops reading.

    When the reader rejects ``data``: the rejected frame starts right after the
    last message, the verdict needs exactly the bytes up to ``stopped_at``
    (one byte fewer is still "need data"), and nothing after it matters.
    """
    rel = _rel(release)
    messages, out = _outcome(rel, data, ram, eof=False)
    if not (isinstance(out, tuple) and out[0] == "violation"):
        return
    _, offset, stopped_at, _, _ = out
    assert offset == sum(m.size for m in messages), "rejected frame does not start after the last"
    assert offset < stopped_at <= len(data), f"offset {offset}, stopped at {stopped_at}"
    m2, out2 = _outcome(rel, data[:stopped_at], ram, eof=False)
    assert out2 == out and len(m2) == len(messages), f"{out2} != {out} with data cut at the stop"
    _, out3 = _outcome(rel, data[: stopped_at - 1], ram, eof=False)
    assert out3[0] == "open", f"decided before the stop position: {out3}"
    _, out4 = _outcome(rel, data[:stopped_at] + b"\xff" * 7, ram, eof=True)
    assert out4 == out, "bytes after the stop position changed the verdict"


def _grammar_size(parsed: cs.Container) -> int:
    size: int = 4 + parsed.length + (16 + parsed.blob.bitmap_size if parsed.blob else 0)
    return size


def check_grammar_agrees(release: Release | str, data: bytes) -> None:
    """The construct grammar and the reader agree frame by frame over a whole stream.

    Every message the reader dispatches parses in the grammar to the same type,
    length, size and fields; where the reader rejects or needs more data, the
    grammar fails at the same offset. Two documented leniencies end the comparison: a
    RECV_BITMAP name read past its frame (from QEMU's stack buffer), and a well-formed
    SWITCHOVER_ACK the reader refuses for state (11.1's ack counting; the grammar is stateless).
    """
    rel = _rel(release)
    g = frame_grammar(rel)
    r = Reader(rel)
    if data:
        r.receive_data(data)
    messages, _, exc = _drain(r)
    # The source's stream state, as the grammar takes it: the same context as Reader(rel)
    # (switchover-ack on, the release's own newest machine type, no device requests).
    state: dict[str, object] = {
        "acks_left": switchover_acks_expected(rel, machine=None, capability=True),
        "block_named": False,
    }
    ids = {m.short_name: m.id for m in catalog(rel).messages}
    pos = 0
    for ev in messages:
        try:
            parsed = g.parse(data[pos:], **state)
        except cs.ConstructError as err:
            assert isinstance(ev, RecvBitmap) and ev.payload[0] + 1 > ev.length, (
                f"grammar refuses the frame at {pos} the reader dispatched as {ev!r}: {err}"
            )
            return
        assert parsed.type == ev.type_id and parsed.length == ev.length
        assert _grammar_size(parsed) == ev.size, f"size {_grammar_size(parsed)} != {ev.size}"
        for key, value in parsed.payload.items():
            if key.startswith("_") or key == "trailing":
                continue
            if key == "block_name":
                assert isinstance(ev, RecvBitmap) and value.split("\0")[0] == ev.block_name
            else:
                assert getattr(ev, key) == value, f"{key}: {getattr(ev, key)!r} != {value!r}"
        if parsed.blob:
            assert isinstance(ev, RecvBitmap) and ev.bitmap == parsed.blob.bitmap
        if parsed.type == ids.get("SWITCHOVER_ACK") and state["acks_left"] is not None:
            state["acks_left"] = int(state["acks_left"]) - 1  # type: ignore[call-overload]
        elif parsed.type == ids.get("REQ_PAGES_ID"):
            state["block_named"] = True
        pos += ev.size
    if messages and isinstance(messages[-1], Shut):
        return  # the source reads nothing after a SHUT
    try:
        parsed = g.parse(data[pos:], **state)
    except cs.ConstructError:
        return
    if (
        exc is not None
        and exc.message_type == parsed.type == 7
        and exc.stopped_at == pos + _grammar_size(parsed)
    ):
        # A whole, well-formed SWITCHOVER_ACK refused for state (11.1 counts the acks against
        # the devices that asked for one): the grammar is stateless and cannot know.
        return
    raise AssertionError(
        f"grammar parses a frame at {pos} ({parsed.type=}, {parsed.length=}) where the reader "
        + (f"rejects: {exc.message}" if exc is not None else "needs more data")
    )


def check_chunking(
    release: Release | str, data: bytes, cuts: list[int], ram: Mapping[str, int] | None = None
) -> None:
    """Feeding ``data`` in pieces (cut at ``cuts``) gives the same events and verdict."""
    rel = _rel(release)

    def run(chunks: list[bytes]) -> list[object]:
        r = Reader(rel, ram_blocks=ram)
        out: list[object] = []
        try:
            for c in [*chunks, b""]:
                r.receive_data(c)
                out.extend(r.events())
        except RemoteViolation as exc:
            out.append(("violation", exc.offset, exc.qemu_error, exc.stopped_at))
        return out

    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert run([data] if data else []) == run([c for c in chunks if c])
