"""Run one migration scenario between two real QEMU builds and record what happened.

Order of a run (each step's QEMU errors are kept verbatim in ``step_errors``; the run goes on
to collect the outcome rather than stopping at the first refusal):

1. build the guest kernel; pick the machine type (newest ``pc-q35-X.Y`` both have);
2. start the destination (``-incoming defer``, ``-S`` when idle) and the source;
3. proxy + tcpdump (when present) on the source↔proxy leg; capabilities on both
   (``events``, ``postcopy-ram``, ``return-path``, ``switchover-ack`` when both ≥ 8.1);
   ``migrate-incoming``; bandwidth limits so postcopy lasts seconds; ``migrate``;
4. ``migrate-start-postcopy`` once the source is ``active``; the scenario's action;
5. poll ``query-migrate`` on both sides until both settle (or the timeout), record
   ``query-status``, stop both (``quit``, then SIGKILL to our own PID).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from migcompat.lab._errors import LabError, LabInterrupted, LabStalled
from migcompat.lab.builds import QemuBuild, new_run_dir, release_key, require_build
from migcompat.lab.host import host_info
from migcompat.lab.kernel import guest_kernel
from migcompat.lab.proxy import Proxy
from migcompat.lab.qemu import QemuInstance, newest_common_machine, query_machines
from migcompat.lab.scenarios import Scenario, Step, parse_scenario

__all__ = [
    "GUEST_WINDOW",
    "LOOPBACK",
    "SETTLED",
    "QmpPair",
    "RunRecord",
    "end_tasks",
    "guest_state",
    "instance_record",
    "print_record",
    "progress_console",
    "run_scenario",
    "run_scenario_async",
    "side_state",
    "task_stacks",
    "tcp_uri",
    "write_json_atomic",
]


def __dir__() -> list[str]:
    return list(__all__)


#: Statuses after which a side does not move on by itself (postcopy-paused waits for a human).
SETTLED = frozenset({"completed", "failed", "cancelled", "postcopy-paused"})

#: Bytes per second while in precopy: slow enough that postcopy is started mid-way.
PRECOPY_BANDWIDTH = 32 * 1024 * 1024
#: Bytes per second in postcopy (QEMU's default is unlimited: over in well under a second).
POSTCOPY_BANDWIDTH = 10 * 1000 * 1000
#: Guest RAM.
RAM = "128M"
#: Seconds over which guest progress is counted on both sides at the end of a run.
GUEST_WINDOW = 3.0

#: The guest's progress mark on its serial port (``lab/guest/guest.S``: one per 16 laps).
_MARK = "."


def side_state(dots: int, running: bool | None) -> str:
    """``executes`` (made progress), ``stalled`` (runstate running, no progress: vCPUs
    blocked, e.g. on page faults nobody serves) or ``stopped``."""
    if dots > 0:
        return "executes"
    return "stalled" if running else "stopped"


def guest_state(src: str, dst: str) -> str:
    """The pair's state from :func:`side_state` of each side.

    ``split-brain`` (both guests execute); ``destination-stalled`` (the destination reports
    running but its vCPUs make no progress: management software must not resume it);
    ``source-stalled``; ``source-only`` / ``destination-only``; ``neither``.
    """
    if src == dst == "executes":
        return "split-brain"
    if dst == "stalled":
        return "destination-stalled"
    if src == "stalled":
        return "source-stalled"
    if src == "executes":
        return "source-only"
    if dst == "executes":
        return "destination-only"
    return "neither"


@dataclass
class RunRecord:
    """Everything observed in one run (JSON-able via :meth:`to_json`)."""

    scenario: dict[str, Any]
    src: dict[str, Any]
    dst: dict[str, Any]
    machine: str = ""
    capabilities: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    #: ``migrate-set-parameters`` given to the destination (``lab run --dst-param``).
    dst_parameters: dict[str, Any] = field(default_factory=dict)
    #: extra ``migrate-set-parameters`` for the source (``lab run --src-param``), over
    #: the bandwidth defaults (recorded in ``parameters``).
    src_parameters: dict[str, Any] = field(default_factory=dict)
    #: ``query-migrate-parameters`` of each side just before ``migrate`` (what QEMU uses).
    migrate_parameters: dict[str, Any] = field(default_factory=dict)
    statuses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    error_desc: dict[str, str | None] = field(default_factory=dict)
    stderr: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    runstates: dict[str, Any] = field(default_factory=dict)
    final_migrate: dict[str, Any] = field(default_factory=dict)
    #: Per side, at the end of the run, exactly as QEMU answered: ``query-migrate`` (whole),
    #: ``query-status`` and ``error-desc`` (None: the key was absent). ``error_desc`` above
    #: keeps, as before, the last non-empty error-desc seen at any time.
    final: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Per side, every change of ``query-migrate``'s status or error-desc, in order:
    #: ``{"t", "status", "error-desc"}``.
    timeline: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: Runstates of both sides say ``running`` (what the lab called split brain before it
    #: measured guest progress: see ``guest``).
    split_brain: bool = False
    #: Guest progress measured over :data:`GUEST_WINDOW` s at the end of the run: per side
    #: ``dots`` printed in the window (one per 16 laps of the RAM window), ``before``/``after``
    #: counts, ``running`` (runstate) and ``state`` (``executes``/``stalled``/``stopped``);
    #: ``state`` of the pair (see :func:`guest_state`) and ``window``.
    guest: dict[str, Any] = field(default_factory=dict)
    killed: dict[str, bool] = field(default_factory=dict)
    #: Capability -> state per side where the scenario overrides the defaults.
    capabilities_per_side: dict[str, dict[str, bool]] = field(default_factory=dict)
    step_errors: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    proxy: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    serial_tail: dict[str, str] = field(default_factory=dict)
    outdir: str = ""
    duration: float = 0.0
    timed_out: bool = False
    #: Per side: every QMP message with its time (see :attr:`QemuInstance.qmp_log`).
    qmp: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: Per side: ``qemu_args`` (QEMU's own arguments) and ``argv`` (the full command run).
    command_lines: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    #: The host: ``kernel`` (``uname -r``), ``machine`` (``uname -m``).
    host: dict[str, str] = field(default_factory=dict)

    def status_sequence(self, side: str) -> list[str]:
        """Just the status names of ``side`` (``src``/``dst``) in order."""
        return [s["status"] for s in self.statuses.get(side, [])]

    def stderr_lines(self, side: str) -> list[str]:
        """QEMU's stderr lines of ``side``, verbatim."""
        return [s["line"] for s in self.stderr.get(side, []) if s["stream"] == "stderr"]

    def to_json(self) -> dict[str, Any]:
        """A plain dict (json.dumps-able)."""
        return asdict(self)


#: The only address a lab run binds or connects to (QMP is a unix socket in the private run dir).
LOOPBACK = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def tcp_uri(port: int) -> str:
    """The migration URI of a lab port: always on loopback."""
    return f"tcp:{LOOPBACK}:{port}"


async def end_tasks(tasks: list[asyncio.Task[Any]], timeout: float = 5.0) -> list[str]:
    """Cancel ``tasks`` and wait for them, at most ``timeout`` s; name those still running.

    Never ``suppress(CancelledError)`` around ``await task``: that also swallows a cancel of
    the caller. ``asyncio.wait`` lets a caller's cancel through and never raises a task's.
    """
    for t in tasks:
        t.cancel()
    live = [t for t in tasks if not t.done()]
    if live:
        await asyncio.wait(live, timeout=timeout)
    return [t.get_name() for t in tasks if not t.done()]


def task_stacks() -> list[dict[str, Any]]:
    """Every task of the running loop with where it waits (for a stall report)."""
    out = []
    for t in asyncio.all_tasks():
        frames = [f"{f.f_code.co_filename}:{f.f_lineno} {f.f_code.co_name}"
                  for f in t.get_stack(limit=12)]  # fmt: skip
        out.append({"task": t.get_name(), "coro": getattr(t.get_coro(), "__qualname__", "?"),
                    "done": t.done(), "stack": frames})  # fmt: skip
    return out


def write_json_atomic(path: Path, doc: Any) -> None:
    """``path`` holds the whole document or is absent: write a temp file, fsync, rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(doc, indent=2, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _build_json(b: QemuBuild) -> dict[str, Any]:
    return b.to_json()


def instance_record(inst: QemuInstance) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """An instance's QMP log and command lines, as run records keep them."""
    return inst.qmp_log, {"qemu_args": list(inst.qemu_args), "argv": list(inst.argv)}


def progress_console(progress: bool) -> Any:
    """A rich console on stderr for a run's live status line, or None without ``progress``."""
    if not progress:
        return None
    from rich.console import Console

    return Console(stderr=True)


class QmpPair:
    """What every lab run does with its two QEMUs: the clock, the step log, QMP calls
    (errors kept verbatim), waiting for the guest, and status polling."""

    clock: float
    srcb: QemuBuild
    dstb: QemuBuild
    rec: Any
    console: Any
    status: Any
    last: dict[str, str | None]
    src: QemuInstance | None
    dst: QemuInstance | None
    workdir: Path
    #: Capabilities left off although both sides have them (``lab run --without-capability``).
    without_capabilities: frozenset[str] = frozenset()
    #: Set by :meth:`stop_polling`: :meth:`poll` ends at its next turn even if a cancel is lost.
    _polling_stopped: bool = False

    def stop_polling(self) -> None:
        """Make :meth:`poll` return at its next turn (a second way out besides ``cancel()``)."""
        self._polling_stopped = True

    def on_status(self, side: str, status: str) -> None:
        """Hook: a side's ``query-migrate`` status changed."""

    async def set_capabilities(self, sc: Scenario | None = None) -> None:
        """postcopy-ram and return-path on both sides; switchover-ack where both are >= 8.1;
        then the scenario's per-side overrides (``src:switchover-ack=off``)."""
        caps = ["events", "postcopy-ram", "return-path"]
        if min(release_key(self.srcb.release), release_key(self.dstb.release)) >= (8, 1):
            caps.append("switchover-ack")
        caps = [c for c in caps if c not in self.without_capabilities]
        self.rec.capabilities = caps
        per_side = {}
        for side in ("dst", "src"):
            states = dict.fromkeys(caps, True)
            if sc is not None:
                # off and not on by default: left out (a release without it refuses the name)
                states.update(
                    {c: on for c, on in sc.capability_overrides(side).items() if on or c in caps}
                )
            per_side[side] = states
            cap_list = [{"capability": c, "state": on} for c, on in states.items()]
            await self.qmp(side, "migrate-set-capabilities", {"capabilities": cap_list})
        if sc is not None and sc.capabilities:
            self.rec.capabilities_per_side = per_side

    def now(self) -> float:
        return round(time.monotonic() - self.clock, 4)

    def step(self, what: str, **kw: Any) -> None:
        self.rec.steps.append({"t": self.now(), "step": what, **kw})
        if self.status is not None:
            self.status.update(f"[{self.now():6.1f}s] {what} — src {self.last['src']}, "
                               f"dst {self.last['dst']}")  # fmt: skip

    async def qmp(self, side: str, cmd: str, args: dict[str, Any] | None = None) -> Any:
        """A step's QMP command; QEMU's refusal is recorded verbatim and returned as ``None``."""
        inst = self.src if side == "src" else self.dst
        assert inst is not None
        try:
            async with asyncio.timeout(15):
                return await inst.execute(cmd, args)
        except (LabError, TimeoutError) as exc:
            err = {
                "t": self.now(), "side": side, "command": cmd, "arguments": args,
                "qemu_error": getattr(exc, "qemu_error", None), "error": str(exc) or repr(exc),
            }  # fmt: skip
            self.rec.step_errors.append(err)
            return None

    # -- steps ---------------------------------------------------------

    async def wait_guest(self, timeout: float = 20.0) -> None:
        """Wait for the source guest's first lap ('.' on its serial): its RAM is dirty then."""
        serial = self.workdir / "src.serial"
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with contextlib.suppress(OSError):
                if "." in serial.read_text(errors="replace"):
                    self.step("guest-running")
                    return
            await asyncio.sleep(0.05)
        self.step("guest-silent", waited=timeout)

    async def poll(self) -> None:
        """Record every status change of both sides (plus MIGRATION events, recorded anyway),
        and every change of status or error-desc into the timeline."""
        seen: dict[str, tuple[Any, Any]] = {}
        while not self._polling_stopped:
            for side, inst in (("src", self.src), ("dst", self.dst)):
                assert inst is not None
                info = await inst.try_execute("query-migrate")
                if not isinstance(info, dict):
                    continue
                st = info.get("status")
                if st and st != self.last[side]:
                    self.last[side] = st
                    self.rec.statuses.setdefault(side, []).append({"t": self.now(), "status": st})
                    self.on_status(side, st)
                    self.step("status", side=side, status=st)
                if info.get("error-desc"):
                    self.rec.error_desc[side] = info["error-desc"]
                now = (st, info.get("error-desc"))
                timeline = getattr(self.rec, "timeline", None)  # a partition record has none
                if st and seen.get(side) != now and timeline is not None:
                    seen[side] = now
                    timeline.setdefault(side, []).append(
                        {"t": self.now(), "status": st, "error-desc": now[1]}
                    )
            await asyncio.sleep(0.1)

    async def wait_status(self, side: str, wanted: set[str], timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.last[side] in wanted:
                return True
            if self.last[side] in SETTLED - wanted:
                return False
            await asyncio.sleep(0.05)
        return False


class _Run(QmpPair):
    """State of one run; the coroutine methods are the steps of the module docstring."""

    def __init__(
        self,
        src_build: QemuBuild,
        dst_build: QemuBuild,
        scenario: Scenario,
        machine: str | None,
        outdir: Path | None,
        timeout: float,
        observe: float,
        console: Any,
        dst_parameters: dict[str, Any] | None = None,
        src_parameters: dict[str, Any] | None = None,
    ) -> None:
        self.clock = time.monotonic()
        self.srcb, self.dstb, self.sc = src_build, dst_build, scenario
        self.workdir = new_run_dir("r")
        self.outdir = outdir or (self.workdir / "out")
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self.observe = observe
        self.console = console
        self.status = None
        self.rec = RunRecord(
            scenario=scenario.to_json(), src=_build_json(src_build), dst=_build_json(dst_build),
            machine=machine or "", outdir=str(self.outdir), host=host_info(),
            dst_parameters=dict(dst_parameters or {}),
            src_parameters=dict(src_parameters or {}),
        )  # fmt: skip
        self.last: dict[str, str | None] = {"src": None, "dst": None}
        self.settled_at: dict[str, float | None] = {"src": None, "dst": None}
        self.tcpdump: asyncio.subprocess.Process | None = None
        self.src: QemuInstance | None = None
        self.dst: QemuInstance | None = None
        self.proxy: Proxy | None = None
        self.postcopy_started = False

    def on_status(self, side: str, status: str) -> None:
        self.settled_at[side] = self.now() if status in SETTLED else None

    async def prepare(self) -> None:
        kernel = guest_kernel()
        if not self.rec.machine:
            self.step("query-machines")
            a, b = await asyncio.gather(
                query_machines(self.srcb, self.workdir), query_machines(self.dstb, self.workdir)
            )
            self.rec.machine = newest_common_machine(a, b)
        common = [
            "-machine", self.rec.machine, "-accel", "tcg", "-m", RAM,
            "-nodefaults", "-display", "none", "-net", "none", "-kernel", str(kernel),
        ]  # fmt: skip
        self.dst_port = _free_port()
        self.dst_port2 = _free_port()
        self.dst = QemuInstance(
            self.dstb, "dst", self.workdir,
            [*common, "-serial", f"file:{self.workdir}/dst.serial", "-name", "dst",
             "-incoming", "defer", *(["-S"] if self.sc.idle else [])],
            clock=self.clock,
        )  # fmt: skip
        self.src = QemuInstance(
            self.srcb, "src", self.workdir,
            [*common, "-serial", f"file:{self.workdir}/src.serial", "-name", "src"],
            clock=self.clock,
        )  # fmt: skip
        self.step("start")
        results = await asyncio.gather(self.dst.start(), self.src.start(), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        self.proxy = Proxy(
            self.outdir, src_release=self.srcb.protocol_release, clock=self.clock, host=LOOPBACK
        )
        self.proxy_port = await self.proxy.listen(self.dst_port)
        recovers = any(st.kind == "recover" for st in self.sc.actions)
        self.proxy_port2 = await self.proxy.listen(self.dst_port2) if recovers else None
        await self.start_tcpdump()

    async def start_tcpdump(self) -> None:
        if shutil.which("tcpdump") is None:
            self.step("tcpdump-missing")
            return
        ports = [p for p in (self.proxy_port, self.proxy_port2) if p]
        flt = " or ".join(f"tcp port {p}" for p in ports)
        pcap = self.outdir / "capture.pcap"
        self.tcpdump = await asyncio.create_subprocess_exec(
            "tcpdump", "-i", "lo", "-U", "-s", "0", "-B", "65536", "-w", str(pcap), flt,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self.tcpdump.stderr is not None
        try:
            async with asyncio.timeout(10):
                line = await self.tcpdump.stderr.readline()
        except TimeoutError:
            line = b""
        self.step("tcpdump", filter=flt, said=line.decode(errors="replace").strip())
        self.rec.files["pcap"] = str(pcap)

    async def migrate(self) -> None:
        await self.set_capabilities(self.sc)
        params = {
            "max-bandwidth": PRECOPY_BANDWIDTH,
            "max-postcopy-bandwidth": POSTCOPY_BANDWIDTH,
        } | self.rec.src_parameters
        self.rec.parameters = params
        await self.qmp("src", "migrate-set-parameters", params)
        if self.rec.dst_parameters:
            await self.qmp("dst", "migrate-set-parameters", self.rec.dst_parameters)
        for side in ("src", "dst"):
            got = await self.qmp(side, "query-migrate-parameters")
            if isinstance(got, dict):
                self.rec.migrate_parameters[side] = got
        self.step("migrate-incoming", port=self.dst_port)
        await self.qmp("dst", "migrate-incoming", {"uri": tcp_uri(self.dst_port)})
        self.step("migrate", port=self.proxy_port)
        self.migrate_t = self.now()
        await self.qmp("src", "migrate", {"uri": tcp_uri(self.proxy_port)})

    async def start_postcopy(self) -> None:
        if self.postcopy_started:
            return
        self.postcopy_started = True
        if not await self.wait_status("src", {"active"}, 20):
            self.step("never-active")
            return
        await asyncio.sleep(1.0)  # let precopy send part of RAM first
        self.step("migrate-start-postcopy")
        await self.qmp("src", "migrate-start-postcopy")

    async def wait_moment(self, trigger: str) -> bool:
        """Wait for a step's moment (protocol ``Step.trigger``); False: not reached."""
        assert self.proxy is not None
        if trigger == "precopy":
            ok = await self.wait_status("src", {"active"}, 20)
            await asyncio.sleep(0.5)
            return ok
        if trigger.startswith("t="):
            delay = float(trigger[2:]) - (self.now() - self.migrate_t)
            await asyncio.sleep(max(0.0, delay))
            return True
        if trigger.startswith("frames="):
            return await self.proxy.wait_frames(int(trigger[7:]), 30)
        await self.start_postcopy()
        if trigger == "postcopy-start":
            return True
        if trigger == "postcopy-device":
            return await self.wait_status_seen("src", "postcopy-device", 15)
        if trigger.startswith("status="):
            side, _, status = trigger[7:].rpartition(":")
            return await self.wait_status_seen(side or "src", status, 30)
        # postcopy: both sides; the destination runs the guest (and faults) from then on
        ok = await self.wait_status("src", {"postcopy-active"}, 30)
        return ok and await self.wait_status("dst", {"postcopy-active"}, 10)

    async def wait_status_seen(self, side: str, status: str, timeout: float) -> bool:
        """Wait until ``side`` reported ``status`` (polled, or in a MIGRATION event)."""
        inst = self.src if side == "src" else self.dst
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.last[side] == status or any(
                e.get("event") == "MIGRATION" and (e.get("data") or {}).get("status") == status
                for e in (inst.events if inst is not None else [])
            ):
                return True
            if self.last[side] in SETTLED - {status}:
                return False
            await asyncio.sleep(0.02)
        return False

    async def scenario_action(self) -> None:
        """Each step at its moment, in order; postcopy is started before the first step
        that needs it (and after the last one otherwise)."""
        for step in self.sc.actions:
            if step.kind == "plain":
                continue
            ok = await self.wait_moment(step.trigger)
            self.step("trigger", trigger=step.trigger, reached=ok)
            await self.act(step)
        await self.start_postcopy()

    async def act(self, step: Step) -> None:
        assert self.proxy is not None
        if step.kind == "inject":
            assert step.frame is not None
            if self.proxy.conns:
                try:
                    async with asyncio.timeout(10):
                        inj = await self.proxy.inject(step.frame)
                    self.step("inject", **inj)
                except (LabError, TimeoutError, OSError, RuntimeError) as exc:
                    # RuntimeError: asyncio's "write() after write_eof()", a connection the
                    # source already closed (an earlier step's frame ended it)
                    self.rec.step_errors.append(
                        {"t": self.now(), "side": "proxy", "command": "inject", "error": str(exc)}
                    )
            await asyncio.sleep(0.5)  # the next step sees the source's reaction
        elif step.kind == "blackhole":
            self.proxy.blackhole()
            self.step("blackhole")
        elif step.kind == "cut":
            # an abrupt, visible failure (RST both ways): the opposite of a blackhole
            self.proxy.cut(reset=True)
            self.step("cut")
        elif step.kind == "pause":
            await self.pause()
        elif step.kind == "recover" and len(self.sc.actions) == 1:
            await self.recover()
        elif step.kind == "recover":  # after other steps: only once both sides paused
            ok_src = await self.wait_status("src", {"postcopy-paused"}, 15)
            ok_dst = await self.wait_status("dst", {"postcopy-paused"}, 15)
            self.step("paused", src=ok_src, dst=ok_dst)
            if ok_src and ok_dst:
                await self.resume()
            else:
                self.step("no-recovery", src=self.last["src"], dst=self.last["dst"])

    async def pause(self) -> None:
        """``migrate-pause`` on both sides, unless both are paused already."""
        if self.last["src"] == self.last["dst"] == "postcopy-paused":
            self.step("already-paused")
            return
        self.step("migrate-pause")
        await self.qmp("dst", "migrate-pause")
        await self.qmp("src", "migrate-pause")

    async def recover(self) -> None:
        """The whole recovery: blackhole, migrate-pause on both sides, then :meth:`resume`."""
        assert self.proxy is not None and self.proxy_port2 is not None
        if self.last["src"] != "postcopy-active":
            self.step("never-postcopy-active", src=self.last["src"])
            return
        await asyncio.sleep(1.0)
        self.proxy.blackhole()
        self.step("blackhole")
        await asyncio.sleep(0.5)
        await self.pause()
        ok_src = await self.wait_status("src", {"postcopy-paused"}, 15)
        ok_dst = await self.wait_status("dst", {"postcopy-paused"}, 15)
        self.step("paused", src=ok_src, dst=ok_dst)
        await self.resume()

    async def resume(self) -> None:
        """Both sides paused: a new connection (``migrate-recover``, ``migrate resume=true``)."""
        assert self.proxy is not None and self.proxy_port2 is not None
        self.proxy.cut(reset=False)
        self.proxy.unblock()
        self.step("migrate-recover", port=self.dst_port2)
        await self.qmp("dst", "migrate-recover", {"uri": tcp_uri(self.dst_port2)})
        await self.wait_status("dst", {"postcopy-recover"}, 5)
        await asyncio.sleep(0.3)
        self.step("migrate-resume", port=self.proxy_port2)
        await self.qmp("src", "migrate", {"uri": tcp_uri(self.proxy_port2), "resume": True})

    async def settle(self) -> None:
        """Wait until both sides settle (2 s quiet), or the source settled ``observe`` s ago."""
        end = time.monotonic() + self.timeout
        while time.monotonic() < end:
            s, d = self.settled_at["src"], self.settled_at["dst"]
            now = self.now()
            if s is not None and d is not None and now - max(s, d) >= 1.0:
                return
            if s is not None and now - s >= self.observe:
                return
            blackholes = self.sc.actions[-1].kind == "blackhole"
            if blackholes and self.proxy and self.proxy.notes:
                bh = [n["t"] for n in self.proxy.notes if n["what"] == "blackhole"]
                if bh and now - bh[0] >= self.observe:
                    return
            await asyncio.sleep(0.1)
        self.rec.timed_out = True

    def _marks(self, side: str) -> int:
        with contextlib.suppress(OSError):
            return (self.workdir / f"{side}.serial").read_text(errors="replace").count(_MARK)
        return 0

    async def measure_guest(self, window: float = GUEST_WINDOW) -> None:
        """Count each guest's progress marks over ``window`` seconds (both sides at once)."""
        before = {side: self._marks(side) for side in ("src", "dst")}
        self.step("guest-window", seconds=window)
        await asyncio.sleep(window)
        after = {side: self._marks(side) for side in ("src", "dst")}
        g: dict[str, Any] = {"window": window}
        for side, inst in (("src", self.src), ("dst", self.dst)):
            st = await inst.try_execute("query-status") if inst is not None else None
            running = st.get("running") if isinstance(st, dict) else None
            dots = after[side] - before[side]
            g[side] = {
                "before": before[side], "after": after[side], "dots": dots,
                "running": running, "state": side_state(dots, running),
            }  # fmt: skip
        g["state"] = guest_state(g["src"]["state"], g["dst"]["state"])
        self.rec.guest = g

    async def collect(self) -> None:
        for side, inst in (("src", self.src), ("dst", self.dst)):
            if inst is None or inst.returncode is not None:
                continue
            st = await inst.try_execute("query-status")
            if st is not None:
                self.rec.runstates[side] = st
            mig = await inst.try_execute("query-migrate")
            self.rec.final[side] = {
                "query-migrate": mig,
                "query-status": st,
                "error-desc": mig.get("error-desc") if isinstance(mig, dict) else None,
            }
            if isinstance(mig, dict):
                self.rec.final_migrate[side] = {
                    k: mig[k] for k in ("status", "error-desc") if k in mig
                }
                if mig.get("error-desc"):
                    self.rec.error_desc[side] = mig["error-desc"]
        rs = self.rec.runstates
        self.rec.split_brain = bool(
            rs.get("src", {}).get("running") and rs.get("dst", {}).get("running")
        )

    async def teardown(self) -> None:
        # stderr lines stamped after this step come from our quit/kill, not the scenario
        self.step("teardown")
        for inst in (self.src, self.dst):
            if inst is not None:
                with contextlib.suppress(Exception):
                    await inst.stop(grace=3.0)
        if self.proxy is not None:
            self.rec.proxy = await self.proxy.close()
        if self.tcpdump is not None and self.tcpdump.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.tcpdump.pid, signal.SIGINT)
            try:
                async with asyncio.timeout(5):
                    await self.tcpdump.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.tcpdump.pid, signal.SIGKILL)
                await self.tcpdump.wait()
            if self.tcpdump.stderr is not None:
                tail = (await self.tcpdump.stderr.read()).decode(errors="replace").split("\n")
                self.step("tcpdump-stopped", said=[t for t in tail if t.strip()])
        for side, inst in (("src", self.src), ("dst", self.dst)):
            if inst is None:
                continue
            self.rec.stderr[side] = inst.stderr_lines
            self.rec.events[side] = inst.events
            self.rec.qmp[side], self.rec.command_lines[side] = instance_record(inst)
            self.rec.killed[side] = inst.killed
            serial = self.workdir / f"{side}.serial"
            if serial.exists():
                text = serial.read_text(errors="replace")
                self.rec.serial_tail[side] = text[:80] + (
                    "…" + text[-40:] if len(text) > 120 else ""
                )
        for name in ("fwd.bin", "rp.bin", "chunks.jsonl", "fwd.1.bin", "rp.1.bin"):
            if (self.outdir / name).exists():
                self.rec.files[name.replace(".", "_", 1)] = str(self.outdir / name)
        self.rec.duration = self.now()
        self.rec.files["record"] = str(self.outdir / "record.json")
        try:
            write_json_atomic(self.outdir / "record.json", self.rec.to_json())
        except OSError as exc:
            self.rec.files.pop("record")
            raise LabError(f"cannot write the run's record {self.outdir / 'record.json'} "
                           "(none was left behind)", exc=exc) from exc  # fmt: skip
        disk = self.rec.proxy.get("disk_error")
        if disk:
            record = self.outdir / "record.json"
            raise LabError(f"recording the streams failed ({disk}); the incomplete streams "
                           f"were removed, the record is {record}")  # fmt: skip

    async def steps(self) -> None:
        """Steps 1–5 of the module docstring, without the teardown (see :meth:`finish`)."""
        poller: asyncio.Task[None] | None = None
        try:
            await self.prepare()
            poller = asyncio.create_task(self.poll(), name="status-poller")
            await self.watched(self.body())
        finally:
            self.stop_polling()
            if poller is not None and await end_tasks([poller]):
                self.rec.step_errors.append(
                    {"t": self.now(), "side": "lab", "command": "poll",
                     "error": "the status poller did not stop when cancelled"}
                )  # fmt: skip

    async def body(self) -> None:
        await self.wait_guest()
        await self.migrate()
        await self.scenario_action()
        await self.settle()
        await asyncio.sleep(0.3)
        await self.measure_guest()
        await self.collect()

    async def watched(self, coro: Any) -> None:
        """Run ``coro``; a QEMU killed behind our back or a lost QMP connection ends it."""
        task = asyncio.create_task(coro, name="lab-steps")
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=0.2)
                if done:
                    task.result()
                    return
                for inst in (self.src, self.dst):
                    why = inst.fault() if inst is not None else None
                    if why and inst is not None and "QMP" in why:
                        # QMP goes first when QEMU dies: wait for the exit, then say which
                        await inst.wait_exit(1.0)
                        why = inst.fault()  # None: QEMU exited by itself (an outcome)
                    if why:
                        self.step("fault", error=why)
                        await end_tasks([task])
                        raise LabError(f"{why} during the run; the run was stopped")
        finally:
            await end_tasks([task])

    async def finish(self) -> None:
        """Tear down (QEMUs, proxy, tcpdump), write the record, drop the work dir."""
        try:
            await self.teardown()
        finally:
            if self.outdir != self.workdir / "out":
                shutil.rmtree(self.workdir, ignore_errors=True)

    async def run(self) -> RunRecord:
        try:
            await self.steps()
        finally:
            await self.finish()
        return self.rec

    def stall_report(self, budget: float) -> Path:
        """Dump what the run and the proxy were doing when the budget ran out (a bug report)."""
        report = {
            "budget": budget,
            "t": self.now(),
            "statuses": self.last,
            "last_steps": self.rec.steps[-20:],
            "step_errors": self.rec.step_errors,
            "proxy": self.proxy.state() if self.proxy is not None else None,
            "tasks": task_stacks(),
        }
        path = self.outdir / "stall-report.json"
        write_json_atomic(path, report)
        self.rec.files["stall_report"] = str(path)
        return path


async def run_scenario_async(
    src: QemuBuild,
    dst: QemuBuild,
    scenario: str | Scenario,
    *,
    machine: str | None = None,
    outdir: Path | None = None,
    timeout: float = 60.0,
    observe: float = 5.0,
    idle: bool = False,
    progress: bool = False,
    without_capabilities: frozenset[str] = frozenset(),
    dst_parameters: dict[str, Any] | None = None,
    src_parameters: dict[str, Any] | None = None,
    budget: float | None = None,
) -> RunRecord:
    """Async form of :func:`run_scenario`."""
    sc = scenario if isinstance(scenario, Scenario) else parse_scenario(scenario, idle=idle)
    console = progress_console(progress)
    run = _Run(
        src, dst, sc, machine, outdir, timeout, observe, console, dst_parameters, src_parameters
    )
    run.without_capabilities = frozenset(without_capabilities)
    # Every step has its own bound; this one is a safety net. A run that reaches it is a bug
    # of the lab: its state (the proxy's included) is dumped, then both QEMUs are torn down.
    budget = 3 * timeout + observe + 120 if budget is None else budget
    status_cm = (
        console.status(f"{src.label} → {dst.label}: {sc.name}")
        if console is not None else contextlib.nullcontext()
    )  # fmt: skip
    with status_cm as status:
        run.status = status
        steps = asyncio.create_task(run.steps(), name="lab-run")
        try:
            done, _ = await asyncio.wait({steps}, timeout=budget)
        except asyncio.CancelledError:  # ^C (asyncio.run cancels us) or a caller's cancel
            await end_tasks([steps], 10)
            await run.finish()
            raise
        if not done:
            report = run.stall_report(budget)
            left = await end_tasks([steps], 10)
            await run.finish()
            raise LabStalled(
                f"{src.label} → {dst.label} {sc.name}: no result within {budget:.0f} s "
                f"(a lab bug, not a QEMU outcome; still running: {left or 'nothing'}); both "
                f"QEMUs torn down; state dumped to {report}"
            )
        await run.finish()
    steps.result()  # a LabError of a step (QEMU did not start) is raised here
    return run.rec


def run_scenario(
    src_release: str | QemuBuild,
    dst_release: str | QemuBuild,
    scenario: str | Scenario,
    machine: str | None = None,
    outdir: Path | None = None,
    *,
    timeout: float = 60.0,
    observe: float = 5.0,
    idle: bool = False,
    progress: bool = False,
    without_capabilities: frozenset[str] = frozenset(),
    dst_parameters: dict[str, Any] | None = None,
    src_parameters: dict[str, Any] | None = None,
    budget: float | None = None,
) -> RunRecord:
    """Run one scenario between two builds (release strings are looked up with ``find_build``).

    :param without_capabilities: capabilities to leave off (e.g. ``switchover-ack``).
    :param dst_parameters: ``migrate-set-parameters`` for the destination before ``migrate``
        (``{"postcopy-rp-keepalive-period": 2000}`` on a patched build).
    :param src_parameters: source parameters over the bandwidth defaults (a lower
        ``max-postcopy-bandwidth`` makes postcopy last longer).
    :param observe: after the source settles, how long to keep watching the destination
        (and, for ``blackhole``, how long to watch after the blackhole starts).
    :param budget: overall bound in seconds (default ``3 * timeout + observe + 120``).
    :raises LabError: a build is missing or QEMU could not be started.
    :raises LabStalled: the budget ran out (a lab bug; ``stall-report.json`` in the outdir).
    """
    builds = [require_build(src_release), require_build(dst_release)]
    try:
        return asyncio.run(
            run_scenario_async(
                builds[0], builds[1], scenario, machine=machine,
                outdir=Path(outdir) if outdir else None, timeout=timeout, observe=observe,
                idle=idle, progress=progress, without_capabilities=without_capabilities,
                dst_parameters=dst_parameters, src_parameters=src_parameters,
                budget=budget,
            )
        )  # fmt: skip
    except KeyboardInterrupt as exc:
        if isinstance(exc, LabInterrupted):
            raise
        raise LabInterrupted(
            f"{builds[0].label} → {builds[1].label}: interrupted (SIGINT); both QEMUs were stopped"
        ) from None


def print_record(rec: RunRecord) -> None:
    """A short human summary of a run (rich table)."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{rec.scenario['name']}: {rec.src['release']} → {rec.dst['release']} "
              f"({rec.machine})")  # fmt: skip
    t.add_column("side")
    t.add_column("version")
    t.add_column("statuses (s)")
    t.add_column("error-desc")
    t.add_column("runstate")
    for side in ("src", "dst"):
        seq = ", ".join(f"{s['status']}@{s['t']:.1f}" for s in rec.statuses.get(side, []))
        rs = rec.runstates.get(side, {})
        t.add_row(
            side, rec.__dict__[side]["version_text"], seq, rec.error_desc.get(side) or "",
            str(rs.get("status", "?")) + (" (killed)" if rec.killed.get(side) else ""),
        )  # fmt: skip
    c = Console()
    c.print(t)
    for side in ("src", "dst"):
        for line in rec.stderr_lines(side):
            c.print(f"[dim]{side} stderr:[/] {line}", markup=True, highlight=False)
    for err in rec.step_errors:
        c.print(
            f"[yellow]{err['side']} {err['command']}:[/] {err.get('qemu_error') or err['error']}"
        )
    frames: dict[str, int] = {}
    for f in rec.proxy.get("frames", []):
        frames[f["name"]] = frames.get(f["name"], 0) + 1
    c.print(f"return-path frames: {frames}; injections: {len(rec.proxy.get('injections', []))}")
    g = rec.guest
    if g:
        c.print(
            f"guest over {g['window']:.0f} s: {g['state']} (progress marks: src "
            f"{g['src']['dots']}, dst {g['dst']['dots']})"
        )
        if g["state"] == "split-brain":
            c.print("[bold red]split-brain: the guest executes on both sides[/]")
        elif g["state"] == "destination-stalled":
            c.print("[bold yellow]the destination reports running but its vCPUs are stalled: "
                    "do not resume it[/]")  # fmt: skip
    elif rec.split_brain:
        c.print("[bold red]both runstates are running (guest progress not measured)[/]")
    c.print(f"record: {rec.files.get('record')}")
