"""``migcompat partition``: when does each side notice a silent partition during postcopy."""

from __future__ import annotations

import argparse
from typing import Any

from migcompat.compat import LINUX_TCP_DEFAULTS, StrategyError, TcpSettings, predict_partition
from migcompat.lab import read_tcp_sysctls

from ._io import console, print_json

__all__ = ["register"]


def __dir__() -> list[str]:
    return list(__all__)


_EPILOG = """\
strategies:
  none                    what QEMU does by default
  tcp:IDLE,INTVL,CNT      TCP keep-alive options in the migration URIs (seconds, seconds,
                          probes); each side gets what its release really applies
  rp-keepalive:PERIOD_MS  the never-merged return-path KEEPALIVE: the destination writes a
                          frame every period (a write fails only when TCP gives up)
  user-timeout:MS         TCP_USER_TIMEOUT on both sockets (no QEMU sets it: a what-if)
  A+B                     combine, e.g. rp-keepalive:1000+user-timeout:10000

examples:
  migcompat partition --source 10.0 --destination 11.1 --strategy tcp:5,2,3
  migcompat partition --source 7.2 --destination 7.2 --strategy none --scenario active
  migcompat partition --source 11.1 --destination 11.1 --strategy rp-keepalive:1000 \\
      --sysctl tcp_retries2=8 --json
measured on real QEMU: `migcompat lab run --scenario partition-idle` (results: docs/partition.md
in the qemu-migcompat repository)
"""


def register(sub: Any) -> None:
    """Add ``partition``."""
    p = sub.add_parser(
        "partition",
        help="predict how long each side takes to notice a silent network partition",
        description=(
            "Predict, from the strategy, what each QEMU release applies to its migration "
            "socket and the Linux TCP settings (keep-alive, tcp_retries2 back-off, "
            "TCP_USER_TIMEOUT), how many seconds after a silent partition (no RST/FIN/ICMP) "
            "during postcopy each side reports postcopy-paused — or that it never does."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--source", metavar="REL", required=True, help="source release")
    p.add_argument("--destination", metavar="REL", required=True, help="destination release")
    p.add_argument("--strategy", default="none", metavar="S", help="see strategies below")
    p.add_argument("--scenario", choices=["idle", "active"], default="idle",
                   help="idle: the destination has nothing to send after the cut (-S, or its "
                   "page request was already acknowledged; default); active: a page request "
                   "is still unacknowledged when the path dies")  # fmt: skip
    p.add_argument(
        "--source-done",
        action="store_true",
        help="the source has already sent every page (nothing left to write)",
    )
    p.add_argument(
        "--sysctl",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a TCP setting (tcp_keepalive_time, tcp_keepalive_intvl, "
        "tcp_keepalive_probes, tcp_retries2); default: this kernel's /proc values",
    )
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(func=run)


def _settings(items: list[str]) -> TcpSettings:
    """This kernel's settings with the user's ``KEY=VALUE`` overrides."""
    values = read_tcp_sysctls()
    for item in items:
        key, sep, val = item.partition("=")
        if not sep or key.strip() not in LINUX_TCP_DEFAULTS:
            raise StrategyError(
                f"--sysctl {item!r}: expected KEY=VALUE with KEY one of "
                + ", ".join(LINUX_TCP_DEFAULTS)
            )
        try:
            values[key.strip()] = int(val)
        except ValueError:
            raise StrategyError(f"--sysctl {item!r}: not an integer") from None
    return TcpSettings.from_sysctls(values)


def run(args: argparse.Namespace) -> int:
    """Print the prediction; exit 0 (2 on bad input, via ``MigcompatError``)."""
    pred = predict_partition(
        args.source, args.destination, args.strategy, scenario=args.scenario,
        settings=_settings(args.sysctl), source_sending=not args.source_done,
    )  # fmt: skip
    if args.json:
        print_json(pred.to_json())
        return 0
    con = console()
    st = pred.settings
    con.print(
        f"silent partition during postcopy ({pred.scenario} destination), strategy "
        f"[bold]{pred.strategy}[/]; TCP: keepalive {st.keepalive_time}/"
        f"{st.keepalive_intvl}/{st.keepalive_probes}, tcp_retries2 {st.retries2}"
    )
    for side in (pred.source, pred.destination):
        when = ("[bold red]never[/]" if side.detect_s is None
                else f"[bold]{side.detect_s:g} s[/] after the cut")  # fmt: skip
        con.print(f"{side.role} {side.release}: postcopy-paused {when} ({side.mechanism})")
        for f in side.facts:
            con.print(f"  - {f.text}" + (f"  [dim]({f.source})[/]" if f.source else ""))
    return 0
