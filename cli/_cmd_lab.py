"""``migcompat lab``: provision real QEMU builds, list them, run migration scenarios."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from migcompat.lab import (
    DEFAULT_SUITES,
    LabError,
    find_build,
    installed_builds,
    provision,
    provision_hint,
    register_user_build,
    suite_for,
)

from ._io import add_format_argument, output_format, print_rows, sysctl_overrides

__all__ = ["register"]


def __dir__() -> list[str]:
    return list(__all__)


_EPILOG = """\
examples:
  migcompat lab provision                      # 7.2 (bookworm), 10.0 (trixie), 11.x (sid)
  migcompat lab provision 5.2                  # bullseye on request
  migcompat lab provision --qemu 11.1+mine=/opt/qemu/bin/qemu-system-x86_64
  migcompat lab build trixie --patch keepalive-v1.patch   # -> 10.0.13+keepalive-v1
  migcompat lab list --json
  migcompat lab run --src 7.2 --dst 10.0 --scenario plain
  migcompat lab run --src 10.0 --dst 10.0 --scenario inject:8 --out /tmp/run1
  migcompat lab report /tmp/run1 -o /tmp/report1     # README.md, repro.py, evidence/
  migcompat lab run --src 11.1 --dst 11.1 --scenario inject:7 --report /tmp/ack
"""

_SCENARIO_HELP = """\
plain             postcopy migration that completes (guest keeps writing RAM: page requests)
plain-idle        same, destination started with -S and never continued (no page requests)
inject:T[:L[:HEX]] inject one frame of type T (be16), length L (default: len(HEX)), payload
                  HEX into the return path at a frame boundary once postcopy is active
                  (inject:8 = the never-merged KEEPALIVE frame 00 08 00 00); a suffix
                  @frames=N / @t=S moves the moment, +recover then tries postcopy recovery
blackhole-idle    idle destination; the proxy stops forwarding both ways without closing
cut[-idle]        the proxy resets both connections (RST) once postcopy is active
recover           blackhole, migrate-pause on both sides, migrate-recover on the destination
                  through a new proxy port, migrate resume=true (RECV_BITMAP + RESUME_ACK)
blackhole-active  the blackhole with a running guest (= active+blackhole)
shut:V            MIG_RP_MSG_SHUT with be32 value V (shut:0 is the destination's goodbye)

Specs compose with '+', in order (grammar: migcompat.protocol.parse_scenario):
  src:CAP=on|off, dst:CAP=off, both:CAP=off, no-CAP   capabilities per side
  idle | active                                       destination -S, or a running guest
  ACTION@MOMENT   inject/shut/blackhole/cut/recover at precopy, postcopy-start (just after
                  migrate-start-postcopy), postcopy-device, postcopy (default: both sides
                  postcopy-active), frames=N, t=SECONDS, status=[src:|dst:]STATUS
  e.g. no-switchover-ack+inject:7   inject:8@precopy   inject:8+recover   inject:7+inject:7
partition-idle    silent network partition (netns + veth, nftables drop) during postcopy;
                  destination -S: time until each side reports postcopy-paused
partition-active  same with the guest running on the destination (page requests in flight)
                  (both: --keepalive tcp:IDLE,INTVL,CNT, --window S; docs/partition.md of
                  the qemu-migcompat repository)
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``lab`` and its subcommands."""
    lab = subparsers.add_parser(
        "lab",
        help="real QEMU: provision builds, list them, run migration scenarios",
        description=(
            "Run real QEMU builds side by side (each in its own minimal Debian root, or your own "
            "build) and drive postcopy migrations between them through a recording proxy."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = lab.add_subparsers(dest="lab_command", metavar="SUBCOMMAND")

    p = sub.add_parser(
        "provision",
        help="make Debian roots with QEMU (idempotent), or register your own build",
        description=(
            "Make a minimal Debian root per suite with debootstrap and install qemu-system-x86 "
            "in it. REL is a release line (7.2, 10.0, 11, 5.2) or a suite name (bookworm, "
            f"trixie, sid, bullseye); default: {' '.join(DEFAULT_SUITES)}. Needs root."
        ),
    )
    p.add_argument("releases", nargs="*", metavar="REL")
    p.add_argument(
        "--qemu",
        action="append",
        default=[],
        metavar="REL=PATH",
        help="register your own qemu-system-x86_64 under the label REL (repeatable)",
    )
    p.add_argument("--refresh", action="store_true", help="restart unfinished roots from scratch")
    p.add_argument(
        "--keep-going",
        action="store_true",
        help="provision the other suites when one fails (exit 1 at the end)",
    )
    p.set_defaults(func=_provision)

    p = sub.add_parser(
        "build",
        help="build qemu-system-x86_64 from a suite's Debian source package, with patches",
        description=(
            "Build qemu-system-x86_64 from the Debian source package of SUITE's own QEMU "
            "(trixie: 1:10.0.13+ds-0+deb13u1) inside a copy of the suite's root, apply each "
            "--patch in order, and register the result as a lab build named VERSION+PATCH "
            "(10.0.13+keepalive-v1), usable wherever a release is (lab run --src/--dst, "
            "matrix --releases, fuzz --real, partition). Cached by source version and patch "
            "contents. The suite must be provisioned first. Needs root; ~2.5 min on 2 cores."
        ),
    )
    p.add_argument("suite", metavar="SUITE", help="Debian suite or release line (trixie, 10.0)")
    p.add_argument(
        "--patch",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="a -p1 patch to apply after Debian's own (repeatable, in order)",
    )
    p.add_argument(
        "--name",
        metavar="NAME",
        help="register under NAME (default: upstream version + patch names)",
    )
    p.add_argument("--rebuild", action="store_true", help="build even if cached")
    p.add_argument("--json", action="store_true", help="print the build as JSON")
    p.set_defaults(func=_build)

    p = sub.add_parser("list", help="show the runnable builds with each binary's --version")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_format_argument(p)
    p.set_defaults(func=_list)

    p = sub.add_parser(
        "run",
        help="run one migration scenario between two builds",
        description="Run one postcopy migration scenario between two builds.\n\n"
        + "scenarios:\n"
        + _SCENARIO_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--src", required=True, metavar="REL", help="source build (release or suite)")
    p.add_argument("--dst", required=True, metavar="REL", help="destination build")
    p.add_argument("--scenario", required=True, metavar="NAME", help="see scenarios above")
    p.add_argument(
        "--machine", metavar="M", help="machine type (default: newest both sides support)"
    )
    p.add_argument(
        "--without-capability",
        action="append",
        default=[],
        metavar="CAP",
        help="leave this migration capability off on both sides (repeatable), e.g. switchover-ack",
    )
    p.add_argument("--idle", action="store_true", help="destination -S, never continued")
    p.add_argument("--out", type=Path, metavar="DIR", help="where to keep the record and streams")
    p.add_argument("--json", action="store_true", help="print the record as JSON")
    p.add_argument(
        "--report",
        type=Path,
        metavar="DIR",
        help="also write a bug-report bundle of this run (as `lab report`) to DIR",
    )
    p.add_argument(
        "--fixture",
        type=Path,
        metavar="DIR",
        help="also write a small committed-fixture folder (rp.bin, fwd.bin cut to 256 KiB, "
        "shrunk pcap, metadata.json), e.g. fixtures/captures/NAME",
    )
    p.add_argument(
        "--observe",
        type=float,
        default=5.0,
        help="seconds to keep watching after the source settles / the blackhole starts",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for an outcome")
    p.add_argument(
        "--dst-param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="migrate-set-parameters on the destination before migrating, e.g. "
        "postcopy-rp-keepalive-period=2000 on a patched build (repeatable)",
    )
    p.add_argument(
        "--src-param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="migrate-set-parameters on the source, over the lab's bandwidth limits, e.g. "
        "max-postcopy-bandwidth=2000000 for a longer postcopy phase (repeatable)",
    )
    p.add_argument(
        "--keepalive",
        metavar="tcp:IDLE,INTVL,CNT",
        default="none",
        help="partition-*: TCP keep-alive options in both migration URIs",
    )
    p.add_argument(
        "--window",
        type=float,
        default=120.0,
        metavar="S",
        help="partition-*: seconds to watch after the cut (default 120)",
    )
    p.add_argument(
        "--sysctl",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="partition-*: a net.ipv4 TCP setting inside both namespaces (repeatable)",
    )
    p.set_defaults(func=_run)

    p = sub.add_parser(
        "report",
        help="turn lab runs into a bug report: README.md, stdlib-only repro.py, evidence/",
        description=(
            "Write a bundle a QEMU maintainer can act on from a lab run folder (`lab run "
            "--out DIR`): README.md (observed vs expected, exact versions, host kernel, machine "
            "type, command lines, steps, return-path bytes), repro.py (Python standard library "
            "only; `python3 repro.py --src QEMU --dst QEMU` exits 1 when the finding "
            "reproduces) and evidence/ (QMP transcripts with times, stderrs, injected bytes, "
            "return path, trimmed pcap). More run folders (other releases, same scenario) add "
            "rows to the README's 'which releases show it' table."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  migcompat lab run --src 10.0 --dst 10.0 --scenario inject:8 --out /tmp/r10\n"
        "  migcompat lab run --src 7.2 --dst 7.2 --scenario inject:8 --out /tmp/r72\n"
        "  migcompat lab report /tmp/r10 /tmp/r72 -o /tmp/split-brain\n"
        "  python3 /tmp/split-brain/repro.py --src-root ROOT --dst-root ROOT\n",
    )
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR",
                   help="lab run folders; the first is the one reported")  # fmt: skip
    p.add_argument("-o", "--output", required=True, type=Path, metavar="DIR",
                   help="bundle folder (created; its evidence/ is rewritten)")  # fmt: skip
    p.add_argument(
        "--finding",
        metavar="KIND",
        help="what the report is about (default: from the scenario): split-brain, "
        "source-fails, recovery-hangs, keepalive-dropped, outcome",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_report)

    lab.set_defaults(func=lambda _args: (lab.print_help(sys.stderr), 2)[1])


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _provision(args: argparse.Namespace) -> int:
    console = _console()
    for spec in args.qemu:
        rel, sep, path = spec.partition("=")
        if not sep or not rel or not path:
            raise LabError(f"--qemu wants REL=PATH, got {spec!r}")
        build = register_user_build(rel, path)
        console.print(f"registered [bold]{rel}[/]: {build.binary} ({build.version_text})")
    if args.qemu and not args.releases:
        return 0
    suites = [suite_for(r) for r in args.releases] or list(DEFAULT_SUITES)
    failures: list[tuple[str, LabError]] = []
    for suite in dict.fromkeys(suites):
        with console.status(f"{suite}: starting") as status:

            def progress(msg: str, _status=status) -> None:
                _status.update(msg.replace("[", r"\["))

            try:
                build = provision(suite, refresh=args.refresh, progress=progress)
            except LabError as exc:
                if not args.keep_going:
                    raise
                failures.append((suite, exc))
                console.print(f"[red]✗[/] {suite}: {exc}")
                continue
        console.print(f"[green]✓[/] {suite}: {build.version_text}")
    return 1 if failures else 0


def _build(args: argparse.Namespace) -> int:
    from migcompat.lab.build import build_qemu

    suite = suite_for(args.suite)
    console = _console()
    if sys.stderr.isatty():
        with console.status(f"{suite}: starting") as status:
            build, built = build_qemu(
                suite, args.patch, name=args.name, rebuild=args.rebuild,
                progress=lambda m: status.update(m.replace("[", r"\[")),
            )  # fmt: skip
    else:
        build, built = build_qemu(suite, args.patch, name=args.name, rebuild=args.rebuild)
    if args.json:
        print(json.dumps(build.to_json() | {"built": built}, indent=2))
        return 0
    patches = ", ".join(p["name"] for p in build.patches) or "none"
    print(
        f"{build.release}: {'built' if built else 'cached'} ({build.version_text}; "
        f"patches: {patches})"
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    builds = installed_builds()
    fmt = output_format(args)
    if fmt == "json":
        print(json.dumps([b.to_json() for b in builds], indent=2))
        return 0
    print_rows(
        ("release", "source", "--version", "package", "patches"),
        [
            (
                b.release,
                f"built ({b.suite})" if b.is_lab_build else (b.suite or b.binary),
                b.version_text,
                b.package_version or "-",
                ", ".join(p["name"] for p in b.patches) or "-",
            )
            for b in builds
        ],
        fmt=fmt,
        title="QEMU builds for the lab",
    )
    if not builds:
        print(f"no builds: {provision_hint()}", file=sys.stderr)
    return 0


def _parameters(specs: list[str], option: str) -> dict[str, object]:
    """``NAME=VALUE`` pairs as QMP arguments (integers and on/off/true/false typed)."""
    out: dict[str, object] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or not name:
            raise LabError(f"{option} wants NAME=VALUE, got {spec!r}")
        low = value.lower()
        if low in ("on", "true", "off", "false"):
            out[name] = low in ("on", "true")
        else:
            try:
                out[name] = int(value, 0)
            except ValueError:
                out[name] = value
    return out


def _run(args: argparse.Namespace) -> int:
    lab_caps = ("events", "postcopy-ram", "return-path", "switchover-ack")
    for cap in args.without_capability:
        if cap not in lab_caps:
            raise LabError(
                f"--without-capability {cap}: the lab turns on only {', '.join(lab_caps)}"
            )
    src = find_build(args.src)
    dst = find_build(args.dst)
    for name, build in (("--src", src), ("--dst", dst)):
        if build is None:
            raise LabError(
                f"{name} {getattr(args, name[2:])}: no such build; see `migcompat lab list`"
            )
    assert src is not None and dst is not None
    run = _run_partition if args.scenario.startswith("partition-") else _run_scenario
    if not args.report:
        return run(args, src, dst)
    with _run_out(args) as out:
        args.out = out
        rc = run(args, src, dst)
        _write_report([out], args.report, None, quiet=args.json)
    return rc


@contextlib.contextmanager
def _run_out(args: argparse.Namespace) -> Iterator[Path]:
    """The run folder a ``--report`` is made from: ``--out`` if given, else a temporary one."""
    if args.out:
        yield Path(args.out)
        return
    with tempfile.TemporaryDirectory(prefix="migcompat-run-") as tmp:
        yield Path(tmp)


def _run_scenario(args: argparse.Namespace, src: Any, dst: Any) -> int:
    from migcompat.lab.runner import print_record, run_scenario

    record = run_scenario(
        src, dst, args.scenario, machine=args.machine, outdir=args.out, timeout=args.timeout,
        idle=args.idle, progress=not args.json, observe=args.observe,
        without_capabilities=frozenset(args.without_capability),
        dst_parameters=_parameters(args.dst_param, "--dst-param"),
        src_parameters=_parameters(args.src_param, "--src-param"),
    )  # fmt: skip
    if args.fixture:
        from migcompat.lab.fixtures import save_fixture

        save_fixture(Path(record.outdir), args.fixture)
    if args.json:
        print(json.dumps(record.to_json(), indent=2))
    else:
        print_record(record)
    return 0


def _write_report(
    runs: list[Path], out: Path, finding: str | None, *, quiet: bool
) -> dict[str, Any]:
    from migcompat.lab.report import write_report

    summary = write_report(runs, out, finding=finding)
    if not quiet:
        verdict = "shows" if summary["reproduces"] else "does not show"
        print(
            f"report: {out} ({summary['bytes'] // 1024} KiB) — {summary['title']}: "
            f"the run {verdict} it; repro: python3 {out / 'repro.py'} --src … --dst …"
        )
    return summary


def _report(args: argparse.Namespace) -> int:
    summary = _write_report(args.runs, args.output, args.finding, quiet=args.json)
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0


def _run_partition(args: argparse.Namespace, src: Any, dst: Any) -> int:
    """``migcompat lab run --scenario partition-…``: run it, print the summary or JSON."""
    from migcompat.lab.partition import print_partition, run_partition

    rec = run_partition(
        src, dst, args.scenario, strategy=args.keepalive, window=args.window,
        machine=args.machine, outdir=args.out, progress=not args.json,
        sysctls=sysctl_overrides(getattr(args, "sysctl", None)),
    )  # fmt: skip
    if args.json:
        print(json.dumps(rec.to_json(), indent=2))
    else:
        print_partition(rec)
    return 0
