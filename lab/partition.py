"""Silent network partition during postcopy: how long until each side reports ``postcopy-paused``.

Scenarios (``migcompat lab run --scenario partition-idle|partition-active [--keepalive
tcp:IDLE,INTVL,CNT] [--window S]``):

* ``partition-idle`` — destination started with ``-S`` and never continued: it has no page to
  ask for, so after the cut it has nothing to send (the seed's case);
* ``partition-active`` — the guest runs on the destination and faults: page requests are in
  flight when the path dies.

Order of a run:

1. two network namespaces joined by a veth pair (:class:`~migcompat.lab.netns.VethPair`);
   QEMU runs inside them (``nsenter``), QMP stays on unix sockets in the shared run dir;
2. destination ``-incoming defer`` then ``migrate-incoming tcp:10.231.0.2:4444[,keep-alive…]``,
   source ``migrate`` with the same options: every release is handed the same URI, and what it
   *does* with it is read from the sockets (``ss -tno`` timers), not assumed;
3. postcopy as in :mod:`migcompat.lab.runner` (bandwidth limits so it lasts); once both sides
   are ``postcopy-active`` and a second has passed, the silent cut (nftables ``netdev`` ingress
   drop on both veth ends) — ``tcpdump`` on the source's veth records what still leaves either
   side (both directions are tapped before the drop);
4. watch for ``window`` seconds (or until both sides are paused): MIGRATION events with QEMU's
   timestamps, ``query-migrate`` statuses, ``ss`` samples;
5. compare each side with ``compat.predict_partition`` for the same releases, strategy and the
   namespaces' own TCP sysctls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from migcompat.compat import (
    SidePrediction,
    Strategy,
    TcpSettings,
    predict_partition,
    retransmission_schedule_s,
)
from migcompat.lab._errors import LabError
from migcompat.lab.builds import QemuBuild, new_run_dir, require_build
from migcompat.lab.host import host_info
from migcompat.lab.kernel import guest_kernel
from migcompat.lab.netns import VethPair
from migcompat.lab.qemu import QemuInstance, newest_common_machine, query_machines
from migcompat.lab.runner import QmpPair, end_tasks, instance_record, progress_console

__all__ = [
    "DEFAULT_WINDOW",
    "PARTITION_SCENARIOS",
    "PartitionRecord",
    "check_side",
    "keepalive_uri_options",
    "markdown_table",
    "print_partition",
    "run_partition",
    "run_partition_async",
]


def __dir__() -> list[str]:
    return list(__all__)


#: Scenario names this module runs.
PARTITION_SCENARIOS = ("partition-idle", "partition-active")
#: Seconds to watch after the cut (the machine is shared: keep runs bounded).
DEFAULT_WINDOW = 120.0
#: Migration port inside the namespaces (nothing else listens there).
PORT = 4444
#: Statuses that mean "this side noticed".
NOTICED = frozenset({"postcopy-paused", "failed", "cancelled"})
#: Same limits as the lab's runner, so postcopy lasts well past the cut.
PRECOPY_BANDWIDTH = 32 * 1024 * 1024
POSTCOPY_BANDWIDTH = 10 * 1000 * 1000
RAM = "128M"
#: Guest RAM window (MiB) the active scenario's guest writes (lab default: 32–64).
ACTIVE_WINDOW_MB = (16, 120)
#: Agreement between a measured and a predicted time: this many seconds, or 5 % if larger
#: (QMP event delivery, timer slack and the ~10 ms between the two nft loads).
TOLERANCE_S = 2.0


@dataclass
class PartitionRecord:
    """Everything observed in one partition run (JSON-able via :meth:`to_json`).

    Times are seconds on the run's clock; ``detected`` and ``cut``-relative fields are seconds
    after the cut.
    """

    scenario: str
    strategy: str
    window: float
    src: dict[str, Any]
    dst: dict[str, Any]
    machine: str = ""
    capabilities: list[str] = field(default_factory=list)
    uris: dict[str, str] = field(default_factory=dict)
    sysctl_overrides: dict[str, int] = field(default_factory=dict)
    sysctls: dict[str, dict[str, int]] = field(default_factory=dict)
    cut: dict[str, Any] = field(default_factory=dict)
    detected: dict[str, float | None] = field(default_factory=dict)
    detected_status: dict[str, str | None] = field(default_factory=dict)
    detected_qemu_clock: dict[str, float | None] = field(default_factory=dict)
    statuses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    stderr: dict[str, list[str]] = field(default_factory=dict)
    error_desc: dict[str, str | None] = field(default_factory=dict)
    sockets: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    keepalive_seen: dict[str, dict[str, Any]] = field(default_factory=dict)
    after_cut: dict[str, Any] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    prediction: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    step_errors: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    killed: dict[str, bool] = field(default_factory=dict)
    outdir: str = ""
    duration: float = 0.0
    #: Per side: every QMP message with its time, and the command lines (as in RunRecord).
    qmp: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    command_lines: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    host: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A plain dict (``json.dumps``-able)."""
        return asdict(self)


def keepalive_uri_options(strategy: Strategy) -> str:
    """URI suffix for a strategy's TCP keep-alive (``""`` when it has none).

    >>> keepalive_uri_options(Strategy.parse("tcp:5,2,3"))
    ',keep-alive=on,keep-alive-idle=5,keep-alive-interval=2,keep-alive-count=3'
    """
    if strategy.tcp is None:
        return ""
    idle, intvl, cnt = strategy.tcp
    return (
        f",keep-alive=on,keep-alive-idle={idle},keep-alive-interval={intvl},keep-alive-count={cnt}"
    )


def check_side(pred: SidePrediction, measured: float | None, window: float) -> dict[str, Any]:
    """Does a measurement agree with a prediction? (``verdict`` ``agrees``/``disagrees``).

    >>> from migcompat.compat import predict_partition
    >>> p = predict_partition("11.1", "11.1", "tcp:5,2,3", settings={})
    >>> check_side(p.destination, 11.4, 120)["verdict"]
    'agrees'
    >>> check_side(p.source, None, 120)["verdict"]
    'agrees'
    """
    p = pred.detect_s
    lo, hi = pred.range_s or (p, p)
    if measured is None:
        ok = p is None or (lo is not None and lo > window)
        why = "not detected within the window; predicted " + (
            "never" if p is None else f"{p:g} s ({pred.mechanism})"
        )
    elif p is None or lo is None or hi is None:
        ok, why = False, f"detected after {measured:g} s; predicted never"
    else:
        tol = max(TOLERANCE_S, 0.05 * hi)
        ok = lo - tol <= measured <= hi + tol
        span = f"{lo:g} s" if lo == hi else f"{lo:g}…{hi:g} s"
        why = f"measured {measured:g} s, predicted {span} ({pred.mechanism}), tolerance {tol:g} s"
    return {
        "verdict": "agrees" if ok else "disagrees",
        "why": why,
        "predicted_s": p,
        "range_s": [lo, hi] if p is not None else None,
        "measured_s": measured,
        "mechanism": pred.mechanism,
    }


_TCPDUMP = re.compile(
    r"^(?P<t>\d+\.\d+) IP (?P<src>[\d.]+)\.(?P<sport>\d+) > (?P<dst>[\d.]+)\.(?P<dport>\d+): "
    r"Flags \[(?P<flags>[^\]]*)\].*?length (?P<len>\d+)"
)


def _summarise_tcpdump(lines: list[str], pair: VethPair, cut_wall: float) -> dict[str, Any]:
    """Packets after the cut per sender: count, data vs empty (probes), RST/FIN, ICMP."""
    out: dict[str, Any] = {}
    names = {pair.addr("src"): "src", pair.addr("dst"): "dst"}
    for side in ("src", "dst"):
        out[side] = {
            "packets": 0,
            "data": 0,
            "empty": 0,
            "rst": 0,
            "fin": 0,
            "first": [],
            "data_times": [],
        }
    icmp = 0
    for line in lines:
        if " ICMP " in line:
            icmp += 1
            continue
        m = _TCPDUMP.match(line)
        if not m or m["src"] not in names:
            continue
        t = float(m["t"]) - cut_wall
        if t < 0:
            continue
        s = out[names[m["src"]]]
        if int(m["len"]) and (not s["data_times"] or t - s["data_times"][-1] > 0.05):
            s["data_times"].append(round(t, 3))  # one per burst: sends, then RTO ticks
        s["packets"] += 1
        s["data" if int(m["len"]) else "empty"] += 1
        s["rst"] += "R" in m["flags"]
        s["fin"] += "F" in m["flags"]
        if len(s["first"]) < 25:
            s["first"].append({"t": round(t, 3), "flags": m["flags"], "len": int(m["len"])})
    out["icmp"] = icmp
    return out


class _PartitionRun(QmpPair):
    """One run; the coroutine methods are the steps of the module docstring."""

    def __init__(
        self,
        srcb: QemuBuild,
        dstb: QemuBuild,
        scenario: str,
        strategy: Strategy,
        window: float,
        outdir: Path | None,
        machine: str | None,
        console: Any,
        sysctls: dict[str, int] | None = None,
    ) -> None:
        if scenario not in PARTITION_SCENARIOS:
            raise LabError(
                f"unknown partition scenario {scenario!r}; known: " + ", ".join(PARTITION_SCENARIOS)
            )
        if strategy.user_timeout_ms or (
            strategy.rp_keepalive_ms and "+keepalive" not in dstb.protocol_release
        ):
            raise LabError(
                f"strategy {strategy}: no QEMU release can set it (rp-keepalive only a "
                f"destination built with the keepalive patch by `migcompat lab build`; not "
                f"{dstb.label}); the lab runs none and tcp:IDLE,INTVL,CNT"
            )
        if not 1 <= window <= 600:
            raise LabError(f"--window {window:g}: 1 … 600 s (the machine is shared)")
        self.clock = time.monotonic()
        self.srcb, self.dstb = srcb, dstb
        self.idle = scenario == "partition-idle"
        self.strategy, self.window = strategy, window
        self.workdir = new_run_dir("p")
        self.outdir = outdir or (self.workdir / "out")
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.console = console
        self.status: Any = None
        self.rec = PartitionRecord(
            scenario=scenario,
            strategy=str(strategy),
            window=window,
            src=srcb.to_json(),
            dst=dstb.to_json(),
            machine=machine or "",
            outdir=str(self.outdir),
            sysctl_overrides=dict(sysctls or {}),
            host=host_info(),
        )
        self.last: dict[str, str | None] = {"src": None, "dst": None}
        self.src: QemuInstance | None = None
        self.dst: QemuInstance | None = None
        self.tcpdump: asyncio.subprocess.Process | None = None
        self.tcpdump_lines: list[str] = []
        self.cut_t: float | None = None
        self.cut_wall: float = 0.0

    async def prepare(self, pair: VethPair) -> None:
        # The active guest dirties most of its RAM, so that pages are still missing (and
        # requested) on the destination when the path dies; the idle one never runs there.
        kernel = guest_kernel(ACTIVE_WINDOW_MB) if not self.idle else guest_kernel()
        if not self.rec.machine:
            self.step("query-machines")
            a, b = await asyncio.gather(
                query_machines(self.srcb, self.workdir), query_machines(self.dstb, self.workdir)
            )
            self.rec.machine = newest_common_machine(a, b)
        for side in ("src", "dst"):
            for key, value in self.rec.sysctl_overrides.items():
                pair.set_sysctl(side, key, value)
            self.rec.sysctls[side] = pair.sysctls(side)
        common = [
            "-machine",
            self.rec.machine,
            "-accel",
            "tcg",
            "-m",
            RAM,
            "-nodefaults",
            "-display",
            "none",
            "-net",
            "none",
            "-kernel",
            str(kernel),
        ]
        self.dst = QemuInstance(
            pair.build(self.dstb, "dst"),
            "dst",
            self.workdir,
            [
                *common,
                "-serial",
                f"file:{self.workdir}/dst.serial",
                "-name",
                "dst",
                "-incoming",
                "defer",
                *(["-S"] if self.idle else []),
            ],
            clock=self.clock,
        )
        self.src = QemuInstance(
            pair.build(self.srcb, "src"),
            "src",
            self.workdir,
            [*common, "-serial", f"file:{self.workdir}/src.serial", "-name", "src"],
            clock=self.clock,
        )
        self.step("start")
        for r in await asyncio.gather(self.dst.start(), self.src.start(), return_exceptions=True):
            if isinstance(r, BaseException):
                raise r

    async def migrate(self, pair: VethPair) -> None:
        await self.set_capabilities()
        await self.qmp(
            "src",
            "migrate-set-parameters",
            {
                "max-bandwidth": PRECOPY_BANDWIDTH,
                "max-postcopy-bandwidth": POSTCOPY_BANDWIDTH,
            },
        )
        if self.strategy.rp_keepalive_ms:
            await self.qmp(
                "dst",
                "migrate-set-parameters",
                {"postcopy-rp-keepalive-period": self.strategy.rp_keepalive_ms},
            )
        opts = keepalive_uri_options(self.strategy)
        target = f"tcp:{pair.addr('dst')}:{PORT}"
        for side, cmd in (("dst", "migrate-incoming"), ("src", "migrate")):
            uri = target + opts
            self.step(cmd, uri=uri)
            ok = await self.qmp(side, cmd, {"uri": uri})
            if ok is None and opts:
                # Refused: say so (kept verbatim) and migrate without the options.
                uri = target
                self.step(cmd + "-without-options", uri=uri)
                await self.qmp(side, cmd, {"uri": uri})
            self.rec.uris[side] = uri

    async def sample_sockets(self, pair: VethPair) -> None:
        """``ss -tno`` on the migration port in both namespaces, once a second."""
        while True:
            for side in ("src", "dst"):
                try:
                    socks = await asyncio.to_thread(pair.sockets, side, PORT)
                except LabError:
                    continue
                for s in socks:
                    if s.state != "ESTAB":
                        continue
                    self.rec.sockets.setdefault(side, []).append({"t": self.now(), **s.to_json()})
            await asyncio.sleep(1.0)

    async def start_tcpdump(self, pair: VethPair) -> None:
        if shutil.which("tcpdump") is None:
            self.step("tcpdump-missing")
            return
        self.tcpdump = await asyncio.create_subprocess_exec(
            *pair.exec_prefix("src"),
            "tcpdump",
            "-i",
            pair.dev["src"],
            "-n",
            "-tt",
            "-l",
            "-s",
            "96",
            "tcp or icmp",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert self.tcpdump.stderr is not None
        try:
            async with asyncio.timeout(10):
                said = await self.tcpdump.stderr.readline()
        except TimeoutError:
            said = b""
        self.step("tcpdump", said=said.decode(errors="replace").strip())
        self._dump_task = asyncio.create_task(self._read_tcpdump())

    async def _read_tcpdump(self) -> None:
        assert self.tcpdump is not None and self.tcpdump.stdout is not None
        while line := await self.tcpdump.stdout.readline():
            if len(self.tcpdump_lines) < 20000:
                self.tcpdump_lines.append(line.decode(errors="replace").rstrip())

    async def stop_tcpdump(self) -> None:
        proc = self.tcpdump
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGINT)  # our own child, by PID
        try:
            async with asyncio.timeout(5):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
        await asyncio.wait({self._dump_task}, timeout=5)

    async def cut(self, pair: VethPair) -> None:
        if not await self.wait_status("src", {"active"}, 30):
            raise LabError(f"source never became active (statuses {self.rec.statuses})")
        await asyncio.sleep(1.0)  # part of RAM goes in precopy, as in the runner
        await self.start_tcpdump(pair)
        self.step("migrate-start-postcopy")
        await self.qmp("src", "migrate-start-postcopy")
        if not await self.wait_status("dst", {"postcopy-active"}, 30):
            raise LabError(f"the destination never reached postcopy-active ({self.last})")
        if self.idle:
            # Keep-alive timers armed, the source pushing pages; nothing else to wait for.
            await asyncio.sleep(1.0)
        # (active: cut at once, while the guest still faults and page requests are in flight)
        assert self.src is not None
        before = await self.src.try_execute("query-migrate")
        at_cut = {
            side: [s.to_json() for s in pair.sockets(side, PORT) if s.state == "ESTAB"]
            for side in ("src", "dst")
        }
        cut_mono = await asyncio.to_thread(pair.cut)
        # Wall clock of the same instant (QEMU's event timestamps and tcpdump's are wall).
        self.cut_wall = time.time() - (time.monotonic() - cut_mono)
        self.cut_t = round(cut_mono - self.clock, 4)
        ram = (before or {}).get("ram", {})
        self.rec.cut = {
            "t": self.cut_t,
            "wall": round(self.cut_wall, 6),
            **pair.notes[-1],
            "src_ram_remaining": ram.get("remaining"),
            "src_ram_transferred": ram.get("transferred"),
            "src_status": (before or {}).get("status"),
            "sockets_just_before": at_cut,
        }
        self.step("cut")

    async def observe(self) -> None:
        assert self.cut_t is not None
        end = time.monotonic() + self.window
        while time.monotonic() < end:
            if all(self._noticed(side)[0] is not None for side in ("src", "dst")):
                await asyncio.sleep(0.5)
                return
            await asyncio.sleep(0.2)
        self.step("window-over")

    def _noticed(self, side: str) -> tuple[float | None, str | None, float | None]:
        """(seconds after cut on our clock, status, seconds after cut on QEMU's clock)."""
        inst = self.src if side == "src" else self.dst
        assert inst is not None and self.cut_t is not None
        # Only inside the window: our own `quit` at the end can pause a source too.
        end = self.cut_t + self.window
        for ev in inst.events:
            st = ev["data"].get("status")
            if ev["event"] == "MIGRATION" and st in NOTICED and self.cut_t <= ev["t"] <= end:
                qemu = ev.get("qemu_time") or None
                return (
                    round(ev["t"] - self.cut_t, 3),
                    st,
                    round(qemu - self.cut_wall, 3) if qemu else None,
                )
        for s in self.rec.statuses.get(side, []):
            if s["status"] in NOTICED and self.cut_t <= s["t"] <= end:
                return round(s["t"] - self.cut_t, 3), s["status"], None
        return None, None, None

    def conclude(self, pair_dropped: dict[str, int]) -> None:
        self.rec.dropped = pair_dropped
        for side in ("src", "dst"):
            t, st, q = self._noticed(side) if self.cut_t is not None else (None, None, None)
            self.rec.detected[side], self.rec.detected_status[side] = t, st
            self.rec.detected_qemu_clock[side] = q
        if self.cut_t is not None:
            self.rec.after_cut = _summarise_tcpdump(self.tcpdump_lines, self._pair, self.cut_wall)
        for side in ("src", "dst"):
            samples = self.rec.sockets.get(side, [])
            cut = self.cut_t if self.cut_t is not None else float("inf")
            before = {s["timer"] or "none" for s in samples if s["t"] < cut}
            after = [s for s in samples if s["t"] >= cut]
            sent = self.rec.after_cut.get(side, {}).get("first", [])
            # Empty segments a side sends after the cut are keep-alive probes (it receives
            # nothing, so it has nothing to ACK); their times show which idle/interval apply.
            probes = [p["t"] for p in sent if p["len"] == 0 and "R" not in p["flags"]]
            ka_left = [
                x["timer_left_s"]
                for x in samples
                if x["t"] < cut and x["timer"] == "keepalive" and x["timer_left_s"]
            ]
            self.rec.keepalive_seen[side] = {
                "timers_before_cut": sorted(before),
                # Never above the idle time in force: ~5 s for keep-alive-idle=5, up to
                # 7200 s (119min) when the system's tcp_keepalive_time applies.
                "max_keepalive_left_before_cut_s": max(ka_left, default=None),
                "timers_after_cut": sorted({s["timer"] or "none" for s in after}),
                "max_timer_count_after_cut": max((s["retrans"] for s in after), default=None),
                "probe_times_after_cut": probes,
                "reset_sent_after_cut": next((p["t"] for p in sent if "R" in p["flags"]), None),
            }
        # The model's one workload input — does a side have data to send after the cut — is
        # taken from what tcpdump saw leave it (the scenario's assumption when no tcpdump).
        wrote = {
            side: (
                self.rec.after_cut[side]["data"] > 0
                if self.rec.after_cut
                else (side == "src" or not self.idle)
            )
            for side in ("src", "dst")
        }
        scenario = "active" if wrote["dst"] else "idle"
        src_pred = predict_partition(
            self.srcb.protocol_release,
            self.dstb.protocol_release,
            self.strategy,
            scenario=scenario,
            source_sending=wrote["src"],
            settings=TcpSettings.from_sysctls(self.rec.sysctls["src"]),
        )
        dst_pred = predict_partition(
            self.srcb.protocol_release,
            self.dstb.protocol_release,
            self.strategy,
            scenario=scenario,
            source_sending=wrote["src"],
            settings=TcpSettings.from_sysctls(self.rec.sysctls["dst"]),
        )
        self.rec.prediction = {
            "source": src_pred.source.to_json(),
            "destination": dst_pred.destination.to_json(),
            "inputs": {"wrote_after_cut": wrote, "model_scenario": scenario},
        }
        self.rec.checks = {
            "src": check_side(src_pred.source, self.rec.detected["src"], self.window),
            "dst": check_side(dst_pred.destination, self.rec.detected["dst"], self.window),
        }

    async def run(self) -> PartitionRecord:
        tasks: list[asyncio.Task[None]] = []
        dropped: dict[str, int] = {}
        with VethPair() as pair:
            self._pair = pair
            self.step("netns", ns=pair.ns, dev=pair.dev)
            try:
                await self.prepare(pair)
                tasks.append(asyncio.create_task(self.poll()))
                tasks.append(asyncio.create_task(self.sample_sockets(pair)))
                await self.wait_guest()
                await self.migrate(pair)
                await self.cut(pair)
                await self.observe()
                for side in ("src", "dst"):
                    dropped[side] = await asyncio.to_thread(pair.dropped, side)
            finally:
                self.stop_polling()
                await end_tasks(tasks)
                await self.stop_tcpdump()
                for inst in (self.src, self.dst):
                    if inst is not None:
                        with contextlib.suppress(Exception):
                            await inst.stop(grace=2.0)
                self.teardown(dropped)
        return self.rec

    def teardown(self, dropped: dict[str, int]) -> None:
        for side, inst in (("src", self.src), ("dst", self.dst)):
            if inst is None:
                continue
            self.rec.stderr[side] = [
                s["line"] for s in inst.stderr_lines if s["stream"] == "stderr"
            ]
            self.rec.events[side] = inst.events
            self.rec.killed[side] = inst.killed
            self.rec.qmp[side], self.rec.command_lines[side] = instance_record(inst)
        with contextlib.suppress(KeyError):
            self.conclude(dropped)
        self.rec.duration = self.now()
        (self.outdir / "record.json").write_text(json.dumps(self.rec.to_json(), indent=2) + "\n")
        if self.outdir != self.workdir / "out":
            shutil.rmtree(self.workdir, ignore_errors=True)


async def run_partition_async(
    src: QemuBuild,
    dst: QemuBuild,
    scenario: str = "partition-idle",
    *,
    strategy: Strategy | str = "none",
    window: float = DEFAULT_WINDOW,
    machine: str | None = None,
    outdir: Path | None = None,
    progress: bool = False,
    sysctls: dict[str, int] | None = None,
) -> PartitionRecord:
    """Async form of :func:`run_partition`."""
    strat = strategy if isinstance(strategy, Strategy) else Strategy.parse(strategy)
    console = progress_console(progress)
    run = _PartitionRun(src, dst, scenario, strat, window, outdir, machine, console, sysctls)
    if console is None:
        return await run.run()
    with console.status(f"{src.label} → {dst.label}: {scenario} {strat}") as status:
        run.status = status
        return await run.run()


def run_partition(
    src: str | QemuBuild,
    dst: str | QemuBuild,
    scenario: str = "partition-idle",
    *,
    strategy: Strategy | str = "none",
    window: float = DEFAULT_WINDOW,
    machine: str | None = None,
    outdir: Path | None = None,
    progress: bool = False,
    sysctls: dict[str, int] | None = None,
) -> PartitionRecord:
    """Partition a postcopy migration silently and time each side's detection.

    :param strategy: ``none`` or ``tcp:IDLE,INTVL,CNT`` (keep-alive options in both URIs).
    :param window: seconds to watch after the cut; a side still not paused is reported as
        "not detected within ``window``" (``detected[side] is None``).
    :param sysctls: ``net.ipv4.tcp_*`` values set in both namespaces (never on the host),
        e.g. ``{"tcp_retries2": 7}`` to bring the retransmission give-up inside the window.
    :raises LabError: a build is missing, namespaces cannot be made, QEMU did not start, or
        postcopy never started.
    """
    return asyncio.run(
        run_partition_async(
            require_build(src),
            require_build(dst),
            scenario,
            strategy=strategy,
            window=window,
            machine=machine,
            outdir=Path(outdir) if outdir else None,
            progress=progress,
            sysctls=sysctls,
        )
    )


def print_partition(rec: PartitionRecord) -> None:
    """A short human summary (rich table): detection per side against the model."""
    from rich.console import Console
    from rich.table import Table

    t = Table(
        title=f"{rec.scenario} {rec.strategy}: {rec.src['release']} → "
        f"{rec.dst['release']} ({rec.machine}), window {rec.window:g} s"
    )
    for col in ("side", "version", "URI", "detected (s after cut)", "predicted", "verdict"):
        t.add_column(col)
    for side in ("src", "dst"):
        d = rec.detected.get(side)
        chk = rec.checks.get(side, {})
        p = chk.get("predicted_s")
        t.add_row(
            side,
            rec.__dict__[side]["version_text"],
            rec.uris.get(side, ""),
            f"{d:g} ({rec.detected_status.get(side)})"
            if d is not None
            else f"not within {rec.window:g}",
            ("never" if p is None else f"{p:g}") + f" ({chk.get('mechanism', '?')})",
            chk.get("verdict", "?"),
        )
    c = Console()
    c.print(t)
    for side in ("src", "dst"):
        c.print(f"{side} socket timers: {rec.keepalive_seen.get(side)}", highlight=False)
        for line in rec.stderr.get(side, []):
            c.print(f"[dim]{side} stderr:[/] {line}", highlight=False)
    for err in rec.step_errors:
        c.print(
            f"[yellow]{err['side']} {err['command']}:[/] {err.get('qemu_error') or err['error']}"
        )
    c.print(
        f"after the cut: {json.dumps({k: v for k, v in rec.after_cut.items()})[:400]}",
        highlight=False,
    )
    c.print(f"record: {rec.outdir}/record.json")


def _fmt_detect(value: float | None, window: float) -> str:
    return f"{value:.1f} s" if value is not None else f"not within {window:g} s"


def _fmt_pred(pred: dict[str, Any]) -> str:
    p, rng = pred.get("detect_s"), pred.get("range_s")
    if p is None:
        text = "never"
    elif rng and rng[0] != rng[1]:
        text = f"{rng[0]:g}…{rng[1]:g} s"
    else:
        text = f"{p:g} s"
    return f"{text} ({pred.get('mechanism')})"


def _evidence(rec: dict[str, Any], side: str) -> str:
    """What the socket showed: keep-alive timer before the cut, probes after it."""
    ka = rec.get("keepalive_seen", {}).get(side, {})
    probes = ka.get("probe_times_after_cut") or []
    bits = []
    if "keepalive" in ka.get("timers_before_cut", []):
        left = ka.get("max_keepalive_left_before_cut_s")
        if left and left >= 600:  # ss prints whole minutes only: "119min" = 7200 s idle
            bits.append(f"SO_KEEPALIVE on (timer {left / 60:.0f} min)")
        else:
            bits.append("SO_KEEPALIVE on" + (f" (timer ≤ {left:g} s)" if left else ""))
    else:
        bits.append("no keep-alive timer")
    if probes:
        bits.append("probes at " + ", ".join(f"{t:.1f}" for t in probes[:4]) + " s")
    if ka.get("reset_sent_after_cut") is not None:
        bits.append(f"RST at {ka['reset_sent_after_cut']:.1f} s")
    wrote = rec.get("prediction", {}).get("inputs", {}).get("wrote_after_cut", {}).get(side)
    if wrote:
        n = ka.get("max_timer_count_after_cut")
        retries2 = rec.get("sysctls", {}).get(side, {}).get("tcp_retries2", 15)
        ticks = retransmission_schedule_s(retries2)
        if rec["detected"].get(side) is not None:
            # The give-up tick closes the socket: ss can only have counted the ones before.
            model, when = len(ticks) - 1, "before the give-up tick"
        else:
            model = len([t for t in ticks if t <= rec["window"]])
            when = f"by {rec['window']:g} s"
        if n:
            bits.append(f"retransmitting ({n} RTO ticks seen, model {model} {when})")
        else:
            bits.append("retransmitting")
    return "; ".join(bits)


def markdown_table(records: list[dict[str, Any]]) -> str:
    """The measured-vs-predicted table of docs/partition.md, from run records (JSON dicts)."""
    head = (
        "| run | source → destination | scenario | strategy | side | socket evidence "
        "| measured | predicted | verdict |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for rec in records:
        pair = f"{rec['src']['version_text'].split()[3]} → {rec['dst']['version_text'].split()[3]}"
        inputs = rec["prediction"]["inputs"]
        for side, key in (("src", "source"), ("dst", "destination")):
            # Today's model on the run's own inputs (not the prediction stored at the time):
            # the table always shows what the code predicts now.
            pred = getattr(
                predict_partition(
                    rec["src"]["release"],
                    rec["dst"]["release"],
                    rec["strategy"],
                    scenario=inputs["model_scenario"],
                    settings=rec["sysctls"][side],
                    source_sending=inputs["wrote_after_cut"]["src"],
                ),
                key,
            )
            chk = check_side(pred, rec["detected"].get(side), rec["window"])
            rows.append(
                f"| {rec.get('name', '')} | {pair} | {rec['scenario']} | {rec['strategy']} "
                f"| {side} | {_evidence(rec, side)} "
                f"| {_fmt_detect(rec['detected'].get(side), rec['window'])} "
                f"| {_fmt_pred(pred.to_json())} | {chk['verdict']} |"
            )
    return head + "\n".join(rows) + "\n"
