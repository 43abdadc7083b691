"""Return-path decoding throughput: fast path vs a hand-written struct loop, the model, construct.

    python benchmarks/bench_decode.py                      # 200k frames, a few seconds
    python benchmarks/bench_decode.py --frames 1010000     # the issue's 1.01 M-frame stream
    python benchmarks/bench_decode.py --json --save benchmarks/results

The same code as ``migcompat bench`` (:mod:`migcompat.lab.bench`); see its docstring for
what is measured and how. Results committed from real runs: ``benchmarks/results/``,
summarised in ``docs/performance.md``.
"""

from __future__ import annotations

import sys

from migcompat.lab.bench import main

__all__ = ["main"]


def __dir__() -> list[str]:
    return list(__all__)


if __name__ == "__main__":
    sys.exit(main())
