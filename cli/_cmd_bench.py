"""``migcompat bench``: return-path decoding throughput (:mod:`migcompat.lab.bench`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from migcompat.lab import bench

__all__ = ["register"]


def __dir__() -> list[str]:
    return list(__all__)


DESCRIPTION = (
    "Frames per second of every return-path decoder on one stream generated in memory "
    "(REQ_PAGES with 1% REQ_PAGES_ID, as a postcopy destination sends them): a hand-written "
    "struct.unpack_from loop without checks (the baseline, also as a generator), the fast "
    "path (FastReader, through events() and drain()), the model (Reader), and the construct "
    "grammar interpreted and compiled. CPU seconds of this process, best of --repeat "
    "interleaved rounds; ratios against the baseline measured in the same run. Nothing is "
    "asserted. In a checkout, python benchmarks/bench_decode.py runs the same code."
)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="decoding throughput: fast path vs hand-written struct loop, model, construct",
        description=DESCRIPTION,
    )
    bench.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    res = bench.run_benchmark(
        release=args.release, frames=args.frames, slow_frames=args.slow_frames,
        repeat=args.repeat, seed=args.seed,
    )  # fmt: skip
    text = bench.render(res)
    sys.stdout.write(json.dumps(res, indent=2) + "\n" if args.json else text)
    if args.save:
        bench.save_results(res, text, args.save)
    return 0
