"""Turn lab runs into a bug report a QEMU maintainer can act on (``migcompat lab report``).

A bundle is one folder:

* ``README.md`` — the finding in one paragraph (observed vs expected, why it matters), the
  exact ``--version`` lines, host kernel, machine type, command lines, the steps with times,
  the return-path bytes, and which releases show it (one row per run given);
* ``repro.py`` — standard library only, rendered from :mod:`migcompat.lab.repro_template`
  (one template; this module only fills its ``PARAMS`` from the run record);
* ``evidence/`` — both QMP transcripts (every command, reply and event with times), both
  stderrs, the injection (bytes and offset), the return path as the source received it, the
  pcap trimmed to headers on the forward leg (or none), ``runs.json`` (every run's outcome).

The finding's verdict on a lab record and on a repro run is the same function
(:func:`repro_template.verdict`), applied to the same outcome shape (:func:`outcome`).
"""

from __future__ import annotations

import base64
import json
import pprint
import shutil
import textwrap
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from migcompat.lab import repro_template
from migcompat.lab._errors import LabError

__all__ = [
    "FINDINGS",
    "Finding",
    "choose_finding",
    "load_record",
    "outcome",
    "render_repro",
    "repro_params",
    "write_report",
]


def __dir__() -> list[str]:
    return list(__all__)


#: Bundles must stay small enough to mail and commit.
MAX_BUNDLE_BYTES = 2 * 1024 * 1024
#: Forward-stream payload kept in the trimmed pcap (the QEVM header and first sections).
PCAP_FWD_KEEP = 4096


@dataclass(frozen=True)
class Finding:
    """What a kind of finding means to a maintainer; ``check`` is what repro.py tests."""

    kind: str
    title: str
    expected: str
    why: str
    #: What the evidence points at (kept apart from what was observed).
    notes: str = ""


FINDINGS: dict[str, Finding] = {
    f.kind: f
    for f in (
        Finding(
            "split-brain",
            "Split brain after one rejected return-path frame in postcopy",
            "a source that cannot go on in postcopy pauses (postcopy-paused, recoverable) and "
            "keeps its guest stopped: after switching to postcopy the destination owns the "
            "guest's newest state, so the source must never run it again",
            "the guest runs on two hosts at once (both `query-status` say running): two "
            "diverging copies of one VM, each writing to the same disks and networks",
            "The source decides: 8.2+ sources fail and resume the guest whatever the "
            "destination's release; pre-8.2 sources (5.2, 7.2) pause instead "
            "(`Detected IO failure for postcopy. Migration paused.`), guest stopped, recoverable "
            "(see docs/matrix.md of qemu-migcompat for every pair). A network cut in the same "
            "phase pauses every release: only a return-path *protocol* error takes this path.",
        ),
        Finding(
            "source-fails",
            "Migration fails on one extra MIG_RP_MSG_SWITCHOVER_ACK in postcopy",
            "a duplicate switchover ack, which changes nothing once postcopy runs, is ignored "
            "(or, at worst, pauses postcopy); it never fails a migration whose destination "
            "already runs the guest",
            "the source fails the migration and resumes its guest while the destination runs it "
            "too (split brain), triggered by one redundant message",
            "The 11.1 source counts acks whenever the capability is on, on every machine type "
            "tried (`pc-q35-5.2` … `pc-q35-11.1`); a 10.0 source accepts the same frame and "
            "completes; sources older than 8.1 (5.2, 7.2) do not know the message type and "
            "pause postcopy (docs/matrix.md of qemu-migcompat).",
        ),
        Finding(
            "recovery-hangs",
            "Postcopy recovery hangs in postcopy-recover after a rejected return-path frame",
            "after the pause, `migrate-recover` + `migrate resume=true` either recover "
            "(postcopy-active, then completed) or fail back to postcopy-paused so the user can "
            "retry",
            "the VM is stuck: the source waits in postcopy-recover forever, the guest runs "
            "nowhere usable, and the only ways out lose the guest",
            "The source decides (a 7.2 source hangs towards a 10.0 destination too). On the "
            "recovery connection the destination answers with its RECV_BITMAP frames (one per "
            "RAMBlock, `evidence/rp.1.bin`) and the source never goes on to resume: consistent "
            "with a pre-8.2 return-path thread that exits on a protocol error (it waits for "
            "recovery only after a file error), leaving nobody to read those bitmaps on resume. "
            "The same recovery after a blackhole completes on these releases (`recover` "
            "scenario). 8.2+ sources fail instead of pausing, so there is nothing to recover.",
        ),
        Finding(
            "keepalive-dropped",
            "TCP keep-alive options in migrate-incoming are accepted but not applied",
            "`keep-alive-idle/-interval/-count` given to `migrate-incoming` either reach the "
            "accepted migration socket or are refused with an error",
            "the destination is the side that must notice a silent network partition in "
            "postcopy (it has nothing in flight); with the options silently dropped it never "
            "does, while the user believes keep-alive is configured",
            "The destination decides (10.0 → 11.1 applies them). Reading the sources: the "
            "listener resolves the address into new `InetSocketAddress`es that copy host, "
            "port, `to`, ipv4, ipv6 and mptcp but not the keep-alive fields "
            "(`qio_dns_resolver_lookup_sync_inet`, io/dns-resolver.c, 7.2 and 10.0), so "
            "neither the options nor the refusal for passive sockets in `inet_listen_saddr` "
            "take effect; 10.2's resolver copies the whole address. Measured with a silent "
            "partition (docs/partition.md of qemu-migcompat): an 11.1 destination pauses 11 s "
            "after the cut (idle 5 + 3 × 2 s), 7.2 and 10.0 never.",
        ),
        Finding(
            "outcome",
            "Recorded migration outcome",
            "(no deviation recognised: the report records the outcome so it can be re-checked)",
            "a record of what these builds do, to re-run on other builds",
        ),
    )
}


def load_record(run_dir: Path) -> dict[str, Any]:
    """``record.json`` of a lab run folder (``lab run --out DIR``).

    :raises LabError: no readable record there.
    """
    path = Path(run_dir) / "record.json"
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LabError(f"{run_dir}: no lab run record (record.json) there", exc=exc) from exc
    if not isinstance(rec, dict) or "src" not in rec or "dst" not in rec:
        raise LabError(f"{path}: not a lab run record")
    if not rec.get("qmp"):
        raise LabError(
            f"{path}: this record has no QMP transcript (made before the lab recorded it); "
            "re-run the scenario"
        )
    return rec


def _is_partition(rec: dict[str, Any]) -> bool:
    return "strategy" in rec and "window" in rec


def choose_finding(rec: dict[str, Any]) -> str:
    """The finding kind a record is about (``outcome`` when none is recognised)."""
    if _is_partition(rec):
        return "keepalive-dropped" if str(rec.get("strategy", "")).startswith("tcp:") else "outcome"
    sc = rec.get("scenario") or {}
    if sc.get("kind") == "inject":
        if sc.get("then_recover"):
            return "recovery-hangs"
        if (sc.get("frame_hex") or "")[:4] == "0007":
            return "source-fails"
        return "split-brain"
    return "outcome"


def _side_outcome(rec: dict[str, Any], side: str) -> dict[str, Any]:
    statuses = [s["status"] for s in rec.get("statuses", {}).get(side, [])]
    final = (rec.get("final_migrate") or {}).get(side, {})
    rs = (rec.get("runstates") or {}).get(side, {})
    return {
        "status": final.get("status") or (statuses[-1] if statuses else None),
        "statuses": statuses,
        "error_desc": (rec.get("error_desc") or {}).get(side),
        "runstate": rs.get("status"),
        "running": rs.get("running"),
    }


def outcome(rec: dict[str, Any]) -> dict[str, Any]:
    """A record's outcome in the shape repro.py collects (so one ``verdict`` judges both)."""
    out: dict[str, Any] = {"src": _side_outcome(rec, "src"), "dst": _side_outcome(rec, "dst")}
    out["timed_out"] = bool(rec.get("timed_out"))
    steps = rec.get("steps", [])
    out["recovery_attempted"] = any(s.get("step") == "migrate-resume" for s in steps)
    if _is_partition(rec):
        cut = (rec.get("cut") or {}).get("t")
        dst = [s for s in rec.get("sockets", {}).get("dst", []) if cut is None or s["t"] < cut]
        out["keepalive_timers"] = [
            {"t": s["t"], "timer": 2, "left_s": s["timer_left_s"]}
            for s in dst
            if s.get("timer") == "keepalive"
        ]
        out["sockets_seen"] = len(dst)
    else:
        out["keepalive_timers"], out["sockets_seen"] = [], 0
    return out


def _check(kind: str, rec: dict[str, Any]) -> dict[str, Any]:
    if kind == "source-fails":
        err = (rec.get("error_desc") or {}).get("src") or "Switchover ack pending num underflowed"
        return {"kind": kind, "error_contains": err}
    if kind == "keepalive-dropped":
        idle = int(str(rec.get("strategy", "tcp:5")).split(":", 1)[1].split(",")[0])
        return {"kind": kind, "idle_s": idle}
    if kind == "outcome":
        o = outcome(rec)
        return {"kind": kind, "statuses": {"src": o["src"]["status"], "dst": o["dst"]["status"]}}
    return {"kind": kind}


def _guest_b64(rec: dict[str, Any]) -> str:
    """The guest the run booted (its ``-kernel`` file, when it is still there), else the lab's
    default guest built now; compressed and base64'd for repro.py."""
    from migcompat.lab.kernel import guest_kernel

    args = rec["command_lines"]["src"]["qemu_args"]
    recorded = Path(args[args.index("-kernel") + 1]) if "-kernel" in args[:-1] else None
    path = recorded if recorded is not None and recorded.is_file() else guest_kernel()
    return base64.b64encode(zlib.compress(path.read_bytes(), 9)).decode()


def _common_args(rec: dict[str, Any]) -> list[str]:
    """QEMU arguments both sides share, from the recorded source command line (``-kernel``
    becomes a placeholder repro.py fills; serial/name/qmp are per side and added there)."""
    args = list(rec["command_lines"]["src"]["qemu_args"])
    out: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-serial", "-name", "-qmp") and i + 1 < len(args):
            i += 2
            continue
        if a == "-kernel" and i + 1 < len(args):
            out += ["-kernel", "@KERNEL@"]
            i += 2
            continue
        if a == "-machine" and i + 1 < len(args):
            out += ["-machine", "@MACHINE@"]
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def repro_params(rec: dict[str, Any], kind: str) -> dict[str, Any]:
    """``PARAMS`` of repro.py for ``rec`` (everything it needs, nothing of migcompat)."""
    finding = FINDINGS[kind]
    partition = _is_partition(rec)
    sc = rec.get("scenario") if not partition else None
    uri_options = ""
    if partition:
        uri = (rec.get("uris") or {}).get("dst", "")
        uri_options = "," + uri.split(",", 1)[1] if "," in uri else ""
        if not uri_options and str(rec.get("strategy", "")).startswith("tcp:"):
            idle, intvl, cnt = str(rec["strategy"])[4:].split(",")
            uri_options = (
                f",keep-alive=on,keep-alive-idle={idle},"
                f"keep-alive-interval={intvl},keep-alive-count={cnt}"
            )
    inject = None
    if sc and sc.get("kind") == "inject":
        inject = {"hex": sc["frame_hex"], "trigger": sc.get("trigger", "postcopy")}
    dst_idle = bool(sc.get("idle")) if sc else rec.get("scenario") == "partition-idle"
    params: dict[str, Any] = {
        "title": finding.title,
        "kind": kind,
        "recorded": {
            "src": rec["src"].get("version_text"),
            "dst": rec["dst"].get("version_text"),
            "machine": rec.get("machine"),
        },
        "machine": rec.get("machine"),
        "common_args": _common_args(rec),
        "idle": dst_idle,
        "capabilities": list(rec.get("capabilities") or []),
        "parameters": dict(rec.get("parameters") or {})
        or {"max-bandwidth": 32 * 1024 * 1024, "max-postcopy-bandwidth": 10_000_000},
        "uri_options": uri_options,
        "inject": inject,
        "then_recover": bool(sc and sc.get("then_recover")),
        "check": _check(kind, rec),
        "timeout": 30.0 if kind in ("recovery-hangs", "keepalive-dropped") else 60.0,
        "guest_elf_zlib_b64": _guest_b64(rec),
    }
    return params


def render_repro(params: dict[str, Any]) -> str:
    """repro.py: the template with ``PARAMS`` and the title filled in."""
    text = (resources.files("migcompat.lab") / "repro_template.py").read_text()
    marker = "PARAMS: dict = {}  # @PARAMS@"
    if marker not in text or "@TITLE@" not in text or "@WHAT@" not in text:
        raise LabError("repro template lacks its @PARAMS@/@TITLE@/@WHAT@ markers")
    body = pprint.pformat(params, width=96, sort_dicts=False)
    text = text.replace(marker, "PARAMS: dict = " + body)
    text = text.replace("@TITLE@", params["title"] + ".", 1)
    return text.replace("@WHAT@", _what(params), 1)


def _what(params: dict[str, Any]) -> str:
    """The docstring's account of this reproducer's steps and verdict, from its PARAMS."""
    rec = params["recorded"]
    parts = [f"Recorded on {rec['src']} -> {rec['dst']}, machine {rec['machine']}."]
    if params["uri_options"]:
        parts.append(f"Both migration URIs carry {params['uri_options'][1:]}.")
    if params["idle"]:
        parts.append("The destination starts with -S (its guest never runs).")
    inj = params.get("inject")
    if inj:
        when = {"postcopy": "once both sides are postcopy-active"}.get(
            inj["trigger"], f"at {inj['trigger']}"
        )
        parts.append(f"The relay writes {inj['hex']} into the return path {when}.")
    if params.get("then_recover"):
        parts.append("Once both sides pause: migrate-recover on a new port, migrate resume=true.")
    check = params["check"]
    verdicts = {
        "split-brain": "Reproduces when both QEMUs end with their guest running.",
        "source-fails": f"Reproduces when the source fails with {check.get('error_contains')!r}.",
        "recovery-hangs": "Reproduces when a side is still in postcopy-recover at the end.",
        "keepalive-dropped": (
            "Reproduces when the destination's migration socket shows no keep-alive timer "
            f"within {check.get('idle_s')} s (read from /proc/net/tcp)."
        ),
        "outcome": f"Reproduces when the final statuses are again {check.get('statuses')}.",
    }
    parts.append(verdicts[check["kind"]])
    return textwrap.fill(" ".join(parts), width=92)


# -- README ------------------------------------------------------------------------------


def _release(rec: dict[str, Any], side: str) -> str:
    return str(rec[side].get("release") or "?")


def _pair(rec: dict[str, Any]) -> str:
    return f"{_release(rec, 'src')} → {_release(rec, 'dst')}"


def _runs_rows(kind: str, recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in recs:
        hit, seen = repro_template.verdict(_check(kind, r), outcome(r))
        rows.append(
            {
                "src": _release(r, "src"),
                "dst": _release(r, "dst"),
                "src_version": r["src"].get("version_text"),
                "dst_version": r["dst"].get("version_text"),
                "machine": r.get("machine"),
                "scenario": _scenario_name(r),
                "shows": hit,
                "observed": seen,
            }
        )
    return rows


def _scenario_name(rec: dict[str, Any]) -> str:
    if _is_partition(rec):
        return f"{rec.get('scenario')} --keepalive {rec.get('strategy')}"
    return str((rec.get("scenario") or {}).get("name"))


def _observed_paragraph(kind: str, rec: dict[str, Any]) -> str:
    o = outcome(rec)
    s, d = o["src"], o["dst"]
    inj = (rec.get("proxy") or {}).get("injections") or []
    frame = f"`{inj[0]['hex']}`" if inj else None
    if kind == "split-brain":
        return (
            f"Once postcopy is active, the destination's return path carries one frame the "
            f"source rejects ({frame}, an unknown message type). The {_release(rec, 'src')} "
            f"source ends `{s['status']}` with error-desc `{s['error_desc']}` and its guest "
            f"runs again (runstate `{s['runstate']}`), while the destination "
            f"(`{d['status']}`) runs the same guest (runstate `{d['runstate']}`)."
        )
    if kind == "source-fails":
        return (
            f"With `switchover-ack` on, the destination sends one more SWITCHOVER_ACK ({frame}) "
            f"once postcopy is active. The {_release(rec, 'src')} source ends `{s['status']}` "
            f"with error-desc `{s['error_desc']}` and resumes its guest (runstate "
            f"`{s['runstate']}`), while the destination (`{d['status']}`) runs it too."
        )
    if kind == "recovery-hangs":
        return (
            f"The source rejects one return-path frame ({frame}) in postcopy and both sides "
            f"pause. `migrate-recover` on the destination and `migrate resume=true` on the "
            f"source then start the recovery, and it never ends: the source stays "
            f"`{s['status']}`, the destination `{d['status']}` "
            f"(statuses: source {', '.join(s['statuses'])}; destination "
            f"{', '.join(d['statuses'])})."
        )
    if kind == "keepalive-dropped":
        uri = (rec.get("uris") or {}).get("dst", "")
        _hit, seen = repro_template.verdict(_check(kind, rec), o)
        replies = [
            e
            for e in (rec.get("qmp") or {}).get("dst", [])
            if e.get("execute") == "migrate-incoming" and e.get("dir") == "recv"
        ]
        answer = (
            f"answers `{json.dumps(replies[0].get('return'))}` and listens"
            if replies and "return" in replies[0]
            else f"answers {json.dumps(replies[0]) if replies else 'nothing'}"
        )
        return f"`migrate-incoming` with `{uri}` {answer} on {_release(rec, 'dst')}; {seen}."
    return (
        f"Source {s['status']} (statuses {', '.join(s['statuses'])}; error-desc "
        f"{s['error_desc']!r}), destination {d['status']} (statuses {', '.join(d['statuses'])})."
    )


def _fmt_qmp(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k not in ("t", "dir", "id")}
    return f"{entry['t']:8.3f}  {'->' if entry['dir'] == 'send' else '<-'} {json.dumps(body)}"


def qmp_text(log: list[dict[str, Any]]) -> str:
    """A QMP log as text, one message a line; repeated ``query-migrate`` polls whose reply
    did not change are folded into one line saying how many."""
    lines: list[str] = []
    last_reply: dict[str, str] = {}
    folded = 0
    pending_send: dict[str, Any] | None = None
    for e in log:
        cmd = e.get("execute")
        if cmd in ("query-migrate", "query-status") and e["dir"] == "send":
            pending_send = e
            continue
        if cmd in ("query-migrate", "query-status") and e["dir"] == "recv":
            key = json.dumps(e.get("return", e.get("error")), sort_keys=True)
            status_key = json.dumps((e.get("return") or {}).get("status"))
            if cmd == "query-migrate" and last_reply.get(cmd) == status_key:
                folded += 1
                continue
            if folded:
                lines.append(f"          … {folded} more query-migrate polls, same status")
                folded = 0
            last_reply[cmd] = status_key if cmd == "query-migrate" else key
            if pending_send is not None:
                lines.append(_fmt_qmp(pending_send))
            lines.append(_fmt_qmp(e))
            pending_send = None
            continue
        if folded:
            lines.append(f"          … {folded} more query-migrate polls, same status")
            folded = 0
        lines.append(_fmt_qmp(e))
    if folded:
        lines.append(f"          … {folded} more query-migrate polls, same status")
    return "\n".join(lines) + "\n"


def _key_qmp(log: list[dict[str, Any]]) -> list[str]:
    """The QMP messages that make the story (no polls, no greeting)."""
    out = []
    for e in log:
        if e.get("execute") in ("query-migrate", "query-status", "qmp_capabilities"):
            continue
        if "greeting" in e or (e.get("execute") == "query-version"):
            continue
        if e.get("event") and e["event"] != "MIGRATION":
            continue
        out.append(_fmt_qmp(e))
    return out


def _hexdump(data: bytes, start: int, length: int, mark: tuple[int, int] | None = None) -> str:
    lines = []
    for off in range(start - start % 16, min(len(data), start + length), 16):
        chunk = data[off : off + 16]
        cells = []
        for i, b in enumerate(chunk):
            pos = off + i
            cell = f"{b:02x}"
            if mark and mark[0] <= pos < mark[0] + mark[1]:
                cell = f"{cell}*"
            else:
                cell = f"{cell} "
            cells.append(cell)
        lines.append(f"{off:08x}  {''.join(cells)}")
    return "\n".join(lines)


def _stderr_lines(rec: dict[str, Any], side: str) -> list[dict[str, Any]]:
    raw = (rec.get("stderr") or {}).get(side, [])
    return [s if isinstance(s, dict) else {"t": None, "stream": "stderr", "line": s} for s in raw]


def _readme(
    name: str,
    kind: str,
    rec: dict[str, Any],
    rows: list[dict[str, Any]],
    files: list[str],
) -> str:
    f = FINDINGS[kind]
    o = outcome(rec)
    hit, _seen = repro_template.verdict(_check(kind, rec), o)
    shows = sorted({f"{r['src']} → {r['dst']}" for r in rows if r["shows"]})
    not_shows = sorted({f"{r['src']} → {r['dst']}" for r in rows if not r["shows"]})
    summary = (
        f"**Observed** ({_pair(rec)}, {rec.get('machine')}): {_observed_paragraph(kind, rec)} "
        f"**Expected:** {f.expected}. **Why it matters:** {f.why}."
    )
    if len(rows) > 1:
        summary += (
            f" Shown by {', '.join(shows) or 'none of the runs'}; not by "
            f"{', '.join(not_shows) or 'none of the runs'}."
        )
    if not hit:
        summary += " (The run this report was made from does not show it.)"
    host = rec.get("host") or {}
    cl = rec.get("command_lines") or {}
    out = [f"# {f.title}", "", summary, ""]
    if f.notes:
        out += [f.notes, ""]
    out += [
        "| | source | destination |",
        "|---|---|---|",
        f"| QEMU (`--version`) | `{rec['src'].get('version_text')}` | "
        f"`{rec['dst'].get('version_text')}` |",
        f"| package | {rec['src'].get('package_version') or '-'} | "
        f"{rec['dst'].get('package_version') or '-'} |",
        f"| machine type | `{rec.get('machine')}` | `{rec.get('machine')}` |",
        f"| host kernel | {host.get('kernel', '?')} ({host.get('machine', '?')}) | same host |",
        "| accelerator | TCG | TCG |",
        "",
    ]
    out += [
        "## Which releases show it",
        "",
        "| source → destination | machine | scenario | shows it | observed |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['src']} → {r['dst']} | `{r['machine']}` | `{r['scenario']}` | "
            f"{'**yes**' if r['shows'] else 'no'} | {r['observed']} |"
        )
    out += [
        "",
        "Versions: "
        + "; ".join(
            sorted(
                {f"{r['src']} = `{r['src_version']}`" for r in rows}
                | {f"{r['dst']} = `{r['dst_version']}`" for r in rows}
            )
        )
        + ".",
        "",
    ]
    out += [
        "## Reproduce",
        "",
        "```console",
        "python3 repro.py --src /path/to/qemu-system-x86_64 --dst /path/to/qemu-system-x86_64",
        "```",
        "",
        "Standard library only (Python ≥ 3.10); run as root (or as a user allowed to use "
        "`/dev/userfaultfd`). Exit status 1: the finding reproduces; 0: it does not; 2: could "
        "not run. It prints each QMP command, status change and the injection as it goes, then "
        "the observed outcome; the full transcript goes to `WORKDIR/transcript.json` (`--workdir`, "
        "default a new temporary folder). `--src`/`--dst` are command prefixes split like a "
        'shell would (`--src "/opt/q/bin/qemu-system-x86_64 -L /opt/q/share"` works). A '
        "Debian package's binary does not run outside its root (shared libraries, firmware "
        "paths): give the root instead, and repro.py runs QEMU inside it with `unshare "
        "--mount` + `chroot`, bind-mounting `/proc`, `/sys`, `/dev` (postcopy needs "
        "`/dev/userfaultfd`) and its workdir (how these runs were made):",
        "",
        "```console",
        "python3 repro.py --src-root /srv/roots/bookworm --dst-root /srv/roots/trixie",
        "```",
        "",
        "The guest is the lab's own tiny multiboot kernel (`lab/guest/guest.S` of "
        "qemu-migcompat, embedded compressed in repro.py and written to the workdir): it "
        "writes one word per 4 KiB page over 32–64 MiB forever, so precopy never converges "
        "and the destination faults (REQ_PAGES) in postcopy. `--kernel FILE` uses another one."
        + (
            " This finding does not need the destination's guest to run (it starts with "
            "`-S`); the source's guest only keeps the migration going."
            if o and rec and (_is_partition(rec) or (rec.get("scenario") or {}).get("idle"))
            else ""
        ),
        "",
    ]
    out += ["## Command lines (as the lab ran them)", ""]
    for side in ("src", "dst"):
        args = (cl.get(side) or {}).get("qemu_args") or []
        out += [
            f"{'Source' if side == 'src' else 'Destination'}:",
            "",
            "```",
            "qemu-system-x86_64 " + " ".join(args),
            "```",
            "",
        ]
    argv = (cl.get("src") or {}).get("argv") or []
    if argv[:1] == ["unshare"]:
        root = rec["src"].get("root")
        out += [
            f"Each ran inside its Debian root (`{root}` for the source) through "
            "`unshare --mount` + `chroot`, with `/proc`, `/sys`, `/dev` and the run dir "
            "bind-mounted.",
            "",
        ]
    if _is_partition(rec):
        out += [
            "The lab ran both QEMUs in their own network namespaces joined by a veth "
            "pair (`migcompat lab run --scenario partition-idle`), and read the sockets' "
            "timers with `ss -tno` there; repro.py needs none of that: it reads the "
            "destination's accepted socket in `/proc/net/tcp` (what `ss -o` shows).",
            "",
        ]
    out += ["## Steps (seconds since the start of the run)", ""]
    n = 0
    merged = sorted(
        [
            (float(line.split()[0]), side, line)
            for side in ("src", "dst")
            for line in _key_qmp((rec.get("qmp") or {}).get(side, []))
        ],
        key=lambda x: x[0],
    )
    teardown = next((st["t"] for st in rec.get("steps", []) if st.get("step") == "teardown"), None)
    marked = False
    for t, side, line in merged:
        if teardown is not None and t >= teardown and not marked:
            out.append(
                f"- at {teardown:.3f} s the lab's watch ended: it stops both QEMUs "
                "(`quit`, SIGKILL after 3 s); what follows comes from that"
            )
            marked = True
        n += 1
        out.append(f"{n}. `{side}` {line.strip()}")
    inj = (rec.get("proxy") or {}).get("injections") or []
    for i in inj:
        out.append(
            f"- at {i['t']:.3f} s the relay wrote `{i['hex']}` to the source at "
            f"return-path offset {i['src_offset']} (a frame boundary)."
        )
    out += ["", "Status changes (`query-migrate`, polled every 0.1 s):", ""]
    for side in ("src", "dst"):
        seq = ", ".join(
            f"{s['status']} @ {s['t']:.2f}" for s in rec.get("statuses", {}).get(side, [])
        )
        out.append(f"- {side}: {seq}")
    out += ["", "stderr:", "", "```"]
    for side in ("src", "dst"):
        for s in _stderr_lines(rec, side):
            if s.get("stream", "stderr") == "stderr":
                stamp = f"{s['t']:8.3f}" if s.get("t") is not None else "       -"
                late = teardown is not None and s.get("t") is not None and s["t"] >= teardown
                out.append(f"{stamp} {side}: {s['line']}" + ("   (after teardown)" if late else ""))
    out += ["```", ""]
    proxy = rec.get("proxy") or {}
    if proxy.get("frames") or inj:
        out += [
            "## Return path (bytes the source received)",
            "",
            "| t (s) | conn | offset | type | frame |",
            "|---|---|---|---|---|",
        ]
        rows_f = [
            (f["t"], f["conn"], f["src_offset"], f["type_id"], f["name"])
            for f in proxy.get("frames", [])
        ]
        rows_f += [
            (
                i["t"],
                i["conn"],
                i["src_offset"],
                int(i["hex"][:4], 16),
                f"**injected** `{i['hex']}`",
            )
            for i in inj
        ]
        for t, c, off, ty, nm in sorted(rows_f, key=lambda x: (x[1], x[2])):
            out.append(f"| {t:.3f} | {c} | {off} | {ty} | {nm} |")
        out.append("")
        rp = Path(rec.get("outdir", "")) / "rp.bin"
        if inj and rp.exists():
            data = rp.read_bytes()
            i = inj[0]
            ln = len(i["hex"]) // 2
            out += [
                "`evidence/rp.bin` around the injection (`*` = injected bytes):",
                "",
                "```",
                _hexdump(data, max(0, i["src_offset"] - 32), 64 + ln, (i["src_offset"], ln)),
                "```",
                "",
            ]
    if _is_partition(rec):
        out += ["## Sockets (`ss -tno`, destination namespace, before the cut)", ""]
        cut = (rec.get("cut") or {}).get("t")
        for s in (rec.get("sockets") or {}).get("dst", [])[:6]:
            if cut is None or s["t"] < cut:
                out.append(
                    f"- {s['t']:.1f} s: {s['local']} ← {s['peer']} timer "
                    f"{s['timer'] or 'none'} {s['timer_left_s'] or ''}"
                )
        out.append("")
    out += ["## Evidence", ""]
    for fn in files:
        path, _, doc = fn.partition(" — ")
        out.append(f"- `{path}` — {doc}" if doc else f"- `{path}`")
    if not any("capture.pcap" in fn for fn in files):
        out.append(
            "- no pcap: "
            + (
                "a partition run's tcpdump keeps text lines of what left each side after the cut "
                "(`after_cut` in `evidence/record.json`)"
                if _is_partition(rec)
                else "tcpdump was not installed for this run"
            )
        )
    out += ["", f"Generated by `migcompat lab report` from the lab run(s); bundle `{name}`.", ""]
    return "\n".join(out)


_EVIDENCE_DOC = {
    "qmp-src.txt": "source QMP transcript (text; unchanged polls folded)",
    "qmp-dst.txt": "destination QMP transcript (text; unchanged polls folded)",
    "qmp-src.jsonl": "source QMP transcript, every message with its time",
    "qmp-dst.jsonl": "destination QMP transcript, every message with its time",
    "stderr-src.txt": "source stderr, with times",
    "stderr-dst.txt": "destination stderr, with times",
    "injected.json": "injected bytes, offsets and time",
    "rp.bin": "return path as the source received it (injection included)",
    "rp.1.bin": "return path of the recovery connection",
    "capture.pcap": "tcpdump of the source↔relay leg; forward payload past 4 KiB cut to headers",
    "sockets.json": "destination/source socket samples (`ss -tno`)",
    "runs.json": "every run of this report: releases, versions, outcome, verdict",
    "record.json": "the lab's run record (the QMP transcripts are the qmp-*.jsonl files)",
}


def write_report(
    run_dirs: list[Path], out: Path, *, finding: str | None = None, name: str | None = None
) -> dict[str, Any]:
    """Write a bundle to ``out`` from ``run_dirs`` (the first is the one reported; the others
    say which releases show it and which do not).

    :returns: a summary (``kind``, ``reproduces``, ``rows``, ``files``, ``bytes``).
    :raises LabError: a folder holds no usable record, or an unknown ``finding``.
    """
    if not run_dirs:
        raise LabError("lab report: give at least one run folder")
    recs = [load_record(Path(d)) for d in run_dirs]
    for d, r in zip(run_dirs, recs, strict=True):
        r["outdir"] = str(d)
    main = recs[0]
    kind = finding or choose_finding(main)
    if kind not in FINDINGS:
        raise LabError(f"unknown finding {kind!r}; known: {', '.join(FINDINGS)}")
    name = name or Path(out).name
    out = Path(out)
    ev = out / "evidence"
    if ev.exists():
        shutil.rmtree(ev)
    ev.mkdir(parents=True, exist_ok=True)
    files: list[str] = []

    def put(fn: str, data: str | bytes) -> None:
        p = ev / fn
        if isinstance(data, bytes):
            p.write_bytes(data)
        else:
            p.write_text(data)
        files.append(f"evidence/{fn} — {_EVIDENCE_DOC.get(fn, '')}")

    for side in ("src", "dst"):
        log = (main.get("qmp") or {}).get(side, [])
        put(f"qmp-{side}.txt", qmp_text(log))
        put(f"qmp-{side}.jsonl", "".join(json.dumps(e) + "\n" for e in log))
        put(
            f"stderr-{side}.txt",
            "".join(
                (f"{s['t']:8.3f} " if s.get("t") is not None else "") + s["line"] + "\n"
                for s in _stderr_lines(main, side)
                if s.get("stream", "stderr") == "stderr"
            ),
        )
    proxy = main.get("proxy") or {}
    if proxy.get("injections"):
        put(
            "injected.json",
            json.dumps(
                {
                    "injections": proxy["injections"],
                    "meaning": "hex = bytes written to the source; src_offset = their offset in "
                    "rp.bin "
                    "(the return path as the source received it); dst_boundary = offset in "
                    "the destination's own stream where they were inserted; t = seconds on "
                    "the run's clock",
                },
                indent=2,
            )
            + "\n",
        )
    src_dir = Path(run_dirs[0])
    for fn in ("rp.bin", "rp.1.bin"):
        if (src_dir / fn).exists():
            put(fn, (src_dir / fn).read_bytes())
    if (src_dir / "capture.pcap").exists() and proxy.get("ports"):
        from migcompat.lab.fixtures import shrink_pcap

        shrink_pcap(src_dir / "capture.pcap", ev / "capture.pcap", proxy["ports"], PCAP_FWD_KEEP)
        files.append(f"evidence/capture.pcap — {_EVIDENCE_DOC['capture.pcap']}")
    if _is_partition(main):
        put("sockets.json", json.dumps(main.get("sockets"), indent=1) + "\n")
    rows = _runs_rows(kind, recs)
    put(
        "runs.json",
        json.dumps({"finding": kind, "title": FINDINGS[kind].title, "runs": rows}, indent=2) + "\n",
    )
    slim = {k: v for k, v in main.items() if k not in ("qmp", "outdir")}
    put("record.json", json.dumps(slim, indent=1) + "\n")
    params = repro_params(main, kind)
    (out / "repro.py").write_text(render_repro(params))
    (out / "repro.py").chmod(0o755)
    readme = _readme(name, kind, main, rows, ["repro.py — the reproducer", *files])
    (out / "README.md").write_text(readme)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    if total > MAX_BUNDLE_BYTES:
        raise LabError(f"{out}: bundle is {total} bytes, over {MAX_BUNDLE_BYTES}")
    hit, seen = repro_template.verdict(_check(kind, main), outcome(main))
    return {
        "kind": kind,
        "title": FINDINGS[kind].title,
        "reproduces": hit,
        "observed": seen,
        "rows": rows,
        "bundle": str(out),
        "bytes": total,
    }
