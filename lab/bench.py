"""``migcompat bench``: return-path decoding throughput, every decoder on one generated stream.

Also ``python benchmarks/bench_decode.py`` (the same code). In one process, on one
stream generated in memory (REQ_PAGES with 1% REQ_PAGES_ID, as a postcopy
destination sends them), it measures frames per second of:

* ``handwritten``: a ``struct.unpack_from`` loop written here, making one tuple of
  fields per frame and handing them on in batches of 512 (the baseline, no checks;
  the type ids it tests come from the release's catalog, by QEMU name);
* ``handwritten-events``: the same loop as a generator, one tuple per step, counted
  by the consumer's loop (the like of ``events()``);
* ``fast``: :class:`~migcompat.protocol.FastReader` fed 8 KiB chunks, drained through
  ``events()`` (the model's interface): full typed events, every rule of the model;
* ``fast-drain``: the same, each chunk's events taken as one ``drain()`` list (as the
  hand-written loop hands on its tuples: 512 at a time);
* ``model``: :class:`~migcompat.protocol.Reader`, the source-parser model;
* ``construct``: ``GreedyRange(frame_grammar(release))`` interpreted (Containers);
* ``construct-compiled``: the frame grammar compiled by construct, parsed frame by
  frame in a Python loop (Containers). construct cannot compile the grammar's
  lambda ``Check``s, so they are left out of the compiled copy: it does less work.

The slow decoders run on a prefix of the stream (``--slow-frames``); rates are per
frame. Times are CPU seconds of this process (``time.process_time``; wall times
alongside). The hand-written loop and the fast path run in ``--repeat`` interleaved
rounds (order alternating): rates are the best round, and their ratios the median
of the per-round ratios, which a shared machine's changing load disturbs least.
Before timing, the fast path's events are checked equal to the model's on the
prefix. Peak memory is measured in separate, untimed runs with ``tracemalloc``.
Nothing here asserts a speed: it prints ratios.

Public (``migcompat.lab.bench``), and in the lab because it measures the host it runs on
(CPU time, memory, ``/proc/cpuinfo``); the decoders it times are the protocol layer's.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import platform
import random
import resource
import statistics
import struct
import sys
import time
import tracemalloc
import types
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "add_arguments",
    "cpu_model",
    "generate_stream",
    "handwritten",
    "handwritten_events",
    "main",
    "render",
    "run_benchmark",
    "save_results",
]


def __dir__() -> list[str]:
    return list(__all__)


#: Chunk size the readers are fed with (a socket read's worth; 512 page requests).
CHUNK = 1 << 13
#: Records the hand-written loop collects before handing them on (as many as a chunk).
BATCH = CHUNK // 16
#: RAMBlock names a destination may request pages of (``RAMBlock.idstr``).
BLOCKS = ("pc.ram", "/rom@etc/acpi/tables", "vga.vram", "pc.bios")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--frames",
        type=int,
        default=200_000,
        help="frames in the generated stream (default 200000; the issue's stream: 1010000)",
    )
    p.add_argument(
        "--slow-frames",
        type=int,
        default=20_000,
        help="prefix of the stream the model and construct decoders run on (default 20000)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="timed rounds (default 3): best of N, ratios the median",
    )
    p.add_argument("--release", default="10.0", help="source release (default 10.0)")
    p.add_argument("--seed", type=int, default=9, help="stream generator seed")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    p.add_argument(
        "--save",
        metavar="DIR",
        help="also write DIR/bench_decode-<frames>-<UTC time>.txt and .json",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``benchmarks/bench_decode.py`` (``migcompat bench`` without the CLI)."""
    p = argparse.ArgumentParser(
        prog="bench_decode",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    args = p.parse_args(argv)
    res = run_benchmark(
        release=args.release, frames=args.frames, slow_frames=args.slow_frames,
        repeat=args.repeat, seed=args.seed,
    )  # fmt: skip
    text = render(res)
    sys.stdout.write(json.dumps(res, indent=2) + "\n" if args.json else text)
    if args.save:
        save_results(res, text, args.save)
    return 0


def save_results(res: dict[str, Any], text: str, where: str | Path) -> Path:
    """Write ``where/bench_decode-<frames>-<UTC time>.txt`` and ``.json``; the stem."""
    out = Path(where)
    out.mkdir(parents=True, exist_ok=True)
    when = res["date"].replace(":", "").replace("-", "")
    stem = out / f"bench_decode-{res['stream']['frames']}-{when}"
    stem.with_suffix(".txt").write_text(text, encoding="utf-8")
    stem.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    return stem


# -- the stream ----------------------------------------------------------------------------


def generate_stream(release: str, frames: int, seed: int, id_ratio: float = 0.01) -> bytes:
    """``frames`` page requests: REQ_PAGES, and REQ_PAGES_ID (naming a block) at ``id_ratio``.

    Ids come from the release's catalog; the first frame names a block (QEMU requires it
    before any REQ_PAGES when it checks RAM).
    """
    from migcompat.protocol import catalog

    cat = catalog(release)
    rp = cat.by_name["MIG_RP_MSG_REQ_PAGES"].id
    rp_id = cat.by_name["MIG_RP_MSG_REQ_PAGES_ID"].id
    rnd = random.Random(seed)
    page = struct.Struct(">HHQI")
    # One growing buffer, not a list of a million small bytes objects: their freed
    # memory would leave the allocator's pools fragmented for everything timed after.
    out = bytearray()
    for i in range(frames):
        start = rnd.randrange(1 << 20) << 12  # 4 GiB of 4 KiB pages
        length = 4096 << rnd.choice((0, 0, 0, 1, 4))
        if i == 0 or rnd.random() < id_ratio:
            name = rnd.choice(BLOCKS).encode("latin-1")
            out += struct.pack(">HHQIB", rp_id, 13 + len(name), start, length, len(name))
            out += name
        else:
            out += page.pack(rp, 12, start, length)
    return bytes(out)


# -- the decoders ---------------------------------------------------------------------------


def _ids(release: str) -> tuple[int, int]:
    """The type ids of MIG_RP_MSG_REQ_PAGES and MIG_RP_MSG_REQ_PAGES_ID in ``release``."""
    from migcompat.protocol import catalog

    cat = catalog(release)
    return cat.by_name["MIG_RP_MSG_REQ_PAGES"].id, cat.by_name["MIG_RP_MSG_REQ_PAGES_ID"].id


def handwritten(release: str) -> Callable[[bytes], int]:
    """The baseline: ``struct.unpack_from`` per frame, one tuple of its fields, no checks."""
    ids = _ids(release)

    def run(data: bytes) -> int:
        req_pages, req_pages_id = ids
        hdr = struct.Struct(">HH").unpack_from
        req = struct.Struct(">QI").unpack_from
        out: list[tuple[Any, ...]] = []
        ap = out.append
        pos, end, n = 0, len(data), 0
        while pos + 4 <= end:
            t, ln = hdr(data, pos)
            if t == req_pages:
                start, size = req(data, pos + 4)
                ap((t, ln, start, size))
            elif t == req_pages_id:
                start, size = req(data, pos + 4)
                k = data[pos + 16]
                ap((t, ln, start, size, data[pos + 17 : pos + 17 + k].decode("latin-1")))
            else:
                ap((t, ln, data[pos + 4 : pos + 4 + ln]))
            pos += 4 + ln
            if len(out) >= BATCH:  # hand them on, as a streaming consumer would
                n += len(out)
                out.clear()
        return n + len(out)

    return run


def _handwritten_gen(data: bytes, ids: tuple[int, int]) -> Iterator[tuple[Any, ...]]:
    req_pages, req_pages_id = ids
    hdr = struct.Struct(">HH").unpack_from
    req = struct.Struct(">QI").unpack_from
    pos, end = 0, len(data)
    while pos + 4 <= end:
        t, ln = hdr(data, pos)
        if t == req_pages:
            start, size = req(data, pos + 4)
            yield (t, ln, start, size)
        elif t == req_pages_id:
            start, size = req(data, pos + 4)
            k = data[pos + 16]
            yield (t, ln, start, size, data[pos + 17 : pos + 17 + k].decode("latin-1"))
        else:
            yield (t, ln, data[pos + 4 : pos + 4 + ln])
        pos += 4 + ln


def handwritten_events(release: str) -> Callable[[bytes], int]:
    """The baseline as a generator, one tuple per step: the like of ``events()``."""
    ids = _ids(release)

    def run(data: bytes) -> int:
        n = 0
        for _ in _handwritten_gen(data, ids):
            n += 1
        return n

    return run


def fast(release: str) -> Callable[[bytes], int]:
    from migcompat.protocol import FastReader

    def run(data: bytes) -> int:
        r = FastReader(release)
        n = 0
        for i in range(0, len(data), CHUNK):
            r.receive_data(data[i : i + CHUNK])
            n += len(r.drain())
        r.receive_data(b"")
        return n + sum(1 for ev in r.drain() if type(ev).__name__ != "EndOfStream")

    return run


def per_event(cls: Any, release: str) -> Callable[[bytes], int]:
    def run(data: bytes) -> int:
        r = cls(release)
        n = 0
        for i in range(0, len(data), CHUNK):
            r.receive_data(data[i : i + CHUNK])
            for _ in r.events():
                n += 1
        return n

    return run


def compilable(con: Any) -> Any:
    """A copy of a construct grammar without the ``Check``s construct cannot compile (lambdas)."""
    import construct as cs

    if isinstance(con, cs.Struct):
        return cs.Struct(
            *[
                compilable(s)
                for s in con.subcons
                if not (isinstance(s, cs.Check) and isinstance(s.func, types.FunctionType))
            ]
        )
    if isinstance(con, cs.Renamed):
        return con.name / compilable(con.subcon)
    if isinstance(con, cs.FixedSized):
        return cs.FixedSized(con.length, compilable(con.subcon))
    if isinstance(con, cs.Switch):
        cases = {k: compilable(v) for k, v in con.cases.items()}
        return cs.Switch(con.keyfunc, cases, compilable(con.default))
    if isinstance(con, cs.IfThenElse):
        return cs.IfThenElse(con.condfunc, compilable(con.thensubcon), compilable(con.elsesubcon))
    return con


def construct_interpreted(release: str) -> Callable[[bytes], int]:
    import construct as cs

    from migcompat.protocol import frame_grammar

    greedy = cs.GreedyRange(frame_grammar(release))
    return lambda data: len(greedy.parse(data))


def construct_compiled(release: str) -> Callable[[bytes], int]:
    from migcompat.protocol import frame_grammar

    compiled = compilable(frame_grammar(release)).compile()

    def run(data: bytes) -> int:
        stream = io.BytesIO(data)
        parse, end, n = compiled.parse_stream, len(data), 0
        while stream.tell() < end:
            parse(stream)
            n += 1
        return n

    return run


# -- measuring ------------------------------------------------------------------------------


def _time(fn: Callable[[bytes], int], data: bytes, repeat: int) -> dict[str, Any]:
    best_cpu = best_wall = float("inf")
    frames = 0
    for _ in range(repeat):
        gc.collect()
        w0, c0 = time.perf_counter(), time.process_time()
        frames = fn(data)
        c1, w1 = time.process_time(), time.perf_counter()
        best_cpu, best_wall = min(best_cpu, c1 - c0), min(best_wall, w1 - w0)
    return {
        "frames": frames,
        "cpu_seconds": round(best_cpu, 4),
        "wall_seconds": round(best_wall, 4),
        "frames_per_s": round(frames / best_cpu) if best_cpu > 0 else None,
        "frames_per_s_wall": round(frames / best_wall) if best_wall > 0 else None,
    }


def _peak(fn: Callable[[bytes], int], data: bytes) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        fn(data)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _prefix(data: bytes, frames: int) -> bytes:
    """The first ``frames`` whole frames of ``data``."""
    pos = 0
    for _ in range(frames):
        if pos + 4 > len(data):
            break
        pos += 4 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return data[:pos]


def run_benchmark(
    *, release: str, frames: int, slow_frames: int, repeat: int, seed: int
) -> dict[str, Any]:
    """Generate the stream, check the engines agree on it, time them; the results as data."""
    from migcompat.protocol import InputError

    if frames < 1 or slow_frames < 1 or repeat < 1:
        raise InputError("--frames, --slow-frames and --repeat must be positive")
    command = (
        f"migcompat bench --frames {frames} --slow-frames {slow_frames} --repeat {repeat} "
        f"--release {release} --seed {seed}"
    )
    import construct

    from migcompat.protocol import FastReader, Reader, catalog

    release = str(catalog(release).release)
    data = generate_stream(release, frames, seed)
    slow = _prefix(data, min(slow_frames, frames))

    # Not timed: the fast path's events are the model's (the benchmark measures the
    # same work), and the stream decodes completely.
    def events(cls: Any, blob: bytes) -> list[Any]:
        r = cls(release)
        r.receive_data(blob)
        r.receive_data(b"")
        return list(r.events())

    model_events = events(Reader, slow)
    if events(FastReader, slow) != model_events:
        raise AssertionError("fast path and model disagree on the benchmark stream")
    slow_count = len(model_events) - 1  # without EndOfStream
    # Not kept while timing: live objects make every full GC collection longer.
    del model_events
    gc.collect()

    results: dict[str, dict[str, Any]] = {}
    # Interleaved, order alternating, so that the load of a shared machine hits every
    # side alike; the headline ratios are medians of the per-round ratios.
    fns: dict[str, Callable[[bytes], int]] = {
        "handwritten": handwritten(release),
        "handwritten-events": handwritten_events(release),
        "fast": per_event(FastReader, release),
        "fast-drain": fast(release),
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in fns}
    # CPython 3.11 specialises a function's bytecode only after it has run a few times
    # (8 calls): warm every decoder up first, or the first rounds time the slow path.
    warm = _prefix(data, 2000)
    for fn in fns.values():
        for _ in range(10):
            fn(warm)
    for i in range(repeat):
        for name in list(fns) if i % 2 == 0 else list(reversed(fns)):
            runs[name].append(_time(fns[name], data, 1))
    for name, rs in runs.items():
        results[name] = dict(min(rs, key=lambda r: r["cpu_seconds"]))
        results[name]["frames_per_s_each_round"] = [r["frames_per_s"] for r in rs]
    slow_fns = {
        "model": per_event(Reader, release),
        "construct": construct_interpreted(release),
        "construct-compiled": construct_compiled(release),
    }
    for name, fn in slow_fns.items():
        for _ in range(10):
            fn(_prefix(data, 50))
        results[name] = _time(fn, slow, 1)
    outputs = {
        "handwritten": "tuples, no checks, handed on 512 at a time",
        "handwritten-events": "tuples, no checks, a generator step each",
        "fast": "typed events, events() generator",
        "fast-drain": "typed events, one drain() list per 8 KiB chunk",
        "model": "typed events, events() generator",
        "construct": "Containers, GreedyRange(frame) interpreted",
        "construct-compiled": "Containers, compiled frame (lambda Checks dropped), per frame",
    }
    for name, r in results.items():
        r["output"] = outputs[name]
    for name in ("handwritten", "handwritten-events", "fast", "fast-drain"):
        if results[name]["frames"] != frames:
            raise AssertionError(f"{name} decoded {results[name]['frames']} of {frames} frames")

    def ratio(a: str, b: str, key: str = "frames_per_s") -> float:
        return round(results[a][key] / results[b][key], 2)

    def paired(a: str, b: str) -> float:
        pairs = zip(runs[a], runs[b], strict=True)
        per_round = [rb["cpu_seconds"] / ra["cpu_seconds"] for ra, rb in pairs]
        return round(statistics.median(per_round), 2)

    # Like for like first: batches against batches, one at a time against one at a time.
    ratios = {
        "fast-drain/handwritten": paired("fast-drain", "handwritten"),
        "fast/handwritten-events": paired("fast", "handwritten-events"),
        "fast/handwritten": paired("fast", "handwritten"),
        "fast/handwritten (best/best)": ratio("fast", "handwritten"),
        "fast/construct": ratio("fast", "construct"),
        "fast/construct-compiled": ratio("fast", "construct-compiled"),
        "fast/model": ratio("fast", "model"),
        "fast/handwritten (best/best, wall)": ratio("fast", "handwritten", "frames_per_s_wall"),
    }
    memory = {
        "stream_bytes": len(data),
        "fast_peak_traced_bytes": _peak(fns["fast"], data),
        "fast_drain_peak_traced_bytes": _peak(fns["fast-drain"], data),
        "handwritten_peak_traced_bytes": _peak(fns["handwritten"], data),
        "maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    return {
        "benchmark": "bench_decode",
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command,
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "construct": getattr(construct, "__version__", "?"),
        "stream": {
            "release": release,
            "frames": frames,
            "bytes": len(data),
            "req_pages_id_share": 0.01,
            "seed": seed,
            "slow_frames": slow_count,
        },
        "timer": "time.process_time, best of --repeat (wall time alongside); "
        "handwritten/fast ratios: median over rounds of the per-round ratio",
        "repeat": repeat,
        "results": results,
        "ratios": ratios,
        "memory": memory,
    }


def render(res: dict[str, Any]) -> str:
    s = res["stream"]
    lines = [
        f"migcompat bench: {s['frames']} frames, {s['bytes'] / 1e6:.1f} MB, source {s['release']} "
        f"(REQ_PAGES, 1% REQ_PAGES_ID), seed {s['seed']}",
        f"CPU: {res['cpu']} ({res['cpus']} cpus, load {res['loadavg_at_start']}); "
        f"Python {res['python']}, construct {res['construct']}",
        f"timer: {res['timer']}, repeat {res['repeat']}",
        "",
        f"{'decoder':20} {'frames':>9} {'frames/s':>12} {'(wall)':>12}  output",
    ]
    for name, r in res["results"].items():
        lines.append(
            f"{name:20} {r['frames']:>9} {r['frames_per_s']:>12,} {r['frames_per_s_wall']:>12,}"
            f"  {r['output']}"
        )
    lines += ["", "ratios (frames/s; like for like first: batches, then one event at a time):"]
    lines += [f"  {k:36} {v:>8.2f}x" for k, v in res["ratios"].items()]
    m = res["memory"]
    lines += [
        "",
        f"memory: stream {m['stream_bytes'] / 1e6:.1f} MB; peak traced while decoding it: "
        f"fast {m['fast_peak_traced_bytes'] / 1e6:.1f} MB, handwritten "
        f"{m['handwritten_peak_traced_bytes'] / 1e6:.1f} MB; process max RSS "
        f"{m['maxrss_bytes'] / 1e6:.0f} MB",
    ]
    return "\n".join(lines) + "\n"
