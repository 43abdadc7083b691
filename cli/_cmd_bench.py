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


def register(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="decoding throughput: fast path vs hand-written struct loop, model, construct",
        description=bench.__doc__.split("\n\n")[1] if bench.__doc__ else None,
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
