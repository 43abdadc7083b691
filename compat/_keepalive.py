"""May this destination send KEEPALIVE to that source? And what TCP keep-alive can do instead.

Theory of operation (the chain every decision prints):

1. The keepalive proposal (Juraj Marcin, 2025-01-30; never merged) is an *overlay* on a
   destination release F (``11.1+keepalive``). It adds the migration parameter
   ``postcopy-rp-keepalive-period`` (read from the protocol catalog's overlay spec) and,
   like every new migration behaviour, a compat entry
   ``("migration", "postcopy-rp-keepalive-period", "0")`` in ``hw_compat`` of the release
   before F, so machine types older than F keep the old behaviour.
2. Effective period on the destination: an explicit ``migrate-set-parameters`` value, else
   the machine type's compat entry, else the default.
3. The destination sends ``MIG_RP_MSG_KEEPALIVE`` (postcopy fault thread, poll timeout)
   when the period is not 0.
4. The source's return-path reader rejects every type ``>= MIG_RP_MSG_MAX`` (catalog).
5. Safe unless 3 and not 4-known. An unknown source is bounded below by the machine type:
   a QEMU cannot run a machine type newer than itself.

What a real source then does is *observed* (lab fixtures via ``behaviour.json``), never
predicted here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from migcompat.protocol import (
    InputError,
    InvalidRelease,
    Release,
    catalog,
    known_releases,
    overlays,
    resolve_line,
)

from ._behaviour import Observation, observations, observed_rejection
from ._properties import overlay_compat_entries
from ._tables import CompatTable, MachineType, UnknownMachine, compat_releases, compat_table

__all__ = [
    "LINUX_TCP_DEFAULTS",
    "Fact",
    "KeepaliveDecision",
    "PeriodRefused",
    "TcpKeepaliveAdvice",
    "decide_keepalive",
    "tcp_keepalive",
]


def __dir__() -> list[str]:
    return list(__all__)


class PeriodRefused(InputError):
    """An explicit ``postcopy-rp-keepalive-period`` that QEMU (with the proposal) refuses."""


@dataclass(frozen=True, slots=True)
class Fact:
    """One link in the chain of reasoning, with where it comes from."""

    text: str
    source: str = ""

    def to_json(self) -> dict[str, str]:
        return {"fact": self.text, "source": self.source}


# ---------------------------------------------------------------------------------------
# Section: TCP keep-alive (what landed instead)
# ---------------------------------------------------------------------------------------

#: Linux's built-in ``net.ipv4`` TCP sysctls (also what a new network namespace starts
#: with): what a prediction assumes for every key the caller does not pass.
LINUX_TCP_DEFAULTS = {
    "tcp_keepalive_time": 7200,
    "tcp_keepalive_intvl": 75,
    "tcp_keepalive_probes": 9,
    "tcp_retries2": 15,
}


@dataclass(frozen=True, slots=True)
class TcpSide:
    """What one side (``source`` connects, ``destination`` listens) can set."""

    role: str
    release: Release | None
    keep_alive: bool
    knobs: bool
    uri: str | None
    channel: Mapping[str, Any] | None
    detection_bound_s: int | None
    facts: tuple[Fact, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "release": str(self.release) if self.release else None,
            "keep_alive": self.keep_alive,
            "knobs": self.knobs,
            "uri": self.uri,
            "channel": dict(self.channel) if self.channel else None,
            "detection_bound_s": self.detection_bound_s,
            "facts": [f.to_json() for f in self.facts],
        }


@dataclass(frozen=True, slots=True)
class TcpKeepaliveAdvice:
    """TCP keep-alive on the migration socket for a (source, destination) pair."""

    source: TcpSide
    destination: TcpSide
    idle: int
    interval: int
    count: int

    def to_json(self) -> dict[str, Any]:
        return {
            "idle_s": self.idle,
            "interval_s": self.interval,
            "count": self.count,
            "source": self.source.to_json(),
            "destination": self.destination.to_json(),
        }


def _sock_facts() -> tuple[dict[str, Any], dict[str, CompatTable]]:
    """Member -> {since, listening_since, provenance} from the newest extracted tree."""
    tables = {str(r): compat_table(r) for r in compat_releases()}
    newest = compat_table()
    members = {}
    for name, m in newest.socket_keepalive.get("members", {}).items():
        members[name] = dict(m) | {"tree": str(newest.qemu_version)}
    return members, tables


def _release_evidence(rel: Release, tables: Mapping[str, CompatTable]) -> Mapping[str, Any] | None:
    t = tables.get(str(rel.line))
    return t.socket_keepalive if t is not None else None


#: QEMU's ``keep-alive-idle``, ``-interval`` and ``-count`` are uint32 (qapi/sockets.json).
_UINT32 = 0xFFFFFFFF


def check_keepalive_options(idle: object, interval: object, count: object) -> None:
    """The one check of TCP keep-alive values (``keepalive`` and ``partition`` both call it).

    Each is a uint32 in QEMU; 0 is refused here because it cannot mean a detection
    time (Linux refuses TCP_KEEPIDLE/KEEPINTVL/KEEPCNT of 0; QEMU then fails the URI).

    :raises InputError: a value that is not an integer in 1 … 4294967295.
    """
    for v, n in ((idle, "idle"), (interval, "interval"), (count, "count")):
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= _UINT32:
            raise InputError(
                f"keep-alive-{n} must be an integer 1 … {_UINT32} (0 is not a time the "
                f"kernel accepts), got {v!r}"
            )


def tcp_keepalive(
    source: Release | str | None,
    destination: Release | str,
    idle: int = 5,
    interval: int = 2,
    count: int = 3,
    host: str = "DEST_HOST",
    port: int = 4444,
    source_at_least: Release | None = None,
    sysctls: Mapping[str, int] | None = None,
) -> TcpKeepaliveAdvice:
    """Which side of a pair can enable TCP keep-alive on the migration socket, and how.

    Facts come from ``qapi/sockets.json`` (``since`` notes, including "not supported for
    listening sockets until 10.1") and ``util/qemu-sockets.c`` of the extracted trees.

    :param sysctls: the host's ``tcp_keepalive_*`` sysctls (:data:`LINUX_TCP_DEFAULTS` for
        missing keys); they bound detection on a side that lacks the idle/interval/count knobs.
    """
    check_keepalive_options(idle, interval, count)
    members, tables = _sock_facts()
    ka = members.get("keep-alive", {})
    knob_since = min(
        (Release(m["since"]) for n, m in members.items() if n != "keep-alive" and m.get("since")),
        default=None,
    )
    ka_since = Release(ka["since"]) if ka.get("since") else None
    listen_since = Release(ka["listening_since"]) if ka.get("listening_since") else None
    qapi = f"qapi/sockets.json:{ka.get('doc_line')} ({ka.get('tree')})"
    sysctl = {**LINUX_TCP_DEFAULTS, **(sysctls or {})}
    opts = f"keep-alive-idle={idle},keep-alive-interval={interval},keep-alive-count={count}"
    newest_ch = compat_table().socket_keepalive.get("channels", {})
    ch_since = Release(newest_ch["since"]) if newest_ch.get("since") else None

    def side(role: str, rel: Release | None) -> TcpSide:
        facts: list[Fact] = []
        if rel is None and source_at_least is not None and role == "source":
            facts.append(
                Fact(
                    f"source release unknown; it is at least {source_at_least} "
                    "(machine type bound), so it has what that release has"
                )
            )
            rel = source_at_least
        if rel is None:
            return TcpSide(
                role,
                None,
                False,
                False,
                None,
                None,
                None,
                (Fact(f"{role} release unknown: cannot tell which options it accepts"),),
            )
        line = rel.line
        if role == "source":
            can = ka_since is not None and line >= ka_since
            facts.append(
                Fact(
                    f"keep-alive on connecting sockets since {ka_since}: "
                    + ("available" if can else f"not in {line}"),
                    qapi,
                )
            )
        else:
            can = listen_since is not None and line >= listen_since
            ev = _release_evidence(rel, tables)
            passive = ev.get("passive", {}) if ev else {}
            if passive.get("keep_alive_refused"):
                facts.append(
                    Fact(
                        f"{line} has a refusal for keep-alive on listening sockets "
                        f'("{passive.get("error")}"), but migrate-incoming never reaches it: '
                        "the listener's address lookup copies the address without keep-alive, "
                        "so the options are accepted and silently not applied (measured on "
                        "7.2.22 and 10.0.13: no keep-alive timer on the accepted socket; "
                        "`migcompat lab run --scenario partition-idle` repeats it)",
                        f"{passive.get('file')}:{passive.get('line')} "
                        f"({tables[str(line)].qemu_version}); io/dns-resolver.c",
                    )
                )
            elif passive.get("honoured"):
                calls = ", ".join(
                    f"{c['function']} ({c['file']}:{c['line']})" for c in passive.get("callers", [])
                )
                facts.append(
                    Fact(
                        f"{line} applies keep-alive options when listening: "
                        f"{passive.get('setter')} is called by {calls}",
                        str(tables[str(line)].qemu_version),
                    )
                )
            facts.append(
                Fact(
                    f"keep-alive on listening sockets since {listen_since}: "
                    + ("available" if can else f"not in {line}"),
                    qapi,
                )
            )
        knobs = can and knob_since is not None and line >= knob_since
        facts.append(
            Fact(
                f"keep-alive-idle/-interval/-count since {knob_since}: "
                + ("available" if knobs else f"not in {line}"),
                ", ".join(
                    f"qapi/sockets.json:{m.get('line')}"
                    for n, m in sorted(members.items())
                    if n != "keep-alive"
                ),
            )
        )
        uri = channel = None
        bound: int | None = None
        if can:
            hostpart = host if role == "source" else "0.0.0.0"
            uri = f"tcp:{hostpart}:{port},keep-alive=on" + (f",{opts}" if knobs else "")
            if ch_since is not None and line >= ch_since:
                addr: dict[str, Any] = {
                    "transport": "socket",
                    "type": "inet",
                    "host": hostpart,
                    "port": str(port),
                    "keep-alive": True,
                }
                if knobs:
                    addr |= {
                        "keep-alive-idle": idle,
                        "keep-alive-interval": interval,
                        "keep-alive-count": count,
                    }
                channel = {"channel-type": "main", "addr": addr}
            if knobs:
                bound = idle + interval * count
                facts.append(
                    Fact(
                        f"a silent partition is detected within idle + interval*count "
                        f"= {idle} + {interval}*{count} = {bound} s once the socket "
                        "is idle (no unacknowledged data)",
                        "Linux TCP keep-alive",
                    )
                )
            else:
                t, i, p = (
                    sysctl["tcp_keepalive_time"],
                    sysctl["tcp_keepalive_intvl"],
                    sysctl["tcp_keepalive_probes"],
                )
                bound = t + i * p
                facts.append(
                    Fact(
                        f"without the knobs the host's sysctls apply: {t} + {i}*{p} = {bound} s",
                        "/proc/sys/net/ipv4/tcp_keepalive_*",
                    )
                )
            if role == "destination":
                facts.append(
                    Fact(
                        "use -incoming defer, then migrate-incoming with this URI "
                        "(the accepted socket inherits the listener's options)"
                    )
                )
        return TcpSide(role, rel, can, knobs, uri, channel, bound, tuple(facts))

    src = None if source is None else _release(source, "source")
    dst = _release(destination, "destination")
    return TcpKeepaliveAdvice(side("source", src), side("destination", dst), idle, interval, count)


# ---------------------------------------------------------------------------------------
# Section: the KEEPALIVE decision
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeepaliveDecision:
    """The answer to "may this destination send KEEPALIVE to that source?"."""

    source: Release | None
    source_bound: Release | None
    destination: Release
    machine: str
    requested_machine: str
    proposal: str | None
    parameter: str
    period: int | None
    period_origin: str
    period_array: str | None
    sends_keepalive: bool
    keepalive_type: int | None
    source_knows: bool | None
    verdict: str
    facts: tuple[Fact, ...]
    source_error: str | None
    observed: tuple[Observation, ...]
    not_observed: tuple[str, ...]
    tcp: TcpKeepaliveAdvice | None = field(default=None)

    @property
    def safe(self) -> bool:
        return self.verdict == "safe"

    @property
    def exit_code(self) -> int:
        """0 safe, 1 unsafe (bad input never gets this far: it raises)."""
        return 0 if self.safe else 1

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "source": str(self.source) if self.source else None,
            "source_bound": str(self.source_bound) if self.source_bound else None,
            "destination": str(self.destination),
            "machine": self.machine,
            "requested_machine": self.requested_machine,
            "proposal": self.proposal,
            "parameter": self.parameter,
            "period_ms": self.period,
            "period_origin": self.period_origin,
            "period_array": self.period_array,
            "sends_keepalive": self.sends_keepalive,
            "keepalive_type": self.keepalive_type,
            "source_knows_type": self.source_knows,
            "source_error": self.source_error,
            "facts": [f.to_json() for f in self.facts],
            "observed": [
                {"fixture": o.path, "source": o.source_version, "summary": o.summary()}
                for o in self.observed
            ],
            "not_observed": list(self.not_observed),
            "tcp_keepalive": self.tcp.to_json() if self.tcp else None,
        }


def _release(value: Release | str, role: str) -> Release:
    rel = value if isinstance(value, Release) else Release(str(value))
    try:
        resolve_line(Release(str(rel.line)))
    except InvalidRelease as exc:
        raise InvalidRelease(str(value), f"{role}: {exc.reason}") from None
    return rel


def _previous_line(line: Release) -> Release:
    lines = known_releases()
    older = [x for x in lines if x < line]
    if not older:
        raise InvalidRelease(str(line), "no release before it in the catalog")
    return older[-1]


def _alias_families() -> dict[str, str]:
    """Alias -> machine family, from every extracted table (q35 -> pc-q35...)."""
    out: dict[str, str] = {}
    for rel in compat_releases():
        t = compat_table(rel)
        for alias, target in t.aliases.items():
            out[alias] = t.machines[target].family
    return out


def _resolve_machine(name: str, dest: Release, facts: list[Fact]) -> MachineType:
    line = dest.line
    try:
        table = compat_table(line)
    except InputError:
        table = None
    if table is not None:
        info = table.resolve(name)
        if info.version is None:
            raise UnknownMachine(f"{name} is not a versioned machine type")
        if info.name != name:
            facts.append(
                Fact(
                    f"{name} is an alias of {info.name} in QEMU {table.qemu_version}",
                    f"{info.file}:{info.line}",
                )
            )
        else:
            facts.append(
                Fact(
                    f"{name} is registered by QEMU {table.qemu_version}", f"{info.file}:{info.line}"
                )
            )
        return MachineType(info.name)
    fam = _alias_families().get(name)
    if fam is not None:
        mt = MachineType(f"{fam}-{line}")
        facts.append(
            Fact(
                f"{name} resolves to {mt} in {line} (the alias always names the "
                f"newest versioned type; no extracted tree of {line} to confirm)"
            )
        )
        return mt
    mt = MachineType(name)
    if mt.line > line:
        raise UnknownMachine(
            f"{mt} is newer than the destination {dest}: a QEMU cannot run a "
            "machine type newer than itself"
        )
    newest = compat_table()
    state = newest.lifecycle_state(mt.version, dest) if dest.line > newest.release else None
    if mt.family not in newest.by_family:
        raise UnknownMachine(
            f"no machine family {mt.family!r} in any extracted tree "
            f"(families: {', '.join(sorted(newest.by_family))})"
        )
    lifecycle = newest.lifecycle or {}  # set whenever state is
    if state == "deleted":
        raise UnknownMachine(
            f"{mt} is not registered by {line}: predicted by the versioned-machine lifecycle "
            f"of {newest.qemu_version} ({lifecycle['file']}:{lifecycle['line']}: "
            f"deleted after {lifecycle['deletion_major']} years)"
        )
    if state is not None:
        facts.append(
            Fact(
                f"{mt} in {line}: {state}, predicted by the versioned-machine lifecycle of "
                f"{newest.qemu_version} (no extracted tree of {line})",
                f"{lifecycle['file']}:{lifecycle['line']}",
            )
        )
    else:
        facts.append(
            Fact(
                f"registration of {mt} in {line} not checked: no extracted tree of "
                f"{line} (have {', '.join(map(str, compat_releases()))})"
            )
        )
    return mt


def decide_keepalive(
    source: Release | str | None,
    destination: Release | str,
    machine: str,
    period: int | None = None,
    proposal: str | None = None,
    *,
    tcp: bool = True,
    sysctls: Mapping[str, int] | None = None,
) -> KeepaliveDecision:
    """Decide whether the destination would send KEEPALIVE and whether the source takes it.

    :param source: the source release (``7.2.22``, ``11.1+keepalive``...) or None if unknown.
    :param destination: the destination release; an overlay in it (``11.1+keepalive``) or
        ``proposal`` applies the keepalive proposal to it.
    :param machine: machine type or alias, as given to ``-machine``.
    :param period: an explicit ``postcopy-rp-keepalive-period`` (ms), if set.
    :param sysctls: the host's TCP sysctls, for the TCP keep-alive advice (``tcp``).
    :raises InputError: bad release, machine type or period (the CLI exits 2).
    """
    facts: list[Fact] = []
    dest = _release(destination, "destination")
    if proposal is not None and dest.overlay is None:
        dest = Release(f"{dest}+{proposal}")
    ovl_name = dest.overlay
    ovls = overlays()
    if ovl_name is not None and ovl_name not in ovls:
        raise InputError(f"unknown proposal {ovl_name!r} (known: {', '.join(sorted(ovls))})")
    if ovl_name is not None and proposal is not None and ovl_name != proposal:
        raise InputError(
            f"destination {dest} already carries overlay {ovl_name!r}, not {proposal!r}"
        )
    if ovl_name is not None:
        catalog(dest)  # the catalog refuses an overlay on a line it cannot apply to
    keep = ovls.get("keepalive")
    if keep is None:
        raise InputError("the protocol catalog has no 'keepalive' overlay")
    param = dict(keep.parameter)
    pname = str(param.get("name", "postcopy-rp-keepalive-period"))
    ka_spec = next((m for m in keep.rp_add if "KEEPALIVE" in m.name), None)
    ka_type = ka_spec.id if ka_spec else None
    src = None if source is None else _release(source, "source")

    mt = _resolve_machine(machine, dest, facts)
    if src is not None:
        if mt.line > src.line:
            raise UnknownMachine(
                f"source {src} cannot run {mt}: a QEMU cannot run a machine type newer than itself"
            )
        try:
            st = compat_table(src.line)
        except InputError:
            st = None
        if st is not None:
            st.resolve(mt.name)  # raises with "oldest is ..." when the source lacks it

    applies = ovl_name == "keepalive"
    eff: int | None
    origin: str
    array: str | None = None
    if not applies:
        if period is not None:
            raise InputError(
                f"{pname} does not exist in QEMU {dest.line}: the keepalive proposal was never "
                "merged; add --proposal keepalive to model a destination carrying it"
            )
        eff, origin = None, "absent"
        facts.append(
            Fact(
                f"QEMU {dest} has no {pname} and no MIG_RP_MSG_KEEPALIVE: the "
                f"proposal ({keep.title}) was {keep.status}",
                keep.provenance[-1] if keep.provenance else "",
            )
        )
    else:
        feature = dest.line
        prev = _previous_line(feature)
        entry = overlay_compat_entries(dest)
        array = entry[0].array if entry else f"hw_compat_{prev.major}_{prev.minor}"
        try:
            dt = compat_table(feature)
            have = [a for a in dt.arrays if a.startswith("hw_compat_")]
            facts.append(
                Fact(
                    f"overlay {ovl_name} on {feature}: compat entry (migration, {pname}, 0) "
                    f"goes in {array}"
                    + (
                        " (present in the extracted tree)"
                        if array in have
                        else f" (NOT in the extracted {dt.qemu_version} tree; newest there: "
                        f"{have[-1] if have else 'none'})"
                    ),
                    f"{dt.filename}",
                )
            )
        except InputError:
            facts.append(
                Fact(
                    f"overlay {ovl_name} on {feature}: compat entry (migration, "
                    f"{pname}, 0) goes in {array}, the array of the release before "
                    f"{feature}"
                )
            )
        maxv = int(param.get("max", 2**31 - 1))
        default = int(param.get("default", 60000))
        if period is not None:
            if not isinstance(period, int) or isinstance(period, bool):
                raise PeriodRefused(f"{pname} must be an integer number of ms, got {period!r}")
            if period < 0 or period > 0xFFFFFFFF:
                raise PeriodRefused(f"{pname}={period} refused: the parameter is a uint32")
            if period > maxv:
                raise PeriodRefused(
                    f"{pname}={period} refused as the proposal's migrate_params_check does: "
                    f"values above INT_MAX ({maxv}) are invalid"
                )
            eff, origin = period, "explicit"
            facts.append(
                Fact(f"{pname} set explicitly to {period} ms (overrides any compat default)")
            )
        elif mt.line <= prev:
            eff, origin = 0, "machine-compat"
            facts.append(
                Fact(
                    f"{mt} is older than {feature}: it carries {array} (machine X.Y "
                    f"carries hw_compat_X_Y and every newer one), which sets "
                    f"{pname}=0",
                    "compat rule (compat/_properties.py)",
                )
            )
        else:
            eff, origin = default, "default"
            facts.append(
                Fact(
                    f"{mt} is a {feature} machine type: no compat entry, default {default} ms",
                    keep.provenance[2] if len(keep.provenance) > 2 else "",
                )
            )
    sends = bool(eff)
    if applies:
        facts.append(
            Fact(
                f"destination {'sends' if sends else 'does not send'} MIG_RP_MSG_KEEPALIVE "
                f"(type {ka_type})"
                + (
                    f" every {eff} ms of postcopy without page requests"
                    if sends
                    else f": period {eff} = off"
                )
            )
        )

    knows: bool | None = None
    bound: Release | None = None
    verdict = "safe"
    src_err: str | None = None
    if src is not None and ka_type is not None:
        cat = catalog(src)
        knows = cat.knows(ka_type)
        facts.append(
            Fact(
                f"source {src} reader: MIG_RP_MSG_MAX = {cat.max}; type {ka_type} "
                + ("is known" if knows else ">= MAX is rejected"),
                "; ".join(cat.provenance[:1]),
            )
        )
        if sends and not knows:
            verdict = "unsafe"
            src_err = cat.format_error("invalid_type", ka_type, 0)
            if (
                applies
                and dest.micro is not None
                and not dest.is_development
                and mt.line >= dest.line
            ):
                facts.append(
                    Fact(
                        f"{dest} is a backport: its compat entry covers machine types up to "
                        f"{_previous_line(dest.line)}; {mt} is not covered, and an unpatched "
                        f"{src.line} source runs it"
                    )
                )
    elif src is None:
        bound = mt.line
        facts.append(
            Fact(
                f"source unknown: it runs {mt}, so it is at least {bound} (a QEMU "
                "cannot run a machine type newer than itself)"
            )
        )
        # A proposal applied to a released build (10.0.13+keepalive) is a backport: upstream
        # 10.0 shipped without it, so an unpatched 10.0 source runs the same machine types.
        backport = applies and dest.micro is not None and not dest.is_development
        if sends:
            if applies and bound >= dest.line and backport:
                verdict = "unsafe"
                cat = catalog(dest.line)
                knows = cat.knows(ka_type) if ka_type is not None else None
                src_err = cat.format_error("invalid_type", ka_type, 0) if ka_type else None
                facts.append(
                    Fact(
                        f"{dest} is a backport: upstream {dest.line} has no {pname}, so an "
                        f"unpatched {dest.line} source can run {mt} and its reader rejects type "
                        f"{ka_type} (MIG_RP_MSG_MAX = {cat.max}); the compat entry in {array} "
                        f"covers only machine types up to {_previous_line(dest.line)}, not {mt}"
                    )
                )
            elif applies and bound >= dest.line:
                facts.append(
                    Fact(
                        f"every source able to run {mt} is >= {dest.line}, the release the overlay "
                        f"puts the proposal in, so (assuming it is merged there) it knows type "
                        f"{ka_type}"
                    )
                )
            else:
                verdict = "unsafe"
                cat = catalog(bound)
                knows = cat.knows(ka_type) if ka_type is not None else None
                src_err = cat.format_error("invalid_type", ka_type, 0) if ka_type else None
                facts.append(
                    Fact(
                        f"a {bound} source could be on the other end; its reader "
                        f"rejects type {ka_type} (MIG_RP_MSG_MAX = {cat.max})"
                    )
                )
    if not sends:
        facts.append(Fact("no KEEPALIVE is sent, so the source's reader never sees one"))
    facts.append(Fact(f"verdict: {verdict}"))

    observed: tuple[Observation, ...] = ()
    missing: list[str] = []
    if verdict == "unsafe" and ka_type is not None:
        lines = (
            [src.line]
            if src is not None
            else sorted(
                {
                    o.source.line
                    for o in observations()
                    if o.type_id == ka_type and o.source.line >= (bound or Release("0.0"))
                }
                | {bound or mt.line}
            )
        )
        obs: list[Observation] = []
        for ln in lines:
            got = observed_rejection(ln, ka_type)
            if got:
                obs.extend(got)
            else:
                missing.append(
                    f"{ln}: not yet observed (no lab run injected type {ka_type} "
                    f"into a {ln} source)"
                )
        observed = tuple(obs)
    advice = tcp_keepalive(src, dest.line, source_at_least=bound, sysctls=sysctls) if tcp else None
    return KeepaliveDecision(
        source=src,
        source_bound=bound,
        destination=dest,
        machine=mt.name,
        requested_machine=machine,
        proposal=ovl_name,
        parameter=pname,
        period=eff,
        period_origin=origin,
        period_array=array if origin == "machine-compat" else None,
        sends_keepalive=sends,
        keepalive_type=ka_type,
        source_knows=knows,
        verdict=verdict,
        facts=tuple(facts),
        source_error=src_err,
        observed=observed,
        not_observed=tuple(missing),
        tcp=advice,
    )
