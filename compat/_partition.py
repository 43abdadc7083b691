"""How long each side of a postcopy migration takes to notice a silent network partition.

Theory of operation. After a silent cut (no RST, FIN or ICMP) a QEMU side goes to
``postcopy-paused`` only when a read or write on its migration socket fails, i.e. when its own
kernel declares the TCP connection dead. Linux does that by exactly one of three routes, chosen
by what the socket has outstanding (``net/ipv4/tcp_timer.c``):

1. **Unacknowledged data** (the side wrote something after the cut — the source pushing
   postcopy pages, a destination's page request, the proposed RP KEEPALIVE frame): the
   retransmission timer. It gives up after ``tcp_retries2`` back-offs, i.e. once
   ``tcp_model_timeout(retries2, TCP_RTO_MIN)`` has passed since the first unacknowledged
   segment — 924.6 s for the default 15 — or, with ``TCP_USER_TIMEOUT`` set, after that many
   milliseconds (``retransmits_timed_out``). Keep-alive is *not* used while data is in flight
   (``tcp_keepalive_timer``: "It is alive without keepalive").
2. **Nothing outstanding, SO_KEEPALIVE set**: the keep-alive timer probes after ``idle`` s of
   silence, every ``interval`` s, and resets after ``count`` unanswered probes —
   ``idle + count * interval`` after the last segment received (with a user timeout: the first
   probe tick at or after it).
3. **Nothing outstanding, no keep-alive**: never. An idle postcopy destination (no page to ask
   for) waits in ``postcopy-active`` for ever.

Which side can set keep-alive, and with which knobs, is QEMU's part (``compat.tcp_keepalive``,
read from ``qapi/sockets.json`` and ``util/qemu-sockets.c``): the connecting side since 4.2 with
the system's idle/interval/count, both sides with the knobs since 10.1.

WARNING: the kernel formulas below are written as code, kept in sync by hand with
``tcp_model_timeout``/``retransmits_timed_out``/``tcp_keepalive_timer`` (Linux 5.x–6.x).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from migcompat.protocol import InputError, Release

from ._keepalive import LINUX_TCP_DEFAULTS, Fact, check_keepalive_options, tcp_keepalive

__all__ = [
    "PartitionPrediction",
    "SidePrediction",
    "Strategy",
    "StrategyError",
    "TcpSettings",
    "keepalive_timeout_s",
    "predict_partition",
    "retransmission_schedule_s",
    "retransmission_timeout_s",
]


def __dir__() -> list[str]:
    return list(__all__)


#: ``TCP_RTO_MIN`` (``include/net/tcp.h``: ``HZ/5``): the first RTO on a LAN-sized RTT.
TCP_RTO_MIN_MS = 200
#: ``TCP_RTO_MAX`` (``include/net/tcp.h``: ``120*HZ``): where exponential back-off stops.
TCP_RTO_MAX_MS = 120_000
#: Largest value QEMU's uint32 keep-alive members and our ms arguments take.
_UINT32 = 0xFFFFFFFF


class StrategyError(InputError):
    """A ``--strategy`` (or TCP setting) that cannot be used; exit status 2."""


@dataclass(frozen=True, slots=True)
class TcpSettings:
    """The Linux TCP settings that decide detection time (``net.ipv4`` sysctls).

    >>> TcpSettings().keepalive_time
    7200
    """

    keepalive_time: int = LINUX_TCP_DEFAULTS["tcp_keepalive_time"]
    keepalive_intvl: int = LINUX_TCP_DEFAULTS["tcp_keepalive_intvl"]
    keepalive_probes: int = LINUX_TCP_DEFAULTS["tcp_keepalive_probes"]
    retries2: int = LINUX_TCP_DEFAULTS["tcp_retries2"]
    rto_min_ms: int = TCP_RTO_MIN_MS
    rto_max_ms: int = TCP_RTO_MAX_MS

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise StrategyError(f"{f.name} must be a non-negative integer, got {v!r}")
        if self.rto_min_ms == 0 or self.rto_max_ms < self.rto_min_ms:
            raise StrategyError("need 0 < rto_min_ms <= rto_max_ms")

    @classmethod
    def from_sysctls(cls, values: Mapping[str, int]) -> TcpSettings:
        """From ``{"tcp_keepalive_time": …}`` (missing keys: Linux's defaults).

        The host's values come from :func:`migcompat.lab.read_tcp_sysctls`. A field is its
        sysctl's name without ``tcp_``.
        """
        v = {k: int(values.get(k, default)) for k, default in LINUX_TCP_DEFAULTS.items()}
        return cls(**{k.removeprefix("tcp_"): x for k, x in v.items()})

    def sysctls(self) -> dict[str, int]:
        """The ``net.ipv4`` sysctl form (inverse of :meth:`from_sysctls`)."""
        return {k: getattr(self, k.removeprefix("tcp_")) for k in LINUX_TCP_DEFAULTS}

    def to_json(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def retransmission_timeout_s(
    retries: int, rto_min_ms: int = TCP_RTO_MIN_MS, rto_max_ms: int = TCP_RTO_MAX_MS
) -> float:
    """Linux's ``tcp_model_timeout(sk, retries, TCP_RTO_MIN)``, in seconds.

    The connection is dropped at the first retransmission timer tick at least this long after
    the first unacknowledged segment was sent.

    >>> retransmission_timeout_s(15)
    924.6
    >>> retransmission_timeout_s(8)
    102.2
    """
    thresh = int(math.log2(rto_max_ms // rto_min_ms))  # ilog2(TCP_RTO_MAX / rto_base)
    if retries <= thresh:
        ms = ((2 << retries) - 1) * rto_min_ms
    else:
        ms = ((2 << thresh) - 1) * rto_min_ms + (retries - thresh) * rto_max_ms
    return round(ms / 1000, 3)


def retransmission_schedule_s(
    retries: int,
    rto_ms: float = TCP_RTO_MIN_MS,
    rto_max_ms: int = TCP_RTO_MAX_MS,
    rto_min_ms: int = TCP_RTO_MIN_MS,
) -> list[float]:
    """Times (s after the first send) of each retransmission tick, the last one giving up.

    ``rto_ms`` is the connection's RTO before the cut (``srtt + rttvar``, at least
    ``TCP_RTO_MIN``: 200 ms plus the RTT on a LAN). It doubles per tick up to ``TCP_RTO_MAX``.

    >>> retransmission_schedule_s(3)
    [0.2, 0.6, 1.4, 3.0]
    """
    limit = retransmission_timeout_s(retries, rto_min_ms, rto_max_ms)
    out, t, rto = [], 0.0, float(rto_ms)
    while True:
        t += rto / 1000
        out.append(round(t, 3))
        if t + 1e-9 >= limit:
            return out
        rto = min(rto * 2, rto_max_ms)


def keepalive_timeout_s(
    idle: int, interval: int, count: int, user_timeout_ms: int | None = None
) -> float:
    """Seconds after the last segment received until keep-alive resets the connection.

    Without a user timeout: ``idle + count * interval``. With one (``tcp_keepalive_timer``):
    the first probe tick at which ``user_timeout`` has passed and at least one probe is out.

    >>> keepalive_timeout_s(5, 2, 3)
    11.0
    >>> keepalive_timeout_s(5, 2, 3, user_timeout_ms=6000)
    7.0
    """
    if not user_timeout_ms:
        return float(idle + count * interval)
    ticks = max(1, math.ceil((user_timeout_ms / 1000 - idle) / interval)) if interval else 1
    return float(idle + ticks * interval)


# ---------------------------------------------------------------------------------------
# Section: strategies
# ---------------------------------------------------------------------------------------

_STRATEGY_RE = re.compile(
    r"none|tcp:(?P<i>\d+),(?P<n>\d+),(?P<c>\d+)|rp-keepalive:(?P<p>\d+)|user-timeout:(?P<u>\d+)"
)
_INT_MAX = 0x7FFFFFFF
#: Strategy part -> (its groups in ``_STRATEGY_RE``, largest value, what the bounds are).
_STRATEGY_PARTS = {
    "tcp": (
        ("i", "n", "c"),
        _UINT32,
        "idle, interval and count must be 1 … 4294967295 (check_keepalive_options)",
    ),
    "rp-keepalive": (
        ("p",),
        _INT_MAX,
        "the period must be 1 … 2147483647 ms (the proposal refuses values > INT_MAX; 0 is off)",
    ),
    "user-timeout": (("u",), _INT_MAX, "TCP_USER_TIMEOUT is 1 … 2147483647 ms (0 means off)"),
}


@dataclass(frozen=True, slots=True)
class Strategy:
    """How the migration is meant to notice a dead peer.

    ``none``; ``tcp:IDLE,INTVL,CNT`` (TCP keep-alive options on the migration address, on the
    sides whose release applies them); ``rp-keepalive:PERIOD_MS`` (the never-merged return-path
    KEEPALIVE proposal: the destination writes a frame every period); ``user-timeout:MS``
    (TCP_USER_TIMEOUT on both sockets; no QEMU release sets it — a what-if). Joined with ``+``
    they combine (``rp-keepalive:1000+user-timeout:10000``).

    >>> str(Strategy.parse("tcp:5,2,3"))
    'tcp:5,2,3'
    >>> Strategy.parse("rp-keepalive:1000+user-timeout:5000").user_timeout_ms
    5000
    """

    tcp: tuple[int, int, int] | None = None
    rp_keepalive_ms: int | None = None
    user_timeout_ms: int | None = None

    @classmethod
    def parse(cls, text: str) -> Strategy:
        """Parse the ``--strategy`` grammar above.

        :raises StrategyError: unknown form, repeated part, or a value out of range.
        """
        if not isinstance(text, str) or not text.strip():
            raise StrategyError(
                "empty strategy; use none, tcp:IDLE,INTVL,CNT, "
                "rp-keepalive:PERIOD_MS or user-timeout:MS"
            )
        got: dict[str, tuple[int, ...]] = {}
        parts = text.strip().split("+")
        for part in parts:
            m = _STRATEGY_RE.fullmatch(part.strip())
            if not m:
                raise StrategyError(
                    f"strategy {part!r}: expected none, tcp:IDLE,INTVL,CNT (seconds, seconds, "
                    "probes), rp-keepalive:PERIOD_MS or user-timeout:MS"
                )
            name = next((n for n, (g, *_) in _STRATEGY_PARTS.items() if m[g[0]] is not None), None)
            if name is None:
                if len(parts) > 1:
                    raise StrategyError(f"strategy {text!r}: none cannot be combined")
                continue
            groups, upper, bounds = _STRATEGY_PARTS[name]
            if name in got:
                raise StrategyError(f"strategy {text!r}: {name} given twice")
            got[name] = tuple(int(m[g]) for g in groups)
            if name == "tcp":  # the one keep-alive check, shared with `keepalive`
                try:
                    check_keepalive_options(*got[name])
                except InputError as exc:
                    raise StrategyError(f"strategy {part!r}: {exc}") from None
            if min(got[name]) < 1 or max(got[name]) > upper:
                raise StrategyError(f"strategy {part!r}: {bounds}")
        tcp = got.get("tcp")
        rp, ut = (got.get(k, (None,))[0] for k in ("rp-keepalive", "user-timeout"))
        return cls(
            tcp=(tcp[0], tcp[1], tcp[2]) if tcp else None, rp_keepalive_ms=rp, user_timeout_ms=ut
        )

    def __str__(self) -> str:
        parts = []
        if self.tcp:
            parts.append("tcp:{},{},{}".format(*self.tcp))
        if self.rp_keepalive_ms:
            parts.append(f"rp-keepalive:{self.rp_keepalive_ms}")
        if self.user_timeout_ms:
            parts.append(f"user-timeout:{self.user_timeout_ms}")
        return "+".join(parts) or "none"


# ---------------------------------------------------------------------------------------
# Section: the prediction
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SidePrediction:
    """When one side should report ``postcopy-paused``, measured from the cut.

    :param detect_s: seconds after the cut; ``None`` = never (no mechanism fires).
    :param mechanism: ``keepalive``, ``retransmission``, ``user-timeout`` or ``never``.
    :param keepalive: what this side's socket has: ``None`` (off) or ``(idle, intvl, cnt)``.
    :param range_s: earliest and latest time the kernel can act. Retransmission gives up at the
        first RTO tick at or past ``tcp_model_timeout``; real ticks drift later than the ideal
        200 ms doubling (the RTO is 200 ms *plus* the RTT), so the tick can come up to one RTO
        after that limit.
    """

    role: str
    release: str | None
    detect_s: float | None
    mechanism: str
    keepalive: tuple[int, int, int] | None
    facts: tuple[Fact, ...] = field(default=())
    range_s: tuple[float, float] | None = None

    def within(self, window_s: float) -> bool:
        """Whether the prediction is a detection inside an observation window."""
        return self.detect_s is not None and self.detect_s <= window_s

    def to_json(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "release": self.release,
            "detect_s": self.detect_s,
            "mechanism": self.mechanism,
            "keepalive": list(self.keepalive) if self.keepalive else None,
            "range_s": list(self.range_s) if self.range_s else None,
            "facts": [f.to_json() for f in self.facts],
        }


@dataclass(frozen=True, slots=True)
class PartitionPrediction:
    """Both sides' predictions for one (source, destination, strategy, scenario)."""

    source: SidePrediction
    destination: SidePrediction
    strategy: Strategy
    scenario: str
    settings: TcpSettings

    def to_json(self) -> dict[str, Any]:
        return {
            "strategy": str(self.strategy),
            "scenario": self.scenario,
            "settings": self.settings.to_json(),
            "source": self.source.to_json(),
            "destination": self.destination.to_json(),
        }


def _release(value: Release | str | None, role: str) -> Release | None:
    if value is None or isinstance(value, Release):
        return value
    return Release(value)


def _side_keepalive(
    role: str, rel: Release | None, strategy: Strategy, st: TcpSettings, facts: list[Fact]
) -> tuple[int, int, int] | None:
    """The keep-alive this side's socket really gets under ``strategy``, with why."""
    if strategy.tcp is None:
        facts.append(Fact(f"{role}: no TCP keep-alive requested"))
        return None
    if rel is None:
        facts.append(Fact(f"{role}: release unknown, assuming it applies nothing"))
        return None
    idle, intvl, cnt = strategy.tcp
    source = rel if role == "source" else None
    advice = tcp_keepalive(source, rel, idle, intvl, cnt, sysctls=st.sysctls())
    side = advice.source if role == "source" else advice.destination
    for f in side.facts:
        if "detected within" not in f.text and "sysctls apply" not in f.text:
            facts.append(Fact(f"{role}: {f.text}", f.source))
    if not side.keep_alive:
        if role == "destination" and rel.line >= Release("4.2"):
            # Measured (docs/partition.md): 7.2.22 and 10.0.13 answer {} and listen without
            # keep-alive; the check in inet_listen_saddr never sees the flag.
            facts.append(
                Fact(
                    f"destination {rel.line}: migrate-incoming accepts the options without error "
                    "and drops them: the listener's address lookup copies host, port, to, ipv4, "
                    "ipv6 and mptcp into new addresses, not keep-alive, so the passive-socket "
                    "refusal never fires (fixed in 10.1 by copying the whole address)",
                    "io/dns-resolver.c:114 qio_dns_resolver_lookup_sync_inet (7.2.22, 10.0.13)",
                )
            )
        facts.append(
            Fact(
                f"{role} {rel.line}: the keep-alive options are not applied to the migration socket"
            )
        )
        return None
    if side.knobs:
        return (idle, intvl, cnt)
    if role == "source":
        facts.append(
            Fact(
                f"source {rel.line}: keep-alive-idle/-interval/-count are accepted in the URI and "
                'ignored (inet_parse looks only for ",keep-alive")',
                'util/qemu-sockets.c inet_parse strstr(optstr, ",keep-alive") (7.2.22, 10.0.13)',
            )
        )
    facts.append(
        Fact(
            f"{role} {rel.line}: SO_KEEPALIVE only; the system's "
            f"tcp_keepalive_time/intvl/probes = {st.keepalive_time}/"
            f"{st.keepalive_intvl}/{st.keepalive_probes} apply",
            "/proc/sys/net/ipv4/tcp_keepalive_*",
        )
    )
    return (st.keepalive_time, st.keepalive_intvl, st.keepalive_probes)


def _predict_side(
    role: str,
    rel: Release | None,
    strategy: Strategy,
    st: TcpSettings,
    writes: str | None,
    write_delay_s: float,
) -> SidePrediction:
    """One side: ``writes`` says what it has to send after the cut (``None``: nothing)."""
    facts: list[Fact] = []
    ka = _side_keepalive(role, rel, strategy, st, facts)
    ut = strategy.user_timeout_ms
    relname = str(rel) if rel is not None else None
    if writes is not None:
        facts.append(
            Fact(
                f"{role} has data to send after the cut ({writes}): it stays "
                "unacknowledged, so the retransmission timer decides and keep-alive "
                "never probes",
                "net/ipv4/tcp_timer.c tcp_keepalive_timer",
            )
        )
        if ut:
            t = write_delay_s + ut / 1000
            facts.append(
                Fact(
                    f"TCP_USER_TIMEOUT {ut} ms: retransmission gives up {ut / 1000:g} s "
                    "after the first unacknowledged segment",
                    "retransmits_timed_out / tcp_clamp_rto_to_user_timeout",
                )
            )
            return SidePrediction(
                role,
                relname,
                round(t, 3),
                "user-timeout",
                ka,
                tuple(facts),
                (round(t, 3), round(t, 3)),
            )
        limit = retransmission_timeout_s(st.retries2, st.rto_min_ms, st.rto_max_ms)
        sched = retransmission_schedule_s(st.retries2, st.rto_min_ms, st.rto_max_ms, st.rto_min_ms)
        facts.append(
            Fact(
                f"tcp_retries2 = {st.retries2}: give-up after "
                f"tcp_model_timeout = {limit:g} s (RTO {st.rto_min_ms} ms doubling to "
                f"{st.rto_max_ms // 1000} s; {len(sched)} ticks)",
                "net/ipv4/tcp_timer.c tcp_model_timeout",
            )
        )
        last_rto = sched[-1] - (sched[-2] if len(sched) > 1 else 0.0)
        lo = write_delay_s + limit
        return SidePrediction(
            role,
            relname,
            round(write_delay_s + sched[-1], 3),
            "retransmission",
            ka,
            tuple(facts),
            (round(lo, 3), round(lo + last_rto, 3)),
        )
    facts.append(Fact(f"{role} has nothing to send after the cut: only keep-alive can notice"))
    if ka is None:
        if ut:
            facts.append(
                Fact(
                    "TCP_USER_TIMEOUT alone does nothing on a socket with nothing "
                    "outstanding and no keep-alive"
                )
            )
        return SidePrediction(role, relname, None, "never", None, tuple(facts))
    t = keepalive_timeout_s(*ka, user_timeout_ms=ut)
    facts.append(
        Fact(
            f"keep-alive {ka[0]} s idle + {ka[2]} probes × {ka[1]} s"
            + (f" with TCP_USER_TIMEOUT {ut} ms" if ut else "")
            + f" = {t:g} s after the last segment received (≈ the cut while the peer "
            "was sending)",
            "net/ipv4/tcp_timer.c tcp_keepalive_timer",
        )
    )
    return SidePrediction(role, relname, t, "keepalive", ka, tuple(facts), (t, t))


def predict_partition(
    source: Release | str | None,
    destination: Release | str | None,
    strategy: Strategy | str = "none",
    *,
    scenario: str = "idle",
    settings: TcpSettings | Mapping[str, int] | None = None,
    source_sending: bool = True,
) -> PartitionPrediction:
    """Predict each side's detection time of a silent partition during postcopy.

    :param scenario: ``idle`` (destination started with ``-S``: no page requests) or
        ``active`` (the guest runs on the destination and faults: page requests in flight).
    :param settings: TCP sysctls where the sockets live (default: Linux's built-in ones;
        the host's come from :func:`migcompat.lab.read_tcp_sysctls`).
    :param source_sending: the source still has pages to push (postcopy not yet complete).
    :raises StrategyError: bad strategy or settings.
    :raises InvalidRelease: a release string that names no release.
    """
    strat = strategy if isinstance(strategy, Strategy) else Strategy.parse(strategy)
    if scenario not in ("idle", "active"):
        raise StrategyError(f"scenario {scenario!r}: expected idle or active")
    if settings is None:
        st = TcpSettings()
    elif isinstance(settings, TcpSettings):
        st = settings
    else:
        st = TcpSettings.from_sysctls(settings)
    src, dst = _release(source, "source"), _release(destination, "destination")
    if scenario == "active":
        dst_writes: str | None = "page requests of the running guest"
        delay = 0.0
    elif strat.rp_keepalive_ms:
        dst_writes = f"a RP KEEPALIVE frame every {strat.rp_keepalive_ms} ms"
        delay = strat.rp_keepalive_ms / 1000  # the first one after the cut: within a period
    else:
        dst_writes, delay = None, 0.0
    src_writes = "the remaining postcopy pages" if source_sending else None
    return PartitionPrediction(
        source=_predict_side("source", src, strat, st, src_writes, 0.0),
        destination=_predict_side("destination", dst, strat, st, dst_writes, delay),
        strategy=strat,
        scenario=scenario,
        settings=st,
    )
