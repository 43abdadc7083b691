"""Hypothesis strategies for return-path frames of any release or overlay (public).

For QEMU developers writing a new return-path message and for this project's
own property tests. Everything is derived from the catalog, so a catalog built
from a patched QEMU (``MIGCOMPAT_CATALOG``) gets strategies for its new
messages with no code change. Each strategy draws a :class:`FrameSample`: the
bytes, whether the release's source accepts them, and the error key of the
catalog text it prints when it does not.

Example::

    from hypothesis import given
    from migcompat.protocol import strategies as rps

    @given(rps.frames("10.0"))
    def test_my_parser(sample):
        ...  # sample.data, sample.accepted, sample.error_key

Requires ``hypothesis`` (``pip install qemu-migcompat[test]``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st

from ._catalog import MessageSpec, RpCatalog, catalog
from ._grammar import build_frame
from ._layouts import PAYLOAD_LAYOUTS
from ._releases import Release

__all__ = [
    "INVALID_KINDS",
    "SETTINGS",
    "FrameSample",
    "frames",
    "invalid_frames",
    "releases",
    "streams",
    "valid_frames",
]


def __dir__() -> list[str]:
    return list(__all__)


#: One settings profile for every property test of the project.
SETTINGS = settings(max_examples=150, deadline=None)

#: The classes of invalid frame :func:`invalid_frames` draws from.
INVALID_KINDS = (
    "type-max",
    "type-above-max",
    "type-zero",
    "wrong-fixed-length",
    "too-long",
    "req-pages-id-bad-idstr-length",
    "recv-bitmap-no-name",
    "recv-bitmap-bad-end-mark",
    "resume-ack-bad-value",
    "truncated",
)


@dataclass(frozen=True, slots=True)
class FrameSample:
    """Bytes of one frame (or a stream) and what the source release makes of them."""

    release: Release
    data: bytes
    kind: str
    accepted: bool
    #: Catalog error key of the text the source prints, for rejected samples.
    error_key: str | None = None
    #: For truncated samples: the stream ends inside the frame (no rejection).
    truncated: bool = False


def releases(*, overlays: bool = True) -> st.SearchStrategy[Release]:
    """Every release line in the catalog, plus every overlay that applies to it."""
    from ._catalog import known_releases
    from ._catalog import overlays as all_overlays

    out: list[Release] = list(known_releases())
    if overlays:
        for name, o in all_overlays().items():
            out += [r.with_overlay(name) for r in known_releases() if catalog(r).max == o.base_rp_max]
    return st.sampled_from(out)


def _pstr(max_len: int = 255) -> st.SearchStrategy[str]:
    return st.binary(max_size=max_len).map(lambda b: b.decode("latin-1"))


def _message(cat: RpCatalog, spec: MessageSpec) -> st.SearchStrategy[FrameSample]:
    name = spec.short_name
    layout = PAYLOAD_LAYOUTS.get(name)

    def sample(data: bytes) -> FrameSample:
        return FrameSample(cat.release, data, f"valid:{name}", True)

    if layout is None:
        size = st.just(spec.length) if spec.length is not None else st.integers(0, cat.buffer_size)
        return size.flatmap(
            lambda n: st.binary(min_size=n, max_size=n).map(
                lambda p: sample(build_frame(cat.release, name, payload=p))
            )
        )
    if name == "RECV_BITMAP":
        return st.builds(
            lambda n, bm: sample(build_frame(cat.release, name, block_name=n, bitmap=bm)),
            # QEMU NUL-terminates the name: a NUL inside it would change what it reads.
            st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=64),
            st.binary(max_size=256),
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
    return st.fixed_dictionaries(kw).map(lambda f: sample(build_frame(cat.release, name, **f)))


def valid_frames(release: Release | str, *, shut: bool = True) -> st.SearchStrategy[FrameSample]:
    """Any well-formed frame the source of ``release`` accepts (SHUT only if ``shut``)."""
    cat = catalog(release)
    specs = [m for m in cat.messages if m.id and (shut or m.short_name != "SHUT")]
    return st.one_of(*[_message(cat, m) for m in specs])


def invalid_frames(release: Release | str, kind: str | None = None) -> st.SearchStrategy[FrameSample]:
    """A frame the source of ``release`` rejects (or that is cut short), by ``kind``."""
    cat = catalog(release)
    kinds = [kind] if kind else list(INVALID_KINDS)
    return st.one_of(*[_invalid(cat, k) for k in kinds])


def _hdr(t: int, n: int) -> bytes:
    return struct.pack(">HH", t, n)


def _invalid(cat: RpCatalog, kind: str) -> st.SearchStrategy[FrameSample]:
    rel = cat.release
    by_table = {m.short_name: m for m in cat.messages}

    def rej(key: str) -> object:
        return lambda data: FrameSample(rel, data, kind, False, key)

    if kind == "type-max":
        return st.integers(0, 0xFFFF).map(lambda n: _hdr(cat.max, n)).map(rej("invalid_type"))
    if kind == "type-above-max":
        return st.builds(_hdr, st.integers(cat.max + 1, 0xFFFF), st.integers(0, 0xFFFF)).map(
            rej("invalid_type")
        )
    if kind == "type-zero":
        return st.integers(0, 0xFFFF).map(lambda n: _hdr(0, n)).map(rej("invalid_type"))
    if kind == "wrong-fixed-length":
        fixed = [m for m in cat.messages if m.id and m.length is not None]
        return st.sampled_from(fixed).flatmap(
            lambda m: st.integers(0, 0xFFFF)
            .filter(lambda n, m=m: n != m.length)
            .map(lambda n, m=m: _hdr(m.id, n) + bytes(min(n, 16)))
        ).map(rej("bad_length"))
    if kind == "too-long":
        var = [m for m in cat.messages if m.id and m.length is None]
        return st.sampled_from(var).flatmap(
            lambda m: st.integers(cat.buffer_size + 1, 0xFFFF).map(lambda n, m=m: _hdr(m.id, n))
        ).map(rej("bad_length"))
    if kind == "req-pages-id-bad-idstr-length":
        m = by_table["REQ_PAGES_ID"]

        def bad(n_len: int, idlen: int, body: bytes) -> bytes:
            payload = (body + bytes(n_len))[:n_len]
            if n_len >= 13:
                payload = payload[:12] + bytes([idlen]) + payload[13:]
            return _hdr(m.id, n_len) + payload

        return (
            st.builds(bad, st.integers(0, cat.buffer_size), st.integers(0, 255), st.binary(max_size=64))
            .filter(lambda d: len(d) - 4 < 13 or len(d) - 4 != 13 + d[4 + 12])
            .map(rej("req_pages_id_length"))
        )
    if kind == "recv-bitmap-no-name" and "RECV_BITMAP" in by_table:
        return st.just(_hdr(by_table["RECV_BITMAP"].id, 0)).map(rej("recv_bitmap_no_name"))
    if kind == "recv-bitmap-bad-end-mark" and "RECV_BITMAP" in by_table:
        good = build_frame(rel, "RECV_BITMAP", block_name="pc.ram", bitmap=bytes(8))
        return (
            st.integers(0, 2**64 - 1)
            .filter(lambda v: v != cat.recv_bitmap_ending)
            .map(lambda v: good[:-8] + struct.pack(">Q", v))
            .map(rej("recv_bitmap_end_mark"))
        )
    if kind == "resume-ack-bad-value" and "RESUME_ACK" in by_table:
        return (
            st.integers(0, 2**32 - 1)
            .filter(lambda v: v != cat.resume_ack_value)
            .map(lambda v: _hdr(by_table["RESUME_ACK"].id, 4) + struct.pack(">I", v))
            .map(rej("resume_ack_value"))
        )
    if kind == "truncated":
        return valid_frames(rel).flatmap(
            lambda s: st.integers(1, len(s.data) - 1).map(
                lambda cut, s=s: FrameSample(rel, s.data[:cut], kind, True, None, truncated=True)
            )
        )
    # A kind this release has no message for (e.g. RECV_BITMAP before 3.0):
    # fall back to the universal MAX rule so every kind draws something.
    return _invalid(cat, "type-max")


def frames(release: Release | str) -> st.SearchStrategy[FrameSample]:
    """Valid and invalid frames of ``release``, mixed."""
    return st.one_of(valid_frames(release), invalid_frames(release))


def streams(
    release: Release | str, *, max_frames: int = 12, invalid: bool = True
) -> st.SearchStrategy[FrameSample]:
    """Whole streams: valid frames, possibly ending in one invalid frame (where the source stops)."""
    rel = Release(str(release)) if not isinstance(release, Release) else release
    body = st.lists(valid_frames(rel, shut=False), max_size=max_frames)
    tail: st.SearchStrategy[FrameSample | None] = (
        st.one_of(st.none(), invalid_frames(rel)) if invalid else st.none()
    )

    def join(parts: list[FrameSample], last: FrameSample | None) -> FrameSample:
        data = b"".join(p.data for p in parts)
        if last is None:
            return FrameSample(rel, data, "stream", True)
        return FrameSample(
            rel, data + last.data, f"stream+{last.kind}", last.accepted, last.error_key,
            last.truncated,
        )

    return st.builds(join, body, tail)
