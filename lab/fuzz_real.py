"""Differential fuzzing against a real source: frames injected into real migrations (the lab),
what the source did compared with the model's verdict (``migcompat fuzz --real``).

Frames are drawn (with :mod:`migcompat.protocol.strategies`) from the classes a live source
can be tested with and injected into the return path of a real migration from a lab build
of the release: several accepted frames share one migration; each rejected frame needs its
own. What the real source did — final status, exact error text in ``error-desc`` or stderr
(:func:`real_outcome`) — is compared (:func:`migcompat.protocol.fuzzing.compare`) with the
model's verdict on the return path as the source received it (``rp.bin``, read with the
guest's RAM). An injected SHUT ends the return path without a rejection; what the migration
does next is not the reader's to predict, so only texts are compared for it. Names are
compared as a UTF-8 reader sees QEMU's raw bytes. Every disagreement is saved (capture,
record, case) under ``<out>/real/``; a lab failure or hang is "inconclusive", not a
disagreement.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migcompat.protocol import InputError, Release, build_frame
from migcompat.protocol.fuzzing import compare, model_verdict

__all__ = [
    "DEFAULT_REAL_EXAMPLES",
    "REAL_BATCH",
    "REAL_CASE_TIMEOUT",
    "REAL_EXCLUDED",
    "REAL_RAM",
    "RealCase",
    "plan_cases",
    "real_outcome",
    "real_pools",
    "run_real",
]


def __dir__() -> list[str]:
    return list(__all__)


#: Frames per ``--real`` run when ``--examples`` is not given (each migration is ~10 s).
DEFAULT_REAL_EXAMPLES = 8
#: Accepted frames injected together ahead of one frame in a single migration.
REAL_BATCH = 4
#: Wall-clock limit of one real migration (the lab's own timeout is 60 s after migrate).
REAL_CASE_TIMEOUT = 150.0

#: The RAM the lab's guest has that return-path frames can name (``lab/runner.py``: 128 MiB,
#: q35; page requests only ever name ``pc.ram``). Other blocks (ROMs, BIOS) are left out:
#: generated names are random, so they never hit one by chance.
REAL_RAM: Mapping[str, int] = {"pc.ram": 128 << 20}


#: Invalid kinds a live source in postcopy-active cannot be compared on, and why.
REAL_EXCLUDED = {
    "truncated": "a live return path keeps delivering the destination's bytes behind the cut",
    "recv-bitmap-bad-size": "names a real block: the source first checks it is in "
    "postcopy-recover ('Reload bitmap in incorrect state'), which the Reader does not model",
    "recv-bitmap-bad-end-mark": "same: a real block name hits the migration-state check first",
}


@dataclass(frozen=True)
class _Sample:
    kind: str
    data: bytes


@dataclass
class RealCase:
    """Frames injected in one real migration, and what the model and QEMU made of them."""

    frames: list[tuple[str, bytes]]
    model: dict[str, Any] = field(default_factory=dict)
    real: dict[str, Any] = field(default_factory=dict)
    agree: bool | None = None
    why: str = ""
    outdir: str = ""

    @property
    def blob(self) -> bytes:
        return b"".join(d for _, d in self.frames)

    def to_json(self) -> dict[str, Any]:
        return {
            "frames": [{"kind": k, "hex": d.hex()} for k, d in self.frames],
            "model": self.model,
            "real": self.real,
            "agree": self.agree,
            "why": self.why,
        }


def real_outcome(rec: Any) -> dict[str, Any]:
    """What the real source did in a lab run: final status, its error texts, verdict."""
    statuses = rec.status_sequence("src")
    final = (rec.final_migrate.get("src") or {}).get("status") or (
        statuses[-1] if statuses else None
    )
    texts = []
    for line in rec.stderr_lines("src"):
        _, sep, rest = line.partition(": ")
        texts.append(rest if sep and line.split(":")[0].startswith("qemu-system") else line)
    desc = rec.error_desc.get("src")
    if final in ("failed", "postcopy-paused"):
        verdict = "rejected"
    elif final == "completed":
        verdict = "accepted"
    else:
        verdict = "undecided"
    return {
        "verdict": verdict,
        "status": final,
        "statuses": statuses,
        "error_desc": desc,
        "stderr": texts,
        "version": rec.src.get("version_text"),
    }


def real_pools(release: Release, per_kind: int, seed: int) -> dict[str, list[tuple[str, bytes]]]:
    """Frames per class, drawn with hypothesis (generation only: no real run is shrunk)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st

    from migcompat.protocol import strategies as rps

    ram = dict(REAL_RAM)
    classes: dict[str, Any] = {
        # RECV_BITMAP naming a real block needs postcopy-recover (see REAL_EXCLUDED).
        "valid": rps.valid_frames(release, shut=False, ram=ram).filter(
            lambda s: s.kind != "valid:RECV_BITMAP"
        ),
        "shut": st.one_of(st.just(0), st.integers(0, 2**32 - 1)).map(
            lambda v: _Sample("valid:SHUT", build_frame(release, "SHUT", sibling_error=v))
        ),
    }
    for kind in rps.kinds_for(release):
        if kind not in REAL_EXCLUDED:
            classes[kind] = rps.invalid_frames(release, kind, ram=ram)
    pools: dict[str, list[tuple[str, bytes]]] = {}
    for name, strategy in classes.items():
        got: list[tuple[str, bytes]] = []
        hseed(seed)(
            settings(
                max_examples=per_kind * 3,
                database=None,
                deadline=None,
                phases=(Phase.generate,),
                suppress_health_check=list(HealthCheck),
            )(given(strategy)(_collector(got, per_kind, None if name == "valid" else name)))
        )()
        pools[name] = got
    return pools


def _collector(
    got: list[tuple[str, bytes]], limit: int, label: str | None
) -> Callable[[Any], None]:
    def collect(sample: Any) -> None:
        if len(got) < limit and all(d != sample.data for _, d in got):
            got.append((label or sample.kind, sample.data))

    return collect


def plan_cases(pools: dict[str, list[tuple[str, bytes]]], n: int) -> list[RealCase]:
    """``n`` frames in migrations: each rejected (or SHUT) frame last in its own migration,
    accepted ones batched ahead of them, classes round-robin so every class is covered."""
    order = [k for k in pools if k != "valid"]
    tails: list[tuple[str, bytes]] = []
    valid = list(pools.get("valid", []))
    i = 0
    budget = n
    while budget > 0 and any(pools[k] for k in order):
        k = order[i % len(order)]
        i += 1
        if pools[k]:
            tails.append(pools[k].pop(0))
            budget -= 1
        if budget > 0 and valid and i % 2 == 0:
            budget -= 1
            tails.append(valid.pop(0))
    cases: list[RealCase] = []
    pending: list[tuple[str, bytes]] = []
    for kind, data in tails:
        if kind.startswith("valid:"):
            pending.append((kind, data))
            if len(pending) >= REAL_BATCH:
                cases.append(RealCase(pending))
                pending = []
            continue
        cases.append(RealCase([*pending, (kind, data)]))
        pending = []
    if pending:
        cases.append(RealCase(pending))
    return cases


async def _one_run(runner: Any, build: Any, sc: Any, outdir: Path) -> Any:
    """One lab run, cancelled (the lab tears its QEMUs down) if it outlives its own timeout."""
    async with asyncio.timeout(REAL_CASE_TIMEOUT):  # not wait_for (see docs/reliability.md)
        return await runner(build, build, sc, outdir=outdir, timeout=60.0, observe=4.0)


def run_real(
    release: Release,
    *,
    examples: int | None,
    seed: int,
    out: Path,
    on_start: Callable[[str, list[RealCase]], None] | None = None,
    on_case: Callable[[int, RealCase], None] | None = None,
    build: Any = None,
) -> dict[str, Any]:
    """Inject ``examples`` frames into real migrations from the lab build of ``release``
    (or from ``build``, e.g. a ``migcompat lab build`` whose own catalog is ``release``).

    ``on_start(build version text, cases)`` before the first migration, ``on_case(n, case)``
    after each; disagreements are saved under ``out/real/``. Returns the summary
    (``disagreements``, ``inconclusive``, rates). :class:`InputError` when the lab has no
    build of ``release``.
    """
    try:
        from migcompat.lab import (
            LabError,
            Scenario,
            find_build,
            installed_builds,
            run_scenario_async,
            save_fixture,
        )
    except ImportError as exc:  # pragma: no cover - the lab is part of this package
        raise InputError(
            f"--real needs the lab (migcompat.lab), which is not usable: {exc}"
        ) from None
    build = build or find_build(str(release))
    if build is None:
        have = ", ".join(b.release for b in installed_builds()) or "none"
        hint = (
            f"register a patched build: `migcompat lab provision --qemu {release}=/path/to/"
            "qemu-system-x86_64`"
            if release.overlay
            else f"run `migcompat lab provision {release.line}`"
        )
        raise InputError(f"--real: no lab build of QEMU {release} (provisioned: {have}); {hint}")
    n = examples or DEFAULT_REAL_EXAMPLES
    from migcompat.protocol import strategies as rps

    kinds = [k for k in rps.kinds_for(release) if k not in REAL_EXCLUDED]
    per_kind = max(1, -(-n // (len(kinds) + 1))) + 1
    cases = plan_cases(real_pools(release, per_kind, seed), n)
    if on_start is not None:
        on_start(build.version_text, cases)
    disagreements = inconclusive = 0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="migcompat-fuzz-") as tmp:
        for n_case, case in enumerate(cases):
            outdir = Path(tmp) / f"case{n_case}"
            sc = Scenario(name=f"fuzz:{case.blob[:8].hex()}", kind="inject", frame=case.blob)
            rec, lab_error = None, ""
            for attempt in range(2):  # a lab hiccup (QEMU not starting) is retried once
                try:
                    rec = asyncio.run(_one_run(run_scenario_async, build, sc, outdir))
                    break
                except LabError as exc:
                    lab_error = f"{exc}" + (" (after a retry)" if attempt else "")
                except TimeoutError:
                    lab_error = f"the lab run hung for {REAL_CASE_TIMEOUT:.0f} s and was cancelled"
                    break
            if rec is None:
                case.agree, case.why = None, f"the lab failed: {lab_error}"
                case.real = {"verdict": "undecided"}
                inconclusive += 1
                if on_case is not None:
                    on_case(n_case, case)
                continue
            rp_path = Path(rec.files.get("rp_bin", outdir / "rp.bin"))
            rp = rp_path.read_bytes() if rp_path.exists() else b""
            inj = rec.proxy.get("injections", [])
            if (
                not inj
                or rp[inj[0]["src_offset"] : inj[0]["src_offset"] + len(case.blob)] != case.blob
            ):
                case.agree, case.why = None, "the frames were not injected (see record.json)"
                case.real = {"verdict": "undecided", "step_errors": rec.step_errors}
            else:
                at = inj[0]["src_offset"]
                case.model = model_verdict(release, rp, REAL_RAM, (at, at + len(case.blob)))
                case.real = real_outcome(rec)
                case.agree, case.why = compare(case.model, case.real, release)
            if case.agree is False:
                disagreements += 1
                digest = hashlib.sha256(case.blob).hexdigest()[:10]
                fdir = out / "real" / f"{release}-{digest}"
                save_fixture(outdir, fdir)
                (fdir / "case.json").write_text(
                    json.dumps({"schema": 1, "release": str(release), "ram": dict(REAL_RAM),
                                "injected": [at, at + len(case.blob)], **case.to_json()},
                               indent=2) + "\n"
                )  # fmt: skip
                case.outdir = str(fdir)
            elif case.agree is None:
                inconclusive += 1
            if on_case is not None:
                on_case(n_case, case)
    dt = time.perf_counter() - t0
    frames = sum(len(k.frames) for k in cases)
    summary = {
        "source": str(release),
        "build": build.version_text,
        "seed": seed,
        "frames": frames,
        "migrations": len(cases),
        "disagreements": disagreements,
        "inconclusive": inconclusive,
        "seconds": round(dt, 1),
        "frames_per_second": round(frames / dt, 3) if dt else 0,
    }
    return summary
