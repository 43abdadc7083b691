"""Patched-destination runs: the cases, and how a run reproduces its keepalive verdict.

Used by ``tests/test_keepalive_fixtures.py`` (committed fixtures, no QEMU) and
``tests/qemu/test_keepalive_live.py`` (the same cases, run now). Regenerate the fixtures::

    MIGCOMPAT_KEEPALIVE_PATCH=… python tests/keepalive_cases.py fixtures/captures [CASE…]

A case names the destination build by its patch (``v1``: the posted patch; ``v2``: v1 + the
compat hunk ``migcompat keepalive --compat-patch`` writes), a source (a release line, or
``v1`` for a patched source), the machine type, the period set with migrate-set-parameters
on the destination (``None``: leave QEMU's effective default, the point of v2), and idle
(``-S``, never continued) or running.

Each run is judged against ``decide_keepalive`` for the same facts: the effective period
QEMU reports equals the model's; a safe verdict means no type-8 frame when the period is 0
and a completed migration; an unsafe one, once QEMU sent a KEEPALIVE, ends on the source as
the injection runs observed (``migcompat keepalive``'s "what the source does").
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migcompat.compat import decide_keepalive, observed_rejection
from migcompat.lab.evidence import keepalive_evidence
from migcompat.protocol import Release

PARAM = "postcopy-rp-keepalive-period"
PERIOD = 2000  # ms
#: Source ``max-postcopy-bandwidth`` (bytes/s): the idle destination's postcopy phase lasts
#: ~15 s, several periods (the lab's default 10 MB/s is over in ~3 s).
POSTCOPY_BANDWIDTH = 2_000_000


@dataclass(frozen=True)
class Case:
    id: str
    dst: str  #: v1 / v2
    src: str  #: release line of a provisioned build, or v1
    machine: str
    period: int | None
    idle: bool

    @property
    def fixture(self) -> str:
        return f"keepalive-{self.id}"


CASES: tuple[Case, ...] = (
    # v1 (no compat entry): the period is on for every machine type
    Case("v1-7.2-idle", "v1", "7.2", "pc-q35-7.2", PERIOD, True),
    Case("v1-7.2-running", "v1", "7.2", "pc-q35-7.2", PERIOD, False),
    Case("v1-10.0-idle", "v1", "10.0", "pc-q35-10.0", PERIOD, True),
    Case("v1-10.0-running", "v1", "10.0", "pc-q35-10.0", PERIOD, False),
    Case("v1-5.2-idle", "v1", "5.2", "pc-q35-5.2", PERIOD, True),
    # (11.1 -> v1 on pc-q35-10.0 was run too: the 11.1 source failed on the KEEPALIVE like
    # 10.0; not a case here because the capture tests model 11.1's SWITCHOVER_ACK counting
    # without the machine type, see docs/keepalive.md)
    # a patched source knows type 8
    Case("v1-v1-idle", "v1", "v1", "pc-q35-10.0", PERIOD, True),
    # v2: machine types up to 9.2 carry hw_compat_9_2 -> period 0
    Case("v2-7.2-idle", "v2", "7.2", "pc-q35-7.2", None, True),
    Case("v2-10.0-9.2-idle", "v2", "10.0", "pc-q35-9.2", None, True),
    Case("v2-10.0-9.2-running", "v2", "10.0", "pc-q35-9.2", None, False),
    # ...but a backport cannot cover pc-q35-10.0: an unpatched 10.0 source runs it
    Case("v2-10.0-idle", "v2", "10.0", "pc-q35-10.0", PERIOD, True),
)

BY_ID = {c.id: c for c in CASES}


def _meta(folder: Path) -> dict[str, Any]:
    for name in ("record.json", "metadata.json"):
        if (folder / name).exists():
            return json.loads((folder / name).read_text())
    raise FileNotFoundError(folder)


def _release(side: dict[str, Any]) -> str:
    return side.get("protocol_release") or side["release"]


def judge(folder: Path) -> dict[str, Any]:
    """The verdict for the run's facts, its real outcome, and every disagreement."""
    meta = _meta(folder)
    ev = keepalive_evidence(folder)
    explicit = (meta.get("dst_parameters") or {}).get(PARAM)
    d = decide_keepalive(
        _release(meta["src"]), _release(meta["dst"]), meta["machine"], explicit, tcp=False
    )
    final = {s: (meta.get("final_migrate", {}).get(s) or {}).get("status") for s in ("src", "dst")}
    src_lines = [
        ln["line"] if isinstance(ln, dict) else ln
        for ln in (meta.get("stderr") or {}).get("src", [])
        if not isinstance(ln, dict) or ln.get("stream") == "stderr"
    ]
    problems: list[str] = []
    if ev["injections"]:
        problems.append(f"{ev['injections']} injected frames: not a patched-destination run")
    if ev["dst_period_ms"] != d.period:
        problems.append(
            f"destination reports {PARAM}={ev['dst_period_ms']}, "
            f"the model says {d.period} ({d.period_origin})"
        )
    prediction: dict[str, Any] = {}
    if d.safe:
        prediction = {"src": "completed", "dst": "completed"}
        if d.period == 0 and ev["frames"]:
            problems.append(f"period 0 yet {ev['frames']} type-8 frames")
        if final["src"] != "completed" or final["dst"] != "completed":
            problems.append(f"safe, yet the migration ended {final}")
    elif ev["from_qemu"]:
        obs = observed_rejection(Release(_release(meta["src"])), ev["type_id"])
        if not obs:
            problems.append(
                "unsafe, KEEPALIVE sent, but no injection run of this source line to compare with"
            )
        else:
            o = obs[0]
            prediction = {
                "src": o.src_final,
                "src_error_desc": o.src_error_desc,
                "fixture": o.fixture,
            }
            if final["src"] != o.src_final:
                problems.append(
                    f"source ended {final['src']}; the injection run "
                    f"{o.fixture} ended {o.src_final}"
                )
            got_desc = (meta.get("error_desc") or {}).get("src")
            if (got_desc or None) != (o.src_error_desc or None):
                problems.append(
                    f"source error-desc {got_desc!r}; {o.fixture}: {o.src_error_desc!r}"
                )
            want = [ln for ln in o.src_stderr if "0x0008" in ln]
            if want and not any(w in src_lines for w in want):
                problems.append(f"source stderr lacks {want[0]!r}")
    return {
        "verdict": d.verdict,
        "period_model": d.period,
        "period_origin": d.period_origin,
        "sends_keepalive": d.sends_keepalive,
        "evidence": ev,
        "final": final,
        "prediction": prediction,
        "problems": problems,
        "src_stderr": src_lines,
        "error_desc": meta.get("error_desc") or {},
    }


def builds(need_v2: bool = True) -> dict[str, Any]:
    """``v1``/``v2`` lab builds (built or cached); provisioned ones are looked up by line."""
    sys.path.insert(0, str(Path(__file__).parent / "qemu"))
    from keepalive_seed import v1_build, v2_build  # type: ignore[import-not-found]

    out = {"v1": v1_build()}
    if need_v2:
        out["v2"] = v2_build()
    return out


def run_case(case: Case, lab_builds: dict[str, Any], outdir: Path) -> Any:
    from migcompat.lab import find_build, run_scenario

    src = lab_builds.get(case.src) or find_build(case.src)
    if src is None:
        return None
    params = {PARAM: case.period} if case.period is not None else None
    return run_scenario(
        src,
        lab_builds[case.dst],
        "plain-idle" if case.idle else "plain",
        machine=case.machine,
        outdir=outdir,
        timeout=120,
        observe=4,
        dst_parameters=params,
        src_parameters={"max-postcopy-bandwidth": POSTCOPY_BANDWIDTH},
    )


def markdown(base: Path) -> str:
    """The docs/keepalive.md table, from the fixtures under ``base``."""
    rows = [
        "| case | source → destination | machine | period (set → reported) | dst | "
        "verdict | real outcome (src / dst) | KEEPALIVE from QEMU | first after "
        "postcopy-active | fixture |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in CASES:
        folder = base / c.fixture
        if not (folder / "metadata.json").exists():
            continue
        j = judge(folder)
        meta = _meta(folder)
        ev = j["evidence"]
        src = meta["src"]["release"]
        first = ev["first_after_postcopy_active_s"]
        desc = (j["error_desc"] or {}).get("src")
        outcome = f"{j['final']['src']} / {j['final']['dst']}" + (f" ({desc!r})" if desc else "")
        rows.append(
            f"| {c.id} | {src} → {meta['dst']['release']} | {meta['machine']} | "
            f"{c.period if c.period is not None else 'unset'} → {ev['dst_period_ms']} | "
            f"{'idle' if c.idle else 'running'} | **{j['verdict']}** | {outcome} | "
            f"{ev['from_qemu']} (injected {ev['injections']}) | "
            f"{f'{first:.2f} s' if first is not None else '—'} | `{c.fixture}` |"
        )
    return "\n".join(rows) + "\n"


def main(argv: list[str]) -> int:
    from migcompat.lab.fixtures import save_fixture

    if argv[:1] == ["--markdown"]:
        sys.stdout.write(markdown(Path(argv[1])))
        return 0
    out = Path(argv[0])
    wanted = [BY_ID[a] for a in argv[1:]] or list(CASES)
    lb = builds(need_v2=any(c.dst == "v2" for c in wanted))
    for case in wanted:
        with tempfile.TemporaryDirectory(prefix=f"mc-ka-{case.id}-") as tmp:
            rec = run_case(case, lb, Path(tmp) / "run")
            if rec is None:
                print(f"{case.id}: no {case.src} build, skipped")
                continue
            save_fixture(Path(tmp) / "run", out / case.fixture)
        j = judge(out / case.fixture)
        ev = j["evidence"]
        print(
            f"{case.id}: {j['verdict']} period={ev['dst_period_ms']} final={j['final']} "
            f"ka={ev['from_qemu']} first={ev['first_after_postcopy_active_s']} "
            f"problems={j['problems']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
