"""Coverage-guided fuzzing of the stream decoders, for a fixed time (issue 7).

    python benchmarks/fuzz_decoders.py --seconds 60            # atheris (libFuzzer)
    python benchmarks/fuzz_decoders.py --engine hypothesis     # no atheris: fuzz_one_input
    python benchmarks/fuzz_decoders.py --update-corpus         # merge new coverage into the corpus
    python benchmarks/fuzz_decoders.py --write-seed-corpus     # regenerate the seed inputs
    python benchmarks/fuzz_decoders.py --skip pcap             # past an open bug in one decoder

The target, :func:`check_input`, decodes one input with every decoder the project has:
the return-path :class:`~migcompat.protocol.Reader` (whole, byte by byte, in odd chunks,
with and without a RAM context), the construct grammar through ``parse_frame``, the
multi-release ``check_stream``, and the grammar-vs-reader oracle. the forward stream's
:class:`~migcompat.protocol.ForwardReader` on the same bytes, and ``decode_capture`` when
the bytes start with a pcap/pcapng magic. Rules: the only exceptions allowed out are the
typed errors (:class:`~migcompat.protocol.RemoteViolation`; ``InputError`` for a file that
is no capture at all); and allocation stays bounded by the input,
whatever the length fields say (checked with ``tracemalloc`` on a share of the inputs).

Input layout: byte 0 picks the source release (or overlay), byte 1 the mode bits
(feeding, RAM context, extra decoders), the rest is the stream.

Corpus: ``fixtures/fuzz/corpus/`` (small, committed). A run works on a copy; crashes
are saved to ``fixtures/fuzz/crashes/`` and ``tests/test_fuzz_regressions.py`` replays
both folders on every test run. Exit 0: no crash; 1: crash(es) saved; 2: bad usage.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fixtures" / "fuzz" / "corpus"
CRASHES = ROOT / "fixtures" / "fuzz" / "crashes"

#: Inputs longer than this are cut (libFuzzer ``-max_len``): frames are at most 516 bytes.
MAX_LEN = 4096
#: Allowed peak allocation while decoding one input: a constant plus a multiple of its size.
ALLOC_BASE = 1 << 20
ALLOC_PER_BYTE = 64
#: One input in this many is decoded under tracemalloc (it slows decoding ~3x).
ALLOC_EVERY = 8

__all__ = ["DECODERS", "check_input", "main", "seed_corpus"]


def __dir__() -> list[str]:
    return list(__all__)


def _imports() -> None:
    """Import the decoders (inside atheris' instrumentation when fuzzing with it)."""
    global RELEASES, DEFAULT_RAM, Reader, RemoteViolation, InputError, parse_frame, check_stream
    global ForwardReader, decode_capture, CaptureOptions, rps, FastReader
    from migcompat.capture import CaptureOptions, decode_capture
    from migcompat.protocol import (
        FastReader,
        ForwardReader,
        InputError,
        Reader,
        RemoteViolation,
        check_stream,
        parse_frame,
    )
    from migcompat.protocol import strategies as rps

    RELEASES = rps.all_releases()
    DEFAULT_RAM = {"pc.ram": 128 << 20, "pc.bios": 256 << 10}


def _feed(reader: object, stream: bytes, mode: int, cut: int) -> list[object]:
    """Feed ``stream`` to ``reader`` as mode says; return the events (EOF included)."""
    feeding = mode & 3
    if feeding == 0:
        chunks = [stream]
    elif feeding == 1:
        chunks = [stream[i : i + 1] for i in range(len(stream))]
    elif feeding == 2:
        chunks = [stream[i : i + 7] for i in range(0, len(stream), 7)]
    else:
        chunks = [stream[:cut], stream[cut:]]
    events: list[object] = []
    for c in chunks:
        if c:
            reader.receive_data(c)  # type: ignore[attr-defined]
            events.extend(reader.events())  # type: ignore[attr-defined]
    reader.receive_data(b"")  # type: ignore[attr-defined]
    events.extend(reader.events())  # type: ignore[attr-defined]
    return events


def _rp_reader(release: object, stream: bytes, mode: int) -> None:
    ram = DEFAULT_RAM if mode & 4 else None
    r = Reader(release, ram_blocks=ram)
    try:
        events = _feed(r, stream, mode, stream[0] if stream else 0)
    except RemoteViolation as exc:
        # After a rejection the reader stays in ERROR and says so again.
        try:
            r.next_event()
        except RemoteViolation as again:
            assert again is exc
        else:
            raise AssertionError("the reader forgot its violation") from None
        assert 0 <= exc.offset <= exc.stopped_at <= len(stream)
        return
    at = 0
    for ev in events:
        size = getattr(ev, "size", None)
        if size is not None:
            assert ev.offset == at  # type: ignore[attr-defined]
            at += size


def _grammar(release: object, stream: bytes, mode: int) -> None:
    if not mode & 8:
        return
    pos = 0
    while pos < len(stream):
        try:
            parsed = parse_frame(release, stream[pos:], pos)
        except RemoteViolation:
            return
        pos += 4 + parsed.length + (16 + parsed.blob.bitmap_size if parsed.blob else 0)


def _check_stream(release: object, stream: bytes, mode: int) -> None:
    if not mode & 16:
        return
    others = [RELEASES[0], release, RELEASES[-1]]
    check_stream(others, [stream[i : i + 13] for i in range(0, len(stream), 13)])


def _oracle(release: object, stream: bytes, mode: int) -> None:
    if mode & 32:
        rps.check_grammar_agrees(release, stream)
    if mode & 64:
        rps.check_stop_position(release, stream, DEFAULT_RAM if mode & 4 else None)


def _fast_vs_model(release: object, stream: bytes, mode: int) -> None:
    """The generated fast path equals the model: same events, same violation, same state."""
    ram = DEFAULT_RAM if mode & 4 else None

    def run(cls: Callable[..., object]) -> list[object]:
        r: Any = cls(release, ram_blocks=ram)
        out: list[object] = []
        cut = stream[0] % (len(stream) + 1) if stream else 0
        try:
            for chunk in [c for c in (stream[:cut], stream[cut:]) if c] + [b""]:
                r.receive_data(chunk)
                out += list(r.events())
        except RemoteViolation as exc:
            out.append((exc.offset, exc.qemu_error, exc.stopped_at, str(exc)))
        out.append((r.offset, r.buffered, r.stopped))
        return out

    model, fast = run(Reader), run(FastReader)
    assert fast == model, f"fast path {fast[-3:]!r} != model {model[-3:]!r}"


def _forward(release: object, stream: bytes, mode: int) -> None:
    """The forward stream (``ForwardReader``), on the same bytes: channel from byte 0."""
    channel = ("main", "auto", "preempt")[stream[0] % 3] if stream else "main"
    r = ForwardReader(release, channel=channel, pages=bool(mode & 4))
    try:
        _feed(r, stream, mode, stream[-1] if stream else 0)
    except RemoteViolation as exc:
        assert 0 <= exc.offset <= len(stream)


_PCAP_MAGICS = (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x0a\x0d\x0d\x0a")


def _pcap(release: object, stream: bytes, mode: int) -> None:
    """pcap / pcapng input (``decode_capture``), when the stream starts with a capture magic."""
    if stream[:4] not in _PCAP_MAGICS:
        return
    fd, path = tempfile.mkstemp(
        suffix=".pcap", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
    )
    try:
        os.write(fd, stream)
        os.close(fd)
        try:
            decode_capture(path, CaptureOptions(source=release, pages=bool(mode & 4)))
        except InputError:
            pass  # the typed error for input that is not a capture at all
    finally:
        os.unlink(path)


#: Decoder name → function(release, stream, mode); each may raise only the typed errors
#: (``RemoteViolation``; ``InputError`` for a file that is not a capture).
DECODERS: dict[str, Callable[[object, bytes, int], None]] = {
    "rp-reader": _rp_reader,
    "fast-vs-model": _fast_vs_model,
    "rp-grammar": _grammar,
    "check-stream": _check_stream,
    "oracles": _oracle,
    "forward": _forward,
    "pcap": _pcap,
}


def check_input(data: bytes, *, check_alloc: bool = False) -> None:
    """Decode one fuzzer input with every decoder; raise on anything but a typed decode error.

    :param check_alloc: measure peak allocation with tracemalloc and assert it is bounded.
    """
    if "RELEASES" not in globals():
        _imports()
    if len(data) < 2:
        return
    data = data[:MAX_LEN]
    release, mode, stream = RELEASES[data[0] % len(RELEASES)], data[1], data[2:]
    if check_alloc:
        # Once untraced first: imports and per-release caches (catalogs, construct
        # grammars) are built on first use and are not what the input makes us allocate.
        for decode in DECODERS.values():
            decode(release, stream, mode)
        tracemalloc.start()
    try:
        for decode in DECODERS.values():
            decode(release, stream, mode)
        if check_alloc:
            _, peak = tracemalloc.get_traced_memory()
            limit = ALLOC_BASE + ALLOC_PER_BYTE * len(data)
            assert peak <= limit, f"peak allocation {peak} > {limit} for {len(data)} input bytes"
    finally:
        if check_alloc:
            tracemalloc.stop()


# -- seed corpus -------------------------------------------------------------------------


def seed_corpus() -> dict[str, bytes]:
    """Small, deterministic seed inputs: one per interesting frame shape, plus real captures."""
    _imports()
    from migcompat.protocol import build_frame, catalog

    out: dict[str, bytes] = {}
    shapes = {"2.5": 0, "7.2": 0, "10.0": 0, "11.1+keepalive": 0}
    for rel in shapes:
        idx = next(i for i, r in enumerate(RELEASES) if str(r) == rel)
        cat = catalog(rel)
        frames = {
            "pong": build_frame(rel, "PONG", value=7),
            "shut": build_frame(rel, "SHUT", sibling_error=0) + b"junk",
            "req-pages-id": build_frame(
                rel, "REQ_PAGES_ID", start=0x2000, len=4096, idstr="pc.ram"
            ),
            "req-pages-pair": build_frame(rel, "REQ_PAGES_ID", start=0, len=4096, idstr="pc.ram")
            + build_frame(rel, "REQ_PAGES", start=0x1000, len=4096),
            "type-max": struct.pack(">HH", cat.max, 0),
            "type-zero": struct.pack(">HH", 0, 4) + bytes(4),
            "type-ffff": struct.pack(">HH", 0xFFFF, 0xFFFF),
            "too-long": struct.pack(">HH", 3, 513),
            "idstr-lies": struct.pack(">HH", 3, 14) + bytes(12) + b"\x05x",
        }
        if "MIG_RP_MSG_RECV_BITMAP" in cat.by_name:
            frames.update(
                {
                    "recv-bitmap": build_frame(
                        rel, "RECV_BITMAP", block_name="pc.bios", bitmap=bytes(8)
                    ),
                    "recv-bitmap-2p63": build_frame(rel, "RECV_BITMAP", block_name="pc.ram")[:11]
                    + struct.pack(">Q", 2**63),
                    "recv-bitmap-200mib": build_frame(rel, "RECV_BITMAP", block_name="pc.ram")[:11]
                    + struct.pack(">Q", 200 << 20) + bytes(64),
                    "recv-bitmap-name-past-frame": struct.pack(">HH", 5, 2) + b"\x30a"
                    + struct.pack(">Q", 0) + struct.pack(">Q", cat.recv_bitmap_ending),
                    "recv-bitmap-empty": struct.pack(">HH", 5, 0),
                    "resume-ack-2": struct.pack(">HHI", 6, 4, 2),
                }
            )  # fmt: skip
        for name, stream in frames.items():
            for mode in (0, 4 | 8 | 16 | 32 | 64):
                out[f"{rel}-{name}-m{mode}"] = bytes([idx, mode]) + stream
    captures = ROOT / "fixtures" / "captures"
    for cap, rel in (("plain-7.2", "7.2"), ("plain-10.0", "10.0"), ("inject-8-11.1", "11.1")):
        rp = captures / cap / "rp.bin"
        if rp.exists():
            idx = next(i for i, r in enumerate(RELEASES) if str(r) == rel)
            out[f"capture-{cap}"] = bytes([idx, 1 | 4 | 8]) + rp.read_bytes()[:600]
            fwd = captures / cap / "fwd.bin"
            if fwd.exists():
                out[f"forward-{cap}"] = bytes([idx, 2]) + fwd.read_bytes()[:800]
            pcap = captures / cap / "capture.pcap"
            if pcap.exists():
                out[f"pcap-{cap}"] = bytes([idx, 0]) + _small_pcap(pcap, 16)
    return out


def _small_pcap(path: Path, packets: int) -> bytes:
    """The first ``packets`` records of a capture, payloads cut to 256 bytes."""
    import io

    import dpkt

    out = io.BytesIO()
    with open(path, "rb") as f:
        reader = dpkt.pcap.Reader(f)
        writer = dpkt.pcap.Writer(out, snaplen=reader.snaplen, linktype=reader.datalink())
        for n, (ts, buf) in enumerate(reader):
            if n >= packets:
                break
            writer.writepkt(buf[:320], ts=ts)
    return out.getvalue()


def _write_seed_corpus() -> int:
    CORPUS.mkdir(parents=True, exist_ok=True)
    for name, data in seed_corpus().items():
        (CORPUS / name).write_bytes(data)
    print(f"wrote {len(seed_corpus())} seed inputs to {CORPUS}")
    return 0


# -- engines -------------------------------------------------------------------------------


def _one_input(data: bytes) -> None:
    check_input(
        data, check_alloc=hashlib.blake2b(data, digest_size=1).digest()[0] % ALLOC_EVERY == 0
    )


def _atheris_child(libfuzzer_args: list[str]) -> None:
    import atheris
    import construct  # noqa: F401  (dependencies stay uninstrumented: only our code counts)
    import hypothesis  # noqa: F401

    with atheris.instrument_imports(include=["migcompat"]):
        import migcompat.protocol  # noqa: F401

        _imports()
    for name in filter(None, os.environ.get("FUZZ_DECODERS_SKIP", "").split(",")):
        DECODERS.pop(name, None)
    only = os.environ.get("FUZZ_DECODERS_ONLY")
    if only:
        for name in [n for n in DECODERS if n != only]:
            DECODERS.pop(name)
    atheris.Setup([sys.argv[0], *libfuzzer_args], _one_input)
    atheris.Fuzz()


def _save_crash(data: bytes, why: str) -> Path:
    CRASHES.mkdir(parents=True, exist_ok=True)
    path = CRASHES / f"crash-{hashlib.sha256(data).hexdigest()[:12]}"
    path.write_bytes(data)
    print(f"crash saved: {path} ({why})")
    return path


def _run_atheris(seconds: int, update_corpus: bool) -> int:
    with tempfile.TemporaryDirectory(prefix="fuzz-decoders-") as tmp:
        work = Path(tmp) / "corpus"
        shutil.copytree(CORPUS, work) if CORPUS.is_dir() else work.mkdir()
        artifacts = Path(tmp) / "artifacts"
        artifacts.mkdir()
        args = [
            str(work),
            f"-max_total_time={seconds}",
            f"-max_len={MAX_LEN}",
            f"-artifact_prefix={artifacts}/",
            "-print_final_stats=1",
            "-rss_limit_mb=2048",
            "-timeout=10",
        ]
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, __file__, "--_atheris-child", "--", *args],
            capture_output=True,
            text=True,
            check=False,
        )
        elapsed = time.monotonic() - start
        cov = [ln for ln in proc.stderr.splitlines() if " cov: " in ln]
        LAST_RUN.clear()
        LAST_RUN.update(elapsed=elapsed, cov=cov[-1].split(" cov: ")[1].split()[0] if cov else "?",
                        ft=cov[-1].split(" ft: ")[1].split()[0] if cov and " ft: " in cov[-1]
                        else "?")  # fmt: skip
        stats = {
            line.split(":")[2].strip(): line.split(":")[-1].strip()
            for line in proc.stderr.splitlines()
            if line.startswith("stat::")
        }
        execs = int(stats.get("number_of_executed_units", "0") or 0)
        LAST_RUN["execs"] = execs
        LAST_RUN["rss"] = stats.get("peak_rss_mb", "?")
        new = len(list(work.iterdir())) - (len(list(CORPUS.iterdir())) if CORPUS.is_dir() else 0)
        print(
            f"atheris: {execs} executions in {elapsed:.0f} s ({execs / elapsed:.0f}/s), "
            f"corpus {len(list(work.iterdir()))} inputs ({new:+d}), "
            f"peak rss {stats.get('peak_rss_mb', '?')} MB"
        )
        crashes = sorted(p for p in artifacts.iterdir() if p.is_file())
        LAST_RUN["crashes"] = len(crashes)
        for p in crashes:
            tail = [ln for ln in proc.stderr.splitlines() if "Error" in ln or "assert" in ln][-3:]
            _save_crash(p.read_bytes(), "; ".join(tail) or p.name)
        if proc.returncode not in (0, 1) and not crashes:
            sys.stderr.write(proc.stderr[-4000:])
            print(f"atheris exited with {proc.returncode} and left no crash file")
            return 2
        if update_corpus:
            _merge(work)
        return 1 if crashes else 0


#: Numbers of the last atheris run (for the campaign table).
LAST_RUN: dict[str, Any] = {}


def _campaign(seconds: int, targets: list[str]) -> int:
    """Each target alone for ``seconds`` (atheris); a markdown table of the results."""
    rows = []
    worst = 0
    for name in targets:
        os.environ["FUZZ_DECODERS_ONLY"] = name
        print(f"-- {name}: {seconds} s", flush=True)
        rc = _run_atheris(seconds, update_corpus=False)
        worst = max(worst, rc)
        r = dict(LAST_RUN)
        rows.append(f"| {name} | {r.get('execs', 0)} | {r.get('elapsed', 0):.0f} s | "
                    f"{r.get('cov', '?')} edges, {r.get('ft', '?')} features | "
                    f"{r.get('rss', '?')} MB | {r.get('crashes', '?')} |")  # fmt: skip
    os.environ.pop("FUZZ_DECODERS_ONLY", None)
    print("\n| target | executions | time | coverage (libFuzzer) | peak RSS | crashes |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    return worst


def _merge(work: Path) -> None:
    """Add the inputs that bring new coverage to the committed corpus (libFuzzer -merge=1)."""
    CORPUS.mkdir(parents=True, exist_ok=True)
    before = len(list(CORPUS.iterdir()))
    subprocess.run(
        [sys.executable, __file__, "--_atheris-child", "--", "-merge=1", str(CORPUS), str(work),
         f"-max_len={MAX_LEN}"],
        capture_output=True, check=False,
    )  # fmt: skip
    print(f"corpus: {before} -> {len(list(CORPUS.iterdir()))} inputs ({CORPUS})")


def _run_hypothesis(seconds: int) -> int:
    """No atheris: hypothesis' ``fuzz_one_input`` on random and corpus-mutated buffers."""
    import random

    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(database=None, deadline=None)
    @given(st.binary(min_size=2, max_size=MAX_LEN))
    def target(data: bytes) -> None:
        _one_input(data)

    fuzz = target.hypothesis.fuzz_one_input
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    seeds = [p.read_bytes() for p in sorted(CORPUS.glob("*"))] if CORPUS.is_dir() else []
    end = time.monotonic() + seconds
    n = crashes = 0
    while time.monotonic() < end:
        if seeds and rng.random() < 0.7:
            d = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 4)):
                if d:
                    d[rng.randrange(len(d))] = rng.randrange(256)
            data = bytes(d)
            runner: Callable[[bytes], None] = _one_input
        else:
            data = rng.randbytes(rng.randint(2, 600))
            runner = fuzz
        n += 1
        try:
            runner(data)
        except Exception as exc:  # a crash: anything the target lets out
            crashes += 1
            _save_crash(data, f"{type(exc).__name__}: {exc}")
    print(f"hypothesis: {n} executions in {seconds} s ({n / seconds:.0f}/s), {crashes} crash(es)")
    return 1 if crashes else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--_atheris-child"]:
        _atheris_child(argv[2:] if argv[1:2] == ["--"] else argv[1:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=60, help="how long to fuzz (default 60)")
    p.add_argument("--engine", choices=("atheris", "hypothesis", "auto"), default="auto")
    p.add_argument("--update-corpus", action="store_true", help="merge new coverage (atheris)")
    p.add_argument("--write-seed-corpus", action="store_true", help="(re)write the seed inputs")
    p.add_argument(
        "--campaign",
        action="store_true",
        help="atheris: each decoder alone for --seconds, then a table (docs/reliability.md)",
    )
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=sorted(DECODERS),
        help="leave a decoder out (e.g. one with an open bug that every run finds again)",
    )
    args = p.parse_args(argv)
    for name in args.skip:
        DECODERS.pop(name)
    os.environ["FUZZ_DECODERS_SKIP"] = ",".join(args.skip)
    if args.write_seed_corpus:
        return _write_seed_corpus()
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401

            engine = "atheris"
        except ImportError:
            engine = "hypothesis"
    print(f"fuzzing the decoders for {args.seconds} s with {engine}")
    if engine == "atheris" and args.campaign:
        return _campaign(args.seconds, sorted(DECODERS))
    if engine == "atheris":
        return _run_atheris(args.seconds, args.update_corpus)
    return _run_hypothesis(args.seconds)


if __name__ == "__main__":
    sys.exit(main())
